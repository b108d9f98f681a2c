"""Head benchmarks: the fused Triton kernels against the reference head.

Forward, and forward+backward for one input (the loss case), over 3 levels of
C = 512 feature maps of 256 x 256 images at B = 16, 64, 256 and of
1024 x 1024 images at B = 16, in fp32 and bf16. Run on a GPU with
`MSDS_TEST_DEVICE=cuda pytest bench --benchmark-enable`; on the CPU (the
default) the same code runs once on tiny shapes as a smoke test.
"""

import pytest
import torch

import msds
from bench.common import DTYPES, HEAD_CASES, environment, head_shapes, peak_extra_memory, relu_like, synchronize


def features(case, dtype, device, requires_grad=False):
    generator = torch.Generator().manual_seed(0)
    batch, channels, sizes = head_shapes(case, device)
    fxs = [relu_like((batch, channels, h, w), dtype, device, generator) for h, w in sizes]
    fys = [relu_like((batch, channels, h, w), dtype, device, generator) for h, w in sizes]
    return [f.requires_grad_(requires_grad) for f in fxs], fys


def skip_unsupported(backend, dtype, device):
    if backend == "triton" and dtype == "bf16" and device.type != "cuda":
        pytest.skip("the Triton interpreter cannot run bf16 dots")


def run(benchmark, group, fn, device, case, dtype, backend):
    benchmark.group = group
    benchmark.extra_info.update(environment(device))
    benchmark.extra_info.update(case=case, dtype=dtype, backend=backend, smoke=device.type != "cuda")
    benchmark.extra_info["peak_extra_bytes"] = peak_extra_memory(fn, device)
    benchmark(fn)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(HEAD_CASES))
def bench_head_forward(benchmark, case, dtype, backend, device):
    skip_unsupported(backend, dtype, device)
    fxs, fys = features(case, DTYPES[dtype], device)

    def forward():
        with torch.no_grad():
            msds.multiscale_gram_ssim(fxs, fys, backend=backend)
        synchronize(device)

    run(benchmark, f"head-forward {case} {dtype}", forward, device, case, dtype, backend)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(HEAD_CASES))
def bench_head_forward_backward(benchmark, case, dtype, backend, device):
    skip_unsupported(backend, dtype, device)
    fxs, fys = features(case, DTYPES[dtype], device, requires_grad=True)

    def forward_backward():
        scores = msds.multiscale_gram_ssim(fxs, fys, backend=backend)
        torch.autograd.grad(scores.sum(), fxs)
        synchronize(device)

    run(benchmark, f"head-forward-backward {case} {dtype}", forward_backward, device, case, dtype, backend)
