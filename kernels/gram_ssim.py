"""Fused DeepSSIM head: Gram tiles and 4x4-tile statistics for every level at once.

Layout. The feature maps of all pyramid levels are laid end to end along the
position axis K, so one tensor (B, C, K_total) per image holds every level;
level l occupies positions [k_start[l], k_start[l] + k_len[l]).

Work split. One program owns one (image, level) pair and one block pair
(bi, bj) with bi <= bj of the C x C Gram matrix, cut into BLOCK_C x BLOCK_C
blocks. A tile's statistics do not change under transposition and tile (i, j)
of a Gram matrix is the transpose of tile (j, i), so only the upper triangle
of blocks is computed and off-diagonal blocks count twice. The program forms
both images' Gram blocks with tl.dot, reduces every 4x4 tile to its centred
statistics in registers, and writes one partial sum of tile scores. Nothing
Gram-sized reaches memory; partials are summed once afterwards, so results
are deterministic (no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import triton
import triton.language as tl

TILE = 4


@triton.jit
def _gram_blocks(
    x_ptr, y_ptr, b, bi, bj, k_start, k_len, C,
    sxb, sxc, sxk, syb, syc, syk,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Blocks (bi, bj) of both Gram matrices, BLOCK_C x BLOCK_C in ACC precision."""
    rows = bi * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = bj * BLOCK_C + tl.arange(0, BLOCK_C)
    ks = tl.arange(0, BLOCK_K)
    x_base = x_ptr + b.to(tl.int64) * sxb
    y_base = y_ptr + b.to(tl.int64) * syb
    gx = tl.zeros((BLOCK_C, BLOCK_C), dtype=ACC)
    gy = tl.zeros((BLOCK_C, BLOCK_C), dtype=ACC)
    for k0 in range(0, k_len, BLOCK_K):
        k = k0 + ks
        k_abs = (k_start + k).to(tl.int64)
        row_mask = (rows[:, None] < C) & (k[None, :] < k_len)
        col_mask = (k[:, None] < k_len) & (cols[None, :] < C)
        xr = tl.load(x_base + rows[:, None] * sxc + k_abs[None, :] * sxk, mask=row_mask, other=0.0)
        xc = tl.load(x_base + cols[None, :] * sxc + k_abs[:, None] * sxk, mask=col_mask, other=0.0)
        gx = tl.dot(xr, xc, gx, input_precision=PRECISION)
        yr = tl.load(y_base + rows[:, None] * syc + k_abs[None, :] * syk, mask=row_mask, other=0.0)
        yc = tl.load(y_base + cols[None, :] * syc + k_abs[:, None] * syk, mask=col_mask, other=0.0)
        gy = tl.dot(yr, yc, gy, input_precision=PRECISION)
    return gx, gy


@triton.jit
def _tile_sum(v, NT: tl.constexpr):
    """(NT, 4, NT, 4) -> (NT, NT): the sum over each 4x4 tile."""
    return tl.sum(tl.sum(v, axis=3), axis=1)


@triton.jit
def _tile_scores(gx, gy, eps, BLOCK_C: tl.constexpr):
    """Score (2 cov + eps) / (var_x + var_y + eps) of every 4x4 tile of a block pair.

    Statistics are taken on centred entries: Gram entries are large and
    positive, so E[x^2] - E[x]^2 would cancel catastrophically.
    """
    NT: tl.constexpr = BLOCK_C // 4
    ax = tl.reshape(gx, (NT, 4, NT, 4))
    ay = tl.reshape(gy, (NT, 4, NT, 4))
    dx = ax - (_tile_sum(ax, NT) / 16)[:, None, :, None]
    dy = ay - (_tile_sum(ay, NT) / 16)[:, None, :, None]
    var_x = _tile_sum(dx * dx, NT) / 16
    var_y = _tile_sum(dy * dy, NT) / 16
    cov = _tile_sum(dx * dy, NT) / 16
    return (2 * cov + eps) / (var_x + var_y + eps)


