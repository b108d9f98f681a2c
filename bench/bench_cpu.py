"""CPU benchmarks: each workload of bench/cpu.py, baseline and variant, as pytest-benchmark rows.

`pytest bench/bench_cpu.py --benchmark-enable` times them at full size (a
few minutes on 2 cores); without --benchmark-enable each runs once on tiny
shapes as a smoke test. extra_info holds the machine's fp32 matrix-product
rate and the trunk's achieved GFLOP/s. For figures to quote, use
`python -m bench.cpu`, which times the variants in turns and reports their
spread.
"""

import pytest

from bench import cpu
from bench.common import environment, timing

# (workload, variant): the variants' names are fixed, the shapes depend on the mode.
ROWS = [("trunk", "nchw"), ("trunk", "channels_last"), ("trunk", "winograd"),
        ("trunk-gradient", "channels_last"), ("trunk-gradient", "winograd"), ("head", "official unfold"), ("head", "msds"),
        ("deepssim", "official"), ("deepssim", "msds"), ("metric", "plain"), ("metric", "fast"),
        ("loss-step", "plain"), ("loss-step", "fast")]


@pytest.fixture(scope="module")
def matmul_rate(request):
    return cpu.matmul_gflops() if timing(request.config) else None


@pytest.fixture(scope="module")
def full_workloads(request, device):
    """Full-size workloads when timing, tiny ones for a smoke run."""
    if device.type != "cpu":
        pytest.skip("CPU rows: run without MSDS_TEST_DEVICE=cuda")
    return cpu.workloads(small=not timing(request.config))


@pytest.mark.parametrize("workload,variant", ROWS, ids=[f"{w}-{v}".replace(" ", "_") for w, v in ROWS])
def bench_cpu(benchmark, workload, variant, full_workloads, matmul_rate):
    spec = full_workloads[workload]
    fn = spec["variants"][variant]
    benchmark.group = f"cpu {spec['label']}"
    benchmark.extra_info.update(environment(cpu.torch.device("cpu")))
    benchmark.extra_info.update(workload=spec["label"], variant=variant, baseline=spec["baseline"],
                                matmul_gflops=matmul_rate, machine=cpu.machine_name())
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    if benchmark.stats is not None and spec["gflop"]:
        benchmark.extra_info["trunk_gflops"] = spec["gflop"] / benchmark.stats.stats.median
