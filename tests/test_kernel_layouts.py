"""Every block layout and option a Config can ask for gives the oracle's
scores and reference gradients: plain or tile-ordered rows and columns,
whole blocks or a masked last block, tails in one step or in 16-position
steps, one program per block pair or a persistent few, small levels in a
kernel of their own, both gradients from one launch, gradient rows held in
registers, 16-bit gradient products."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import relative_error, relu_features, require_triton, rounding_rtol, tile_condition
from msds.metric import reference
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
# Levels of at most `small` positions in the small-level kernel: lengths below,
# at and above 16 (one step of 16, 32 or 64 positions), every level small or
# mixed with others (also beside a persistent or grouped main launch), groups
# that divide the block pairs or not, x and y of different lengths.
SMALL = [
    (Config(32, 32, 4, 1, small=64, small_group=3), 100, [(9, 9), (5, 5), (3, 1)]),
    (Config(64, 64, 4, 1, tile_order=True, tail_k=16, small=16, small_group=2), 100, [(9, 9), (4, 4), (2, 2)]),
    (Config(16, 16, 4, 1, small=64, small_group=5, joint=True), 64, [(4, 4), (8, 8), (4, 5), (1, 1), (2, 3), (6, 6)]),
    (Config(32, 16, 4, 1, small=32, small_group=1, persistent=1), 36, [(7, 7), (4, 8), (1, 3)]),
    (Config(16, 16, 4, 1, small=64, small_group=4, group=2), 48, [(9, 8), (3, 3)]),
]
# Backward options: both images' gradients from one launch; gradient rows in
# registers for the levels short enough (alone, beside streamed levels, with
# a split sweep, with both images); lengths below and at the held width.
BACKWARD_OPTIONS = [
    (Config(32, 16, 4, 1, both=True), 100, [(5, 5), (3, 1)]),
    (Config(32, 16, 4, 1, both=True, joint=True, split=2), 100, [(4, 4), (2, 2)]),
    (Config(16, 16, 4, 1, resident=32), 36, [(4, 8), (3, 3), (1, 1)]),
    (Config(32, 16, 4, 1, resident=16, both=True), 100, [(9, 9), (4, 4), (3, 1)]),
    (Config(64, 16, 4, 1, tile_order=True, resident=64, split=2), 100, [(9, 9), (4, 4), (2, 2)]),
    (Config(32, 32, 4, 1, tile_order=True, tail_k=16, resident=64, both=True), 64, [(7, 9), (2, 5)]),
]
IDS = [f"C{c}-{'tiles' if cfg.tile_order else 'plain'}-{cfg.block_c}x{cfg.block_k}-tail{cfg.tail_k}"
       + ("-joint" if cfg.joint else "") + (f"-split{cfg.split}" if cfg.split > 1 else "")
       for cfg, c, _ in CASES + JOINT + SPLIT]


def pairs(channels, sizes, generator):
    fxs = [relu_features((2, channels, h, w), generator) for h, w in sizes]
    fys = [f + relu_features(f.shape, generator) for f in fxs]
    return fxs, fys


def option_id(config, channels, sizes):
    options = [f"{name}{getattr(config, name)}" for name in ("small", "small_group", "persistent", "group", "split",
                                                             "resident") if getattr(config, name) > 1]
    options += [name for name in ("joint", "both", "tile_order") if getattr(config, name)]
    return f"C{channels}-{config.block_c}x{config.block_k}-L{len(sizes)}-" + "-".join(options)


@pytest.mark.parametrize("config,channels,sizes", CASES + JOINT + PERSISTENT + GROUPED + SMALL,
                         ids=IDS[:len(CASES + JOINT)] + [f"C{c}-persistent{cfg.persistent}" for cfg, c, _ in PERSISTENT]
                         + [f"C{c}-{cfg.block_c}wide-group{cfg.group}" for cfg, c, _ in GROUPED]
                         + [option_id(*case) for case in SMALL])
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


@pytest.mark.parametrize("config,channels,sizes", BACKWARD_OPTIONS, ids=[option_id(*case) for case in BACKWARD_OPTIONS])
def test_both_gradients_match_reference_autograd(config, channels, sizes, rng, device):
    # Disparate lengths too: y's maps are other sizes than x's on the last row.
    fxs, fys = pairs(channels, sizes, rng)
    if config.both and config.tile_order:
        fys = [relu_features((2, channels, h + 1, w), rng) for h, w in sizes]
    upstream = torch.rand(2, len(sizes), generator=rng, dtype=torch.float64)
    xs, ys = [f.clone().requires_grad_() for f in fxs], [f.clone().requires_grad_() for f in fys]
    (reference.multiscale_scores(xs, ys, 1e-6) * upstream).sum().backward()
    got = gram_ssim_backward(upstream.to(device), [f.to(device) for f in fxs], [f.to(device) for f in fys],
                             1e-6, config=config, both=True)
    for g, leaf in zip(got, xs + ys, strict=True):
        assert g.shape == leaf.shape
        torch.testing.assert_close(g.cpu(), leaf.grad, rtol=1e-9, atol=1e-12 * leaf.grad.abs().max().item())


@pytest.mark.full
def test_new_options_pass_gradcheck(rng, device):
    # Forward through small levels, backward with both images from one launch
    # and rows in registers, against finite differences of the kernels' own forward.
    from msds.kernels.gram_ssim import gram_ssim_forward as forward

    config = Config(16, 16, 4, 1, small=16, both=True, resident=16)

    class Head(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *maps):
            ctx.save_for_backward(*maps)
            return forward(maps[:2], maps[2:], 1e-6, config=config)

        @staticmethod
        def backward(ctx, grad):
            maps = ctx.saved_tensors
            return tuple(gram_ssim_backward(grad, maps[:2], maps[2:], 1e-6, config=config, both=True))

    fxs, fys = pairs(16, [(3, 3), (2, 1)], rng)
    maps = [f[:1].to(device).requires_grad_() for f in fxs + fys]
    assert torch.autograd.gradcheck(Head.apply, maps)


@pytest.mark.parametrize("config", [Config(16, 16, 4, 1, small=64, small_group=3),
                                    Config(32, 16, 4, 1, both=True, resident=64, split=2)], ids=["small", "resident"])
def test_new_options_are_bitwise_reproducible(config, rng, device):
    fxs, fys = pairs(48, [(5, 5), (3, 2)], rng)
    fxs, fys = [f.to(device).float() for f in fxs], [f.to(device).float() for f in fys]
    upstream = torch.rand(2, 2, generator=rng).to(device)
    runs = [(gram_ssim_forward(fxs, fys, 1e-6, config=config),
             *gram_ssim_backward(upstream, fxs, fys, 1e-6, config=config, both=True)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_small_levels_with_a_batch_broadcast_reference(rng, device):
    # One reference for the batch (batch stride 0), short enough for the
    # small-level kernel on every level.
    config = Config(32, 32, 4, 1, small=64, small_group=2)
    fxs = [relu_features((3, 64, 4, 4), rng), relu_features((3, 64, 2, 3), rng)]
    fys = [relu_features((1, 64, 4, 4), rng).expand(3, -1, -1, -1), relu_features((1, 64, 3, 3), rng).expand(3, -1, -1, -1)]
    got = gram_ssim_forward([f.to(device) for f in fxs], [f.to(device) for f in fys], 1e-6, config=config)
    exact = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    np.testing.assert_allclose(got.cpu().numpy(), exact, rtol=0, atol=1e-10)


def test_sixteen_bit_gradient_products(rng, device):
    # float16 features: the gradient factor split into two fp16 parts (22 of
    # its bits). Against the default products (tf32x3 on upcast features,
    # the same Gram blocks and statistics): C terms each off by 2**-22 of its
    # size, 10 u sqrt(C) (measured 1.7e-7 to 3.9e-7 against 1.9e-5; the head
    # part alone is off by 1.2e-4 to 1.8e-4). Against float64 autograd on the
    # same rounded values: the float32 bound of the other gradient tests plus
    # that one.
    fxs, fys = pairs(64, [(4, 4), (2, 3)], rng)
    fxs, fys = [f.half() for f in fxs], [f.half() for f in fys]
    upstream = torch.rand(2, 2, generator=rng, dtype=torch.float64)
    xs, ys = [f.double().requires_grad_() for f in fxs], [f.double().requires_grad_() for f in fys]
    (reference.multiscale_scores(xs, ys, 1e-6) * upstream).sum().backward()
    split_bound = 10 * 2.0**-22 * 64**0.5
    bound = (rounding_rtol(16 + 16 + 64) + split_bound) * tile_condition(fxs, fys)
    maps = [f.to(device) for f in fxs], [f.to(device) for f in fys]
    for config in (Config(64, 16, 4, 1, tile_order=True), Config(32, 16, 4, 1, both=True, resident=16)):
        sixteen = replace(config, grad16=True)
        assert kernels.kernel_constants(sixteen, torch.float16, "tf32x3", 64, True)["GRAD16"]
        got = gram_ssim_backward(upstream.float().to(device), *maps, 1e-6, config=sixteen, both=True)
        default = gram_ssim_backward(upstream.float().to(device), *maps, 1e-6, config=config, both=True)
        for g, d, leaf in zip(got, default, xs + ys, strict=True):
            assert relative_error(g, d) <= split_bound, (relative_error(g, d), split_bound)
            assert relative_error(g.cpu(), leaf.grad) <= bound, (relative_error(g.cpu(), leaf.grad), bound)
    assert not kernels.kernel_constants(Config(64, 16, 4, 1, grad16=True), torch.float32, "tf32x3", 64, True)["GRAD16"]


@pytest.mark.parametrize("counts", [(1,), (3, 600, 256), (257, 5)])
def test_finishing_sum_adds_each_rows_partials(counts, rng, device):
    # The forward's last launch: row (b, l) sums its level's count of partials
    # in chunks of 256, ignoring what lies past the count.
    batch, levels, width = 2, len(counts), max(counts)
    partials = torch.rand(batch, levels, width, generator=rng, dtype=torch.float64)
    out = torch.empty(batch, levels, dtype=torch.float64, device=device)
    kernels._finish_kernel[(batch * levels,)](partials.to(device), torch.tensor(counts, dtype=torch.int32).to(device),
                                              out, levels, width, 7, CHUNK=min(256, triton.next_power_of_2(width)))
    expected = np.array([[partials[b, l, :n].numpy().sum() / 7 for l, n in enumerate(counts)] for b in range(batch)])
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-13)


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
    with pytest.raises(ValueError, match=r"small must be 0 \(off\) to 64 positions, got 65"):
        Config(32, 32, 4, 1, small=65)
    with pytest.raises(ValueError, match="small_group must be >= 1 block pairs per program, got 0"):
        Config(32, 32, 4, 1, small_group=0)
    with pytest.raises(ValueError, match=r"resident must be 0 \(off\) to 256 positions, got 512"):
        Config(32, 32, 4, 1, resident=512)


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
