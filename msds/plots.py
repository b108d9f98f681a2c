"""Figures for the command line: MOS against score for `msds eval --plot`, and
the contact sheet of `msds demo --save`.

matplotlib is optional (pip install "torch-msds[plot]"); figures are drawn on
a Figure with the Agg canvas, never through pyplot, so no window opens and
no global backend is changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Tuple

import numpy as np
import torch

from msds.correlation import correlations, fit_mapping


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


def save_eval_plot(path: Path, rows: Sequence[dict], levels: int) -> Path:
    """MOS against the fused score (left, larger) and against each level's score.

    rows: the per-pair rows of `msds eval --out` (keys mos, score, level0, ...).
    """
    mos = np.array([float(row["mos"]) for row in rows])
    panels = [("MSDS", np.array([float(row["score"]) for row in rows]))]
    panels += [(f"level {level}", np.array([float(row[f"level{level}"]) for row in rows])) for level in range(levels)]
    columns = len(panels) if levels > 1 else 1
    figure = new_figure(4.2 * columns, 4.0)
    grid = figure.add_gridspec(1, columns)
    for index, (name, scores) in enumerate(panels[:columns]):
        _scatter_panel(figure.add_subplot(grid[0, index]), scores, mos, name)
    figure.suptitle(f"{len(rows)} pairs", fontsize=9)
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
