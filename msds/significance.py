"""How sure a correlation with opinion scores is, and whether two score
columns differ: bootstrap intervals over reference contents, paired
comparisons, and the residual F-test of the LIVE study (Sheikh, Sabir and
Bovik 2006).

Pairs that share a reference are not independent (one content, several
distortions), so every resample draws reference contents with replacement
and takes all the pairs of each drawn content. All columns are computed on
the same resamples, so differences between two columns are paired. The
resampling protocol is fixed (see resample_indices): the same seed gives the
same numbers.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from msds.correlation import correlations, fit_mapping

STATISTICS = ("srcc", "krcc", "plcc", "rmse")
COMPARED = ("srcc", "plcc")  # the statistics paired comparisons and the significance table use


def content_groups(refs: Sequence[str]) -> np.ndarray:
    """One integer per pair naming its reference content, in order of first appearance."""
    ids: Dict[str, int] = {}
    return np.array([ids.setdefault(ref, len(ids)) for ref in refs], dtype=np.int64)


def resample_indices(groups: np.ndarray, resamples: int, seed: int) -> List[np.ndarray]:
    """Pair indices of each resample.

    Protocol: rng = numpy.random.default_rng(seed); each resample draws
    rng.integers(0, G, G) among the G contents and concatenates the drawn
    contents' pairs (each content's pairs in their original order).
    """
    groups = np.asarray(groups)
    count = int(groups.max()) + 1
    members = [np.flatnonzero(groups == g) for g in range(count)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in rng.integers(0, count, count)]) for _ in range(resamples)]


def _statistics(scores: np.ndarray, mos: np.ndarray, wanted: Sequence[str],
                start: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """The wanted statistics of one sample (NaN where a resample is degenerate);
    the logistic of PLCC and RMSE is fitted from `start`."""
    if len(np.unique(scores)) < 2 or len(np.unique(mos)) < 2:
        return {name: float("nan") for name in wanted}
    if set(wanted) <= {"srcc", "krcc"}:  # no mapping needed: skip the logistic fit
        values = {"srcc": stats.spearmanr(scores, mos)[0], "krcc": stats.kendalltau(scores, mos)[0]}
        return {name: float(values[name]) for name in wanted}
    report = correlations(scores, mos, start)
    return {name: float(report[name]) for name in wanted}


def bootstrap(columns: Mapping[str, Sequence[float]], mos: Sequence[float], groups: Sequence[int],
              resamples: int = 1000, seed: int = 0, level: float = 0.95,
              statistics: Sequence[str] = STATISTICS) -> dict:
    """Each column's statistics with a percentile interval from resampling contents.

    Returns {"resamples", "seed", "level", "contents", "columns": {name: {stat:
    {"value", "low", "high"}}}, "draws": {name: {stat: array of resample
    values}}}. Resamples too degenerate for a statistic (one content, or
    constant scores) are left out of its interval; "degenerate" counts them.
    """
    if not 0 < level < 1:
        raise ValueError(f"level: expected a confidence level between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples: expected at least 1, got {resamples}")
    mos = np.asarray(mos, dtype=np.float64)
    groups = np.asarray(groups)
    indices = resample_indices(groups, resamples, seed)
    tail = 100 * (1 - level) / 2
    report: dict = {"resamples": resamples, "seed": seed, "level": level,
                    "contents": int(groups.max()) + 1, "columns": {}, "draws": {}}
    for name, values in columns.items():
        scores = np.asarray(values, dtype=np.float64)
        full = _statistics(scores, mos, statistics)
        # Each resample's logistic starts from the full sample's fit: close to
        # its own, so it converges in a few steps.
        start = getattr(fit_mapping(scores, mos)[0], "params", None)
        draws = {stat: np.empty(resamples) for stat in statistics}
        for r, picked in enumerate(indices):
            for stat, value in _statistics(scores[picked], mos[picked], statistics, start).items():
                draws[stat][r] = value
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
    difference is from zero, (1 + count) / (1 + resamples).
    """
    value = abs(report["columns"][a][stat]["value"]) - abs(report["columns"][b][stat]["value"])
    draws = np.abs(report["draws"][a][stat]) - np.abs(report["draws"][b][stat])
    draws = draws[np.isfinite(draws)]
    tail = 100 * (1 - report["level"]) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    extreme = int(np.sum(np.abs(draws - value) >= abs(value)))
    return {"a": a, "b": b, "statistic": stat, "difference": float(value), "low": float(low),
            "high": float(high), "p_value": float((1 + extreme) / (1 + len(draws)))}


def residuals(scores: Sequence[float], mos: Sequence[float]) -> np.ndarray:
    """MOS minus the scores' monotonic logistic mapping (msds.correlation.fit_mapping)."""
    scores = np.asarray(scores, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    mapping, _ = fit_mapping(scores, mos)
    return mos - mapping(scores)


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
    The p-value is two-sided; the test assumes Gaussian residuals, which
    `gaussianity` checks for each.
    """
    var_a, var_b = np.var(residuals_a, ddof=1), np.var(residuals_b, ddof=1)
    df = (len(residuals_a) - 1, len(residuals_b) - 1)
    ratio = float(var_a / var_b)
    p = 2 * min(stats.f.cdf(ratio, *df), stats.f.sf(ratio, *df))
    return {"f": ratio, "df": list(df), "p_value": float(min(1.0, p)), "variance_a": float(var_a),
            "variance_b": float(var_b), "gaussianity_a": gaussianity(residuals_a),
            "gaussianity_b": gaussianity(residuals_b)}


def significance_table(report: dict, residuals_by_column: Mapping[str, np.ndarray], alpha: float = 0.05) -> dict:
    """+1 / 0 / -1 matrices over every pair of columns: +1 where the row's column
    is significantly better than the column's at level alpha, -1 where it is
    worse. "srcc": the paired bootstrap test on |SRCC|; "f_test": the
    residual F-test (the smaller residual variance is better)."""
    names = list(report["columns"])
    tables = {"columns": names, "alpha": alpha, "srcc": [], "f_test": []}
    for a in names:
        srcc_row, f_row = [], []
        for b in names:
            if a == b:
                srcc_row.append(0)
                f_row.append(0)
                continue
            diff = paired_difference(report, a, b, "srcc")
            srcc_row.append(int(np.sign(diff["difference"])) if diff["p_value"] < alpha else 0)
            test = f_test(residuals_by_column[a], residuals_by_column[b])
            f_row.append((1 if test["f"] < 1 else -1) if test["p_value"] < alpha else 0)
        tables["srcc"].append(srcc_row)
        tables["f_test"].append(f_row)
    return tables


def comparison(report: dict, residuals_by_column: Mapping[str, np.ndarray], a: str, b: str) -> dict:
    """Everything said about column a against column b: the paired SRCC and PLCC
    differences and the residual F-test."""
    result = {"a": a, "b": b}
    for stat in COMPARED:
        if stat in report["columns"][a]:
            result[stat] = paired_difference(report, a, b, stat)
    result["f_test"] = f_test(residuals_by_column[a], residuals_by_column[b])
    return result


def without_draws(report: dict) -> dict:
    """The report as JSON can hold it (the resample values left out)."""
    return {key: value for key, value in report.items() if key != "draws"}
