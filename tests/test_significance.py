"""Bootstrap intervals, paired comparisons and the residual F-test against
independent computations: scipy's bootstrap, a direct loop, a closed form,
and simulations with a known answer."""

import math

import numpy as np
import pytest
from scipy import stats

from msds.evaluation import significance
from msds.evaluation.correlation import correlations, fit_mapping


def noisy_pairs(rng, n, rho=0.7):
    """n (score, mos) pairs of a bivariate normal with correlation rho."""
    z = rng.standard_normal((n, 2))
    return z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]


def test_pair_resampling_agrees_with_scipys_bootstrap():
    # One content per pair: the content bootstrap is the ordinary paired
    # bootstrap, which scipy also does (its own random draws, so the
    # endpoints agree within Monte Carlo error: about 0.003 here).
    rng = np.random.default_rng(1)
    scores, mos = noisy_pairs(rng, 150)
    ours = significance.bootstrap({"s": scores}, mos, np.arange(150), resamples=2000, seed=3,
                                  statistics=("srcc",))["columns"]["s"]["srcc"]
    theirs = stats.bootstrap((scores, mos), lambda a, b: stats.spearmanr(a, b)[0], paired=True,
                             vectorized=False, n_resamples=2000, method="percentile",
                             random_state=np.random.default_rng(4)).confidence_interval
    assert ours["low"] == pytest.approx(theirs.low, abs=0.015)
    assert ours["high"] == pytest.approx(theirs.high, abs=0.015)
    assert ours["value"] == pytest.approx(stats.spearmanr(scores, mos)[0])


def test_content_resampling_matches_a_direct_loop():
    # 12 contents of 1 to 6 distortions each; the loop draws contents by the
    # documented protocol and recomputes every statistic from scratch (the
    # logistic of PLCC and RMSE from the full sample's fit, as documented:
    # on 40 pairs the fit has more than one local optimum).
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 7, 12)
    refs = [f"ref{c}" for c, size in enumerate(sizes) for _ in range(size)]
    scores, mos = noisy_pairs(rng, len(refs))
    groups = significance.content_groups(refs)
    report = significance.bootstrap({"s": scores}, mos, groups, resamples=60, seed=7)
    draw = np.random.default_rng(7)
    start = fit_mapping(scores, mos)[0].params
    values = {name: [] for name in significance.STATISTICS}
    for _ in range(60):
        picked = [i for c in draw.integers(0, 12, 12) for i in range(len(refs)) if refs[i] == f"ref{c}"]
        s, m = scores[picked], mos[picked]
        values["srcc"].append(stats.spearmanr(s, m)[0])
        values["krcc"].append(stats.kendalltau(s, m)[0])
        mapped = correlations(s, m, start)
        values["plcc"].append(mapped["plcc"])
        values["rmse"].append(mapped["rmse"])
    for name, series in values.items():
        low, high = np.percentile(series, [2.5, 97.5])
        got = report["columns"]["s"][name]
        assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-12), name


@pytest.mark.full
def test_intervals_cover_the_true_correlation_about_95_percent_of_the_time():
    # Bivariate normal, rho = 0.6: Spearman's population correlation is
    # (6 / pi) asin(rho / 2). 150 simulated datasets of 100 pairs: the share
    # of intervals holding it is 0.95 within three standard errors (0.053).
    rho = 0.6
    truth = 6 / math.pi * math.asin(rho / 2)
    rng = np.random.default_rng(5)
    sims, hits = 150, 0
    for sim in range(sims):
        scores, mos = noisy_pairs(rng, 100, rho)
        interval = significance.bootstrap({"s": scores}, mos, np.arange(100), resamples=250, seed=sim,
                                          statistics=("srcc",))["columns"]["s"]["srcc"]
        hits += interval["low"] <= truth <= interval["high"]
    assert abs(hits / sims - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / sims), hits / sims


@pytest.mark.full
def test_paired_p_values_are_near_uniform_under_the_null():
    # Two columns that predict the MOS equally well (the same signal plus
    # independent noise of the same size): p-values spread evenly over
    # (0, 1]; 120 simulations, mean 0.5 and one in ten under 0.1, within
    # about three standard errors.
    rng = np.random.default_rng(6)
    p_values = []
    for sim in range(120):
        signal = rng.standard_normal(80)
        columns = {"a": signal + rng.standard_normal(80), "b": signal + rng.standard_normal(80)}
        report = significance.bootstrap(columns, signal, np.arange(80), resamples=200, seed=sim,
                                        statistics=("srcc",))
        p_values.append(significance.paired_difference(report, "a", "b")["p_value"])
    p_values = np.array(p_values)
    assert abs(p_values.mean() - 0.5) <= 3 * math.sqrt(1 / 12 / 120)
    assert abs(np.mean(p_values < 0.1) - 0.1) <= 3 * math.sqrt(0.09 / 120)
    assert stats.kstest(p_values, "uniform").pvalue > 0.001


