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
]
# Persistent forwards: a few programs striding over every block pair (two
# "multiprocessors" off the GPU), whether or not they divide the work.
PERSISTENT = [
    (Config(32, 32, 4, 1, tile_order=True, persistent=1), 64, [(5, 5), (3, 1)]),
    (Config(32, 16, 4, 1, tile_order=False, persistent=3), 100, [(2, 3)]),
]
IDS = [f"C{c}-{'tiles' if cfg.tile_order else 'plain'}-{cfg.block_c}x{cfg.block_k}-tail{cfg.tail_k}"
       for cfg, c, _ in CASES]


def pairs(channels, sizes, generator):
    fxs = [relu_features((2, channels, h, w), generator) for h, w in sizes]
    fys = [f + relu_features(f.shape, generator) for f in fxs]
    return fxs, fys


@pytest.mark.parametrize("config,channels,sizes", CASES + PERSISTENT,
                         ids=IDS + [f"C{c}-persistent{cfg.persistent}" for cfg, c, _ in PERSISTENT])
def test_scores_match_the_oracle(config, channels, sizes, rng, device):
    fxs, fys = pairs(channels, sizes, rng)
    got = gram_ssim_forward([f.to(device) for f in fxs], [f.to(device) for f in fys], 1e-6, config=config)
    exact = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    np.testing.assert_allclose(got.cpu().numpy(), exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("config,channels,sizes", CASES, ids=IDS)
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
