"""Bootstrap intervals, paired comparisons and the residual F-test against
independent computations: scipy's bootstrap, a direct loop, a closed form,
and simulations with a known answer."""

import math

import numpy as np
import pytest
from scipy import stats

from msds import significance
from msds.correlation import correlations, fit_mapping


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