@pytest.mark.full
def test_a_real_difference_is_found():
    # Column a carries the signal with a tenth of b's noise: b is worse by
    # every test, and the table says so both ways.
    rng = np.random.default_rng(8)
    mos = rng.standard_normal(200)
    columns = {"a": mos + 0.2 * rng.standard_normal(200), "b": mos + 2.0 * rng.standard_normal(200)}
    groups = significance.content_groups([f"r{i // 4}" for i in range(200)])
    report = significance.bootstrap(columns, mos, groups, resamples=200, seed=0)
    diff = significance.paired_difference(report, "a", "b")
    assert diff["difference"] > 0 and diff["low"] > 0 and diff["p_value"] < 0.01
    residuals = {name: significance.residuals(values, mos) for name, values in columns.items()}
    table = significance.significance_table(report, residuals, groups)
    assert table["srcc"] == [[0, 1], [-1, 0]] and table["f_test"] == [[0, 1], [-1, 0]]


def test_f_test_against_a_hand_computed_example():
    # Sample variances 10/3 and 2.5/3: F = 4 on (3, 3) degrees of freedom.
    # For F(3, 3), P(F > f) is the regularised incomplete beta I_x(3/2, 3/2)
    # at x = 3 / (3 + 3 f), which is (2 t - sin(4 t) / 2) / pi with
    # t = asin(sqrt(x)).
    a = np.array([1.0, -1.0, 2.0, -2.0])
    b = np.array([0.5, -0.5, 1.0, -1.0])
    result = significance.f_test(a, b)
    assert result["f"] == pytest.approx(4.0) and result["df"] == [3, 3]
    t = math.asin(math.sqrt(3 / (3 + 3 * 4.0)))
    tail = (2 * t - math.sin(4 * t) / 2) / math.pi
    assert result["p_value"] == pytest.approx(2 * tail, rel=1e-9)
    assert significance.f_test(b, a)["p_value"] == pytest.approx(result["p_value"], rel=1e-9)  # two-sided


def test_gaussianity_reads_the_kurtosis():
    rng = np.random.default_rng(9)
    assert significance.gaussianity(rng.standard_normal(2000))["gaussian"]
    heavy = significance.gaussianity(rng.standard_t(2, 2000))
    assert not heavy["gaussian"] and heavy["kurtosis"] > 4 and heavy["normaltest_p"] < 0.01


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="level: expected a confidence level between 0 and 1, got 95"):
        significance.bootstrap({"s": [1, 2, 3]}, [1, 2, 3], [0, 1, 2], level=95)
    with pytest.raises(ValueError, match="resamples: expected at least 1, got 0"):
        significance.bootstrap({"s": [1, 2, 3]}, [1, 2, 3], [0, 1, 2], resamples=0)


def test_one_content_gives_no_p_value_and_no_table():
    # One reference content: every resample is the full sample again, so
    # nothing can be said about other contents. No interval end, no p-value,
    # no +-1, whatever the difference.
    rng = np.random.default_rng(10)
    mos = rng.standard_normal(30)
    columns = {"a": mos + 0.1 * rng.standard_normal(30), "b": mos + 1.0 * rng.standard_normal(30)}
    groups = np.zeros(30, dtype=int)
    report = significance.bootstrap(columns, mos, groups, resamples=50, seed=0, statistics=("srcc",))
    assert report["columns"]["a"]["srcc"]["degenerate"] == 50
    diff = significance.paired_difference(report, "a", "b")
    assert diff["p_value"] is None and diff["refused"]
    residuals = {name: significance.residuals(values, mos) for name, values in columns.items()}
    table = significance.significance_table(report, residuals, groups)
    assert table["srcc"] is None and table["variance"] is None and table["f_test"] is None
    assert "at least 6 reference contents" in table["refused"]


