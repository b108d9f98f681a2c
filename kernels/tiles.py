"""Triton helpers shared by the head's kernels: feature panels, Gram blocks,
4x4-tile statistics, the level table and the folded triangle of block pairs.

Layout. A block's rows and columns need not follow channel order: 64-wide
blocks are loaded in tile order (_channel_order), which in sm_90's wgmma
accumulator layout puts a tile's 16 entries in one or two threads'
registers, so its statistics take few warp shuffles.
"""

import triton
import triton.language as tl


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
    row = meta_ptr + level * 7  # a row of level_table: x length, strides (b, c), then y's
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
