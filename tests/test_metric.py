"""The MSDS and DeepSSIM modules against the independent oracle, and their behaviour."""

import numpy as np
import pytest
import torch

import msds
from helpers import images, score_atol, state_of, trunk_terms
from oracle import deepssim_head, lite_head, msds_level_scores, trunk_np


@pytest.fixture(scope="module")
def metric64():
    return msds.MSDS(levels=3, weights=None).double()


# (levels, B, H, W): odd and non-square sizes, one level up to four.
MODULE_SHAPES = [(1, 2, 16, 16), (2, 1, 37, 33), (3, 2, 64, 71), (4, 1, 128, 131)]


@pytest.mark.parametrize("levels,batch,height,width", MODULE_SHAPES)
def test_level_scores_match_oracle_float64(levels, batch, height, width, rng):
    model = msds.MSDS(levels=levels, weights=None).double()
    x = images((batch, 3, height, width), rng)
    y = (x + 0.1 * torch.rand(x.shape, generator=rng, dtype=torch.float64)).clamp(0, 1)
    got = model.level_scores(x, y)
    assert got.shape == (batch, levels) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), msds_level_scores(x, y, state_of(model), levels), rtol=0, atol=1e-10)


def test_float64_images_are_scored_in_float64_without_double(rng):
    model = msds.MSDS(levels=2, weights=None)  # float32 parameters
    x = images((2, 3, 40, 36), rng)
    y = (x + 0.1 * torch.rand(x.shape, generator=rng, dtype=torch.float64)).clamp(0, 1)
    got = model.level_scores(x, y)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), msds_level_scores(x, y, state_of(model), 2), rtol=0, atol=1e-10)
    # Gradients flow to float64 images; the trunk's own weights stay float32 and frozen.
    loss = msds.MSDS(levels=2, weights=None, as_loss=True)
    pred = x.clone().requires_grad_()
    loss(pred, y).backward()
    assert pred.grad.dtype == torch.float64 and loss.trunk.features[0].weight.dtype == torch.float32


def test_forward_fuses_with_softmax_of_the_logits(metric64, rng):
    x, y = images((2, 3, 64, 64), rng), images((2, 3, 64, 64), rng)
    levels = metric64.level_scores(x, y)
    torch.testing.assert_close(metric64(x, y), levels.mean(1))  # zero logits: uniform weights
    model = msds.MSDS(levels=3, weights=None).double()
    with torch.no_grad():
        model.fusion_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    weights = torch.softmax(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 0)
    torch.testing.assert_close(model(x, y), levels @ weights)


