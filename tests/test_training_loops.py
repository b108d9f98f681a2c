"""The loss and the metric in the loops people run: a model's output in its own
dtype under autocast against a float32 target, other value ranges, a first
call that catches a wrong convention, and real (small) training loops."""

import pytest
import torch

import msds
from helpers import images, score_atol

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def scorers():
    """(name, module, call, levels) for every scoring form: call(module, x, y) -> scores."""
    return [
        ("msds", msds.MSDS(levels=2, weights=None), lambda m, x, y: m(x, y), 2),
        ("deepssim", msds.DeepSSIM(weights=None), lambda m, x, y: m(x, y), 1),
        ("lite", msds.DeepSSIM(weights=None, lite=True), lambda m, x, y: m(x, y), 1),
        ("saliency", msds.DeepSSIM(weights=None), lambda m, x, y: m(x, y, mask_x=SALIENT_X, mask_y=SALIENT_Y), 1),
    ]


SALIENT_X = torch.ones(2, 1, 16, 20, dtype=torch.bool)
SALIENT_X[:, :, 5:10] = False
SALIENT_Y = torch.ones(2, 1, 18, 16, dtype=torch.bool)
SALIENT_Y[:, :, :, 3:9] = False
# Every pair of dtypes for one form on one path (full tier); for the rest, the pairs that
# exercise each branch of the rule (16-bit against float32, 16-bit against
# 16-bit of the other kind, anything against float64).
ALL_PAIRS = [(a, b) for a in FLOAT_DTYPES for b in FLOAT_DTYPES]
SOME_PAIRS = [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32, torch.float64)]


def pair_of_size(levels):
    """Images of their own sizes, the smallest the levels allow (16 px at the coarsest)."""
    generator = torch.Generator().manual_seed(7)
    side = 16 * 2 ** (levels - 1)
    return (images((2, 3, side, side + 4), generator, torch.float32),
            images((2, 3, side + 2, side), generator, torch.float32))


@pytest.fixture(scope="module")
def pair():
    return pair_of_size(2)


def common_dtype(*dtypes):
    """The rule the docs state: float64 if either image is float64, else float32 (the trunk's dtype)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("name,module,call,levels", scorers(), ids=[s[0] for s in scorers()])
def test_mixed_dtypes_score_as_both_cast_to_the_working_dtype(name, module, call, levels, fast):
    module.fast = fast
    check_pairs(module, call, levels, SOME_PAIRS)


@pytest.mark.full
def test_every_pair_of_dtypes_for_msds_on_the_fast_path():
    _, module, call, levels = scorers()[0]
    check_pairs(module, call, levels, ALL_PAIRS)


def check_pairs(module, call, levels, pairs):
    x, y = pair_of_size(levels)
    for x_dtype, y_dtype in pairs:
        xd, yd = x.to(x_dtype), y.to(y_dtype)
        working = common_dtype(x_dtype, y_dtype)
        # The images as both cast by hand: the exact same computation.
        expected = call(module, xd.to(working), yd.to(working))
        got = call(module, xd, yd)
        assert got.dtype == expected.dtype == working, (x_dtype, y_dtype)
        assert torch.equal(got, expected), (x_dtype, y_dtype)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_prediction_under_autocast_matches_the_float32_cast(pair, autocast_dtype):
    """What a model's output under autocast is: 16 bits, against a float32 target."""
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True)
    x, y = pair
    prediction = x.to(autocast_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=autocast_dtype):
        value = loss_fn(prediction, y)
    value.backward()
    assert value.dtype == torch.float32
    assert prediction.grad.dtype == autocast_dtype
    as_float32 = x.to(autocast_dtype).float().requires_grad_()
    with torch.autocast("cpu", dtype=autocast_dtype):
        expected = loss_fn(as_float32, y)
    expected.backward()
    assert torch.equal(value, expected)
    assert torch.equal(prediction.grad, as_float32.grad.to(autocast_dtype))
    # And against float32 without autocast, within the 16-bit trunk's rounding
    # (12 roundings: the bound test_loss.py derives for the same loss).
    reference = loss_fn(x.to(autocast_dtype).float(), y)
    assert abs(value.item() - reference.item()) <= score_atol(12, autocast_dtype)