def test_resamples_of_a_single_content_are_counted_degenerate():
    # 3 contents: a resample drawing one content only (three times) is
    # degenerate. A direct loop over the documented draws counts them.
    refs = [f"r{i % 3}" for i in range(12)]
    rng = np.random.default_rng(11)
    scores, mos = noisy_pairs(rng, 12)
    report = significance.bootstrap({"s": scores}, mos, significance.content_groups(refs), resamples=400, seed=4,
                                    statistics=("srcc",))
    draw = np.random.default_rng(4)
    single = sum(len(set(draw.integers(0, 3, 3).tolist())) == 1 for _ in range(400))
    assert single > 0 and report["columns"]["s"]["srcc"]["degenerate"] == single


def clustered_residuals(rng, contents, per_content, shared=0.0):
    """Residuals of two equally good columns: a content effect plus pair noise
    for each (variance 1 + 1), the two columns' errors correlated by `shared`."""
    common = rng.standard_normal((2, contents * per_content))
    content = np.repeat(rng.standard_normal((2, contents)), per_content, axis=1)
    a = content[0] + common[0]
    b = content[1] + common[1]
    if shared:
        b = shared * a + math.sqrt(1 - shared**2) * b
    return a, b, np.repeat(np.arange(contents), per_content)


def test_variance_test_enumerates_every_sign_pattern():
    # 8 contents: the p-value is the share of the 256 sign patterns whose
    # flipped sum of per-content differences of squares is at least as far
    # from zero as the observed one (a direct loop over itertools.product).
    import itertools

    rng = np.random.default_rng(12)
    a, b, groups = clustered_residuals(rng, 8, 4)
    b = 1.4 * b
    d = [np.sum(a[groups == g] ** 2) - np.sum(b[groups == g] ** 2) for g in range(8)]
    count = sum(abs(np.dot(signs, d)) >= abs(sum(d)) - 1e-9 for signs in itertools.product((1, -1), repeat=8))
    result = significance.variance_test(a, b, groups)
    assert result["p_value"] == pytest.approx(count / 256, rel=1e-12)
    assert result["ratio"] == pytest.approx(np.var(a, ddof=1) / np.var(b, ddof=1), rel=1e-12)


@pytest.mark.parametrize("shared", [0.0, 0.8])
@pytest.mark.full
def test_equally_good_columns_with_clustered_residuals_are_rejected_about_5_percent(shared):
    # 800 simulated datasets of 20 contents x 5 pairs, residuals clustered by
    # content (independent, or strongly correlated errors): the classic
    # F-test rejects far more (or less) than 5%; the test over contents
    # rejects 5% within three standard errors (0.023).
    rng = np.random.default_rng(13)
    sims = 800
    ours = theirs = 0
    for sim in range(sims):
        a, b, groups = clustered_residuals(rng, 20, 5, shared)
        ours += significance.variance_test(a, b, groups, resamples=400, seed=sim)["p_value"] < 0.05
        theirs += significance.f_test(a, b)["p_value"] < 0.05
    assert abs(ours / sims - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / sims), ours / sims
    assert abs(theirs / sims - 0.05) > 3 * math.sqrt(0.05 * 0.95 / sims), theirs / sims  # why the F-test is not used


def test_holm_against_the_step_down_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 of m = 4: times 4, 3, 2, 1 is 0.02, 0.03,
    # 0.06, 0.04, then the running maximum: 0.02, 0.03, 0.06, 0.06.
    assert significance.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert significance.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.full
def test_five_equally_good_columns_give_a_spurious_entry_in_at_most_5_percent_of_tables():
    # 5 columns (10 pairs), each the opinion score plus noise of the same
    # size, one pair per content: with Holm's adjustment the chance of any
    # +-1 in a table is at most alpha (within three standard errors, 0.03);
    # unadjusted it is far higher.
    rng = np.random.default_rng(14)
    sims, names = 150, "abcde"
    anywhere = {"holm": {"srcc": 0, "variance": 0}, "none": {"srcc": 0, "variance": 0}}
    for sim in range(sims):
        mos = rng.standard_normal(60)
        noise = {name: rng.standard_normal(60) for name in names}
        columns = {name: mos + noise[name] for name in names}
        report = significance.bootstrap(columns, mos, np.arange(60), resamples=150, seed=sim, statistics=("srcc",))
        for correction in anywhere:
            table = significance.significance_table(report, noise, np.arange(60), correction=correction, seed=sim)
            for key in anywhere[correction]:
                anywhere[correction][key] += any(v != 0 for row in table[key] for v in row)
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)
    assert all(count / sims <= bound for count in anywhere["holm"].values()), anywhere
    assert all(count / sims > bound for count in anywhere["none"].values()), anywhere
