"""Every block layout a Config can ask for gives the oracle's scores and
reference gradients: plain or tile-ordered rows and columns, whole blocks or
a masked last block, tails in one step or in 16-position steps, one program
per block pair or a persistent few."""

import numpy as np
import pytest
import torch

from helpers import relu_features, require_triton
from msds import reference
from oracle import deepssim_head

require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from msds.kernels import gram_ssim as kernels  # noqa: E402
from msds.kernels.gram_ssim import Config, gram_ssim_backward, gram_ssim_forward  # noqa: E402

# (config, channels, per-level sizes): tile order with C not a multiple of
# BLOCK_C; levels shorter than BLOCK_K, one whole step plus a tail, and tails
# of several 16-position steps; a tail as long as BLOCK_K in both orders.
CASES = [
    (Config(32, 32, 4, 1, tile_order=True, tail_k=16), 36, [(5, 5), (3, 1)]),
    (Config(64, 64, 4, 1, tile_order=True, tail_k=16), 100, [(9, 9), (4, 4)]),
    (Config(64, 32, 4, 1, tile_order=True, tail_k=32), 64, [(7, 6), (1, 1)]),
    (Config(32, 32, 4, 1, tile_order=False, tail_k=32), 64, [(7, 6), (2, 2)]),
    (Config(64, 32, 4, 1, tile_order=False, tail_k=16), 72, [(6, 9)]),
    (Config(128, 16, 8, 1, tile_order=True, tail_k=16), 200, [(5, 4), (2, 1)]),
]
# Persistent forwards: a few programs striding over every block pair (two
# "multiprocessors" off the GPU), whether or not they divide the work.
PERSISTENT = [
    (Config(32, 32, 4, 1, tile_order=True, persistent=1), 64, [(5, 5), (3, 1)]),
    (Config(32, 16, 4, 1, tile_order=False, persistent=3), 100, [(2, 3)]),
]
# Groups of block pairs per program: dividing the folded width or not, even
# and odd block counts (16 x 16 blocks: 7 of them at C = 100, 4 at 64).
GROUPED = [
    (Config(16, 16, 4, 1, group=2), 100, [(5, 5), (3, 1)]),
    (Config(16, 16, 4, 1, group=3), 64, [(4, 4), (2, 2)]),
    (Config(32, 32, 4, 1, tile_order=True, tail_k=16, group=4), 100, [(7, 6)]),
]
# x and y in one loop (both images' maps of the same length on every level).
JOINT = [
    (Config(32, 32, 4, 1, joint=True), 36, [(5, 5), (3, 1)]),
    (Config(64, 64, 4, 1, tile_order=True, tail_k=16, joint=True), 100, [(9, 9), (4, 4)]),
]
# The backward's sweep over column blocks split across 2 or 3 programs a row
# block (4 blocks at C = 64 with 16-wide blocks; 4 at C = 100 with 32-wide,
# the last partial), and split more ways than there are blocks (C = 36).
SPLIT = [
    (Config(16, 16, 4, 1, split=2), 64, [(5, 5), (3, 1)]),
    (Config(32, 32, 4, 1, tile_order=True, tail_k=16, split=3), 100, [(4, 4), (2, 2)]),
    (Config(32, 32, 4, 1, split=4, joint=True), 36, [(3, 3)]),
]
IDS = [f"C{c}-{'tiles' if cfg.tile_order else 'plain'}-{cfg.block_c}x{cfg.block_k}-tail{cfg.tail_k}"
       + ("-joint" if cfg.joint else "") + (f"-split{cfg.split}" if cfg.split > 1 else "")
       for cfg, c, _ in CASES + JOINT + SPLIT]


def pairs(channels, sizes, generator):
    fxs = [relu_features((2, channels, h, w), generator) for h, w in sizes]
    fys = [f + relu_features(f.shape, generator) for f in fxs]
    return fxs, fys


@pytest.mark.parametrize("config,channels,sizes", CASES + JOINT + PERSISTENT + GROUPED,
                         ids=IDS[:len(CASES + JOINT)] + [f"C{c}-persistent{cfg.persistent}" for cfg, c, _ in PERSISTENT]
                         + [f"C{c}-{cfg.block_c}wide-group{cfg.group}" for cfg, c, _ in GROUPED])
