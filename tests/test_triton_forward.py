"""The fused forward kernel against the float64 oracle (Triton interpreter on the CPU)."""

import numpy as np
import pytest
import torch

import msds
from helpers import assert_scores_within_rounding, relu_features, require_triton
from oracle import deepssim_head

require_triton()

# (B, C, per-level (h, w)): C from 4 to 512, 1x1 to 16x16 positions, odd and
# non-square sizes, one to six levels in one call, C not a multiple of 16.
ROWS = [
    (1, 4, [(1, 1)]),
    (3, 4, [(2, 3)]),
    (1, 12, [(5, 5), (2, 2), (1, 1)]),
    (3, 12, [(16, 16)]),
    (1, 20, [(4, 15)]),
    (2, 36, [(3, 3), (1, 1)]),
    (1, 64, [(16, 16), (8, 8), (4, 4)]),
    (3, 64, [(7, 9), (3, 4), (1, 2), (1, 1), (1, 1)]),
    (1, 100, [(2, 5)]),
    (1, 8, [(6, 6), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)]),
    (1, 512, [(2, 2), (1, 1)]),
]
IDS = [f"B{b}-C{c}-L{len(s)}-{'_'.join(f'{h}x{w}' for h, w in s)}" for b, c, s in ROWS]
# The C = 512 row (the trunk's width) in the full tier; the smaller rows take the same code paths.
CASES = [pytest.param(*row, id=name, marks=pytest.mark.full if row[1] == 512 else ()) for row, name in zip(ROWS, IDS)]


def features(batch, channels, sizes, generator, device, dtype=torch.float64):
    fxs = [relu_features((batch, channels, h, w), generator, dtype) for h, w in sizes]
    fys = [(f.double() + relu_features(f.shape, generator)).to(dtype) for f in fxs]
    return [f.to(device) for f in fxs], [f.to(device) for f in fys]


def truth(fxs, fys):
    """float64 scores of the (possibly rounded) inputs, by the independent oracle."""
    return np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)


@pytest.mark.parametrize("batch,channels,sizes", CASES)
def test_float64_matches_oracle(batch, channels, sizes, rng, device):
    fxs, fys = features(batch, channels, sizes, rng, device)
    got = msds.multiscale_gram_ssim(fxs, fys, backend="triton")
    assert got.dtype == torch.float64 and got.shape == (batch, len(sizes))
    np.testing.assert_allclose(got.cpu().numpy(), truth(fxs, fys), rtol=0, atol=1e-10)


# Measured under the interpreter (numpy float32 dots), three seeds per row:
# at most 1.8e-7 against bounds of 8.5e-7 to 6.6e-6. The last row adds 500
# to every feature: tile entries hundreds of times their spread, where only
# centred statistics keep float32 accurate (measured 5e-6 against 3.3e-4;
# E[x^2] - E[x]^2 variances miss by 2e-3 to 6e-3).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,channels,sizes,offset", [(*row, 0) for row in ROWS[:8]] + [(2, 64, [(4, 4), (2, 1)], 500)],
                         ids=IDS[:8] + ["B2-C64-L2-offset500"])
def test_low_precision_within_rounding_of_the_exact_scores(batch, channels, sizes, offset, dtype, rng, device):
    fxs, fys = features(batch, channels, sizes, rng, device, dtype)
    fxs, fys = [f + offset for f in fxs], [f + offset for f in fys]
    got = msds.multiscale_gram_ssim(fxs, fys, backend="triton")
    assert got.dtype == torch.float32
    assert_scores_within_rounding(got, fxs, fys)


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_every_precision_runs(precision, rng, device):
    # The interpreter multiplies in exact fp32 whatever the precision. On a GPU
    # "tf32" rounds each operand to 10 mantissa bits: bound 1.2e-3 here (64
    # channels). TF32 rounding emulated on the CPU (operands truncated or
    # rounded to nearest, then float64) moved these scores by at most 1.1e-4
    # over 50 seeds.
    fxs, fys = features(2, 64, [(3, 3), (1, 2)], rng, device, torch.float32)
    got = msds.multiscale_gram_ssim(fxs, fys, backend="triton", precision=precision)
    assert_scores_within_rounding(got, fxs, fys, "tf32" if precision == "tf32" and device.type == "cuda" else torch.float32)


