"""End-to-end benchmarks: the whole metric (no grad), a whole loss step, and
many distorted images against one reference; fast path against plain.

Configurations: "plain" (fp32 NCHW trunk, one pass per image, reference
head), "plain-cudnn-benchmark" (the same with torch.backends.cudnn.benchmark
on, the one global flag any user can set, so the fast path's gain over
"plain" is not that flag's), "fast-fp32" and "fast-bf16" (the fast path,
fp32 or bf16 trunk).
extra_info adds the trunk's achieved TFLOP/s and the card's measured bf16
matrix rate, so a row reads as a fraction of the arithmetic floor. On the CPU
(the default) each row runs once on tiny images as a smoke test.
"""

import pytest
import torch

import msds
from bench.common import bf16_matmul_tflops, environment, peak_extra_memory, pyramid_gflops, smoke, synchronize

CONFIGS = {
    "plain": {"fast": False},
    "plain-cudnn-benchmark": {"fast": False},
    "fast-fp32": {"fast": True},
    "fast-bf16": {"fast": True, "trunk_dtype": torch.bfloat16},
}
# (batch, image side, levels)
METRIC_ROWS = [(16, 256, 3), (64, 256, 3), (256, 256, 3), (64, 256, 1), (64, 256, 5),
               (16, 512, 3), (64, 512, 3), (16, 1024, 3)]
LOSS_ROWS = [(16, 256, 3), (64, 256, 3), (64, 256, 1), (64, 256, 5), (16, 512, 3), (4, 1024, 3)]
MANY_AGAINST_ONE = (100, 256, 3)


def row_id(row):
    return f"B{row[0]}-{row[1]}px-L{row[2]}"


@pytest.fixture(scope="module")
def card_rate(device):
    return bf16_matmul_tflops(device)


def shapes(row, device):
    batch, size, levels = row
    if smoke(device):  # one small image, at most 3 levels (5 make the CPU bf16 rows take minutes)
        levels = min(levels, 3)
        return 1, 16 * 2 ** (levels - 1), levels
    return batch, size, levels


def images(batch, size, device):
    generator = torch.Generator().manual_seed(0)
    y = torch.rand(batch, 3, size, size, generator=generator)
    x = (y + 0.1 * torch.rand(y.shape, generator=generator)).clamp(0, 1)
    return x.to(device), y.to(device)


def model_for(config, levels, device, as_loss=False):
    kwargs = dict(CONFIGS[config])  # plain-cudnn-benchmark's flag is set around each call (record)
    if smoke(device):
        kwargs["backend"] = "reference"  # the interpreter is far too slow for whole images
    return msds.MSDS(levels=levels, weights=None, as_loss=as_loss, check_range=False, **kwargs).to(device)


def cudnn_benchmark(fn):
    """fn with cuDNN's benchmark mode on while it runs (and as it was after)."""
    def run():
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            fn()
        finally:
            torch.backends.cudnn.benchmark = previous
    return run


def record(benchmark, fn, device, card_rate, gflop, **info):
    """Time fn; extra_info holds the actual shapes and `row`, the nominal (batch, side, levels)."""
    if info.get("config") == "plain-cudnn-benchmark":
        fn = cudnn_benchmark(fn)
    benchmark.extra_info.update(environment(device))
    benchmark.extra_info.update(info, smoke=smoke(device), trunk_gflop=gflop, card_bf16_tflops=card_rate)
    benchmark.extra_info["peak_extra_bytes"] = peak_extra_memory(fn, device)
    benchmark(fn)
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["trunk_tflops"] = gflop / median / 1e3
    if card_rate:
        benchmark.extra_info["fraction_of_bf16_rate"] = gflop / median / 1e3 / card_rate


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("row", METRIC_ROWS, ids=row_id)
def bench_metric(benchmark, row, config, device, card_rate):
    batch, size, levels = shapes(row, device)
    x, y = images(batch, size, device)
    model = model_for(config, levels, device)

    def metric():
        with torch.no_grad():
            model(x, y)
        synchronize(device)

    benchmark.group = f"metric {row_id(row)}"
    record(benchmark, metric, device, card_rate, 2 * batch * pyramid_gflops(size, levels),
           config=config, batch=batch, size=size, levels=levels, images_per_call=batch, row=row)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("row", LOSS_ROWS, ids=row_id)
def bench_loss_step(benchmark, row, config, device, card_rate):
    batch, size, levels = shapes(row, device)
    x, y = images(batch, size, device)
    loss_fn = model_for(config, levels, device, as_loss=True)
    prediction = x.clone().requires_grad_()

    def loss_step():
        prediction.grad = None
        loss_fn(prediction, y).backward()
        synchronize(device)

    benchmark.group = f"loss-step {row_id(row)}"
    # Forward of both images, and the backward of the prediction to its
    # input only (the trunk is frozen), which costs about one more forward.
    record(benchmark, loss_step, device, card_rate, 3 * batch * pyramid_gflops(size, levels),
           config=config, batch=batch, size=size, levels=levels, images_per_call=batch, row=row)


@pytest.mark.parametrize("precomputed", [False, True], ids=["each-reference", "precomputed-reference"])
def bench_many_against_one(benchmark, precomputed, device, card_rate):
    count, size, levels = shapes(MANY_AGAINST_ONE, device)
    x, y = images(count, size, device)
    reference = y[:1]
    model = model_for("fast-fp32", levels, device)

    def score_all():
        with torch.no_grad():
            if precomputed:
                model.level_scores(x, model.precompute(reference))
            else:
                model.level_scores(x, reference.expand(count, -1, -1, -1))
        synchronize(device)

    benchmark.group = f"many-against-one {count}x{size}px-L{levels}"
    gflop = (count + (1 if precomputed else count)) * pyramid_gflops(size, levels)
    record(benchmark, score_all, device, card_rate, gflop, config="fast-fp32", precomputed=precomputed,
           batch=count, size=size, levels=levels, images_per_call=count, row=MANY_AGAINST_ONE)
