"""What `msds eval` reports from a results file: every score column's
correlations with the MOS with bootstrap intervals over reference contents,
paired comparisons of columns, and the significance table.

A results file has the columns ref, dist, mos, then score columns: msds
writes score, level0, level1, ...; a user may add others (LPIPS, PSNR, ...)
to the same file, and they are analysed alike. A cell that is not finite
(nan, inf) leaves its pair out of that column, and the count is reported.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from msds.evaluation import significance
from msds.evaluation.correlation import correlations
from msds.evaluation.datasets import DatasetError

KEYS = ("ref", "dist", "mos")
DEFAULT_RESAMPLES = 1000


def read_results(path: Path) -> List[dict]:
    """The rows of a results CSV (ref, dist, mos, then score columns)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            fields = reader.fieldnames or []
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    missing = [key for key in KEYS if key not in fields]
    if missing:
        raise DatasetError(f"{path}: expected columns {', '.join(KEYS)}; missing {', '.join(missing)}")
    return rows


def score_columns(rows: Sequence[dict]) -> Dict[str, np.ndarray]:
    """Every column but ref, dist and mos whose cells are all numbers, in file order."""
    columns: Dict[str, np.ndarray] = {}
    for name in rows[0] if rows else []:
        if name in KEYS or name is None:
            continue
        try:
            columns[name] = np.array([float(row[name]) for row in rows])
        except (TypeError, ValueError):
            continue  # a text column (a distortion type, say) is not a score
    return columns


def default_comparisons(columns: Sequence[str]) -> List[Tuple[str, str]]:
    """The fused MSDS score against level 0 (single-scale DeepSSIM), where both are there."""
    return [("score", "level0")] if "score" in columns and "level0" in columns else []


def analyse(rows: Sequence[dict], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
            compare: Optional[Sequence[Tuple[str, str]]] = None, level: float = 0.95, alpha: float = 0.05,
            correction: str = "holm") -> dict:
    """Intervals for every score column, the comparisons asked for (by
    default score against level0), and the significance table over every pair
    of columns (p-values Holm-adjusted unless correction is "none"). Rows
    sharing a ref are one content for the resampling."""
    columns = score_columns(rows)
    if not columns:
        raise DatasetError("expected at least one numeric score column besides ref, dist, mos")
    compare = list(default_comparisons(columns) if compare is None else compare)
    for a, b in compare:
        for name in (a, b):
            if name not in columns:
                raise DatasetError(f"--compare: no score column {name!r}; the columns are {', '.join(columns)}")
    mos = np.array([float(row["mos"]) for row in rows])
    groups = significance.content_groups([row["ref"] for row in rows])
    report = significance.bootstrap(columns, mos, groups, resamples, seed, level)
    residuals = {name: significance.residuals(values, mos) for name, values in columns.items()}
    mappings = {}
    for name, values in columns.items():
        finite = np.isfinite(values) & np.isfinite(mos)
        mappings[name] = correlations(values[finite], mos[finite])["mapping"] if finite.sum() >= 3 else "none"
    return {
        "pairs": len(rows),
        "left_out": report["left_out"],
        "intervals": significance.without_draws(report),
        "mappings": mappings,
        "comparisons": [significance.comparison(report, residuals, a, b, groups, seed) for a, b in compare],
        "significance": significance.significance_table(report, residuals, groups, alpha, correction, seed),
    }


def _p(value: Optional[float]) -> str:
    return "refused" if value is None else f"{value:.4f}"


def format_analysis(analysis: dict) -> str:
    """The analysis as text: a table of intervals, the comparisons, the significance tables."""
    intervals = analysis["intervals"]
    lines = [f"{intervals['level']:.0%} intervals from {intervals['resamples']} resamples of "
             f"{intervals['contents']} reference contents (seed {intervals['seed']}); PLCC and RMSE after "
             "each column's monotonic logistic mapping"]
    for name, count in analysis["left_out"].items():
        if count:
            lines.append(f"   {name}: {count} of {analysis['pairs']} pairs left out (score or MOS not finite)")
    header = f"   {'column':12s}" + "".join(f"{name.upper():>26s}" for name in significance.STATISTICS)
    lines.append(header)
    for name, stats in intervals["columns"].items():
        cells = "".join(f"{s['value']:>9.4f} [{s['low']:7.4f}, {s['high']:7.4f}]" for s in stats.values())
        lines.append(f"   {name:12s}{cells}")
    for item in analysis["comparisons"]:
        lines.append(f"{item['a']} against {item['b']}:")
        for stat in significance.COMPARED:
            if stat in item:
                d = item[stat]
                lines.append(f"   |{stat.upper()}| difference {d['difference']:+.4f} [{d['low']:+.4f}, "
                             f"{d['high']:+.4f}], p = {_p(d['p_value'])}")
        v = item["variance"]
        lines.append(f"   residual variance ratio {v['ratio']:.4f} over {v['contents']} contents, "
                     f"p = {_p(v['p_value'])} ({v['method']})")
        f = item["f_test"]
        gaussian = [f["gaussianity_a"], f["gaussianity_b"]]
        lines.append(f"   residual F-test (assumes independent pairs): F = {f['f']:.4f} on ({f['df'][0]}, "
                     f"{f['df'][1]}) degrees of freedom, p = {f['p_value']:.4f}; residual kurtosis "
                     f"{gaussian[0]['kurtosis']:.2f} and {gaussian[1]['kurtosis']:.2f} ("
                     + ("both Gaussian by the 2-4 rule" if all(g["gaussian"] for g in gaussian)
                        else "not Gaussian by the 2-4 rule: read the F-test with care") + ")")
        refused = next((d["refused"] for d in (item.get("srcc", {}), v) if d.get("refused")), None)
        if refused:
            lines.append(f"   no p-values: {refused}")
    table = analysis["significance"]
    names = table["columns"]
    if table["refused"]:
        lines.append(f"significance table refused: {table['refused']}")
        return "\n".join(lines)
    correction = "Holm-adjusted" if table["correction"] == "holm" else "unadjusted"
    for key, title in table["tests"].items():
        lines.append(f"significance ({title}, alpha {table['alpha']}, {correction} over the "
                     f"{len(names) * (len(names) - 1) // 2} pairs of columns): +1 row better, -1 row worse, "
                     "0 no difference")
        lines.append("   " + " " * 12 + "".join(f"{name:>10s}" for name in names))
        for name, row in zip(names, table[key]):
            lines.append(f"   {name:12s}" + "".join(f"{value:>+10d}" if value else f"{0:>10d}" for value in row))
    return "\n".join(lines)
