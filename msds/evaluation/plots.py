"""Figures for the command line: MOS against score for `msds eval --plot`, and
the contact sheet of `msds demo --save`.

matplotlib is optional (pip install "torch-msds[plot]"); figures are drawn on
a Figure with the Agg canvas, never through pyplot, so no window opens and
no global backend is changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from msds.evaluation.correlation import correlations, fit_mapping


class PlotError(RuntimeError):
    """A figure cannot be drawn (matplotlib is missing)."""


def require_matplotlib() -> None:
    """PlotError, with the extra to install, unless matplotlib imports; call before long work."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as err:
        raise PlotError('plots need matplotlib: pip install "torch-msds[plot]" (or pip install matplotlib)') from err


def new_figure(width: float, height: float) -> Any:
    """An empty matplotlib Figure (width x height inches), or PlotError without matplotlib."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _scatter_panel(axes: Any, scores: np.ndarray, mos: np.ndarray, name: str) -> None:
    """MOS against score, one point per pair, the fitted mapping, SRCC and PLCC in the title."""
    finite = np.isfinite(scores) & np.isfinite(mos)
    scores, mos = scores[finite], mos[finite]
    axes.scatter(scores, mos, s=10, alpha=0.6, edgecolors="none")
    if len(scores) >= 3:
        agreement = correlations(scores, mos)
        mapping, _ = fit_mapping(scores, mos)
        grid = np.linspace(scores.min(), scores.max(), 200)
        axes.plot(grid, mapping(grid), color="tab:red", linewidth=1.5, label=agreement["mapping"] if agreement["mapping"].startswith("logistic5") else "linear")
        axes.legend(loc="best", fontsize=8)
        axes.set_title(f"{name}: SRCC {agreement['srcc']:.4f}, PLCC {agreement['plcc']:.4f}", fontsize=10)
    else:
        axes.set_title(f"{name}: too few pairs for correlations", fontsize=10)
    axes.set_xlabel(f"{name} score")
    axes.set_ylabel("MOS")
    axes.grid(alpha=0.3)


def _claim_panel(axes: Any, analysis: dict) -> None:
    """Each column's |SRCC| with its interval; columns significantly better or
    worse than level 0 by the paired bootstrap are marked so."""
    columns = analysis["intervals"]["columns"]
    table = analysis["significance"]
    names = list(columns)
    against = table["columns"].index("level0") if "level0" in table["columns"] else None
    for x, name in enumerate(names):
        srcc = columns[name]["srcc"]
        value, low, high = (abs(srcc["value"]), *sorted((abs(srcc["low"]), abs(srcc["high"]))))
        if np.sign(srcc["low"]) != np.sign(srcc["high"]):  # the interval crosses zero
            low = 0.0
        mark = 0 if against is None or table["srcc"] is None else table["srcc"][table["columns"].index(name)][against]
        color = {1: "tab:green", -1: "tab:red", 0: "tab:blue"}[mark]
        axes.errorbar([x], [value], yerr=[[value - low], [high - value]], fmt="o", color=color, capsize=4)
        if mark:
            axes.annotate("better" if mark > 0 else "worse", (x, high), textcoords="offset points", xytext=(0, 4),
                          ha="center", fontsize=8, color=color)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=30, fontsize=8)
    level = analysis["intervals"]["level"]
    axes.set_ylabel(f"|SRCC| with {level:.0%} interval")
    axes.set_title("against level 0 (paired bootstrap, p < 0.05)" if against is not None
                   else "|SRCC| by column", fontsize=9)
    axes.grid(alpha=0.3)


def _significance_panel(axes: Any, analysis: dict) -> None:
    """The +1 / 0 / -1 matrix of the paired bootstrap on |SRCC| over every pair of columns."""
    table = analysis["significance"]
    names = table["columns"]
    if table["srcc"] is None:
        axes.text(0.5, 0.5, "no significance table:\n" + table["refused"].replace(" (", "\n("), ha="center",
                  va="center", fontsize=8, wrap=True)
        axes.set_axis_off()
        return
    matrix = np.array(table["srcc"], dtype=float)
    axes.imshow(matrix, cmap="RdYlGn", vmin=-1.5, vmax=1.5)
    for i in range(len(names)):
        for j in range(len(names)):
            value = int(matrix[i, j])
            axes.text(j, i, "" if i == j else f"{value:+d}" if value else "0", ha="center", va="center", fontsize=9)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=30, fontsize=8)
    axes.set_yticks(range(len(names)))
    axes.set_yticklabels(names, fontsize=8)
    adjusted = ", Holm-adjusted" if table["correction"] == "holm" else ""
    axes.set_title(f"row against column: +1 better, -1 worse\n(|SRCC|, alpha {table['alpha']}{adjusted})", fontsize=9)


def save_eval_plot(path: Path, rows: Sequence[dict], levels: int, analysis: Optional[dict] = None,
                   metric: str = "MSDS", note: str = "") -> Path:
    """MOS against the score (left, larger) and against each level's score,
    and with `analysis` (msds.evaluation.analysis.analyse) a panel of every column's
    SRCC with its interval, marking the differences from level 0 that are
    significant, and the significance table over every pair of columns.

    rows: the per-pair rows of `msds eval --out` (keys mos, score, level0, ...;
    levels 0 for DeepSSIM's, which have no level columns). metric names the
    score; note (the trunk, random or which weights) goes in the title.
    Pairs with a non-finite score or MOS are left out of their panel.
    """
    mos = np.array([float(row["mos"]) for row in rows])
    panels = [(metric, np.array([float(row["score"]) for row in rows]))]
    panels += [(f"level {level}", np.array([float(row[f"level{level}"]) for row in rows])) for level in range(levels)]
    columns = len(panels) if levels > 1 else 1
    extra = 2 if analysis is not None else 0
    figure = new_figure(4.2 * (columns + extra), 4.0)
    grid = figure.add_gridspec(1, columns + extra)
    for index, (name, scores) in enumerate(panels[:columns]):
        _scatter_panel(figure.add_subplot(grid[0, index]), scores, mos, name)
    if analysis is not None:
        _claim_panel(figure.add_subplot(grid[0, columns]), analysis)
        _significance_panel(figure.add_subplot(grid[0, columns + 1]), analysis)
    figure.suptitle(f"{len(rows)} pairs" + (f"; {note}" if note else ""), fontsize=9,
                    color="tab:red" if note.startswith("RANDOM") else "black")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def save_contact_sheet(path: Path, reference: torch.Tensor, labels: Sequence[Tuple[str, str]],
                       distorted: torch.Tensor, table: torch.Tensor, weights_label: str) -> Path:
    """The reference and every distortion as thumbnails, captioned with their scores.

    reference (3, H, W) and distorted (N, 3, H, W) in [0, 1]; table (N, L + 1)
    holds each distortion's level scores then its fused score. One row per
    kind of distortion, mildest first, after the reference.
    """
    kinds = list(dict.fromkeys(name for name, _ in labels))
    per_kind = len(labels) // len(kinds)
    figure = new_figure(2.3 * (per_kind + 1), 2.55 * len(kinds))
    grid = figure.add_gridspec(len(kinds), per_kind + 1)

    def show(axes: Any, image: torch.Tensor, caption: str) -> None:
        axes.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="lanczos")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_xlabel(caption, fontsize=7.5)

    for row, kind in enumerate(kinds):
        show(figure.add_subplot(grid[row, 0]), reference, "reference")
        for column, index in enumerate(i for i, (name, _) in enumerate(labels) if name == kind):
            scores = table[index].tolist()
            levels = " ".join(f"L{level} {value:.3f}" for level, value in enumerate(scores[:-1]))
            caption = f"{kind} {labels[index][1]}\nMSDS {scores[-1]:.4f}\n{levels}"
            show(figure.add_subplot(grid[row, column + 1]), distorted[index], caption)
    figure.suptitle(f"msds demo: scores against the reference (trunk: {weights_label})", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
