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


def group_scores(a: torch.Tensor, b: torch.Tensor, eps: float, dims: Sequence[int] = (-1,)) -> torch.Tensor:
    """SSIM-like score of paired groups of values; each group spans `dims`.

    (2 cov + eps) / (var_a + var_b + eps), population statistics of centred
    values (never E[x^2] - E[x]^2: Gram entries are large and positive).
    """
    dims = tuple(dims)
    da = a - a.mean(dims, keepdim=True)
    db = b - b.mean(dims, keepdim=True)
    var_a = (da * da).mean(dims)
    var_b = (db * db).mean(dims)
    cov = (da * db).mean(dims)
    return (2 * cov + eps) / (var_a + var_b + eps)


def channel_blocks(channels: int) -> int:
    """How many blocks of channels the Gram matrix is formed in: the largest
    of 4, 3, 2, 1 that divides the C/4 tile rows."""
    return next(blocks for blocks in (4, 3, 2, 1) if (channels // TILE) % blocks == 0)


def tile_ordered_blocks(features: torch.Tensor, blocks: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, blocks, C/blocks, h*w), each block's channels in tile order.

    With n tiles per block, channel 4t + a of a block (tile row t, row a in
    the tile) moves to row a * n + t. The product of two such blocks then
    holds entry (a, b) of tile (t, u) at [a * n + t, b * n + u]: a tile's 16
    entries lie one in each of 16 n x n planes, at the same place, so its
    statistics reduce across planes instead of gathering 4 x 4 tiles.
    """
    batch, channels = features.shape[:2]
    n = channels // blocks // TILE
    flat = features.reshape(batch, blocks, n, TILE, -1).to(compute_dtype(features.dtype))
    return flat.transpose(2, 3).reshape(batch, blocks, TILE * n, -1)


def level_score(fx: torch.Tensor, fy: torch.Tensor, eps: float) -> torch.Tensor:
    """DeepSSIM head for one level: mean tile score, (B, C, h, w) pair -> (B,).

    The two maps may differ in h and w. The mean runs over all (C/4)^2
    tiles. The Gram matrices are formed block by block, upper triangle of
    blocks only: tile (u, t) of a symmetric Gram matrix is tile (t, u)
    transposed, and a tile's mean, variance and covariance do not change
    under transposition, so each off-diagonal block stands for its mirror
    too and counts twice (10 of 16 block products at 4 blocks).
    """
    blocks = channel_blocks(fx.shape[1])
    n = fx.shape[1] // blocks // TILE
    rows_x, rows_y = tile_ordered_blocks(fx, blocks), tile_ordered_blocks(fy, blocks)
    total = 0
    for p in range(blocks):
        for q in range(p, blocks):
            gx = rows_x[:, p] @ rows_x[:, q].transpose(1, 2)  # (B, 4n, 4n) in tile order
            gy = rows_y[:, p] @ rows_y[:, q].transpose(1, 2)
            planes = (-1, TILE, n, TILE, n)  # [a, t, b, u]
            scores = group_scores(gx.view(planes), gy.view(planes), eps, dims=(1, 3))  # (B, n, n)
            total = total + scores.sum((1, 2)) * (1 if p == q else 2)
    return total / (fx.shape[1] // TILE) ** 2


def lite_level_score(fx: torch.Tensor, fy: torch.Tensor, eps: float) -> torch.Tensor:
    """DeepSSIM-Lite head: Gram / (C h w), one global tile over all C*C entries."""
    gx = gram(fx, normalize=True).flatten(1)
    gy = gram(fy, normalize=True).flatten(1)
    return group_scores(gx, gy, eps)


def multiscale_scores(fxs: Sequence[torch.Tensor], fys: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """Per-level head scores stacked to (B, L)."""
    return torch.stack([level_score(fx, fy, eps) for fx, fy in zip(fxs, fys)], dim=1)