def test_identical_images_score_one(metric64, rng):
    x = images((2, 3, 64, 64), rng)
    assert torch.equal(metric64.level_scores(x, x.clone()), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(metric64(x, x.clone()), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-15)


def test_scores_fall_with_distortion_strength(metric64, rng):
    x = images((1, 3, 64, 64), rng)
    noise = torch.randn(x.shape, generator=rng, dtype=torch.float64)
    scores = [metric64(x, (x + s * noise).clamp(0, 1)).item() for s in (0.02, 0.1, 0.3)]
    assert scores[0] > scores[1] > scores[2]


def test_symmetric_in_the_two_images(metric64, rng):
    x, y = images((2, 3, 64, 64), rng), images((2, 3, 64, 64), rng)
    torch.testing.assert_close(metric64(x, y), metric64(y, x), rtol=0, atol=1e-12)


def test_reductions(rng):
    x, y = images((3, 3, 32, 32), rng), images((3, 3, 32, 32), rng)
    per_image = msds.MSDS(levels=2, weights=None).double()(x, y)
    assert per_image.shape == (3,)
    mean = msds.MSDS(levels=2, weights=None, reduction="mean").double()(x, y)
    total = msds.MSDS(levels=2, weights=None, reduction="sum").double()(x, y)
    loss = msds.MSDS(levels=2, weights=None, as_loss=True).double()(x, y)
    torch.testing.assert_close(mean, per_image.mean())
    torch.testing.assert_close(total, per_image.sum())
    torch.testing.assert_close(loss, 1 - per_image.mean())


def test_images_of_another_dtype_are_cast_to_the_modules(rng):
    x, y = images((1, 3, 32, 32), rng), images((1, 3, 32, 32), rng)
    model32 = msds.MSDS(levels=2, weights=None)
    model64 = msds.MSDS(levels=2, weights=None).double()
    # A float64 module casts float32 images up: exactly the scores of the same values in float64.
    x32, y32 = x.float(), y.float()
    got = model64.level_scores(x32, y32)
    assert got.dtype == torch.float64
    assert torch.equal(got, model64.level_scores(x32.double(), y32.double()))
    # A float32 module casts 16-bit images up, exactly too (float64 images it
    # scores in float64: test_float64_images_are_scored_in_float64_without_double).
    for dtype in (torch.float16, torch.bfloat16):
        got = model32.level_scores(x.to(dtype), y.to(dtype))
        assert got.dtype == torch.float32
        assert torch.equal(got, model32.level_scores(x.to(dtype).float(), y.to(dtype).float()))
    # float32 scores lie within the float32 bound (tests/helpers.py) of float64
    # (measured on a 2-core EPYC, five seeds: 1.9e-7 against 4.1e-6).
    bound = score_atol(trunk_terms(model32) + 4)
    assert (model32.level_scores(x32, y32).double() - model64.level_scores(x32, y32)).abs().max().item() <= bound


def test_loss_trains_the_prediction_and_nothing_else(rng):
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True)
    target = images((2, 3, 32, 32), rng, torch.float32)
    pred = (target + 0.2 * torch.rand(target.shape, generator=rng)).clamp(0, 1).requires_grad_()
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    optimiser = torch.optim.SGD([pred], lr=50.0)
    losses = []
    for _ in range(5):
        optimiser.zero_grad()
        loss = loss_fn(pred, target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in loss_fn.parameters())
    assert not any(p.requires_grad for p in loss_fn.parameters())
    for key, value in loss_fn.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_gradient_for_one_input_only(rng):
    model = msds.MSDS(levels=2, weights=None, as_loss=True).double()
    x = images((2, 3, 32, 32), rng).requires_grad_()
    y = images((2, 3, 32, 32), rng).requires_grad_(False)
    model(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and y.grad is None
    # The same gradient as when both images share one trunk pass.
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    model(x2, y2).backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-10, atol=1e-14)


def test_fit_fusion_gives_logits_gradients(rng):
    model = msds.MSDS(levels=2, weights=None, fit_fusion=True).double()
    x, y = images((2, 3, 32, 32), rng), images((2, 3, 32, 32), rng)
    model(x, y).sum().backward()
    assert model.fusion_logits.grad is not None and model.fusion_logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.trunk.parameters())


def test_trunk_stays_in_eval_mode():
    model = msds.MSDS(levels=1, weights=None).train()
    assert model.training and not model.trunk.training


def test_precomputed_reference_gives_the_same_scores(metric64, rng):
    x, y = images((3, 3, 64, 64), rng), images((1, 3, 64, 64), rng)
    ref = metric64.precompute(y)
    expected = metric64.level_scores(x, y.expand(3, -1, -1, -1))
    torch.testing.assert_close(metric64.level_scores(x, ref), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="precomputed reference"):
        metric64.level_scores(x, metric64.precompute(images((2, 3, 64, 64), rng)))


@pytest.mark.parametrize("lite", [False, True])
def test_deepssim_precomputed_reference_gives_the_same_scores(lite, rng):
    model = msds.DeepSSIM(weights=None, lite=lite).double()
    x, y = images((3, 3, 48, 40), rng), images((1, 3, 64, 56), rng)  # the reference of another size
    mask_x = (torch.rand(3, 1, 48, 40, generator=rng) > 0.3).double()
    mask_y = (torch.rand(1, 1, 64, 56, generator=rng) > 0.3).double()
    ref = model.precompute(y)
    torch.testing.assert_close(model(x, ref), model(x, y.expand(3, -1, -1, -1)), rtol=0, atol=1e-12)
    masked = model.precompute(y, mask_y)
    expected = model(x, y.expand(3, -1, -1, -1), mask_x, mask_y.expand(3, -1, -1, -1))
    torch.testing.assert_close(model(x, masked, mask_x), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="mask_y: expected None with a precomputed reference"):
        model(x, masked, mask_x, mask_y)
    with pytest.raises(ValueError, match="y: expected reference features for 1 levels, got 2"):
        model(x, msds.MSDS(levels=2, weights=None).double().precompute(y))


