"""How sure a correlation with opinion scores is, and whether two score
columns differ: bootstrap intervals over reference contents, paired
comparisons, a test of residual variances that respects contents, and the
residual F-test of the LIVE study (Sheikh, Sabir and Bovik 2006), which
assumes independent pairs.

Pairs that share a reference are not independent (one content, several
distortions), so every resample draws reference contents with replacement
and takes all the pairs of each drawn content. All columns are computed on
the same resamples, so differences between two columns are paired. The
resampling protocol is fixed (see resample_indices): the same seed gives the
same numbers. Below MIN_CONTENTS reference contents no p-value is given.
Non-finite values (a NaN or inf in a score column) leave their pair out of
that column's statistics.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from msds.evaluation.correlation import correlations, fit_mapping

STATISTICS = ("srcc", "krcc", "plcc", "rmse")
COMPARED = ("srcc", "plcc")  # the statistics paired comparisons and the significance table use

# The fewest reference contents for which p-values (and the significance
# table) are given. The residual-variance test flips the signs of per-content
# differences: with G contents its smallest two-sided p-value is 2 / 2^G,
# under 0.05 only from G = 6. The content bootstrap's own false-positive rate
# with few contents is measured in docs/evaluation.md.
MIN_CONTENTS = 6

# Up to this many contents the sign-flip test enumerates every sign pattern
# (exact); above it, it draws `resamples` patterns at random.
EXACT_FLIPS = 12

CORRECTIONS = ("holm", "none")


def too_few_contents(contents: int) -> Optional[str]:
    """Why p-values are refused for `contents` reference contents, or None."""
    if contents >= MIN_CONTENTS:
        return None
    return (f"p-values need at least {MIN_CONTENTS} reference contents (a test over contents cannot reach "
            f"p < 0.05 with fewer), got {contents}")


def content_groups(refs: Sequence[str]) -> np.ndarray:
    """One integer per pair naming its reference content, in order of first appearance."""
    ids: Dict[str, int] = {}
    return np.array([ids.setdefault(ref, len(ids)) for ref in refs], dtype=np.int64)


def resample_contents(groups: np.ndarray, resamples: int, seed: int) -> List[np.ndarray]:
    """The contents each resample draws: rng = numpy.random.default_rng(seed),
    then rng.integers(0, G, G) among the G contents, once per resample."""
    count = int(np.asarray(groups).max()) + 1
    rng = np.random.default_rng(seed)
    return [rng.integers(0, count, count) for _ in range(resamples)]


def resample_indices(groups: np.ndarray, resamples: int, seed: int) -> List[np.ndarray]:
    """Pair indices of each resample.

    Protocol: the contents of resample_contents, each drawn content's pairs
    concatenated (each content's pairs in their original order).
    """
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
    return [np.concatenate([members[g] for g in drawn]) for drawn in resample_contents(groups, resamples, seed)]


def _statistics(scores: np.ndarray, mos: np.ndarray, wanted: Sequence[str],
                start: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """The wanted statistics of one sample (NaN where a resample is degenerate);
    the logistic of PLCC and RMSE is fitted from `start`."""
    if len(np.unique(scores)) < 2 or len(np.unique(mos)) < 2:
        return {name: float("nan") for name in wanted}
    if set(wanted) <= {"srcc", "krcc"}:  # no mapping needed: skip the logistic fit
        rank_correlations = {"srcc": _spearman, "krcc": lambda a, b: stats.kendalltau(a, b)[0]}
        return {name: float(rank_correlations[name](scores, mos)) for name in wanted}
    report = correlations(scores, mos, start)
    return {name: float(report[name]) for name in wanted}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's correlation by its definition, Pearson's of the average ranks
    (scipy's spearmanr computes the same with more overhead per call)."""
    return _pearson_of_ranks(stats.rankdata(a), stats.rankdata(b))


def _spearman_draws(scores: np.ndarray, mos: np.ndarray, samples: List[np.ndarray]) -> np.ndarray:
    """_statistics's SRCC of each sample (pair indices; None for a degenerate
    resample), with the samples of one length ranked in one call: ranking
    dominates, and its per-call overhead most of all."""
    draws = np.full(len(samples), np.nan)
    by_length: Dict[int, List[int]] = {}
    for r, picked in enumerate(samples):
        if picked is not None:
            by_length.setdefault(len(picked), []).append(r)
    for rows in by_length.values():
        picked = np.stack([samples[r] for r in rows])
        ranks_a, ranks_b = stats.rankdata(scores[picked], axis=1), stats.rankdata(mos[picked], axis=1)
        for r, a, b in zip(rows, ranks_a, ranks_b):
            if a.min() < a.max() and b.min() < b.max():  # else constant: NaN, as in _statistics
                draws[r] = _pearson_of_ranks(a, b)
    return draws


def _pearson_of_ranks(ranks_a: np.ndarray, ranks_b: np.ndarray) -> float:
    ranks_a -= ranks_a.mean()
    ranks_b -= ranks_b.mean()
    return float(ranks_a @ ranks_b / np.sqrt((ranks_a @ ranks_a) * (ranks_b @ ranks_b)))


def bootstrap(columns: Mapping[str, Sequence[float]], mos: Sequence[float], groups: Sequence[int],
              resamples: int = 1000, seed: int = 0, level: float = 0.95,
              statistics: Sequence[str] = STATISTICS) -> dict:
    """Each column's statistics with a percentile interval from resampling contents.

    Returns {"resamples", "seed", "level", "contents", "columns": {name: {stat:
    {"value", "low", "high", "degenerate"}}}, "draws": {name: {stat: array
    of resample values}}, "left_out": {name: pairs with a non-finite value}}.
    Resamples too degenerate for a statistic (drawing a single content, or
    constant scores) are left out of its interval; "degenerate" counts them.
    A pair whose score or MOS is not finite is left out of that column.
    """
    if not 0 < level < 1:
        raise ValueError(f"level: expected a confidence level between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples: expected at least 1, got {resamples}")
    mos = np.asarray(mos, dtype=np.float64)
    groups = np.asarray(groups)
    indices = resample_indices(groups, resamples, seed)
    # A resample drawing one content only is that content again and again:
    # it says nothing about other contents, so it counts as degenerate.
    single = [len(np.unique(drawn)) < 2 for drawn in resample_contents(groups, resamples, seed)]
    tail = 100 * (1 - level) / 2
    report: dict = {"resamples": resamples, "seed": seed, "level": level,
                    "contents": int(groups.max()) + 1, "columns": {}, "draws": {}, "left_out": {}}
    for name, values in columns.items():
        scores = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(scores) & np.isfinite(mos)
        report["left_out"][name] = int(np.sum(~finite))
        nothing = {stat: float("nan") for stat in statistics}
        full = _statistics(scores[finite], mos[finite], statistics) if finite.sum() >= 3 else nothing
        # Each resample's logistic starts from the full sample's fit: close to
        # its own, so it converges in a few steps.
        rank_only = set(statistics) <= {"srcc", "krcc"}  # no logistic fit needed
        needs_fit = finite.sum() >= 3 and not rank_only
        start = getattr(fit_mapping(scores[finite], mos[finite])[0], "params", None) if needs_fit else None
        samples = [None if single[r] or len(picked) < 3 else picked
                   for r, picked in enumerate(picked[finite[picked]] for picked in indices)]
        draws = {stat: np.empty(resamples) for stat in statistics}
        together = rank_only and "srcc" in statistics  # SRCC's draws made all at once
        if together:
            draws["srcc"] = _spearman_draws(scores, mos, samples)
        rest = [stat for stat in statistics if not (together and stat == "srcc")]
        for r, picked in enumerate(samples if rest else ()):
            drawn = nothing if picked is None else _statistics(scores[picked], mos[picked], rest, start)
            for stat in rest:
                draws[stat][r] = drawn[stat]
        entry = {}
        for stat in statistics:
            finite = draws[stat][np.isfinite(draws[stat])]
            low, high = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (float("nan"),) * 2
            entry[stat] = {"value": full[stat], "low": float(low), "high": float(high),
                           "degenerate": int(resamples - len(finite))}
        report["columns"][name] = entry
        report["draws"][name] = draws
    return report


def paired_difference(report: dict, a: str, b: str, stat: str = "srcc") -> dict:
    """|stat of a| - |stat of b| with its paired bootstrap interval and two-sided p-value.

    Magnitudes are compared: a correlation's sign only says which way its
    column runs (a distance such as LPIPS correlates negatively with MOS).
    The p-value is that of the centred bootstrap test: the share of resample
    differences at least as far from the observed difference as the observed
    difference is from zero, (1 + count) / (1 + resamples); None, with the
    reason in "refused", below MIN_CONTENTS contents or without finite draws.
    """
    value = abs(report["columns"][a][stat]["value"]) - abs(report["columns"][b][stat]["value"])
    draws = np.abs(report["draws"][a][stat]) - np.abs(report["draws"][b][stat])
    draws = draws[np.isfinite(draws)]
    result = {"a": a, "b": b, "statistic": stat, "difference": float(value), "low": float("nan"),
              "high": float("nan"), "p_value": None, "refused": too_few_contents(report["contents"])}
    if not len(draws) or not np.isfinite(value):
        result["refused"] = result["refused"] or "no finite resample of both columns"
        return result
    tail = 100 * (1 - report["level"]) / 2
    result["low"], result["high"] = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    if result["refused"] is None:
        extreme = int(np.sum(np.abs(draws - value) >= abs(value)))
        result["p_value"] = float((1 + extreme) / (1 + len(draws)))
    return result


def residuals(scores: Sequence[float], mos: Sequence[float]) -> np.ndarray:
    """MOS minus the scores' monotonic logistic mapping (msds.evaluation.correlation.fit_mapping),
    fitted on the pairs where both are finite; NaN at the others."""
    scores = np.asarray(scores, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    finite = np.isfinite(scores) & np.isfinite(mos)
    result = np.full(len(scores), np.nan)
    if finite.sum() >= 3:
        mapping, _ = fit_mapping(scores[finite], mos[finite])
        result[finite] = mos[finite] - mapping(scores[finite])
    return result


def variance_test(residuals_a: np.ndarray, residuals_b: np.ndarray, groups: Sequence[int],
                  resamples: int = 1000, seed: int = 0) -> dict:
    """Whether two columns' residual variances differ, respecting reference contents.

    Each content c gives d_c, the sum over its pairs of a's squared residual
    minus b's (the logistic's intercept makes residuals average zero, so the
    squares measure the variance). If the two columns are equally good, the
    residuals of a and b are exchangeable within each content and every d_c
    is as likely to be positive as negative, so the test flips the sign of
    each content's d_c at random and compares |sum d_c| with the flipped
    sums: all 2^G sign patterns up to EXACT_FLIPS contents (an exact p-value),
    otherwise `resamples` patterns from numpy.random.default_rng(seed), p =
    (1 + count) / (1 + resamples). Pairs where either residual is not finite
    are left out. "ratio" is var(a) / var(b): below 1, a predicts the MOS
    better. p_value is None (with "refused") below MIN_CONTENTS contents.
    """
    a, b = np.asarray(residuals_a, dtype=np.float64), np.asarray(residuals_b, dtype=np.float64)
    kept = np.isfinite(a) & np.isfinite(b)
    groups = np.asarray(groups)[kept]
    a, b = a[kept], b[kept]
    contents = np.unique(groups)
    differences = np.array([np.sum(a[groups == g] ** 2 - b[groups == g] ** 2) for g in contents])
    var_a, var_b = (float(np.var(r, ddof=1)) if len(r) > 1 else float("nan") for r in (a, b))
    result = {"ratio": var_a / var_b if var_b > 0 else float("nan"), "variance_a": var_a, "variance_b": var_b,
              "pairs": int(len(a)), "contents": int(len(contents)), "p_value": None,
              "refused": too_few_contents(len(contents)), "method": "sign flips of per-content differences"}
    if result["refused"] is not None:
        return result
    observed = abs(differences.sum())
    tolerance = 1e-12 * np.abs(differences).sum()  # ties within rounding count as ties
    if len(contents) <= EXACT_FLIPS:
        patterns = 1 - 2 * ((np.arange(2 ** len(contents))[:, None] >> np.arange(len(contents))) & 1)
        result["p_value"] = float(np.mean(np.abs(patterns @ differences) >= observed - tolerance))
        result["method"] += f" (all {2 ** len(contents)} sign patterns)"
    else:
        signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=(resamples, len(contents)))
        extreme = int(np.sum(np.abs(signs @ differences) >= observed - tolerance))
        result["p_value"] = float((1 + extreme) / (1 + resamples))
        result["method"] += f" ({resamples} random sign patterns, seed {seed})"
    return result


def gaussianity(values: np.ndarray) -> dict:
    """The residuals' kurtosis (Pearson's, 3 for a Gaussian) and the LIVE study's
    criterion (Gaussian if between 2 and 4), with D'Agostino and Pearson's
    normality test's p-value where there are enough values (20)."""
    kurtosis = float(stats.kurtosis(values, fisher=False))
    normal_p: Optional[float] = float(stats.normaltest(values)[1]) if len(values) >= 20 else None
    return {"kurtosis": kurtosis, "gaussian": bool(2 <= kurtosis <= 4), "normaltest_p": normal_p}


def f_test(residuals_a: np.ndarray, residuals_b: np.ndarray) -> dict:
    """The variance ratio of two columns' residuals after their own logistic mapping.

    F = var(a) / var(b) (sample variances) on (n_a - 1, n_b - 1) degrees of
    freedom; a smaller residual variance is the better prediction of MOS.
    The p-value is two-sided; the test assumes independent pairs (pairs that
    share a reference content are not: see variance_test) and Gaussian
    residuals, which `gaussianity` checks for each. Non-finite residuals are
    left out.
    """
    residuals_a = np.asarray(residuals_a, dtype=np.float64)
    residuals_b = np.asarray(residuals_b, dtype=np.float64)
    residuals_a, residuals_b = residuals_a[np.isfinite(residuals_a)], residuals_b[np.isfinite(residuals_b)]
    var_a, var_b = np.var(residuals_a, ddof=1), np.var(residuals_b, ddof=1)
    df = (len(residuals_a) - 1, len(residuals_b) - 1)
    ratio = float(var_a / var_b)
    p = 2 * min(stats.f.cdf(ratio, *df), stats.f.sf(ratio, *df))
    return {"f": ratio, "df": list(df), "p_value": float(min(1.0, p)), "assumes": "independent pairs",
            "variance_a": float(var_a), "variance_b": float(var_b), "gaussianity_a": gaussianity(residuals_a),
            "gaussianity_b": gaussianity(residuals_b)}


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of a family of p-values: the i-th smallest
    of m becomes the running maximum of (m - i + 1) p, capped at 1. Rejecting
    where the adjusted value is below alpha keeps the chance of any false
    rejection in the family at most alpha."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(order))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


TABLES = {"srcc": "paired bootstrap on |SRCC| over contents",
          "variance": "residual variances, sign flips over contents",
          "f_test": "residual F-test (assumes independent pairs)"}


def significance_table(report: dict, residuals_by_column: Mapping[str, np.ndarray], groups: Sequence[int],
                       alpha: float = 0.05, correction: str = "holm", seed: int = 0) -> dict:
    """+1 / 0 / -1 matrices over every pair of columns: +1 where the row's column
    is significantly better than the column's at level alpha, -1 where it is
    worse, by each test of TABLES: "srcc" the paired bootstrap on |SRCC|,
    "variance" variance_test (the smaller residual variance is better),
    "f_test" the classic F-test. Each test's p-values over the k (k - 1) / 2
    pairs of columns are one family, adjusted by Holm's method unless
    correction is "none"; "p_values" holds them unadjusted, "adjusted" as
    used. Below MIN_CONTENTS contents the matrices are None and "refused"
    says why."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction: expected one of {', '.join(CORRECTIONS)}, got {correction!r}")
    names = list(report["columns"])
    tables: dict = {"columns": names, "alpha": alpha, "correction": correction, "contents": report["contents"],
                    "tests": dict(TABLES), "refused": too_few_contents(report["contents"]),
                    "p_values": {}, "adjusted": {}}
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for key in TABLES:
        tables[key] = None
        if tables["refused"] is not None:
            continue
        p_values, better = [], []
        for i, j in pairs:
            a, b = names[i], names[j]
            if key == "srcc":
                test = paired_difference(report, a, b, "srcc")
                p_values.append(1.0 if test["p_value"] is None else test["p_value"])
                better.append(np.sign(test["difference"]))
            else:
                test = (variance_test(residuals_by_column[a], residuals_by_column[b], groups, report["resamples"],
                                      seed) if key == "variance" else
                        f_test(residuals_by_column[a], residuals_by_column[b]))
                ratio = test["ratio"] if key == "variance" else test["f"]
                p_values.append(1.0 if test["p_value"] is None else test["p_value"])
                better.append(1.0 if ratio < 1 else -1.0)
        adjusted = holm(p_values) if correction == "holm" else list(p_values)
        matrix = np.zeros((len(names), len(names)), dtype=int)
        raw = np.full((len(names), len(names)), np.nan)
        used = np.full((len(names), len(names)), np.nan)
        for (i, j), p, q, sign in zip(pairs, p_values, adjusted, better):
            matrix[i, j] = int(sign) if q < alpha else 0
            matrix[j, i] = -matrix[i, j]
            raw[i, j] = raw[j, i] = p
            used[i, j] = used[j, i] = q
        tables[key] = matrix.tolist()
        tables["p_values"][key] = [[None if np.isnan(v) else float(v) for v in row] for row in raw]
        tables["adjusted"][key] = [[None if np.isnan(v) else float(v) for v in row] for row in used]
    return tables


def comparison(report: dict, residuals_by_column: Mapping[str, np.ndarray], a: str, b: str,
               groups: Sequence[int], seed: int = 0) -> dict:
    """Everything said about column a against column b: the paired SRCC and PLCC
    differences, the residual-variance test over contents and the classic
    residual F-test."""
    result = {"a": a, "b": b}
    for stat in COMPARED:
        if stat in report["columns"][a]:
            result[stat] = paired_difference(report, a, b, stat)
    result["variance"] = variance_test(residuals_by_column[a], residuals_by_column[b], groups,
                                       report["resamples"], seed)
    result["f_test"] = f_test(residuals_by_column[a], residuals_by_column[b])
    return result


def without_draws(report: dict) -> dict:
    """The report as JSON can hold it (the resample values left out)."""
    return {key: value for key, value in report.items() if key != "draws"}
