"""msds beside the losses and metrics people already use: pytest-benchmark rows.

Every contender of bench/peers.py (LPIPS-VGG, DISTS, the official DeepSSIM,
msds DeepSSIM, DeepSSIM-Lite, MSDS at 1, 3 and 5 levels) on the same images,
batch and device: a loss step and the no-grad metric, in fp32 and, on CUDA,
under bf16 autocast. extra_info holds the implementation used, the trunk's
achieved GFLOP/s and the peak memory (CUDA: peak allocated; CPU: peak growth
of the resident set). Peers that cannot run here (no torchvision built for
this torch) skip with the reason. On the CPU each row runs once on one
64 x 64 pair unless --benchmark-enable asks for timings (B = 4, 256 x 256, as
`python -m bench.cpu --only peers` times them in turns, the figures to quote).
"""

import os

import pytest

from bench import cpu, peers
from bench.common import environment, peak_extra_memory, peak_rss_growth, synchronize, timing

NAMES = [peers.LPIPS, "DISTS", "DeepSSIM (official)", "msds DeepSSIM", "msds DeepSSIM-Lite"] + \
    [f"msds MSDS L{levels}" for levels in peers.MSDS_LEVELS]
PRECISIONS = ["fp32", "bf16-autocast"]


@pytest.fixture(scope="module")
def setting(request, device):
    """(batch, size, contenders by name, skipped peers with why) for this run."""
    if device.type == "cuda":
        batch, size = 64, 256
    elif timing(request.config) and not os.environ.get("MSDS_BENCH_SMOKE"):
        batch, size = 4, 256
    else:  # a smoke run: each row once (bench.gpu_check --smoke sets MSDS_BENCH_SMOKE)
        batch, size = 1, 64
    found, skipped = peers.contenders(device, size)
    return batch, size, {contender.name: contender for contender in found}, skipped


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", ["loss-step", "metric"])
@pytest.mark.parametrize("name", NAMES)
def bench_peer(benchmark, name, mode, precision, setting, device):
    batch, size, found, skipped = setting
    if name in skipped:
        pytest.skip(f"{name}: {skipped[name]}")
    if precision != "fp32" and device.type != "cuda":
        pytest.skip("bf16 autocast rows run on CUDA")
    if name not in found:
        pytest.skip(f"{name}: needs images of at least 256 x 256 pixels (this run: {size} x {size})")
    contender = found[name]
    x, y = (image.to(device) for image in cpu.images(batch, size))  # the images bench.cpu times
    bf16 = precision != "fp32"
    make = peers.loss_step if mode == "loss-step" else peers.metric
    call = make(contender, x, y, bf16)

    def run():
        call()
        synchronize(device)

    benchmark.group = f"peers {mode} B{batch}-{size}px {precision}"
    gflop = (1.5 if mode == "loss-step" else 1.0) * batch * contender.gflop_per_pair(size)
    memory = peak_extra_memory(run, device) if device.type == "cuda" else peak_rss_growth(run)
    benchmark.extra_info.update(environment(device))
    benchmark.extra_info.update(config=name, implementation=contender.implementation, mode=mode,
                                precision=precision, batch=batch, size=size, trunk_gflop=gflop,
                                peak_extra_bytes=memory)
    benchmark(run)
    if benchmark.stats is not None:
        benchmark.extra_info["trunk_gflops"] = gflop / benchmark.stats.stats.median