@pytest.mark.full
def test_mixed_dtypes_under_torch_compile(pair):
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x, y = pair
    prediction = x.bfloat16().requires_grad_()
    value = compiled(prediction, y)
    value.backward()
    twin = x.bfloat16().requires_grad_()
    expected = loss_fn(twin.float(), y)
    expected.backward()
    torch.testing.assert_close(value, expected)
    assert prediction.grad.dtype == torch.bfloat16
    torch.testing.assert_close(prediction.grad, twin.grad)


def test_a_precomputed_reference_takes_a_prediction_of_another_dtype(pair):
    metric = msds.MSDS(levels=2, weights=None)
    x, y = pair
    reference = metric.precompute(y)
    assert torch.equal(metric.level_scores(x.bfloat16(), reference), metric.level_scores(x.bfloat16().float(), y))
    with pytest.raises(TypeError, match="x: expected images that score in torch.float32"):
        metric.level_scores(x.double(), reference)


# -- value ranges -------------------------------------------------------------

RANGES = [(255, lambda t: t * 255), ((-1, 1), lambda t: t * 2 - 1), ((0, 1), lambda t: t), (2.0, lambda t: t * 2)]


@pytest.mark.parametrize("data_range,convert", RANGES, ids=["0-255", "-1-1", "0-1 pair", "0-2"])
def test_data_range_maps_images_to_unit_range(pair, data_range, convert):
    x, y = (t.double() for t in pair)
    for module in (msds.MSDS(levels=2, weights=None, data_range=data_range),
                   msds.DeepSSIM(weights=None, lite=True, data_range=data_range)):
        unit = type(module)(**({"levels": 2} if isinstance(module, msds.MSDS) else {"lite": True}), weights=None)
        torch.testing.assert_close(module(convert(x), convert(y)), unit(x, y), rtol=0, atol=1e-12)


def test_data_range_moves_the_range_check():
    image = torch.rand(1, 3, 16, 16)
    metric = msds.DeepSSIM(weights=None, data_range=(-1, 1))
    metric(image * 2 - 1, image * 2 - 1)  # in range: no error
    with pytest.raises(ValueError, match=r"x: expected pixel values in \[-1, 1\]"):
        metric(image * 2 - 1.5, image)
    with pytest.raises(ValueError, match=r"y: expected pixel values in \[0, 255\]"):
        msds.DeepSSIM(weights=None, data_range=255)(image * 255, image * 300)


@pytest.mark.parametrize("value", [0, -1, (1, 0), (0, float("inf")), "255", (0, 1, 2), True])
def test_bad_data_range_is_refused(value):
    with pytest.raises(ValueError, match="data_range: expected a number high > 0"):
        msds.MSDS(weights=None, data_range=value)


# -- the loss checks its first call -------------------------------------------

def first_call_cases():
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    nan = image.clone()
    nan[1, 2, 5, 5] = float("nan")
    inf = image.clone()
    inf[0, 0, 0, 0] = float("inf")
    return [("0-255 prediction", image * 255, image, "x:"), ("0-255 target", image, image * 255, "y:"),
            ("nan prediction", nan, image, "x:"), ("inf target", image, inf, "y:"),
            ("[-1, 1] target", image, image * 2 - 1, "y:")]


@pytest.mark.parametrize("case,x,y,name", first_call_cases(), ids=[c[0] for c in first_call_cases()])
def test_the_loss_refuses_a_wrong_range_on_its_first_call(case, x, y, name):
    for loss_fn in (msds.MSDS(levels=2, weights=None, as_loss=True), msds.DeepSSIM(weights=None, as_loss=True)):
        with pytest.raises(ValueError, match=f"{name} expected pixel values"):
            loss_fn(x, y)


