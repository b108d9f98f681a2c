"""The backward kernel: dScore/dx, one program per row block of the gradient."""

import triton
import triton.language as tl

from msds.kernels.tiles import (
    _centred_tiles,
    _channel_order,
    _gram_blocks,
    _level_setup,
    _load_panel,
    _panel_pointers,
    _pick,
    _spread,
)


@triton.jit
def _accumulate_rows(
    out_base, f_base, gbar, bi, bj, adding, k_len, C, stride_c,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr,
    TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr,
):
    """out[rows bi] (+)= 2 * gbar @ F[rows bj], chunk by chunk along the level.

    `out` is this level's contiguous (C, k_len) gradient for one image. The
    program owns these rows, so plain loads and stores suffice; its first
    column block writes instead of adding (`adding` is false). Features are
    upcast to gbar's precision: gbar is far too small and varied for 16 bits.
    """
    rows = bi * BLOCK_C + _channel_order(BLOCK_C, 4, TILE_ORDER)
    cols = bj * BLOCK_C + _channel_order(BLOCK_C, 8, TILE_ORDER)
    ks = tl.arange(0, BLOCK_K)
    gbar2 = 2 * gbar
    for k0 in range(0, k_len, BLOCK_K):
        k = k0 + ks
        f = _load_panel(f_base, cols, k, C, k_len, stride_c, not EVEN_C, True, ALIGNED).to(gbar.dtype)
        out = _panel_pointers(out_base, rows, k, k_len, ALIGNED)
        out_mask = (rows[:, None] < C) & (k[None, :] < k_len)
        acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=gbar.dtype)
        if adding:
            acc = tl.load(out, mask=out_mask, other=0.0)
        acc = tl.dot(gbar2, f, acc, input_precision=PRECISION, out_dtype=acc.dtype)
        tl.store(out, acc, mask=out_mask)


@triton.jit
def _gram_ssim_backward_kernel(
    x0, x1, x2, x3, x4, x5,        # per-level features of the image being differentiated
    y0, y1, y2, y3, y4, y5,        # per-level features of the other image
    gx0, gx1, gx2, gx3, gx4, gx5,  # per-level contiguous ACC-dtype gradients for x
    meta_ptr,     # (L, 6) int64 per level: x's length and strides (b, c), then y's
    grad_ptr,     # (B, L) upstream gradient of the scores divided by the tile count, ACC dtype
    eps_ptr,      # (1,) the constant c in ACC dtype
    C, L, NB,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr,
    PRECISION: tl.constexpr, GRAD_PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """dScore/dx. One program owns row block bi of one (image, level). It
    sweeps every column block bj, recomputes both Gram blocks (bi, bj) and
    their tile statistics, and adds 2 * dScore/dGx[bi, bj] @ x[bj] to its own
    rows of the gradient (dGx is symmetric, so d/dx = (dGx + dGx^T) x =
    2 dGx x). Programs share nothing: no atomics and no scratch. The score is
    symmetric in x and y, so dScore/dy is this kernel with the two swapped.

    With SPLIT > 1 (where few programs would run) program_id(2) = p of the
    SPLIT takes column blocks p, p + SPLIT, ... and writes its own partial
    gradient: each level's gradient buffer is (SPLIT, B, C, h_l * w_l), and
    the launcher sums it over SPLIT in a fixed order.

    For a tile of n = 16 entries a (from Gx) and b (from Gy), with
    D = var_a + var_b + eps and s its score:
    ds/da_k = 2 / (n D) * ((b_k - mb) - s (a_k - ma)).
    """
    bi = tl.program_id(0)
    image_level = tl.program_id(1)
    part = tl.program_id(2)
    b = image_level // L
    level = image_level % L
    x_base, y_base, kx_len, ky_len, sxc, syc = _level_setup(
        meta_ptr, level, b, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5)
    images = tl.num_programs(1) // L
    out_base = (_pick(level, gx0, gx1, gx2, gx3, gx4, gx5)
                + (part.to(tl.int64) * images + b.to(tl.int64)) * C * kx_len)
    eps = tl.load(eps_ptr)
    scale = tl.load(grad_ptr + image_level)
    rows = bi * BLOCK_C + _channel_order(BLOCK_C, 4, TILE_ORDER)
    for bj in range(part, NB, SPLIT):
        gx, gy = _gram_blocks(x_base, y_base, bi, bj, kx_len, ky_len, C, sxc, syc,
                              BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
        dx, dy, score, denom = _centred_tiles(gx, gy, eps, BLOCK_C, TILE_ORDER)
        factor = _spread(scale * 2 / (16 * denom), TILE_ORDER)
        gbar = tl.reshape(factor * (dy - _spread(score, TILE_ORDER) * dx), (BLOCK_C, BLOCK_C))
        if not EVEN_C:  # entries past C belong to padding tiles and must not contribute
            cols = bj * BLOCK_C + _channel_order(BLOCK_C, 8, TILE_ORDER)
            gbar = tl.where((rows[:, None] < C) & (cols[None, :] < C), gbar, 0.0)
        _accumulate_rows(out_base, x_base, gbar, bi, bj, bj > part, kx_len, C, sxc,
                         BLOCK_C, BLOCK_K, EVEN_C, GRAD_PRECISION, TILE_ORDER, ALIGNED)
