"""Images and references of different sizes (retargeted, cropped, shifted), against the oracle.

DeepSSIM compares two C x C Gram matrices, so x and y need only share the
batch size: every path that takes a pair is checked here with unequal
heights and widths, in float64 to 1e-10 against tests/oracle.py, and the
kernels (under the interpreter) with unequal lengths on the same level.
"""

import numpy as np
import pytest
import torch

import msds
from helpers import assert_scores_within_rounding, images, relu_features, require_triton, state_of
from msds.metric import reference
from oracle import deepssim_head, lite_head, msds_level_scores, trunk_np


def near(x, generator):
    """An image a little different from x, the same size."""
    return (x + 0.1 * torch.rand(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)


def resized(x, size):
    """x resampled to `size`: a retargeted copy, structurally close to x."""
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


# (levels, B, x's (H, W), y's (H, W)): y wider, narrower, taller, shorter,
# odd sizes, and one side of one image exactly at the minimum for the levels.
MODULE_PAIRS = [
    (1, 2, (16, 16), (23, 40)),
    (1, 1, (35, 48), (16, 30)),
    (2, 1, (37, 33), (32, 64)),
    (2, 2, (40, 90), (45, 32)),
    (3, 1, (64, 71), (90, 64)),
    (4, 1, (128, 131), (150, 128)),
]
MODULE_IDS = [f"L{l}-B{b}-{hx}x{wx}-vs-{hy}x{wy}" for l, b, (hx, wx), (hy, wy) in MODULE_PAIRS]


@pytest.mark.parametrize("levels,batch,x_size,y_size", MODULE_PAIRS, ids=MODULE_IDS)
def test_msds_level_scores_match_oracle(levels, batch, x_size, y_size, rng):
    model = msds.MSDS(levels=levels, weights=None).double()
    x = images((batch, 3, *x_size), rng)
    y = near(resized(x, y_size), rng)
    got = model.level_scores(x, y)
    assert got.shape == (batch, levels) and got.dtype == torch.float64
    expected = msds_level_scores(x, y, state_of(model), levels)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)
    # The fused score and the loss follow from the same level scores.
    weights = model.fusion_weights().double().detach().numpy()
    np.testing.assert_allclose(model(x, y).detach().numpy(), expected @ weights, rtol=0, atol=1e-10)


@pytest.mark.parametrize("x_size,y_size", [((35, 48), (16, 30)), ((32, 32), (48, 20)), ((17, 53), (40, 16))])
def test_deepssim_plain_masks_and_lite_match_oracle(x_size, y_size, rng):
    x = images((2, 3, *x_size), rng)
    y = near(resized(x, y_size), rng)
    plain = msds.DeepSSIM(weights=None).double()
    state = state_of(plain)
    fx, fy = trunk_np(x, state), trunk_np(y, state)
    np.testing.assert_allclose(plain(x, y).numpy(), deepssim_head(fx, fy), rtol=0, atol=1e-10)

    mask_x = (torch.rand(2, 1, *x_size, generator=rng) > 0.4).double()
    mask_y = (torch.rand(2, *y_size, generator=rng) > 0.4).double()  # (B, H, W) form
    expected = deepssim_head(trunk_np(x, state, mask_x), trunk_np(y, state, mask_y[:, None]))
    np.testing.assert_allclose(plain(x, y, mask_x, mask_y).numpy(), expected, rtol=0, atol=1e-10)

    lite = msds.DeepSSIM(weights=None, lite=True).double()
    np.testing.assert_allclose(lite(x, y).numpy(), lite_head(fx, fy), rtol=0, atol=1e-10)
    lite_loss = msds.DeepSSIM(weights=None, lite=True, as_loss=True).double()
    np.testing.assert_allclose(lite_loss(x, y).item(), 1 - lite_head(fx, fy).mean(), rtol=0, atol=1e-10)