def test_the_loss_checks_once_then_never_unless_asked():
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    loss_fn = msds.DeepSSIM(weights=None, as_loss=True)
    # A model in training overshoots a little: the first call lets it.
    loss_fn(image * 1.2 - 0.1, image)
    # Later calls are not checked (no host synchronisation per step).
    assert torch.isfinite(loss_fn(image * 255, image))
    always = msds.DeepSSIM(weights=None, as_loss=True, check_range=True)
    always(image, image)
    with pytest.raises(ValueError, match=r"x: expected pixel values in \[0, 1\]"):
        always(image * 255, image)
    with pytest.raises(ValueError, match=r"x: expected pixel values in \[0, 1\]"):
        always(image * 1.2 - 0.1, image)  # checked every call: strictly
    never = msds.DeepSSIM(weights=None, as_loss=True, check_range=False)
    assert torch.isfinite(never(image * 255, image))


def test_a_failed_first_check_leaves_the_next_call_checked():
    image = torch.rand(1, 3, 16, 16)
    loss_fn = msds.DeepSSIM(weights=None, as_loss=True)
    for _ in range(2):
        with pytest.raises(ValueError, match="x: expected pixel values"):
            loss_fn(image * 255, image)


def test_later_loss_steps_do_not_synchronise(device):
    """On a card, a host synchronisation after the first call is an error (sync debug mode)."""
    if device.type != "cuda":
        pytest.skip("host synchronisation is only observable on CUDA (torch.cuda.set_sync_debug_mode)")
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True, data_range=(-1, 1)).to(device)
    x = (torch.rand(2, 3, 64, 64, device=device) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 64, 64, device=device) * 2 - 1
    loss_fn(x, y).backward()  # the first call checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(x, y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_direction_is_stated():
    assert msds.MSDS(weights=None).higher_is_better is True
    assert msds.MSDS(weights=None).lower_better is False
    assert msds.DeepSSIM(weights=None, as_loss=True).higher_is_better is False
    assert msds.DeepSSIM(weights=None, as_loss=True).lower_better is True


# -- real training loops ------------------------------------------------------

def denoising_batch(device):
    generator = torch.Generator().manual_seed(11)
    clean = images((2, 3, 32, 32), generator, torch.float32)
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    return noisy.to(device), clean.to(device)


def denoiser():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 3, 3, padding=1))


LOOPS = [pytest.param("bf16", torch.bfloat16, False, False, id="bf16"),
         pytest.param("fp16 + GradScaler", torch.float16, True, False, id="fp16 + GradScaler", marks=pytest.mark.full),
         pytest.param("bf16 channels_last", torch.bfloat16, False, True, id="bf16 channels_last",
                      marks=pytest.mark.full)]


@pytest.mark.parametrize("case,dtype,scaled,channels_last", LOOPS)
def test_a_model_trains_under_autocast(case, dtype, scaled, channels_last, device):
    """A denoiser's 16-bit output against a float32 target, as a training loop feeds the loss."""
    noisy, clean = denoising_batch(device)
    model = denoiser().to(device)
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=scaled)
    losses = []
    for _ in range(8):
        with torch.autocast(device.type, dtype=dtype):
            restored = model(noisy)
            loss = loss_fn(restored, clean)
        assert restored.dtype == dtype and loss.dtype == torch.float32
        optimiser.zero_grad()
        scaler.scale(loss).backward()
        for parameter in model.parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        scaler.step(optimiser)
        scaler.update()
        losses.append(loss.item())
    assert all(p.grad is None for p in loss_fn.parameters())
    # Measured on a 2-core EPYC (bf16): 0.46 at the first step, 0.10 at the eighth.
    assert losses[-1] < 0.7 * losses[0], losses
