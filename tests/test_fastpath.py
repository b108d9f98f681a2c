"""The fast path against the plain configuration, on the test device (the CPU
here; bench.gpu_check runs the tests that take `device` on a GPU)."""

import pytest
import torch

import msds
from helpers import record_branches, relative_error, replay_branches, rounding_rtol, score_atol, trunk_terms


def images(generator, device="cpu", shape=(2, 3, 64, 64), dtype=torch.float32):
    x = torch.rand(shape, generator=generator, dtype=dtype)
    y = (x + 0.1 * torch.rand(shape, generator=generator, dtype=dtype)).clamp(0, 1)
    return x.to(device), y.to(device)


@pytest.fixture
def float32_convolutions(device, monkeypatch):
    """cuDNN's float32 convolutions in float32, not TF32 (PyTorch's default for
    them), where a test holds float32 results to float32 bounds."""
    if device.type == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def count_trunk_passes(model):
    calls = []
    model.trunk.register_forward_hook(lambda module, args, output: calls.append(output.requires_grad))
    return calls


def test_fast_and_plain_agree_in_float64(rng, device):
    x, y = images(rng, device, dtype=torch.float64)
    plain = msds.MSDS(levels=3, weights=None, fast=False).double().to(device)
    fast = msds.MSDS(levels=3, weights=None, fast=True).double().to(device)
    torch.testing.assert_close(fast.level_scores(x, y), plain.level_scores(x, y), rtol=0, atol=1e-10)


def test_low_precision_trunk_stays_close_to_the_plain_scores(rng, device):
    # The 16-bit trunk accumulates in float32 and rounds what each of its 11
    # convolutions stores, and the images, to 16 bits: 12 roundings, bounded
    # by score_atol (tests/helpers.py): bf16 6.0e-3, fp16 7.5e-4. Measured
    # against float64 on a 2-core EPYC (AVX-512 and AVX2 alike): bf16 1.6e-4,
    # fp16 2.0e-5, the plain float32 scores 1e-7 (over six seeds).
    x, y = images(rng, device)
    plain = msds.MSDS(levels=3, weights=None, fast=False).to(device)(x, y)
    for dtype in (torch.bfloat16, torch.float16):
        fast = msds.MSDS(levels=3, weights=None, fast=True, trunk_dtype=dtype).to(device)
        scores = fast(x, y)
        assert scores.dtype == torch.float32
        assert (scores - plain).abs().max().item() <= score_atol(12, dtype), dtype


def test_fast_path_shares_one_trunk_pass_when_gradient_needs_match(rng, device):
    x, y = images(rng, device)
    fast = msds.MSDS(levels=2, weights=None, fast=True).to(device)
    calls = count_trunk_passes(fast)
    with torch.no_grad():
        fast(x, y)
    assert len(calls) == 2  # one pass per level for both images
    loss = msds.MSDS(levels=2, weights=None, fast=True, as_loss=True).to(device)
    calls = count_trunk_passes(loss)
    loss(x.clone().requires_grad_(), y)
    assert calls == [True, False, True, False]  # prediction with autograd, target without


def test_cpu_fast_path_runs_the_trunk_a_few_images_at_a_time(rng, monkeypatch):
    x, y = images(rng, shape=(3, 3, 64, 64))
    fast = msds.MSDS(levels=2, weights=None)
    with torch.no_grad():
        whole = fast.level_scores(x, y)
        monkeypatch.setattr(msds.trunk.fastpath, "CPU_PASS_PIXELS", 2 * 64 * 64)  # two 64 x 64 images a pass
        calls = count_trunk_passes(fast)
        chunked = fast.level_scores(x, y)
    # Level 0: x and y share their pass, 6 images in passes of 2; level 1 (32 x 32): one pass of 6.
    assert len(calls) == 3 + 1
    assert (chunked - whole).abs().max().item() <= 1e-6
    # Saliency masks follow their images into each pass.
    mask_x = (torch.rand(3, 1, 64, 64, generator=rng) > 0.5).float()
    mask_y = (torch.rand(3, 1, 64, 64, generator=rng) > 0.5).float()
    deepssim = msds.DeepSSIM(weights=None)
    with torch.no_grad():
        chunked = deepssim(x, y, mask_x, mask_y)
        monkeypatch.setattr(msds.trunk.fastpath, "CPU_PASS_PIXELS", 10**9)
        whole = deepssim(x, y, mask_x, mask_y)
    assert (chunked - whole).abs().max().item() <= 1e-6