def test_lite_normalises_each_gram_by_its_own_size(rng):
    # A feature map and the same map tiled twice along the width have Grams
    # that differ by exactly 2, and equal Grams after dividing by C * h * w.
    fx = relu_features((1, 8, 3, 5), rng)
    fy = torch.cat([fx, fx], dim=3)
    assert reference.lite_level_score(fx, fy, 1e-6).item() == pytest.approx(1.0, abs=1e-12)
    assert lite_head(fx, fy)[0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.full
def test_fast_path_and_kernels_with_different_sizes(rng):
    # Separate trunk passes where sizes differ; the Triton head (interpreter) reads them in place.
    require_triton()
    x = images((2, 3, 40, 33), rng)
    y = near(resized(x, (32, 56)), rng)
    expected = msds_level_scores(x, y, state_of(msds.MSDS(levels=2, weights=None)), 2)
    for options in ({"fast": True}, {"fast": True, "backend": "triton"}, {"fast": False}):
        model = msds.MSDS(levels=2, weights=None, **options).double()
        np.testing.assert_allclose(model.level_scores(x, y).numpy(), expected, rtol=0, atol=1e-10, err_msg=str(options))


def test_gradcheck_for_both_images(rng):
    model = msds.MSDS(levels=1, weights=None).double()
    x = images((1, 3, 16, 16), rng).requires_grad_()
    y = images((1, 3, 20, 24), rng).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: model(a, b), (x, y), fast_mode=True)


def test_loss_step_with_prediction_and_target_of_different_sizes(rng):
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True).double()
    target = images((2, 3, 48, 40), rng)
    pred = near(resized(target, (32, 36)), rng).requires_grad_()
    loss = loss_fn(pred, target)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
    with torch.no_grad():
        stepped = pred - 1e-2 * pred.grad / pred.grad.abs().max()
    assert loss_fn(stepped, target).item() < loss.item()


def test_precompute_scores_test_images_of_several_sizes(rng):
    model = msds.MSDS(levels=2, weights=None).double()
    y = images((1, 3, 48, 64), rng)
    reference_features = model.precompute(y)
    for size, batch in (((32, 32), 3), ((64, 48), 2), ((50, 91), 1)):
        x = near(resized(y, size), rng).expand(batch, -1, -1, -1).contiguous()
        got = model.level_scores(x, reference_features)
        torch.testing.assert_close(got, model.level_scores(x, y.expand(batch, -1, -1, -1)), rtol=0, atol=1e-12)
        expected = msds_level_scores(x, y.expand(batch, -1, -1, -1), state_of(model), 2)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case,call,message", [
    ("x too small", lambda m, r: m(images((1, 3, 31, 64), r), images((1, 3, 64, 64), r)),
     "x: expected images of at least 32x32 pixels for levels=2"),
    ("y too small", lambda m, r: m(images((1, 3, 64, 64), r), images((1, 3, 64, 20), r)),
     "y: expected images of at least 32x32 pixels for levels=2"),
    ("different batch sizes", lambda m, r: m(images((2, 3, 32, 32), r), images((3, 3, 40, 32), r)),
     r"y: expected the batch size of x \(2\), got 3"),
    ("reference batch", lambda m, r: m(images((3, 3, 32, 32), r), m.precompute(images((2, 3, 40, 40), r))),
     r"x: expected a batch of 2 images like the precomputed reference"),
])
def test_refused_pairs_name_the_image(case, call, message, rng):
    model = msds.MSDS(levels=2, weights=None).double()
    with pytest.raises(ValueError, match=message):
        call(model, rng)