@triton.jit
def _gram_ssim_forward_kernel(
    x_ptr,        # (B, C, K_total) features of image x, all levels end to end along K
    y_ptr,        # (B, C, K_total) features of image y
    k_start_ptr,  # (L,) int32 first position of each level
    k_len_ptr,    # (L,) int32 number of positions of each level
    pairs_ptr,    # (T, 2) int32 block pairs (bi, bj) with bi <= bj
    partial_ptr,  # (B * L, T) partial sums of tile scores, ACC dtype
    eps_ptr,      # (1,) the constant c in ACC dtype (a float64 c would be rounded as a scalar)
    C, L, T,
    sxb, sxc, sxk, syb, syc, syk,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    t = tl.program_id(0)
    image_level = tl.program_id(1)
    b = image_level // L
    level = image_level % L
    bi = tl.load(pairs_ptr + 2 * t)
    bj = tl.load(pairs_ptr + 2 * t + 1)
    k_start = tl.load(k_start_ptr + level)
    k_len = tl.load(k_len_ptr + level)
    eps = tl.load(eps_ptr)
    gx, gy = _gram_blocks(
        x_ptr, y_ptr, b, bi, bj, k_start, k_len, C, sxb, sxc, sxk, syb, syc, syk,
        BLOCK_C, BLOCK_K, PRECISION, ACC,
    )
    scores = _tile_scores(gx, gy, eps, BLOCK_C)
    # Tiles past C (C is a multiple of 4, not of BLOCK_C) are padding.
    NT: tl.constexpr = BLOCK_C // 4
    tile_rows = bi * BLOCK_C + 4 * tl.arange(0, NT)
    tile_cols = bj * BLOCK_C + 4 * tl.arange(0, NT)
    valid = (tile_rows[:, None] < C) & (tile_cols[None, :] < C)
    total = tl.sum(tl.sum(tl.where(valid, scores, 0.0), axis=1), axis=0)
    weight = tl.where(bi == bj, 1.0, 2.0)
    tl.store(partial_ptr + image_level * T + t, total * weight)


@triton.jit
def _untile(v, BLOCK_C: tl.constexpr):
    """(NT, 4, NT, 4) -> (BLOCK_C, BLOCK_C)."""
    return tl.reshape(v, (BLOCK_C, BLOCK_C))


@triton.jit
def _tile_score_grads(gx, gy, eps, scale, BLOCK_C: tl.constexpr):
    """d(scale * tile score)/d(Gram entry) for both Gram blocks.

    For a tile of n = 16 entries a (from Gx) and b (from Gy), with
    N = 2 cov + eps, D = var_a + var_b + eps and s = N / D:
    ds/da_k = 2 / (n D) * ((b_k - mb) - s (a_k - ma)), and symmetrically for b.
    """
    NT: tl.constexpr = BLOCK_C // 4
    ax = tl.reshape(gx, (NT, 4, NT, 4))
    ay = tl.reshape(gy, (NT, 4, NT, 4))
    dx = ax - (_tile_sum(ax, NT) / 16)[:, None, :, None]
    dy = ay - (_tile_sum(ay, NT) / 16)[:, None, :, None]
    var_x = _tile_sum(dx * dx, NT) / 16
    var_y = _tile_sum(dy * dy, NT) / 16
    cov = _tile_sum(dx * dy, NT) / 16
    denom = var_x + var_y + eps
    score = (2 * cov + eps) / denom
    factor = (scale * 2 / (16 * denom))[:, None, :, None]
    s4 = score[:, None, :, None]
    grad_x = _untile(factor * (dy - s4 * dx), BLOCK_C)
    grad_y = _untile(factor * (dx - s4 * dy), BLOCK_C)
    return grad_x, grad_y


@triton.jit
def _accumulate_rows(
    grad_ptr, f_ptr, gbar, b, rows, cols, k_start, k_len, C, bj,
    sfb, sfc, sfk, sgb, sgc, sgk,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """grad[rows, level] (+)= 2 * gbar @ F[cols, level], chunk by chunk along K.

    The program owns these output rows, so plain loads and stores suffice;
    the first column block (bj == 0) writes instead of adding. Features are
    upcast to gbar's precision: gbar is far too small and varied for 16 bits.
    """
    ks = tl.arange(0, BLOCK_K)
    f_base = f_ptr + b.to(tl.int64) * sfb
    g_base = grad_ptr + b.to(tl.int64) * sgb
    gbar2 = 2 * gbar
    for k0 in range(0, k_len, BLOCK_K):
        k = k0 + ks
        k_abs = (k_start + k).to(tl.int64)
        f = tl.load(f_base + cols[:, None] * sfc + k_abs[None, :] * sfk,
                    mask=(cols[:, None] < C) & (k[None, :] < k_len), other=0.0).to(gbar.dtype)
        out_mask = (rows[:, None] < C) & (k[None, :] < k_len)
        out_ptr = g_base + rows[:, None] * sgc + k_abs[None, :] * sgk
        acc = tl.load(out_ptr, mask=out_mask & (bj > 0), other=0.0)
        acc = tl.dot(gbar2, f, acc, input_precision=PRECISION)
        tl.store(out_ptr, acc, mask=out_mask)


@triton.jit
def _gram_ssim_backward_kernel(
    x_ptr,        # (B, C, K_total) features of image x, all levels end to end along K
    y_ptr,        # (B, C, K_total) features of image y
    k_start_ptr,  # (L,) int32 first position of each level
    k_len_ptr,    # (L,) int32 number of positions of each level
    grad_ptr,     # (B, L) upstream gradient of the scores, ACC dtype
    gx_ptr,       # (B, C, K_total) ACC-dtype gradient for x (written when NEED_X)
    gy_ptr,       # (B, C, K_total) ACC-dtype gradient for y (written when NEED_Y)
    eps_ptr,      # (1,) the constant c in ACC dtype
    C, L, NB, inv_tiles,
    sxb, sxc, sxk, syb, syc, syk, sgb, sgc, sgk,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    GRAD_PRECISION: tl.constexpr, NEED_X: tl.constexpr, NEED_Y: tl.constexpr,
):
    """One program owns row block bi of one (image, level): it sweeps every
    column block bj, recomputes both Gram blocks (bi, bj) and their tile
    statistics, and adds 2 * dScore/dG[bi, bj] @ F[bj] to its own rows of
    dScore/dF. Nothing is shared between programs: no atomics, no scratch."""
    bi = tl.program_id(0)
    image_level = tl.program_id(1)
    b = image_level // L
    level = image_level % L
    k_start = tl.load(k_start_ptr + level)
    k_len = tl.load(k_len_ptr + level)
    eps = tl.load(eps_ptr)
    scale = tl.load(grad_ptr + image_level).to(ACC) * inv_tiles
    NT: tl.constexpr = BLOCK_C // 4
    rows = bi * BLOCK_C + tl.arange(0, BLOCK_C)
    for bj in range(0, NB):
        gx, gy = _gram_blocks(
            x_ptr, y_ptr, b, bi, bj, k_start, k_len, C, sxb, sxc, sxk, syb, syc, syk,
            BLOCK_C, BLOCK_K, PRECISION, ACC,
        )
        grad_x, grad_y = _tile_score_grads(gx, gy, eps, scale, BLOCK_C)
        cols = bj * BLOCK_C + tl.arange(0, BLOCK_C)
        # Entries past C belong to padding tiles and must not contribute.
        valid = (rows[:, None] < C) & (cols[None, :] < C)
        if NEED_X:
            _accumulate_rows(gx_ptr, x_ptr, tl.where(valid, grad_x, 0.0), b, rows, cols, k_start, k_len, C, bj,
                             sxb, sxc, sxk, sgb, sgc, sgk, BLOCK_K, GRAD_PRECISION)
        if NEED_Y:
            _accumulate_rows(gy_ptr, y_ptr, tl.where(valid, grad_y, 0.0), b, rows, cols, k_start, k_len, C, bj,
                             syb, syc, syk, sgb, sgc, sgk, BLOCK_K, GRAD_PRECISION)


# Dot precisions for float32 features: "ieee" and "tf32x3" are fp32-accurate,
# "tf32" rounds the operands to 10-bit mantissas (faster, opt-in).
PRECISIONS = ("ieee", "tf32x3", "tf32")


@dataclass(frozen=True)
class Config:
    block_c: int
    block_k: int
    num_warps: int
    num_stages: int


def pick_config(channels: int, dtype: torch.dtype) -> Config:
    """Block sizes by a fixed rule, so a shape always runs the same program.

    BLOCK_C is the smallest power of two >= 16 (tl.dot's minimum) covering C,
    capped at 64: a 64 x 64 fp32 accumulator per image keeps the two Gram
    blocks and their centred copies within the registers of 4 warps.
    """
    block_c = min(64, max(16, triton.next_power_of_2(channels)))
    block_k = 32 if dtype in (torch.float32, torch.float64) else 64
    if dtype == torch.float64:
        block_k = 16
    return Config(block_c=block_c, block_k=block_k, num_warps=4, num_stages=2)


def block_pairs(channels: int, block_c: int, device: torch.device) -> torch.Tensor:
    """(T, 2) int32 upper-triangle block pairs (bi, bj), bi <= bj."""
    blocks = triton.cdiv(channels, block_c)
    pairs = [(i, j) for i in range(blocks) for j in range(i, blocks)]
    return torch.tensor(pairs, dtype=torch.int32, device=device)


def gram_precision(dtype: torch.dtype, precision: str) -> str:
    """Dot precision of the Gram products: `precision` for float32 features.

    16-bit products are exact in the fp32 accumulator and float64 dots are
    plain IEEE, so the choice only matters for float32.
    """
    return precision if dtype == torch.float32 else "ieee"


def gradient_precision(dtype: torch.dtype, precision: str) -> str:
    """Dot precision of dScore/dG @ F, whose operands are always upcast to fp32/fp64.

    16-bit features are exact in TF32, but dScore/dG is not, hence tf32x3.
    """
    if dtype == torch.float64:
        return "ieee"
    return precision if dtype == torch.float32 else "tf32x3"


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_ssim_forward(
    x: torch.Tensor,
    y: torch.Tensor,
    k_starts: Tuple[int, ...],
    k_lens: Tuple[int, ...],
    eps: float,
    precision: str = "tf32x3",
) -> torch.Tensor:
    """Launch the forward kernel on packed features.

    Args:
        x, y: (B, C, K_total) features of both images, levels end to end
            along K; any strides.
        k_starts, k_lens: first position and length of each level.
        eps: the tile score's constant c.
        precision: dot precision for float32 inputs (see PRECISIONS).

    Returns:
        (B, L) mean tile scores, float64 for float64 inputs, float32 otherwise.
    """
    batch, channels, _ = x.shape
    levels = len(k_starts)
    config = pick_config(channels, x.dtype)
    acc = accumulator_dtype(x.dtype)
    pairs = block_pairs(channels, config.block_c, x.device)
    partials = torch.empty(batch * levels, pairs.shape[0], dtype=acc, device=x.device)
    k_start = torch.tensor(k_starts, dtype=torch.int32, device=x.device)
    k_len = torch.tensor(k_lens, dtype=torch.int32, device=x.device)
    eps_t = torch.tensor([eps], dtype=acc, device=x.device)
    grid = (pairs.shape[0], batch * levels)
    _gram_ssim_forward_kernel[grid](
        x, y, k_start, k_len, pairs, partials, eps_t,
        channels, levels, pairs.shape[0],
        *x.stride(), *y.stride(),
        BLOCK_C=config.block_c,
        BLOCK_K=config.block_k,
        PRECISION=gram_precision(x.dtype, precision),
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    tiles = (channels // TILE) ** 2
    return (partials.sum(dim=1) / tiles).view(batch, levels)


def gram_ssim_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    k_starts: Tuple[int, ...],
    k_lens: Tuple[int, ...],
    eps: float,
    need_x: bool,
    need_y: bool,
    precision: str = "tf32x3",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the (B, L) scores with respect to the packed features.

    Args:
        grad: (B, L) upstream gradient.
        x, y, k_starts, k_lens, eps, precision: as for gram_ssim_forward.
        need_x, need_y: which gradients to compute.

    Returns:
        (grad_x, grad_y), each (B, C, K_total) in float32 (float64 for float64
        features) or None where not needed.
    """
    batch, channels, total_k = x.shape
    levels = len(k_starts)
    config = pick_config(channels, x.dtype)
    acc = accumulator_dtype(x.dtype)
    blocks = triton.cdiv(channels, config.block_c)
    # Every row and position is written, so no zero fill is needed.
    grad_x = torch.empty(batch, channels, total_k, dtype=acc, device=x.device) if need_x else None
    grad_y = torch.empty(batch, channels, total_k, dtype=acc, device=x.device) if need_y else None
    any_grad = grad_x if grad_x is not None else grad_y
    _gram_ssim_backward_kernel[(blocks, batch * levels)](
        x, y,
        torch.tensor(k_starts, dtype=torch.int32, device=x.device),
        torch.tensor(k_lens, dtype=torch.int32, device=x.device),
        grad.to(acc).contiguous(),
        grad_x if need_x else any_grad,
        grad_y if need_y else any_grad,
        torch.tensor([eps], dtype=acc, device=x.device),
        channels, levels, blocks, 1.0 / (channels // TILE) ** 2,
        *x.stride(), *y.stride(), *any_grad.stride(),
        BLOCK_C=config.block_c,
        BLOCK_K=config.block_k,
        PRECISION=gram_precision(x.dtype, precision),
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        GRAD_PRECISION=gradient_precision(x.dtype, precision),
        NEED_X=need_x,
        NEED_Y=need_y,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return grad_x, grad_y