def test_scores_match_the_oracle(config, channels, sizes, rng, device):
    fxs, fys = pairs(channels, sizes, rng)
    got = gram_ssim_forward([f.to(device) for f in fxs], [f.to(device) for f in fys], 1e-6, config=config)
    exact = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    np.testing.assert_allclose(got.cpu().numpy(), exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("config,channels,sizes", CASES + JOINT + SPLIT, ids=IDS)
def test_gradients_match_reference_autograd(config, channels, sizes, rng, device):
    fxs, fys = pairs(channels, sizes, rng)
    upstream = torch.rand(2, len(sizes), generator=rng, dtype=torch.float64)
    leaves = [f.clone().requires_grad_() for f in fxs]
    (reference.multiscale_scores(leaves, fys, 1e-6) * upstream).sum().backward()
    got = gram_ssim_backward(upstream.to(device), [f.to(device) for f in fxs], [f.to(device) for f in fys],
                             1e-6, config=config)
    for g, leaf in zip(got, leaves, strict=True):  # one gradient per level, none missing
        expected = leaf.grad
        torch.testing.assert_close(g.cpu(), expected, rtol=1e-9, atol=1e-12 * expected.abs().max().item())


def test_impossible_configs_are_refused():
    with pytest.raises(ValueError, match="tile order needs block_c >= 32, got 16"):
        Config(16, 16, 4, 1, tile_order=True)
    with pytest.raises(ValueError, match=r"tail_k must be at least 16 and divide block_k \(32\), got 48"):
        Config(32, 32, 4, 1, tail_k=48)
    with pytest.raises(ValueError, match=r"tail_k must be at least 16 and divide block_k \(32\), got 8"):
        Config(32, 32, 4, 1, tail_k=8)
    with pytest.raises(ValueError, match="persistent must be >= 0 programs per multiprocessor, got -1"):
        Config(32, 32, 4, 1, persistent=-1)
    with pytest.raises(ValueError, match="split must be >= 1 programs per row block, got 0"):
        Config(32, 32, 4, 1, split=0)
    with pytest.raises(ValueError, match=r"group must be >= 1 block pairs per program.*got 0"):
        Config(32, 32, 4, 1, group=0)
    with pytest.raises(ValueError, match=r"and 1 with a persistent grid, got 2 \(persistent 2\)"):
        Config(32, 32, 4, 1, group=2, persistent=2)


@triton.jit
def _block_pairs_kernel(out, C, BLOCK_C: tl.constexpr):
    r = tl.program_id(1)
    c = tl.program_id(0)
    bi, bj = kernels._block_pair(r, c, C, BLOCK_C)
    t = r * kernels._folded_width(C, BLOCK_C) + c
    tl.store(out + 2 * t, bi)
    tl.store(out + 2 * t + 1, bj)


@pytest.mark.parametrize("blocks", range(1, 12))
def test_folded_grid_covers_every_block_pair_once(blocks, device):
    # The forward's grid folds the upper triangle of block pairs into a
    # rectangle; every pair (bi <= bj) must come out exactly once.
    width, rows = kernels.folded_grid(blocks)
    out = torch.full((width * rows, 2), -1, dtype=torch.int32, device=device)
    _block_pairs_kernel[(width, rows)](out, 16 * blocks - 4, BLOCK_C=16)  # a partial last block too
    got = sorted(map(tuple, out.cpu().tolist()))
    assert got == [(i, j) for i in range(blocks) for j in range(i, blocks)]


def offset_copy(f, elements):
    """f's values `elements` past the start of a buffer: the same map, not 16-byte aligned."""
    buffer = torch.empty(f.numel() + elements, dtype=f.dtype, device=f.device)
    view = buffer[elements:].view(f.shape)
    view.copy_(f)
    return view


def test_aligned_and_unaligned_maps_give_the_same_exact_results(rng, device):
    # 64 channels of 4x4 and 8x4 maps: every length and stride a multiple of
    # 16, so the kernels take vector loads (ALIGNED); the same values one
    # element into a buffer take the general path. Both match the oracle and
    # float64 autograd.
    fxs, fys = pairs(64, [(4, 4), (8, 4)], rng)
    fxs, fys = [f.to(device) for f in fxs], [f.to(device) for f in fys]
    moved = [offset_copy(f, 1) for f in fxs], [offset_copy(f, 1) for f in fys]
    assert kernels.all_aligned(kernels.flat_levels(fxs + fys))
    assert not kernels.all_aligned(kernels.flat_levels(moved[0] + moved[1]))
    assert kernels.kernel_constants(Config(64, 16, 4, 1, tile_order=True), torch.float64, "ieee", 64, False)["ALIGNED"]
    exact = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    upstream = torch.rand(2, 2, generator=rng, dtype=torch.float64)
    leaves = [f.cpu().clone().requires_grad_() for f in fxs]
    (reference.multiscale_scores(leaves, [f.cpu() for f in fys], 1e-6) * upstream).sum().backward()
    for config in (Config(64, 16, 4, 1, tile_order=True), Config(64, 32, 4, 1, tile_order=True, tail_k=16),
                   Config(128, 16, 8, 1, tile_order=True)):  # a 128-wide block, masked past C = 64
        for xs, ys in ((fxs, fys), moved):
            got = gram_ssim_forward(xs, ys, 1e-6, config=config)
            np.testing.assert_allclose(got.cpu().numpy(), exact, rtol=0, atol=1e-10)
            grads = gram_ssim_backward(upstream.to(device), xs, ys, 1e-6, config=config)
            for g, leaf in zip(grads, leaves, strict=True):
                torch.testing.assert_close(g.cpu(), leaf.grad, rtol=1e-9, atol=1e-12 * leaf.grad.abs().max().item())


def test_joint_loop_only_where_lengths_agree(rng, device):
    # A joint configuration on maps whose lengths differ takes separate loops
    # (the launcher checks), and both give the oracle's scores and gradients.
    config = Config(32, 32, 4, 1, joint=True)
    assert kernels.kernel_constants(config, torch.float64, "ieee", 64, False, same_lengths=True)["JOINT"]
    assert not kernels.kernel_constants(config, torch.float64, "ieee", 64, False, same_lengths=False)["JOINT"]
    fxs = [relu_features((2, 64, 3, 4), rng)]
    fys = [relu_features((2, 64, 5, 5), rng)]
    assert not kernels.same_lengths(kernels.flat_levels(fxs), kernels.flat_levels(fys))
    got = gram_ssim_forward([f.to(device) for f in fxs], [f.to(device) for f in fys], 1e-6, config=config)
    np.testing.assert_allclose(got.cpu().numpy(), deepssim_head(fxs[0], fys[0])[:, None], rtol=0, atol=1e-10)
    leaves = [f.clone().requires_grad_() for f in fxs]
    reference.multiscale_scores(leaves, fys, 1e-6).sum().backward()
    (grad,) = gram_ssim_backward(torch.ones(2, 1, dtype=torch.float64, device=device), [f.to(device) for f in fxs],
                                 [f.to(device) for f in fys], 1e-6, config=config)
    torch.testing.assert_close(grad.cpu(), leaves[0].grad, rtol=1e-9, atol=1e-12 * leaves[0].grad.abs().max().item())


def test_joint_loop_with_other_strides_for_y(rng, device):
    # Same lengths, other layouts: y a batch-broadcast reference of every
    # other channel of wider maps, so its batch and channel strides differ
    # from x's.
    config = Config(32, 32, 4, 1, joint=True)
    fxs = [relu_features((2, 64, 4, 4), rng), relu_features((2, 64, 2, 3), rng)]
    wide = [relu_features((1, 128, 4, 4), rng), relu_features((1, 128, 2, 3), rng)]
    fys = [f[:, ::2].expand(2, -1, -1, -1) for f in wide]
    got = gram_ssim_forward([f.to(device) for f in fxs], [f.to(device) for f in fys], 1e-6, config=config)
    exact = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    np.testing.assert_allclose(got.cpu().numpy(), exact, rtol=0, atol=1e-10)