def test_mask_of_the_other_images_size_is_refused(rng):
    model = msds.DeepSSIM(weights=None).double()
    x, y = images((2, 3, 35, 48), rng), images((2, 3, 16, 30), rng)
    with pytest.raises(ValueError, match=r"mask_x: expected a mask of shape \(2, 1, 35, 48\)"):
        model(x, y, mask_x=torch.ones(2, 1, 16, 30, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mask_y: expected a mask of shape \(2, 1, 16, 30\)"):
        model(x, y, mask_y=torch.ones(2, 35, 48, dtype=torch.float64))


@pytest.mark.parametrize("fy_shape,message", [
    ((3, 8, 4, 4), r"fy: expected the batch size and channel count of fx \(B, C\) = \(2, 8\), got \(3, 8\)"),
    ((2, 12, 4, 4), r"fy: expected the batch size and channel count of fx \(B, C\) = \(2, 8\), got \(2, 12\)"),
    ((2, 8, 0, 4), r"fy: expected B, h and w all >= 1"),
])
def test_head_refuses_pairs_that_do_not_share_batch_and_channels(fy_shape, message):
    with pytest.raises(ValueError, match=message):
        msds.gram_ssim(torch.rand(2, 8, 3, 5), torch.rand(fy_shape))


# Kernels: (B, C, per level ((hx, wx), (hy, wy))). Position blocks are 16
# (float64) or 32 (float32 forward) long: lengths below one block, exactly
# one, above, and not multiples of it, on the same level; C with a partial
# channel block (12, 20) and whole ones.
KERNEL_ROWS = [
    (2, 12, [((1, 3), (5, 7))]),
    (1, 64, [((4, 4), (1, 1)), ((2, 9), (5, 5))]),
    (3, 32, [((7, 5), (2, 3)), ((1, 1), (6, 6)), ((3, 3), (3, 3))]),
    (1, 8, [((16, 16), (3, 11))]),
    (2, 20, [((1, 17), (9, 2))]),
]
KERNEL_IDS = [f"B{b}-C{c}-" + "_".join(f"{hx}x{wx}v{hy}x{wy}" for (hx, wx), (hy, wy) in s)
              for b, c, s in KERNEL_ROWS]


def kernel_features(batch, channels, sizes, generator, dtype=torch.float64):
    fxs = [relu_features((batch, channels, *x_size), generator, dtype) for x_size, _ in sizes]
    fys = [relu_features((batch, channels, *y_size), generator, dtype) for _, y_size in sizes]
    return fxs, fys


@pytest.mark.parametrize("batch,channels,sizes", KERNEL_ROWS, ids=KERNEL_IDS)
def test_kernel_forward_matches_oracle(batch, channels, sizes, rng, device):
    require_triton()
    fxs, fys = kernel_features(batch, channels, sizes, rng)
    expected = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    got = msds.multiscale_gram_ssim([f.to(device) for f in fxs], [f.to(device) for f in fys], backend="triton")
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=0, atol=1e-10)
    swapped = msds.multiscale_gram_ssim([f.to(device) for f in fys], [f.to(device) for f in fxs], backend="triton")
    np.testing.assert_allclose(swapped.cpu().numpy(), expected, rtol=0, atol=1e-10)
    # float32: within rounding (tests/helpers.py) of the exact scores of the float32 values.
    low_x, low_y = [f.float().to(device) for f in fxs], [f.float().to(device) for f in fys]
    assert_scores_within_rounding(msds.multiscale_gram_ssim(low_x, low_y, backend="triton"), low_x, low_y)


@pytest.mark.parametrize("batch,channels,sizes", KERNEL_ROWS, ids=KERNEL_IDS)
def test_kernel_gradients_for_both_images_match_float64_autograd(batch, channels, sizes, rng, device):
    require_triton()
    fxs, fys = kernel_features(batch, channels, sizes, rng)
    weights = torch.rand(batch, len(sizes), generator=rng, dtype=torch.float64)

    def grads(head, xs, ys):
        xs = [f.to(device).requires_grad_() for f in xs]
        ys = [f.to(device).requires_grad_() for f in ys]
        return torch.autograd.grad((head(xs, ys) * weights.to(device)).sum(), xs + ys)

    got = grads(lambda a, b: msds.multiscale_gram_ssim(a, b, backend="triton"), fxs, fys)
    expected = grads(lambda a, b: reference.multiscale_scores(a, b, 1e-6), fxs, fys)
    for g, e, f in zip(got, expected, fxs + fys, strict=True):
        assert g.shape == f.shape
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12 * e.abs().max().item())


def test_kernel_gradcheck_with_unequal_lengths(rng, device):
    require_triton()
    fx = relu_features((1, 8, 2, 3), rng).to(device).requires_grad_()
    fy = relu_features((1, 8, 5, 4), rng).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: msds.gram_ssim(a, b, backend="triton"), (fx, fy), fast_mode=True)
