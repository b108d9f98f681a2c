"""The backward kernel: dScore/dx (and with BOTH dScore/dy), one program per
row block of the gradient."""

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
def _product(gbar, f, acc, PRECISION: tl.constexpr, GRAD16: tl.constexpr):
    """acc + gbar @ f, in acc's precision.

    gbar is far too small and varied for 16 bits, so by default 16-bit
    features are upcast and multiplied in tf32x3. With GRAD16 they stay in
    16 bits and gbar is split into a 16-bit head and tail instead (after a
    power-of-two scaling that puts its largest entry in [1, 2), inside
    fp16's range): two 16-bit products, exact in the fp32 accumulator,
    carrying 16 (bf16) or 22 (fp16) of gbar's bits, more than the 16-bit
    gradient returned keeps.
    """
    if GRAD16:
        top = tl.max(tl.max(tl.abs(gbar), axis=1), axis=0)
        shift = tl.where(top > 0, tl.floor(tl.log2(tl.maximum(top, 1e-30))), 0.0)
        scaled = gbar * tl.exp2(-shift)
        head = scaled.to(f.dtype)
        tail = (scaled - head.to(scaled.dtype)).to(f.dtype)
        return acc + tl.dot(head, f, tl.dot(tail, f)) * tl.exp2(shift)
    else:
        return tl.dot(gbar, f.to(gbar.dtype), acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _accumulate_rows(
    out_base, f_base, gbar, bi, bj, adding, k_len, C, stride_c,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr,
    TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, GRAD16: tl.constexpr,
):
    """out[rows bi] (+)= gbar @ F[rows bj], chunk by chunk along the level.

    `out` is this level's contiguous (C, k_len) gradient for one image. The
    program owns these rows, so plain loads and stores suffice; its first
    column block writes instead of adding (`adding` is false).
    """
    rows = bi * BLOCK_C + _channel_order(BLOCK_C, 4, TILE_ORDER)
    cols = bj * BLOCK_C + _channel_order(BLOCK_C, 8, TILE_ORDER)
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, k_len, BLOCK_K):
        k = k0 + ks
        f = _load_panel(f_base, cols, k, C, k_len, stride_c, not EVEN_C, True, ALIGNED)
        out = _panel_pointers(out_base, rows, k, k_len, ALIGNED)
        out_mask = (rows[:, None] < C) & (k[None, :] < k_len)
        acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=gbar.dtype)
        if adding:
            acc = tl.load(out, mask=out_mask, other=0.0)
        tl.store(out, _product(gbar, f, acc, PRECISION, GRAD16), mask=out_mask)


@triton.jit
def _add_resident_rows(
    acc, f_base, gbar, bj, k_len, C, stride_c,
    BLOCK_C: tl.constexpr, RESIDENT: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr,
    TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, GRAD16: tl.constexpr,
):
    """acc + gbar @ F[rows bj] over the whole level (k_len <= RESIDENT positions), in registers."""
    cols = bj * BLOCK_C + _channel_order(BLOCK_C, 8, TILE_ORDER)
    f = _load_panel(f_base, cols, tl.arange(0, RESIDENT), C, k_len, stride_c, not EVEN_C, True, ALIGNED)
    return _product(gbar, f, acc, PRECISION, GRAD16)


@triton.jit
def _add_side(
    acc, out_base, f_base, gbar, inside, bi, bj, part, k_len, C, stride_c,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, RESIDENT: tl.constexpr, EVEN_C: tl.constexpr,
    PRECISION: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, GRAD16: tl.constexpr,
):
    """One image's share of column block bj: gbar @ F[rows bj] into the
    registers' acc (returned) with RESIDENT, else into its rows in memory."""
    if not EVEN_C:  # entries past C belong to padding tiles and must not contribute
        gbar = tl.where(inside, gbar, 0.0)
    if RESIDENT > 0:
        acc = _add_resident_rows(acc, f_base, gbar, bj, k_len, C, stride_c,
                                 BLOCK_C, RESIDENT, EVEN_C, PRECISION, TILE_ORDER, ALIGNED, GRAD16)
    else:
        _accumulate_rows(out_base, f_base, gbar, bi, bj, bj > part, k_len, C, stride_c,
                         BLOCK_C, BLOCK_K, EVEN_C, PRECISION, TILE_ORDER, ALIGNED, GRAD16)
    return acc


@triton.jit
def _store_resident_rows(out_base, acc, bi, k_len, C,
                         BLOCK_C: tl.constexpr, RESIDENT: tl.constexpr, TILE_ORDER: tl.constexpr,
                         ALIGNED: tl.constexpr):
    """out[rows bi] = acc: a resident program's rows, written once."""
    rows = bi * BLOCK_C + _channel_order(BLOCK_C, 4, TILE_ORDER)
    k = tl.arange(0, RESIDENT)
    tl.store(_panel_pointers(out_base, rows, k, k_len, ALIGNED), acc,
             mask=(rows[:, None] < C) & (k[None, :] < k_len))


