"""The forward kernel: each program scores block pairs of one image and level
and writes one partial sum of tile scores."""

import triton
import triton.language as tl

from msds.kernels.tiles import _block_pair, _centred_tiles, _folded_width, _gram_blocks, _level_setup, _tiles_within


@triton.jit
def _gram_ssim_forward_kernel(
    x0, x1, x2, x3, x4, x5,  # per-level features of image x, (B, C, h_l, w_l); unused levels repeat x0
    y0, y1, y2, y3, y4, y5,  # per-level features of image y
    meta_ptr,     # (L, 7) int64 per level: x's length and strides (b, c), then y's, then its output level
    partial_ptr,  # (B, L_OUT, P) partial sums, ACC dtype (see _partial_index)
    eps_ptr,      # (1,) the constant c in ACC dtype (a scalar argument would round it to fp32)
    C, L, T, ITEMS, L_OUT, P,  # ITEMS = T * B * L block pairs to score
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    TAIL_K: tl.constexpr, TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr,
    PERSISTENT: tl.constexpr, GROUP: tl.constexpr,
):
    """One program per GROUP block pairs side by side in a row of the folded
    triangle (see _block_pair), and per image and level, on a (folded width
    / GROUP, folded rows, B * L) grid; or, if PERSISTENT, a fixed number of
    programs that take every num_programs-th pair in launch order. Each
    program writes one partial sum per (image, level) it scores: its index
    among the level's programs, or the pair's if PERSISTENT.

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
            level = image_level % L
            b = image_level // L
            x_base, y_base, kx_len, ky_len, sxc, syc = _level_setup(
                meta_ptr, level, b, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5)
            total = _score_block_pair(pair // width, pair % width, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
                                      BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
            tl.store(_partial_index(partial_ptr, meta_ptr, level, b, L_OUT, P) + pair, total)
    else:
        image_level = tl.program_id(2)
        level = image_level % L
        b = image_level // L
        r = tl.program_id(1)
        x_base, y_base, kx_len, ky_len, sxc, syc = _level_setup(
            meta_ptr, level, b, x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5)
        total = _score_block_pair(r, tl.program_id(0) * GROUP, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
                                  BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
        for g in tl.static_range(1, GROUP):
            c = tl.program_id(0) * GROUP + g
            if c < width:
                total += _score_block_pair(r, c, x_base, y_base, kx_len, ky_len, sxc, syc, eps, C,
                                           BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, TAIL_K, TILE_ORDER, ALIGNED, JOINT)
        tl.store(_partial_index(partial_ptr, meta_ptr, level, b, L_OUT, P)
                 + r * tl.num_programs(0) + tl.program_id(0), total)


@triton.jit
def _partial_index(partial_ptr, meta_ptr, level, b, L_OUT, P):
    """Start of the partial sums of image b at this launch's level `level`:
    row (b, its output level) of the (B, L_OUT, P) buffer that every launch
    of one forward shares (the table's last column maps the one to the other)."""
    out_level = tl.load(meta_ptr + level * 7 + 6)
    return partial_ptr + (b.to(tl.int64) * L_OUT + out_level) * P


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
def _small_level_kernel(
    x_ptr, y_ptr,  # this level's features of x and y, (B, C, KX) and (B, C, KY) with contiguous positions
    partial_ptr,   # (B, L_OUT, P) partial sums shared by the forward's launches, ACC dtype
    eps_ptr,       # (1,) the constant c in ACC dtype
    C, sxb, sxc, syb, syc, PAIRS, L_OUT, P, OUT_LEVEL,
    KX: tl.constexpr, KY: tl.constexpr,  # the level's positions in x and y, known to the compiler
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    TILE_ORDER: tl.constexpr, ALIGNED: tl.constexpr, JOINT: tl.constexpr, GROUP: tl.constexpr,
):
    """A level of at most a few dozen positions: one program scores GROUP
    consecutive block pairs of the folded triangle for one image, on a
    (ceil(PAIRS / GROUP), B) grid.

    The level's lengths are compile-time constants, so each pair's Gram
    blocks take one step of BLOCK_K >= KX, KY positions with no loop, and a
    program pays its setup once for GROUP pairs instead of once a pair. The
    pairs are unrolled, so the next pair's loads can be issued while the
    current pair's statistics run; one image's maps at such a level (C x 64
    values at most) stay in L1 and L2 across them. Strides are arguments,
    which the compiler sees as multiples of 16 where they are.
    """
    b = tl.program_id(1).to(tl.int64)
    x_base = x_ptr + b * sxb
    y_base = y_ptr + b * syb
    eps = tl.load(eps_ptr)
    width = _folded_width(C, BLOCK_C)
    first = tl.program_id(0) * GROUP
    total = _score_block_pair(first // width, first % width, x_base, y_base, KX, KY, sxc, syc, eps, C,
                              BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, 0, TILE_ORDER, ALIGNED, JOINT)
    for g in tl.static_range(1, GROUP):
        t = first + g
        if t < PAIRS:
            total += _score_block_pair(t // width, t % width, x_base, y_base, KX, KY, sxc, syc, eps, C,
                                       BLOCK_C, BLOCK_K, EVEN_C, PRECISION, ACC, 0, TILE_ORDER, ALIGNED, JOINT)
    tl.store(partial_ptr + (b * L_OUT + OUT_LEVEL) * P + tl.program_id(0), total)


@triton.jit
def _finish_kernel(partial_ptr, count_ptr, out_ptr, L, P, TILES, CHUNK: tl.constexpr):
    """out[b, l] = the sum of the first count[l] partials of row (b, l) over TILES.

    One program per (image, level) adds its row in a fixed order (chunk by
    chunk), so the result is deterministic, and the forward needs no
    reduction by torch after its launches.
    """
    row = tl.program_id(0)
    count = tl.load(count_ptr + row % L)
    offsets = tl.arange(0, CHUNK)
    start = partial_ptr + row.to(tl.int64) * P
    total = tl.sum(tl.load(start + offsets, mask=offsets < count, other=0.0))
    for j in range(CHUNK, count, CHUNK):
        total += tl.sum(tl.load(start + j + offsets, mask=j + offsets < count, other=0.0))
    tl.store(out_ptr + row, total / TILES)