def test_plain_configuration_runs_each_image_alone(rng, device):
    x, y = images(rng, device)
    plain = msds.MSDS(levels=2, weights=None, fast=False).to(device)
    calls = count_trunk_passes(plain)
    with torch.no_grad():
        plain(x, y)
    assert len(calls) == 4


def test_default_is_fast_on_cuda_and_the_cpu():
    model = msds.MSDS(levels=1, weights=None)
    assert model.fast is None
    assert model._is_fast(torch.zeros(1, device="cpu"))
    assert msds.trunk.fastpath.is_fast(None, torch.device("cuda"))
    assert not msds.trunk.fastpath.is_fast(False, torch.device("cuda"))
    assert not msds.trunk.fastpath.is_fast(False, torch.device("cpu"))


@pytest.mark.parametrize("levels,shape", [(1, (3, 3, 48, 40)), (3, (2, 3, 64, 80))])
def test_fast_and_plain_paths_in_float32_are_within_rounding_of_float64(levels, shape, rng, device,
                                                                          float32_convolutions):
    # Both configurations against float64, each within the float32 bounds of
    # tests/helpers.py. Measured on a 2-core EPYC, AVX-512 and AVX2 alike,
    # over four seeds: scores 1.5e-7 from float64 (bound 4.1e-6); gradients
    # 2.5e-5 (fast) and 8.6e-6 (plain) relative (bound 1.4e-4). With the
    # fast path's wide layers by Winograd (three seeds): scores up to 0.05
    # of their bound, gradients up to 0.34 of theirs.
    x, y = images(rng, device, shape=shape)
    for fast in (True, False):  # True is the default
        scores = []
        for dtype in (torch.float32, torch.float64):
            model = msds.MSDS(levels=levels, weights=None, fast=fast).to(device, dtype)
            with torch.no_grad():
                scores.append(model.level_scores(x.to(dtype), y.to(dtype)))
        # Each feature sums the trunk's terms, each Gram entry its positions.
        positions = shape[-2] // 16 * (shape[-1] // 16)
        score_bound = score_atol(trunk_terms(model) + positions)
        assert (scores[0].double() - scores[1]).abs().max().item() <= score_bound, fast
        # The gradient of the loss, against float64 on the branches the float32
        # run took (the trunk's ReLUs and max-pools): rounding alone apart.
        loss = msds.MSDS(levels=levels, weights=None, as_loss=True, fast=fast).to(device)
        record_branches(loss)
        grads = []
        for dtype in (torch.float32, torch.float64):
            pred = x.detach().clone().to(dtype).requires_grad_()
            loss.to(dtype)(pred, y.to(dtype)).backward()
            grads.append(pred.grad)
            replay_branches(loss)
        # Trunk forward and backward, the Gram (positions) and its gradient (C).
        terms = trunk_terms(loss, backward=True) + positions + msds.trunk.vgg16.CHANNELS
        assert relative_error(*grads) <= rounding_rtol(terms), fast


def test_fast_loss_gradients_match_the_plain_ones(rng, device):
    x, y = images(rng, device, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        loss = msds.MSDS(levels=2, weights=None, fast=fast, as_loss=True).double().to(device)
        pred = x.clone().requires_grad_()
        loss(pred, y).backward()
        grads.append(pred.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-14)


def test_precomputed_reference_on_the_fast_path(rng, device, float32_convolutions):
    x, y = images(rng, device, shape=(3, 3, 64, 64))
    fast = msds.MSDS(levels=2, weights=None, fast=True).to(device)
    expected = fast.level_scores(x, y[:1].expand(3, -1, -1, -1))
    # The same float32 operations but for the trunk passes' batches: within the
    # float32 bound of tests/helpers.py (4.1e-6; measured 6e-8 on the CPU).
    bound = score_atol(trunk_terms(fast) + 16)
    assert (fast.level_scores(x, fast.precompute(y[:1])) - expected).abs().max().item() <= bound


@pytest.mark.parametrize("kwargs,error,message", [
    ({"trunk_dtype": torch.float64}, ValueError, "trunk_dtype: expected None, torch.bfloat16 or torch.float16"),
    ({"fast": "yes"}, TypeError, "fast: expected True, False or None"),
])
def test_bad_fast_path_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        msds.MSDS(levels=1, weights=None, **kwargs)


def test_cuda_trunk_settings_trace_whole_under_torch_compile():
    # On CUDA the fast path scopes cuDNN's benchmark mode to the trunk call;
    # that context manager cannot be traced, so compiled code must skip it.
    def trunk_step(images):
        with msds.trunk.fastpath.trunk_context(True, None, torch.device("cuda")):
            return images * 2

    images = torch.rand(2, 3)
    compiled = torch.compile(trunk_step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(images), images * 2)
