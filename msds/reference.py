"""The reference head: DeepSSIM's Gram-tile statistic in plain PyTorch.

Readable and exact to the published definition: unnormalised Gram matrices,
non-overlapping 4x4 tiles, centred population statistics, one score per tile,
mean over tiles. float64 inputs are computed in float64; every other dtype in
float32. This is the CPU path and the oracle the Triton kernels are tested
against.
"""

from __future__ import annotations

from typing import Sequence

import torch

TILE = 4


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics run in float64 for float64 inputs and in float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Gram matrices F F^T of feature maps (B, C, h, w) -> (B, C, C).

    With normalize=True the Gram is divided by C * h * w (DeepSSIM-Lite).
    """
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1).to(compute_dtype(features.dtype))
    product = flat @ flat.transpose(1, 2)
    if normalize:
        product = product / (channels * flat.shape[-1])
    return product


def group_scores(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """SSIM-like score of paired groups of values along the last dimension.

    (2 cov + eps) / (var_a + var_b + eps), population statistics of centred
    values (never E[x^2] - E[x]^2: Gram entries are large and positive).
    """
    da = a - a.mean(-1, keepdim=True)
    db = b - b.mean(-1, keepdim=True)
    var_a = (da * da).mean(-1)
    var_b = (db * db).mean(-1)
    cov = (da * db).mean(-1)
    return (2 * cov + eps) / (var_a + var_b + eps)


def upper_tiles(g: torch.Tensor) -> torch.Tensor:
    """(B, C, C) -> (B, T, 16): the entries of each 4x4 tile (i, j) with i <= j.

    T = n (n + 1) / 2 for n = C/4. The lower tiles are not needed: tile (j, i)
    of a symmetric Gram matrix is the transpose of tile (i, j), and a tile's
    mean, variance and covariance do not change under transposition.
    """
    batch, channels = g.shape[:2]
    n = channels // TILE
    rows, cols = torch.triu_indices(n, n, device=g.device)
    tiles = g.view(batch, n, TILE, n, TILE).transpose(2, 3)  # (B, n, n, 4, 4), a view
    return tiles[:, rows, cols].reshape(batch, -1, TILE * TILE)


def level_score(fx: torch.Tensor, fy: torch.Tensor, eps: float) -> torch.Tensor:
    """DeepSSIM head for one level: mean tile score, (B, C, h, w) pair -> (B,).

    The two maps may differ in h and w. The mean runs over all (C/4)^2
    tiles; off-diagonal tiles stand for their mirror images too.
    """
    n = fx.shape[1] // TILE
    scores = group_scores(upper_tiles(gram(fx)), upper_tiles(gram(fy)), eps)  # (B, T)
    rows, cols = torch.triu_indices(n, n, device=scores.device)
    weights = torch.where(rows == cols, 1.0, 2.0).to(scores.dtype)
    return scores @ weights / (n * n)


def lite_level_score(fx: torch.Tensor, fy: torch.Tensor, eps: float) -> torch.Tensor:
    """DeepSSIM-Lite head: Gram / (C h w), one global tile over all C*C entries."""
    gx = gram(fx, normalize=True).flatten(1)
    gy = gram(fy, normalize=True).flatten(1)
    return group_scores(gx, gy, eps)


def multiscale_scores(fxs: Sequence[torch.Tensor], fys: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """Per-level head scores stacked to (B, L)."""
    return torch.stack([level_score(fx, fy, eps) for fx, fy in zip(fxs, fys)], dim=1)