def test_channels_last_sliced_and_broadcast_inputs(rng, device):
    base_x = relu_features((3, 24, 9, 10), rng).to(device)
    base_y = relu_features((1, 24, 9, 10), rng).to(device)
    cases = [
        ([base_x.to(memory_format=torch.channels_last)], [base_x.flip(0).to(memory_format=torch.channels_last)]),
        ([base_x[:, 4:20, 1:, ::2]], [base_x.flip(0)[:, 4:20, 1:, ::2]]),  # channel, row and column slices
        ([base_x[:, :16]], [base_y.expand(3, -1, -1, -1)[:, 8:]]),  # batch-broadcast reference
        ([base_x, base_x[:, :, ::3, ::3]], [base_x.flip(0), base_x.flip(0)[:, :, ::3, ::3].contiguous()]),
    ]
    for fxs, fys in cases:
        got = msds.multiscale_gram_ssim(fxs, fys, backend="triton")
        np.testing.assert_allclose(got.cpu().numpy(), truth(fxs, fys), rtol=0, atol=1e-10)


def test_identical_inputs_score_exactly_one_and_symmetry_is_exact(rng, device):
    fxs, fys = features(2, 20, [(4, 4), (2, 1)], rng, device, torch.float32)
    same = msds.multiscale_gram_ssim(fxs, [f.clone() for f in fxs], backend="triton")
    assert torch.equal(same, torch.ones_like(same))
    forward = msds.multiscale_gram_ssim(fxs, fys, backend="triton")
    swapped = msds.multiscale_gram_ssim(fys, fxs, backend="triton")
    assert torch.equal(forward, swapped)


def test_bitwise_deterministic(rng, device):
    fxs, fys = features(2, 36, [(5, 4), (2, 2)], rng, device, torch.float32)
    first = msds.multiscale_gram_ssim(fxs, fys, backend="triton")
    assert torch.equal(first, msds.multiscale_gram_ssim(fxs, fys, backend="triton"))


def test_too_many_levels_for_the_kernel(rng, device):
    fxs, fys = features(1, 4, [(1, 1)] * 7, rng, device)
    with pytest.raises(ValueError, match="backend='triton' takes 1 to 6 levels, got 7"):
        msds.multiscale_gram_ssim(fxs, fys, backend="triton")
    # "auto" falls back to the reference beyond six levels.
    assert msds.multiscale_gram_ssim(fxs, fys).shape == (1, 7)


def test_auto_picks_the_kernels_for_cuda_tensors_only():
    from msds.metric import head
    from msds.kernels import ops

    assert head.select_head("auto", torch.device("cpu")) is head._reference_head
    if ops.INTERPRETED:
        assert head.select_head("triton", torch.device("cpu")) is not head._reference_head
    else:  # compiled kernels cannot take CPU tensors, and say how to run them there
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            head.select_head("triton", torch.device("cpu"))
    assert head.select_head("auto", torch.device("cuda")) is not head._reference_head
    assert head.select_head("auto", torch.device("cuda"), levels=7) is head._reference_head


@pytest.mark.full
def test_module_with_triton_backend_matches_reference(rng, device):
    x = torch.rand(2, 3, 32, 40, generator=rng, dtype=torch.float64).to(device)
    y = (x + 0.1 * torch.rand(x.shape, generator=rng, dtype=torch.float64).to(device)).clamp(0, 1)
    kernel = msds.MSDS(levels=2, weights=None, backend="triton").double().to(device)
    ref = msds.MSDS(levels=2, weights=None, backend="reference").double().to(device)
    torch.testing.assert_close(kernel.level_scores(x, y), ref.level_scores(x, y), rtol=0, atol=1e-10)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 and TF32 dots need a GPU (the interpreter cannot run them)")


@needs_gpu
@pytest.mark.parametrize("batch,channels,sizes", ROWS[:8], ids=IDS[:8])
def test_bfloat16_within_rounding_on_gpu(batch, channels, sizes, rng):
    fxs, fys = features(batch, channels, sizes, rng, "cuda", torch.bfloat16)
    assert_scores_within_rounding(msds.multiscale_gram_ssim(fxs, fys, backend="triton"), fxs, fys)  # bf16 values are exact in fp32


@needs_gpu
def test_tf32_mode_error_is_bounded_on_gpu(rng):
    # TF32 keeps 10 mantissa bits of each operand: bound 4.4e-4 at C = 512.
    # Measured 9.9e-6 on an H100 (the GPU check's precision table,
    # bench/results/h100-gpu-check.log); emulated
    # on the CPU (operands truncated, then float64) 1.2e-5 over five seeds.
    fxs, fys = features(4, 512, [(16, 16), (8, 8), (4, 4)], rng, "cuda", torch.float32)
    got = msds.multiscale_gram_ssim(fxs, fys, backend="triton", precision="tf32")
    assert_scores_within_rounding(got, fxs, fys, "tf32")
