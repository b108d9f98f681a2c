"""Fused DeepSSIM head: Gram tiles and 4x4-tile statistics for every level at once.

Work split. One program owns one (image, level) pair and one block pair
(bi, bj), bi <= bj, of the C x C Gram matrix cut into BLOCK_C x BLOCK_C
blocks. A tile's statistics do not change under transposition and tile (i, j)
of a Gram matrix is the transpose of tile (j, i), so only the upper triangle
of blocks is computed and off-diagonal blocks count twice. The program forms
both images' Gram blocks with tl.dot, reduces every 4x4 tile to its centred
statistics in registers and writes one partial sum of tile scores. Nothing
Gram-sized reaches memory; partials are summed once afterwards, so results
are deterministic (no atomics).

Layout. A block's rows and columns need not follow channel order: 64-wide
blocks are loaded in tile order (_channel_order), which in sm_90's wgmma
accumulator layout puts a tile's 16 entries in one or two threads'
registers, so its statistics take few warp shuffles.

Levels. Each level's feature maps stay where the trunk wrote them (copying
them into one buffer would cost as much memory as the features): the kernel
takes up to MAX_LEVELS pointers per image and picks its level's at run time,
with lengths and strides from a small table. Each image has its own length
per level: the two Gram matrices are C x C whatever the number of positions,
so images of different sizes are compared as they are. Positions must be contiguous
(NCHW); other layouts (channels_last, slices) are copied once per level,
because loads along strided positions cost the kernel registers it spills.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

TILE = 4
MAX_LEVELS = 6

# Dot precisions for float32 features: "ieee" and "tf32x3" are fp32-accurate,
# "tf32" rounds the operands to 10-bit mantissas (faster, opt-in).
PRECISIONS = ("ieee", "tf32x3", "tf32")


@triton.jit
def _pick(level, p0, p1, p2, p3, p4, p5):
    """Argument number `level` (pointer arguments cannot be indexed)."""
    p = p0
    if level == 1:
        p = p1
    elif level == 2:
        p = p2
    elif level == 3:
        p = p3
    elif level == 4:
        p = p4
    elif level == 5:
        p = p5
    return p


@triton.jit
def _panel_pointers(base, rows, k, stride_c, ALIGNED: tl.constexpr):
    """Pointers to [rows, k] of a map whose positions are contiguous.

    With ALIGNED (the map starts 16-byte aligned, its lengths and strides
    are multiples of 16 elements, and k steps from multiples of 16) each
    row's run of positions starts 16-byte aligned: saying so lets the loads
    vectorise, which the compiler cannot prove from strides read at run time.
    """
    ptrs = base + (rows[:, None] * stride_c + k[None, :])
    if ALIGNED:
        ptrs = tl.multiple_of(ptrs, (16, 16))
    return ptrs


@triton.jit
def _load_panel(base, rows, k, C, k_len, stride_c, MASK_C: tl.constexpr, MASK_K: tl.constexpr, ALIGNED: tl.constexpr):
    """Features [rows, k] of one map; zeros past C channels and past the level's end."""
    ptrs = _panel_pointers(base, rows, k, stride_c, ALIGNED)
    if MASK_C and MASK_K:
        return tl.load(ptrs, mask=(rows[:, None] < C) & (k[None, :] < k_len), other=0.0)
    elif MASK_C:
        return tl.load(ptrs, mask=(rows[:, None] < C) & (k[None, :] >= 0), other=0.0)
    elif MASK_K:
        return tl.load(ptrs, mask=(rows[:, None] >= 0) & (k[None, :] < k_len), other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _channel_order(BLOCK_C: tl.constexpr, LOW: tl.constexpr, TILE_ORDER: tl.constexpr):
    """Channel offset held by each row of a block.

    Plain order is the identity. In tile order, row p = (hi, a, lo) in
    row-major order, sizes (BLOCK_C / (4 LOW), 4, LOW), holds channel
    4 (hi LOW + lo) + a: entry a of tile hi LOW + lo. Rows take LOW = 4 and
    columns LOW = 8, which on sm_90's dot layout puts a tile's 16 entries
    in one thread's registers, or two threads' (see _as_tiles).
    """
    p = tl.arange(0, BLOCK_C)
    if TILE_ORDER:
        p = 4 * ((p // (4 * LOW)) * LOW + p % LOW) + (p // LOW) % 4
    return p


@triton.jit
def _gram_step(
    g, h, base, base2, rows, cols, k, C, k_len, stride_c, stride2,
    MASK_C: tl.constexpr, MASK_K: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr, TWO: tl.constexpr,
):
    """Add one chunk of positions to a Gram block g; with TWO, the same chunk
    of a second map of the same length (base2, stride2) to h as well: two
    independent products a step."""
    a = _load_panel(base, rows, k, C, k_len, stride_c, MASK_C, MASK_K, ALIGNED)
    c = _load_panel(base, cols, k, C, k_len, stride_c, MASK_C, MASK_K, ALIGNED)
    if TWO:
        a2 = _load_panel(base2, rows, k, C, k_len, stride2, MASK_C, MASK_K, ALIGNED)
        c2 = _load_panel(base2, cols, k, C, k_len, stride2, MASK_C, MASK_K, ALIGNED)
        h = tl.dot(a2, tl.trans(c2), h, input_precision=PRECISION, out_dtype=h.dtype)
    return tl.dot(a, tl.trans(c), g, input_precision=PRECISION, out_dtype=g.dtype), h


@triton.jit
def _gram_block(
    base, base2, bi, bj, k_len, C, stride_c, stride2,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, TWO: tl.constexpr,
):
    """Block (bi, bj) of one image's Gram matrix over its k_len positions,
    BLOCK_C x BLOCK_C in ACC precision; with TWO, of a second map of the same
    length too, in the same loop (else the second block is zeros).

    Whole chunks of BLOCK_K positions load without a mask; the rest of the
    level goes in masked steps of TAIL_K, so a level shorter than BLOCK_K
    (4 x 4 maps have 16 positions) does not multiply BLOCK_K positions of
    zeros. TAIL_K = 0 takes one masked step of BLOCK_K, written without a
    loop: the two forms compile to different register allocations, and
    each launcher takes the one that spills less (tests/sm90.py). With
    ALIGNED, lengths are multiples of 16, so 16-position tail steps need no
    mask.
    """
    rows = bi * BLOCK_C + _channel_order(BLOCK_C, 4, TILE_ORDER)
    cols = bj * BLOCK_C + _channel_order(BLOCK_C, 8, TILE_ORDER)
    g = tl.zeros((BLOCK_C, BLOCK_C), dtype=ACC)
    h = tl.zeros((BLOCK_C, BLOCK_C), dtype=ACC)
    k_whole = k_len - k_len % BLOCK_K
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, k_whole, BLOCK_K):
        g, h = _gram_step(g, h, base, base2, rows, cols, k0 + ks, C, k_len, stride_c, stride2,
                          not EVEN_C, False, PRECISION, ALIGNED, TWO)
    if TAIL_K == 0:
        if k_whole < k_len:
            g, h = _gram_step(g, h, base, base2, rows, cols, k_whole + ks, C, k_len, stride_c, stride2,
                              not EVEN_C, True, PRECISION, ALIGNED, TWO)
    else:
        tail = tl.arange(0, TAIL_K)
        for k0 in range(k_whole, k_len, TAIL_K):
            g, h = _gram_step(g, h, base, base2, rows, cols, k0 + tail, C, k_len, stride_c, stride2,
                              not EVEN_C, not (ALIGNED and TAIL_K == 16), PRECISION, ALIGNED, TWO)
    return g, h


@triton.jit
def _gram_blocks(
    x_base, y_base, bi, bj, kx_len, ky_len, C, sxc, syc,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr,
):
    """Blocks (bi, bj) of both images' Gram matrices. Each image has its own
    number of positions (the two need not share a size); with JOINT (the
    launcher found every level's two lengths equal) x and y advance in one
    loop, two independent products a step."""
    if JOINT:
        gx, gy = _gram_block(x_base, y_base, bi, bj, kx_len, C, sxc, syc,
                             BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, True)
    else:
        gx, _ = _gram_block(x_base, x_base, bi, bj, kx_len, C, sxc, sxc,
                            BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, False)
        gy, _ = _gram_block(y_base, y_base, bi, bj, ky_len, C, syc, syc,
                            BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, False)
    return gx, gy


@triton.jit
def _as_tiles(g, BLOCK_C: tl.constexpr, TILE_ORDER: tl.constexpr):
    """A block with its rows and columns split into (tile, entry) axes.

    Plain order: (NT, 4, NT, 4), tile row, entry, tile column, entry. Tile
    order (see _channel_order): (hi, a, lo, hi, b, lo) with sizes
    (BLOCK_C / 16, 4, 4, BLOCK_C / 32, 4, 8); a and b index a tile's entries.
    """
    if TILE_ORDER:
        return tl.reshape(g, (BLOCK_C // 16, 4, 4, BLOCK_C // 32, 4, 8))
    else:
        return tl.reshape(g, (BLOCK_C // 4, 4, BLOCK_C // 4, 4))


@triton.jit
def _tile_sum(v, TILE_ORDER: tl.constexpr):
    """The sum over each tile's 16 entries, keeping the tile axes."""
    if TILE_ORDER:
        return tl.sum(tl.sum(v, axis=4), axis=1)
    else:
        return tl.sum(tl.sum(v, axis=3), axis=1)


@triton.jit
def _spread(t, TILE_ORDER: tl.constexpr):
    """Per-tile values broadcast back over the entry axes of _as_tiles."""
    if TILE_ORDER:
        return t[:, None, :, :, None, :]
    else:
        return t[:, None, :, None]


@triton.jit
def _centred_tiles(gx, gy, eps, BLOCK_C: tl.constexpr, TILE_ORDER: tl.constexpr):
    """Centred tile entries of both blocks and each tile's score.

    Statistics are taken on centred entries: Gram entries are large and
    positive, so E[x^2] - E[x]^2 would cancel catastrophically. Returns
    dx, dy in _as_tiles's shape, and per tile the score (2 cov + eps) / D and
    D = var_x + var_y + eps.
    """
    ax = _as_tiles(gx, BLOCK_C, TILE_ORDER)
    ay = _as_tiles(gy, BLOCK_C, TILE_ORDER)
    dx = ax - _spread(_tile_sum(ax, TILE_ORDER) / 16, TILE_ORDER)
    dy = ay - _spread(_tile_sum(ay, TILE_ORDER) / 16, TILE_ORDER)
    var_x = _tile_sum(dx * dx, TILE_ORDER) / 16
    var_y = _tile_sum(dy * dy, TILE_ORDER) / 16
    cov = _tile_sum(dx * dy, TILE_ORDER) / 16
    denom = var_x + var_y + eps
    return dx, dy, (2 * cov + eps) / denom, denom


@triton.jit
def _tiles_within(bi, bj, C, BLOCK_C: tl.constexpr, TILE_ORDER: tl.constexpr):
    """Which tiles of block (bi, bj) lie inside C x C, in _tile_sum's shape.

    Tiles past C (a multiple of 4, not of BLOCK_C) are padding.
    """
    if TILE_ORDER:
        rows = 4 * (4 * tl.arange(0, BLOCK_C // 16)[:, None] + tl.arange(0, 4)[None, :])
        cols = 4 * (8 * tl.arange(0, BLOCK_C // 32)[:, None] + tl.arange(0, 8)[None, :])
        return (bi * BLOCK_C + rows[:, :, None, None] < C) & (bj * BLOCK_C + cols[None, None, :, :] < C)
    else:
        tiles = 4 * tl.arange(0, BLOCK_C // 4)
        return (bi * BLOCK_C + tiles[:, None] < C) & (bj * BLOCK_C + tiles[None, :] < C)


@triton.jit
def _level_setup(meta_ptr, level, b, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5):
    """This level's feature bases for image b, both lengths and channel strides.

    They come from a table, so the compiler cannot see that they are
    multiples of 16 (hints on these scalars do not reach the compiled code);
    _panel_pointers says it of the pointers instead.
    """
    row = meta_ptr + level * 6  # a row of level_table: x length, strides (b, c), then y's
    kx_len = tl.load(row).to(tl.int32)
    x_base = _pick(level, x0, x1, x2, x3, x4, x5) + b.to(tl.int64) * tl.load(row + 1)
    sxc = tl.load(row + 2).to(tl.int32)
    ky_len = tl.load(row + 3).to(tl.int32)
    y_base = _pick(level, y0, y1, y2, y3, y4, y5) + b.to(tl.int64) * tl.load(row + 4)
    syc = tl.load(row + 5).to(tl.int32)
    return x_base, y_base, kx_len, ky_len, sxc, syc


@triton.jit
def _folded_width(C, BLOCK_C: tl.constexpr):
    """Width of the upper triangle of block pairs folded into a rectangle (see _block_pair)."""
    nb = tl.cdiv(C, BLOCK_C)
    return nb + 1 - nb % 2


@triton.jit
def _block_pair(r, c, C, BLOCK_C: tl.constexpr):
    """Block pair (bi, bj), bi <= bj, at (row r, column c) of the folded triangle.

    Row i of the triangle of nb x nb blocks holds nb - i pairs. Rows i and
    nb - 1 - i (nb even) or nb - i (nb odd; row 0 alone) together hold
    _folded_width pairs, so the triangle folds into a rectangle of that
    width and ceil(nb / 2) rows, which the grid covers exactly: a program
    finds its pair with a few integer operations, and loads nothing before
    the features.
    """
    nb = tl.cdiv(C, BLOCK_C)
    partner = nb - 1 - r + nb % 2
    first = c < nb - r
    bi = tl.where(first, r, partner)
    bj = tl.where(first, r + c, partner + c - (nb - r))
    return bi, bj


@triton.jit
def _gram_ssim_forward_kernel(
    x0, x1, x2, x3, x4, x5,  # per-level features of image x, (B, C, h_l, w_l); unused levels repeat x0
    y0, y1, y2, y3, y4, y5,  # per-level features of image y
    meta_ptr,     # (L, 6) int64 per level: x's length and strides (b, c), then y's
    partial_ptr,  # (B * L, programs per image and level, or T if PERSISTENT) partial sums, ACC dtype
    eps_ptr,      # (1,) the constant c in ACC dtype (a scalar argument would round it to fp32)
    C, L, T, ITEMS,  # ITEMS = T * B * L block pairs to score
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr,
    PERSISTENT: tl.constexpr, GROUP: tl.constexpr,
):
    """One program per GROUP block pairs side by side in a row of the folded
    triangle (see _block_pair), and per image and level, on a (folded width
    / GROUP, folded rows, B * L) grid; or, if PERSISTENT, a fixed number of
    programs that take every num_programs-th pair in launch order. Each
    program writes one partial sum: partial_ptr is (B * L, T) with T the
    pair count, or the program count per image and level when GROUP > 1.

    A group shares its setup (the level table, the image's bases), mostly
    its row panels (the pairs of a folded row up to the fold share bi), and
    is unrolled, so the next pair's loads can be issued while the current
    pair's statistics run.
    """
    width = _folded_width(C, BLOCK_C)
    eps = tl.load(eps_ptr)
    if PERSISTENT:
        for item in range(tl.program_id(0), ITEMS, tl.num_programs(0)):
            pair = item % T
            image_level = item // T
            x_base, y_base, kx_len, ky_len, sxc, syc = _level_setup(
                meta_ptr, image_level % L, image_level // L, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5)
            total = _score_block_pair(pair // width, pair % width, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
                                      BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
            tl.store(partial_ptr + item, total)
    else:
        image_level = tl.program_id(2)
        r = tl.program_id(1)
        x_base, y_base, kx_len, ky_len, sxc, syc = _level_setup(
            meta_ptr, image_level % L, image_level // L, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5)
        total = _score_block_pair(r, tl.program_id(0) * GROUP, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
                                  BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
        for g in tl.static_range(1, GROUP):
            c = tl.program_id(0) * GROUP + g
            if c < width:
                total += _score_block_pair(r, c, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
                                           BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
        programs = tl.num_programs(0) * tl.num_programs(1)
        tl.store(partial_ptr + image_level * programs + r * tl.num_programs(0) + tl.program_id(0), total)


@triton.jit
def _score_block_pair(
    r, c, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr,
):
    """The sum of tile scores of block pair (r, c) of the folded triangle
    (see _block_pair) of one image and level (its maps as _level_setup
    gives them), counted twice off the diagonal."""
    bi, bj = _block_pair(r, c, C, BLOCK_C)
    gx, gy = _gram_blocks(x_base, y_base, bi, bj, kx_len, ky_len, C, sxc, syc,
                          BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
    _, _, scores, _ = _centred_tiles(gx, gy, eps, BLOCK_C, TILE_ORDER)
    if not EVEN_C:
        scores = tl.where(_tiles_within(bi, bj, C, BLOCK_C, TILE_ORDER), scores, 0.0)
    return tl.sum(scores) * tl.where(bi == bj, 1.0, 2.0)


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


# The kernels were defined for the Triton interpreter (TRITON_INTERPRET=1 when
# triton was imported); only then can they run on CPU tensors.
INTERPRETED = isinstance(_gram_ssim_forward_kernel, InterpretedFunction)


@dataclass(frozen=True)
class Config:
    block_c: int
    block_k: int
    num_warps: int
    num_stages: int
    tile_order: bool = False  # rows and columns in tile order (see _channel_order); block_c >= 32
    tail_k: int = 16  # positions per masked step past the last whole block_k; divides block_k
    persistent: int = 0  # forward only: programs per multiprocessor, each looping over the work; 0: one per item
    group: int = 1  # forward only: block pairs per program, side by side in a row of the folded triangle
    joint: bool = False  # x's and y's Gram blocks in one loop where every level's two lengths are equal
    split: int = 1  # backward only: each row block's sweep over column blocks split across this many programs

    def __post_init__(self):
        if self.tile_order and self.block_c < 32:
            raise ValueError(f"tile order needs block_c >= 32, got {self.block_c}")
        if self.tail_k < 16 or self.block_k % self.tail_k:
            raise ValueError(f"tail_k must be at least 16 and divide block_k ({self.block_k}), got {self.tail_k}")
        if self.persistent < 0:
            raise ValueError(f"persistent must be >= 0 programs per multiprocessor, got {self.persistent}")
        if self.split < 1:
            raise ValueError(f"split must be >= 1 programs per row block, got {self.split}")
        if self.group < 1 or (self.group > 1 and self.persistent):
            raise ValueError(f"group must be >= 1 block pairs per program, and 1 with a persistent grid, "
                             f"got {self.group} (persistent {self.persistent})")


def pick_config(channels: int, dtype: torch.dtype, backward: bool = False, precision: str = "tf32x3") -> Config:
    """Block sizes by a fixed rule, so a shape always runs the same program.

    BLOCK_C is the largest of 64, 32, 16 that divides C, else 16 with the
    last block masked (16 is tl.dot's minimum; masking a larger block costs
    registers the Gram accumulators need); float64 blocks stop at 32, whose
    64-wide blocks spill. Positions per step in the forward: 64 for 64-wide
    float32 blocks (32 under "ieee", which spills at 64 on triton 3.9), else
    32, and 16 for float64 and 16-wide blocks. The backward, which also keeps
    the gradient block live, steps 16 positions. Every program runs 4 warps
    without software pipelining. 64-wide blocks are held in tile order (see
    _channel_order) and step through what is left of a level past its whole
    steps 16 positions at a time. Narrower blocks keep channel order and one
    tail step: their 16-bit and float64 dots use a layout in which tile
    order moves the tile sums across warps (twice the barriers on sm_90),
    and the 16-position tail makes the 32-wide fp32 "ieee" forward spill on
    triton 3.7.

    bench/sweep.py timed the alternatives on an H100 with triton 3.6 (table
    in bench/results): 4 warps and 1 stage beat 8 warps and 2 stages by up
    to 5x, and among configurations that compile without spilling on every
    supported triton this rule is the fastest, or within 12% of it, for each
    workload at C = 512. Tile order and the 16-position tail came later, from
    the compiled code rather than from timings: on sm_90 they cut the
    forward's warp shuffles from about 245 to 27 and its PTX by a quarter,
    and the shortest level's multiply work by up to 4x; bench/sweep.py
    times them against the earlier rule. tests/sm90.py checks every choice
    for sm_90.
    """
    widths = (32,) if dtype == torch.float64 else (64, 32)
    block_c = next((size for size in widths if channels % size == 0), 16)
    if backward or block_c == 16 or dtype == torch.float64:
        block_k = 16
    elif dtype == torch.float32 and block_c == 64 and precision != "ieee":
        block_k = 64
    else:
        block_k = 32
    wide = block_c == 64
    return Config(block_c=block_c, block_k=block_k, num_warps=4, num_stages=1,
                  tile_order=wide, tail_k=16 if wide else block_k)


def gram_precision(dtype: torch.dtype, precision: str) -> str:
    """Dot precision of the Gram products: `precision` for float32 features.

    16-bit products are exact in the fp32 accumulator and float64 dots are
    plain IEEE, so the choice only matters for float32.
    """
    return precision if dtype == torch.float32 else "ieee"


def gradient_precision(dtype: torch.dtype, precision: str) -> str:
    """Dot precision of dScore/dG @ F, whose operands are upcast to fp32 / fp64.

    16-bit features are exact in TF32, but dScore/dG is not, hence tf32x3.
    """
    if dtype == torch.float64:
        return "ieee"
    return precision if dtype == torch.float32 else "tf32x3"


def backward_parts(config: Config, channels: int) -> int:
    """Programs per row block of the backward: config.split, at most one per column block."""
    return min(config.split, triton.cdiv(channels, config.block_c))


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_constants(config: Config, dtype: torch.dtype, precision: str, channels: int, backward: bool,
                     aligned: bool = True, same_lengths: bool = True) -> dict:
    """The compile-time arguments of a launch (tests/sm90.py compiles with the same).

    A tail as long as BLOCK_K is one step; the forward takes it without a
    loop (TAIL_K = 0) and the backward as a loop of one, the forms that
    spill least on sm_90 across the supported tritons. `same_lengths`: each
    level's two maps have the same number of positions (config.joint then
    applies). `aligned`: every length and stride of the maps is a multiple
    of 16 (see all_aligned); only blocks 64 or more wide then vectorise
    their loads (ALIGNED): in 32-wide ones, vector loads made ptxas spill on
    three of the four supported tritons (tests/sm90.py).
    """
    constants = {
        "BLOCK_C": config.block_c,
        "BLOCK_K": config.block_k,
        "EVEN_C": channels % config.block_c == 0,
        "PRECISION": gram_precision(dtype, precision),
        "ACC": tl.float64 if dtype == torch.float64 else tl.float32,
        "TAIL_K": config.tail_k if backward or config.tail_k < config.block_k else 0,
        "TILE_ORDER": config.tile_order,
        "ALIGNED": aligned and config.block_c >= 64,
        "JOINT": config.joint and same_lengths,
    }
    if backward:
        constants["GRAD_PRECISION"] = gradient_precision(dtype, precision)
        constants["SPLIT"] = backward_parts(config, channels)
    else:
        constants["PERSISTENT"] = config.persistent > 0
        constants["GROUP"] = config.group
    return constants


@functools.lru_cache(maxsize=16)
def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 elsewhere (the interpreter
    runs programs one by one, and 2 keeps a persistent grid's striding tested)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


@functools.lru_cache(maxsize=512)
def device_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small read-only tensor made once per value and device.

    Building it on every call would copy from the host each time, which
    synchronises the device (and cannot happen inside a CUDA graph capture).
    """
    return torch.tensor(values, dtype=dtype, device=device)


def folded_grid(blocks: int) -> Tuple[int, int]:
    """(width, rows) of the upper triangle of blocks x blocks block pairs folded
    into a rectangle, as _folded_width and _block_pair read it."""
    return blocks + 1 - blocks % 2, (blocks + 1) // 2


def same_lengths(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> bool:
    """Whether every level's two flat maps have the same number of positions."""
    return all(x.shape[2] == y.shape[2] for x, y in zip(xs, ys))


def all_aligned(maps: Sequence[torch.Tensor]) -> bool:
    """Whether every flat map starts 16-byte aligned and its length and batch
    and channel strides are multiples of 16 elements, so that every run of
    positions a kernel loads starts 16-byte aligned (the kernels then
    vectorise their loads): true of the trunk's maps whenever h * w is a
    multiple of 16."""
    return all(f.data_ptr() % 16 == 0 and f.shape[2] % 16 == 0 and f.stride(0) % 16 == 0 and f.stride(1) % 16 == 0
               for f in maps)


def flat_levels(features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """(B, C, h, w) maps as (B, C, h*w) with contiguous positions.

    NCHW maps (and batch-broadcast or channel-sliced ones) are views; maps
    whose positions are not contiguous, such as channels_last, are copied.
    """
    flats = [f.flatten(2) for f in features]
    return [f if f.stride(2) == 1 or f.shape[2] == 1 else f.contiguous() for f in flats]


def level_table(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """(L, 6) int64: per level, x's length (positions) and batch and channel
    strides, then y's. The two images' lengths differ when their sizes do."""
    layouts = tuple((tuple(f.shape), f.stride()) for f in list(xs) + list(ys))
    return _level_table(layouts, len(xs), xs[0].device)


@functools.lru_cache(maxsize=256)
def _level_table(layouts: tuple, levels: int, device: torch.device) -> torch.Tensor:
    """level_table from the maps' (shape, strides), cached: it runs on every launch."""
    for shape, strides in layouts:
        extent = sum((size - 1) * abs(stride) for size, stride in zip(shape[1:], strides[1:]))
        if extent >= 2**31:
            raise ValueError(f"feature maps of shape {shape} are too large for 32-bit offsets per image")
    xs, ys = layouts[:levels], layouts[levels:]
    rows = tuple((x[0][2], x[1][0], x[1][1], y[0][2], y[1][0], y[1][1]) for x, y in zip(xs, ys))
    return device_constant(rows, torch.int64, device)


def padded(tensors: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """Pad a per-level list to MAX_LEVELS arguments by repeating the first."""
    return list(tensors) + [tensors[0]] * (MAX_LEVELS - len(tensors))


def check_levels(levels: int) -> None:
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"the Triton head takes 1 to {MAX_LEVELS} levels, got {levels}")


def gram_ssim_forward(
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    eps: float,
    precision: str = "tf32x3",
    config: Optional[Config] = None,
) -> torch.Tensor:
    """Launch the forward kernel over every level at once.

    Args:
        xs, ys: per-level feature maps (B, C, h_l, w_l) of both images; any
            strides (maps whose positions are not contiguous are copied).
        eps: the tile score's constant c.
        precision: dot precision for float32 features (see PRECISIONS).
        config: block sizes and launch settings instead of pick_config's
            (bench/sweep.py times alternatives through this).

    Returns:
        (B, L) mean tile scores, float64 for float64 inputs, float32 otherwise.
    """
    check_levels(len(xs))
    fx, fy = flat_levels(xs), flat_levels(ys)
    batch, channels = fx[0].shape[:2]
    levels = len(fx)
    config = config or pick_config(channels, fx[0].dtype, precision=precision)
    acc = accumulator_dtype(fx[0].dtype)
    device = fx[0].device
    blocks = triton.cdiv(channels, config.block_c)
    pairs = blocks * (blocks + 1) // 2
    items = pairs * batch * levels
    if config.persistent:
        grid = (min(items, config.persistent * multiprocessors(device)),)
        partials = torch.empty(batch * levels, pairs, dtype=acc, device=device)
    else:  # the upper triangle of block pairs folded into a rectangle (see _block_pair)
        width, rows = folded_grid(blocks)
        grid = (triton.cdiv(width, config.group), rows, batch * levels)
        partials = torch.empty(batch * levels, grid[0] * grid[1], dtype=acc, device=device)
    _gram_ssim_forward_kernel[grid](
        *padded(fx), *padded(fy), level_table(fx, fy), partials,
        device_constant((eps,), acc, device),
        channels, levels, pairs, items,
        **kernel_constants(config, fx[0].dtype, precision, channels, backward=False, aligned=all_aligned(fx + fy),
                           same_lengths=same_lengths(fx, fy)),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    tiles = (channels // TILE) ** 2
    return (partials.sum(dim=1) / tiles).view(batch, levels)


def gram_ssim_backward(
    grad: torch.Tensor,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    eps: float,
    precision: str = "tf32x3",
    config: Optional[Config] = None,
) -> List[torch.Tensor]:
    """Gradient of the (B, L) scores with respect to every level of `xs`.

    Args:
        grad: (B, L) upstream gradient.
        xs, ys, eps, precision, config: as for gram_ssim_forward. The score
            is symmetric, so swapping xs and ys gives the gradient for ys.

    Returns:
        Per-level gradients (B, C, h_l, w_l), contiguous, in float32
        (float64 for float64 features).
    """
    check_levels(len(xs))
    fx, fy = flat_levels(xs), flat_levels(ys)
    batch, channels = fx[0].shape[:2]
    levels = len(fx)
    config = config or pick_config(channels, fx[0].dtype, backward=True, precision=precision)
    acc = accumulator_dtype(fx[0].dtype)
    device = fx[0].device
    blocks = triton.cdiv(channels, config.block_c)
    split = backward_parts(config, channels)
    # Every row and position is written (by each part), so no zero fill is needed.
    grads = [torch.empty((split, *f.shape), dtype=acc, device=device) for f in xs]
    _gram_ssim_backward_kernel[(blocks, batch * levels, split)](
        *padded(fx), *padded(fy), *padded(grads),
        level_table(fx, fy), (grad.to(acc) / (channels // TILE) ** 2).contiguous(),
        device_constant((eps,), acc, device),
        channels, levels, blocks,
        **kernel_constants(config, fx[0].dtype, precision, channels, backward=True, aligned=all_aligned(fx + fy),
                           same_lengths=same_lengths(fx, fy)),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return [g[0] if split == 1 else g.sum(0) for g in grads]  # parts summed in order: deterministic