def test_gradcheck_through_the_module_float64(rng):
    model = msds.MSDS(levels=2, weights=None).double()
    x = images((1, 3, 32, 32), rng).requires_grad_()
    y = images((1, 3, 32, 32), rng)
    assert torch.autograd.gradcheck(lambda a: model(a, y), (x,), fast_mode=True)


def test_deepssim_matches_oracle_and_msds_level_zero(rng):
    model = msds.DeepSSIM(weights=None).double()
    x, y = images((2, 3, 35, 48), rng), images((2, 3, 35, 48), rng)
    state = model.trunk.trunk_state_dict()
    expected = deepssim_head(trunk_np(x, state), trunk_np(y, state))
    np.testing.assert_allclose(model(x, y).numpy(), expected, rtol=0, atol=1e-10)
    ms = msds.MSDS(levels=1, weights=None).double()
    torch.testing.assert_close(ms(x, y), model(x, y), rtol=0, atol=1e-14)


def test_deepssim_saliency_masks(rng):
    model = msds.DeepSSIM(weights=None).double()
    x, y = images((2, 3, 32, 32), rng), images((2, 3, 32, 32), rng)
    mask_x = (torch.rand(2, 1, 32, 32, generator=rng) > 0.4).double()
    mask_y = (torch.rand(2, 32, 32, generator=rng) > 0.4).double()
    state = model.trunk.trunk_state_dict()
    expected = deepssim_head(trunk_np(x, state, mask_x), trunk_np(y, state, mask_y[:, None]))
    np.testing.assert_allclose(model(x, y, mask_x, mask_y).numpy(), expected, rtol=0, atol=1e-10)
    # One mask only: the other image is unmasked; the two code paths agree.
    expected_one = deepssim_head(trunk_np(x, state, mask_x), trunk_np(y, state))
    np.testing.assert_allclose(model(x, y, mask_x=mask_x).numpy(), expected_one, rtol=0, atol=1e-10)
    x.requires_grad_()
    np.testing.assert_allclose(model(x, y, mask_x=mask_x).detach().numpy(), expected_one, rtol=0, atol=1e-10)


def test_deepssim_lite_keeps_fp32_statistics_under_autocast(rng):
    # Under autocast the trunk's features come out in 16 bits; the Lite head
    # must form its Grams and statistics in fp32 like every other head.
    # Measured against the float64 oracle on the same features: 4e-8 (a
    # 16-bit Gram was 4.3e-6 off, and the score came back in 16 bits).
    x = images((2, 3, 64, 64), rng, torch.float32)
    y = (x + 0.1 * torch.rand(x.shape, generator=rng)).clamp(0, 1)
    lite = msds.DeepSSIM(weights=None, lite=True)
    features = []
    lite.trunk.register_forward_hook(lambda module, args, output: features.append(output))
    for dtype in (torch.bfloat16, torch.float16):
        features.clear()
        with torch.autocast("cpu", dtype=dtype):
            got = lite.score(x, y)
        fx, fy = torch.cat(features).split(2)  # one trunk pass or two, x's images first
        assert fx.dtype == dtype and got.dtype == torch.float32
        # 16 float32 roundings of a score near 1.
        np.testing.assert_allclose(got.double().numpy(), lite_head(fx, fy), rtol=0, atol=16 * 2.0**-24)


def test_deepssim_lite_loss(rng):
    model = msds.DeepSSIM(weights=None, lite=True, as_loss=True).double()
    x, y = images((2, 3, 32, 40), rng), images((2, 3, 32, 40), rng)
    state = model.trunk.trunk_state_dict()
    expected = 1 - lite_head(trunk_np(x, state), trunk_np(y, state)).mean()
    np.testing.assert_allclose(model(x, y).item(), expected, rtol=0, atol=1e-10)
