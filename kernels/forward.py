"""The forward kernel: each program scores block pairs of one image and level
and writes one partial sum of tile scores."""

import triton
import triton.language as tl

from msds.kernels.tiles import _block_pair, _centred_tiles, _folded_width, _gram_blocks, _level_setup, _tiles_within


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