@triton.jit
def _gram_ssim_backward_kernel(
    x0, x1, x2, x3, x4, x5,        # per-level features of the image being differentiated
    y0, y1, y2, y3, y4, y5,        # per-level features of the other image
    gx0, gx1, gx2, gx3, gx4, gx5,  # per-level contiguous ACC-dtype gradients for x
    gy0, gy1, gy2, gy3, gy4, gy5,  # and for y (written only with BOTH)
    meta_ptr,     # (L, 7) int64 per level: x's length and strides (b, c), then y's (then the output level)
    grad_ptr,     # (B, L) upstream gradient of the scores divided by the tile count, ACC dtype
    eps_ptr,      # (1,) the constant c in ACC dtype
    C, L, NB,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr,
    PRECISION: tl.constexpr, GRAD_PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr,
    SPLIT: tl.constexpr, RESIDENT: tl.constexpr, BOTH: tl.constexpr, GRAD16: tl.constexpr,
):
    """dScore/dx. One program owns row block bi of one (image, level). It
    sweeps every column block bj, recomputes both Gram blocks (bi, bj) and
    their tile statistics, and adds 2 * dScore/dGx[bi, bj] @ x[bj] to its own
    rows of the gradient (dGx is symmetric, so d/dx = (dGx + dGx^T) x =
    2 dGx x). Programs share nothing: no atomics and no scratch. The score is
    symmetric in x and y, so dScore/dy is this kernel with the two swapped;
    with BOTH one launch writes both, from the same Gram blocks and
    statistics.

    By default a program adds each column block's product into its rows in
    memory, chunk by chunk. With RESIDENT > 0 (every level of the launch at
    most RESIDENT positions long) the rows stay in registers across the
    sweep and are stored once.

    With SPLIT > 1 (where few programs would run) program_id(2) = p of the
    SPLIT takes column blocks p, p + SPLIT, ... and writes its own partial
    gradient: each level's gradient buffer is (SPLIT, B, C, h_l * w_l), and
    the launcher sums it over SPLIT in a fixed order.

    For a tile of n = 16 entries a (from Gx) and b (from Gy), with
    D = var_a + var_b + eps and s its score:
    ds/da_k = 2 / (n D) * ((b_k - mb) - s (a_k - ma)), and ds/db_k the same
    with a and b swapped.
    """
    bi = tl.program_id(0)
    image_level = tl.program_id(1)
    part = tl.program_id(2)
    b = image_level // L
    level = image_level % L
    x_base, y_base, kx_len, ky_len, sxc, syc = _level_setup(
        meta_ptr, level, b, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5)
    images = tl.num_programs(1) // L
    gradient = part.to(tl.int64) * images + b.to(tl.int64)  # this program's (part, image) in the buffers
    out_x = _pick(level, gx0, gx1, gx2, gx3, gx4, gx5) + gradient * C * kx_len
    out_y = _pick(level, gy0, gy1, gy2, gy3, gy4, gy5) + gradient * C * ky_len
    eps = tl.load(eps_ptr)
    scale = tl.load(grad_ptr + image_level)
    rows = bi * BLOCK_C + _channel_order(BLOCK_C, 4, TILE_ORDER)
    if RESIDENT > 0:  # the rows held in registers
        acc_x = tl.zeros((BLOCK_C, RESIDENT), dtype=ACC)
        acc_y = tl.zeros((BLOCK_C, RESIDENT), dtype=ACC)
    else:  # placeholders, passed through unchanged: the rows live in memory
        acc_x = tl.zeros((1, 1), dtype=ACC)
        acc_y = tl.zeros((1, 1), dtype=ACC)
    for bj in range(part, NB, SPLIT):
        gx, gy = _gram_blocks(x_base, y_base, bi, bj, kx_len, ky_len, C, sxc, syc,
                              BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
        dx, dy, score, denom = _centred_tiles(gx, gy, eps, BLOCK_C, TILE_ORDER)
        factor = _spread(scale * 4 / (16 * denom), TILE_ORDER)  # 2 / (n D), times the 2 of 2 dGx x
        s = _spread(score, TILE_ORDER)
        cols = bj * BLOCK_C + _channel_order(BLOCK_C, 8, TILE_ORDER)
        inside = (rows[:, None] < C) & (cols[None, :] < C)
        acc_x = _add_side(acc_x, out_x, x_base, tl.reshape(factor * (dy - s * dx), (BLOCK_C, BLOCK_C)), inside,
                          bi, bj, part, kx_len, C, sxc,
                          BLOCK_C, BLOCK_K, RESIDENT, EVEN_C, GRAD_PRECISION, TILE_ORDER, ALIGNED, GRAD16)
        if BOTH:
            acc_y = _add_side(acc_y, out_y, y_base, tl.reshape(factor * (dx - s * dy), (BLOCK_C, BLOCK_C)), inside,
                              bi, bj, part, ky_len, C, syc,
                              BLOCK_C, BLOCK_K, RESIDENT, EVEN_C, GRAD_PRECISION, TILE_ORDER, ALIGNED, GRAD16)
    if RESIDENT > 0:
        _store_resident_rows(out_x, acc_x, bi, kx_len, C, BLOCK_C, RESIDENT, TILE_ORDER, ALIGNED)
        if BOTH:
            _store_resident_rows(out_y, acc_y, bi, ky_len, C, BLOCK_C, RESIDENT, TILE_ORDER, ALIGNED)
