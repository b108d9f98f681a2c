"""The test suite's faster interpreter (tests/interpreter.py) computes what
triton's own does, bit for bit: forward scores and both images' gradients,
float32 and float64, a level of each kernel (small and streamed)."""

import os

import pytest
import torch

import msds
from tests import interpreter
from tests.helpers import relu_features, require_triton

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="kernels run compiled here")


def scores_and_gradients(dtype, rng):
    fxs = [relu_features(shape, rng, dtype).requires_grad_() for shape in [(2, 64, 12, 12), (2, 64, 3, 3)]]
    fys = [relu_features(shape, rng, dtype).requires_grad_() for shape in [(2, 64, 10, 14), (2, 64, 3, 3)]]
    scores = msds.multiscale_gram_ssim(fxs, fys, backend="triton")
    weights = torch.arange(1, scores.numel() + 1, dtype=scores.dtype).view_as(scores)
    return [scores.detach(), *torch.autograd.grad((scores * weights).sum(), fxs + fys)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_patching_once_per_launch_changes_no_bit(dtype):
    require_triton()
    assert interpreter.patch_once()  # the suite runs with it (conftest.py)
    fast = scores_and_gradients(dtype, torch.Generator().manual_seed(3))
    interpreter.unpatch()
    try:
        plain = scores_and_gradients(dtype, torch.Generator().manual_seed(3))
    finally:
        assert interpreter.patch_once()
    for got, expected in zip(fast, plain):
        assert torch.equal(got, expected)


def test_a_launch_leaves_the_language_as_it_found_it():
    require_triton()
    import triton.language as tl

    before = {(module.__name__, name): getattr(module, name) for module in (tl, tl.core) for name in dir(module)}
    scores_and_gradients(torch.float32, torch.Generator().manual_seed(4))
    after = {(module.__name__, name): getattr(module, name) for module in (tl, tl.core) for name in dir(module)}
    assert [key for key in before if after.get(key) is not before[key]] == []
