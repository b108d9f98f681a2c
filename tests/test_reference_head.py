"""The reference head against the independent oracle, and its properties."""

import numpy as np
import pytest
import torch

import msds
from msds.metric import reference
from helpers import relu_features
from oracle import deepssim_head, lite_head

# (B, C, h, w) rows: awkward sizes included (1x1 positions, odd, non-square, C = 4).
SHAPES = [
    (1, 4, 1, 1),
    (2, 4, 3, 5),
    (3, 8, 2, 2),
    (1, 12, 7, 1),
    (2, 20, 4, 3),
    (1, 64, 16, 16),
    (2, 36, 5, 9),
    (1, 512, 2, 3),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_ssim_matches_oracle_in_float64(shape, rng):
    fx = relu_features(shape, rng)
    fy = (fx + 0.5 * relu_features(shape, rng)).contiguous()
    got = msds.gram_ssim(fx, fy, backend="reference")
    assert got.dtype == torch.float64 and got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), deepssim_head(fx, fy), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 4, 3, 2), (1, 16, 5, 5), (2, 8, 1, 7)])
def test_oracle_loop_and_window_forms_agree(shape, rng):
    fx, fy = relu_features(shape, rng), relu_features(shape, rng)
    np.testing.assert_allclose(deepssim_head(fx, fy, loops=True), deepssim_head(fx, fy), rtol=0, atol=1e-12)
    np.testing.assert_allclose(msds.gram_ssim(fx, fy).numpy(), deepssim_head(fx, fy, loops=True), atol=1e-10)


def test_multiscale_matches_oracle_per_level(rng):
    sizes = [(9, 11), (4, 5), (2, 2), (1, 1)]
    fxs = [relu_features((3, 24, h, w), rng) for h, w in sizes]
    fys = [relu_features((3, 24, h, w), rng) for h, w in sizes]
    got = msds.multiscale_gram_ssim(fxs, fys, backend="reference")
    assert got.shape == (3, len(sizes))
    expected = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eps", [1e-6, 1e-2, 0.0])
def test_eps_is_the_stabilising_constant(eps, rng):
    fx, fy = relu_features((2, 8, 3, 3), rng), relu_features((2, 8, 3, 3), rng)
    got = msds.gram_ssim(fx, fy, eps=eps)
    np.testing.assert_allclose(got.numpy(), deepssim_head(fx, fy, eps=eps), rtol=0, atol=1e-10)


def test_lite_matches_oracle(rng):
    fx, fy = relu_features((3, 16, 4, 6), rng), relu_features((3, 16, 4, 6), rng)
    got = reference.lite_level_score(fx, fy, 1e-6)
    np.testing.assert_allclose(got.numpy(), lite_head(fx, fy), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_identical_inputs_score_exactly_one(dtype, rng):
    fx = relu_features((2, 32, 5, 4), rng, dtype)
    got = msds.gram_ssim(fx, fx.clone())
    assert torch.equal(got, torch.ones_like(got))


def test_symmetric_in_the_two_inputs(rng):
    fx, fy = relu_features((3, 16, 4, 4), rng), relu_features((3, 16, 4, 4), rng)
    torch.testing.assert_close(msds.gram_ssim(fx, fy), msds.gram_ssim(fy, fx), rtol=0, atol=1e-14)


@pytest.mark.parametrize("factor", [0.01, 7.0, 1000.0])
def test_invariant_to_one_positive_scale_with_c_scaled_too(factor, rng):
    # Scaling both maps by k scales every Gram entry by k^2 and the tile
    # variances by k^4; with c scaled by k^4 as well the score is unchanged.
    fx, fy = relu_features((2, 16, 3, 5), rng), relu_features((2, 16, 3, 5), rng)
    base = msds.gram_ssim(fx, fy, eps=1e-6)
    scaled = msds.gram_ssim(fx * factor, fy * factor, eps=1e-6 * factor**4)
    torch.testing.assert_close(scaled, base, rtol=1e-12, atol=1e-12)


def test_nearly_invariant_to_scale_with_fixed_c(rng):
    fx, fy = relu_features((2, 16, 3, 5), rng) * 10, relu_features((2, 16, 3, 5), rng) * 10
    base = msds.gram_ssim(fx, fy)
    torch.testing.assert_close(msds.gram_ssim(3 * fx, 3 * fy), base, rtol=0, atol=1e-9)


def test_low_precision_inputs_use_float32_statistics(rng):
    fx32 = relu_features((2, 16, 4, 4), rng, torch.float32)
    fy32 = relu_features((2, 16, 4, 4), rng, torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        fx, fy = fx32.to(dtype), fy32.to(dtype)
        got = msds.gram_ssim(fx, fy)
        assert got.dtype == torch.float32
        # Exactly the float32 computation on the rounded inputs.
        torch.testing.assert_close(got, msds.gram_ssim(fx.float(), fy.float()), rtol=0, atol=0)


def test_broadcast_and_strided_inputs(rng):
    fx = relu_features((3, 8, 6, 6), rng)
    fy = relu_features((1, 8, 6, 6), rng)
    got = msds.gram_ssim(fx[:, :, ::2, 1:], fy.expand(3, -1, -1, -1)[:, :, ::2, 1:])
    expected = deepssim_head(fx[:, :, ::2, 1:], fy.expand(3, -1, -1, -1)[:, :, ::2, 1:])
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


def test_gradcheck_head_float64(rng):
    fx = relu_features((2, 8, 3, 2), rng).requires_grad_()
    fy = relu_features((2, 8, 3, 2), rng).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: msds.gram_ssim(a, b, backend="reference"), (fx, fy))


def test_gradcheck_multiscale_head_float64(rng):
    fxs = [relu_features((2, 4, h, w), rng).requires_grad_() for h, w in ((3, 3), (1, 2))]
    fys = [relu_features((2, 4, h, w), rng).requires_grad_() for h, w in ((3, 3), (1, 2))]
    assert torch.autograd.gradcheck(
        lambda a0, a1, b0, b1: msds.multiscale_gram_ssim([a0, a1], [b0, b1]), (*fxs, *fys)
    )


def test_gradcheck_lite_float64(rng):
    fx = relu_features((2, 8, 2, 3), rng).requires_grad_()
    fy = relu_features((2, 8, 2, 3), rng).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: reference.lite_level_score(a, b, 1e-6), (fx, fy))
