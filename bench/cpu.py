"""CPU workloads, each with its baseline and the project's variant, timed in turns.

`python -m bench.cpu --out bench/results/cpu-<machine>.json` times every
workload's variants alternately (A B, then B A, ...), several repetitions of
a few calls each, and reports each variant's median, its spread (min and
max of the repetition medians) and the speedup over the baseline measured in
the same run, with the machine's fp32 matrix-product rate and the trunk's
achieved GFLOP/s. bench/bench_cpu.py times the same callables as
pytest-benchmark rows, for regression tracking.

Baselines: the plain configuration (NCHW trunk, one pass per image), and
for the trunk alone (forward, and forward with the input gradient) its
direct convolutions beside the fast path's Winograd ones; the
"official" formulation of DeepSSIM (each image through the NCHW trunk, then
the head written as the official code writes it: Gram matrices, unfold into
4x4 tiles, statistics over every tile); and for the two "peers" workloads
(a loss step and the no-grad metric of every contender in bench/peers.py)
LPIPS-VGG, each row with its time as a fraction of LPIPS-VGG's. Peers that
cannot run here (no torchvision for this torch) are listed with the reason.

`--busy 0 1 2` times the metric and the loss step, plain and fast, and
the fast path with one thread, while 0, 1 and then 2 other processes keep
a core busy each (a Python loop that never waits, like a DataLoader worker
decoding images): the condition of a machine whose cores are shared.
Smaller shapes (B = 2, 128 x 128), since everything runs several times
slower there.

`--memory` measures each variant's peak memory instead of its time: the
growth of the resident set during a call, after one call to warm up. Run
it with MALLOC_MMAP_THRESHOLD_=65536 in the environment, so that glibc
returns every large block to the system when it is freed and the resident
set follows the live allocations (without it a variant that reuses freed
heap shows little growth); the setting slows allocation, which is why the
timings are taken in a run of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch

import msds
from bench import peers
from bench.common import peak_rss_growth, pyramid_gflops, relu_like, trunk_gflops, unfold_head

Variant = Callable[[], object]


def matmul_gflops(size: int = 2048, calls: int = 5) -> float:
    """This machine's fp32 matrix-product rate (size^3 products), GFLOP/s, best of `calls`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(calls))
    return 2 * size**3 / best / 1e9


def _seconds(fn: Variant) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def images(batch: int, size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.rand(batch, 3, size, size, generator=generator)
    x = (y + 0.1 * torch.rand(y.shape, generator=generator)).clamp(0, 1)
    return x, y


def trunk_gradient(trunk: msds.VGG16Trunk, x: torch.Tensor, winograd: bool) -> Variant:
    """The trunk's forward and the backward to its input: a loss step's trunk work for one image batch."""
    def step() -> None:
        leaf = x.clone().requires_grad_()
        trunk(leaf, None, winograd).sum().backward()
    return step


def workloads(small: bool = False) -> Dict[str, dict]:
    """key -> {"label", "variants": {name: callable}, "baseline": name, "gflop": trunk GFLOP per call}.

    small: tiny shapes, for a smoke run of the code.
    """
    batch, size, levels = (1, 64, 3) if small else (4, 256, 3)
    head_batch, head_side = (2, 4) if small else (64, 16)
    x, y = images(batch, size)
    trunk = msds.VGG16Trunk(weights=None)
    official = msds.DeepSSIM(weights=None, fast=False)
    deepssim = msds.DeepSSIM(weights=None)  # the default: the fast path on CPU tensors
    plain, fast = msds.MSDS(levels, weights=None, fast=False), msds.MSDS(levels, weights=None)
    loss_plain = msds.MSDS(levels, weights=None, as_loss=True, fast=False)
    loss_fast = msds.MSDS(levels, weights=None, as_loss=True)
    generator = torch.Generator().manual_seed(1)
    fx = relu_like((head_batch, 512, head_side, head_side), torch.float32, torch.device("cpu"), generator)
    fy = relu_like((head_batch, 512, head_side, head_side), torch.float32, torch.device("cpu"), generator)
    x_last = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def official_deepssim() -> torch.Tensor:
        return unfold_head(official.trunk(x), official.trunk(y))

    def loss_step(loss_fn: msds.MSDS) -> Variant:
        def step() -> None:
            prediction = x.clone().requires_grad_()
            loss_fn(prediction, y).backward()
        return step

    one_trunk = batch * trunk_gflops(size, size)
    return {
        "trunk": {
            "label": f"trunk B{batch} {size}px", "baseline": "nchw", "gflop": one_trunk,
            "variants": {"nchw": torch.no_grad()(lambda: trunk(x)),
                         "channels_last": torch.no_grad()(lambda: trunk(x_last)),
                         "winograd": torch.no_grad()(lambda: trunk(x_last, None, True))}},
        "trunk-gradient": {
            "label": f"trunk + input gradient B{batch} {size}px", "baseline": "channels_last", "gflop": 2 * one_trunk,
            "variants": {"channels_last": trunk_gradient(trunk, x_last, False),
                         "winograd": trunk_gradient(trunk, x_last, True)}},
        "head": {
            "label": f"head B{head_batch} C512 {head_side}x{head_side}", "baseline": "official unfold", "gflop": None,
            "variants": {"official unfold": torch.no_grad()(lambda: unfold_head(fx, fy)),
                         "msds": torch.no_grad()(lambda: msds.gram_ssim(fx, fy))}},
        "deepssim": {
            "label": f"deepssim B{batch} {size}px", "baseline": "official", "gflop": 2 * one_trunk,
            "variants": {"official": official_deepssim, "msds": torch.no_grad()(lambda: deepssim(x, y))}},
        "metric": {
            "label": f"msds metric B{batch} {size}px L{levels}", "baseline": "plain", "gflop": 2 * batch * pyramid_gflops(size, levels),
            "variants": {"plain": torch.no_grad()(lambda: plain(x, y)),
                         "fast": torch.no_grad()(lambda: fast(x, y))}},
        "loss-step": {
            "label": f"loss step B{batch} {size}px L{levels}", "baseline": "plain", "gflop": 3 * batch * pyramid_gflops(size, levels),
            "variants": {"plain": loss_step(loss_plain), "fast": loss_step(loss_fast)}},
    }


def with_threads(threads: int, fn: Variant) -> Variant:
    """fn run with `threads` threads (the process's count restored after)."""
    def call() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return call


def loaded_workloads(small: bool = False) -> Dict[str, dict]:
    """The metric and the loss step, plain and fast, and fast with one thread: for --busy."""
    batch, size, levels = (1, 64, 2) if small else (2, 128, 3)
    x, y = images(batch, size)
    plain, fast = msds.MSDS(levels, weights=None, fast=False), msds.MSDS(levels, weights=None)
    loss_plain = msds.MSDS(levels, weights=None, as_loss=True, fast=False)
    loss_fast = msds.MSDS(levels, weights=None, as_loss=True)

    def loss_step(loss_fn: msds.MSDS) -> Variant:
        def step() -> None:
            prediction = x.clone().requires_grad_()
            loss_fn(prediction, y).backward()
        return step

    metric = {"plain": torch.no_grad()(lambda: plain(x, y)), "fast": torch.no_grad()(lambda: fast(x, y))}
    loss = {"plain": loss_step(loss_plain), "fast": loss_step(loss_fast)}
    return {
        "metric": {"label": f"msds metric B{batch} {size}px L{levels}", "baseline": "plain",
                   "gflop": 2 * batch * pyramid_gflops(size, levels),
                   "variants": {**metric, "fast, 1 thread": with_threads(1, metric["fast"])}},
        "loss-step": {"label": f"loss step B{batch} {size}px L{levels}", "baseline": "plain",
                      "gflop": 3 * batch * pyramid_gflops(size, levels),
                      "variants": {**loss, "fast, 1 thread": with_threads(1, loss["fast"])}},
    }


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` other processes, each keeping one core busy, for the duration."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1)  # let them start spinning
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def peer_workloads(small: bool = False) -> Dict[str, dict]:
    """The loss step and the no-grad metric of every contender of bench/peers.py,
    on the same images; LPIPS-VGG is the baseline (the official DeepSSIM
    where LPIPS cannot run)."""
    batch, size = (1, 64) if small else (4, 256)
    x, y = images(batch, size)
    found, skipped = peers.contenders(torch.device("cpu"), size)
    names = [contender.name for contender in found]
    baseline = peers.LPIPS if peers.LPIPS in names else "DeepSSIM (official)"
    common = {"baseline": baseline, "skipped": skipped,
              "implementations": {contender.name: contender.implementation for contender in found}}
    return {
        # A loss step: both images forward, the prediction's backward (about one more forward of one image).
        "peers-loss": {**common, "label": f"loss step B{batch} {size}px (peers)",
                       "gflop": {c.name: 1.5 * batch * c.gflop_per_pair(size) for c in found},
                       "variants": {c.name: peers.loss_step(c, x, y) for c in found}},
        "peers-metric": {**common, "label": f"metric B{batch} {size}px (peers)",
                         "gflop": {c.name: batch * c.gflop_per_pair(size) for c in found},
                         "variants": {c.name: peers.metric(c, x, y) for c in found}},
    }


def time_in_turns(variants: Dict[str, Variant], repetitions: int, calls: int) -> Dict[str, List[float]]:
    """Per variant, the median seconds of `calls` calls in each repetition; the
    variants alternate, in reversed order every other repetition (A B, B A, ...)."""
    names = list(variants)
    for name in names:  # warm up each once
        variants[name]()
    medians: Dict[str, List[float]] = {name: [] for name in names}
    for repetition in range(repetitions):
        for name in names if repetition % 2 == 0 else reversed(names):
            medians[name].append(statistics.median(_seconds(variants[name]) for _ in range(calls)))
    return medians


def machine_name() -> str:
    """cores, processor and torch version, for the results file's name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    slug = "".join(c if c.isalnum() else "-" for c in cpu).strip("-").lower()
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"cpu-{os.cpu_count()}c-{slug}-torch{torch.__version__.split('+')[0]}"


def peers_table(timing: dict, memory: Optional[dict] = None) -> str:
    """The README's table, in Markdown, from a `--only peers` results file (and a `--memory` one)."""
    loss = next(w for name, w in timing["workloads"].items() if name.startswith("loss step"))
    metric = next(w for name, w in timing["workloads"].items() if name.startswith("metric"))
    batch = int(next(name for name in timing["workloads"] if name.startswith("loss step")).split("B")[1].split()[0])
    peaks = {}
    for name, workload in (memory or {}).get("workloads", {}).items():
        kind = "loss" if name.startswith("loss step") else "metric"
        for variant, row in workload["variants"].items():
            peaks[kind, variant] = row["peak_rss_growth_bytes"]

    def cell(row: dict) -> str:
        return (f"{row['median_s'] * 1e3 / batch:.0f} [{row['min_s'] * 1e3 / batch:.0f}-{row['max_s'] * 1e3 / batch:.0f}]"
                f" | {row['time_ratio']:.2f}x")

    def peak(kind: str, variant: str) -> str:
        value = peaks.get((kind, variant))
        return "-" if value is None else f"{value / 2**20:.0f}"

    lines = ["| | loss step, ms per pair [spread] | vs LPIPS | peak MiB | metric, ms per pair [spread] | vs LPIPS "
             "| peak MiB | implementation |", "|---|---|---|---|---|---|---|---|"]
    for variant, row in loss["variants"].items():
        lines.append(f"| {variant} | {cell(row)} | {peak('loss', variant)} | {cell(metric['variants'][variant])} | "
                     f"{peak('metric', variant)} | {loss['implementations'].get(variant, '')} |")
    lines += [f"| {variant} | skipped: {reason} | | | | | | |" for variant, reason in loss.get("skipped", {}).items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the CPU workloads in turns against their baselines.")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--calls", type=int, default=2, help="calls per repetition (their median counts)")
    parser.add_argument("--small", action="store_true", help="tiny shapes: check the script only")
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSON",
                        help="print the README's peers table from a `--only peers` file (and a `--memory` one), "
                             "and exit")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory (resident set growth) of each variant instead of its time; set "
                             "MALLOC_MMAP_THRESHOLD_=65536 in the environment")
    parser.add_argument("--busy", nargs="+", type=int, metavar="N",
                        help="time the metric and the loss step with N other processes busy, for each N given")
    parser.add_argument("--only", help="run the workloads whose key contains this text (trunk, head, deepssim, "
                                       "metric, loss-step, peers)")
    args = parser.parse_args()
    if args.table:
        files = [json.loads(path.read_text()) for path in args.table]
        print(peers_table(files[0], files[1] if len(files) > 1 else None))
        return
    rate = matmul_gflops(512 if args.small else 2048)
    report = {"machine": machine_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "matmul_gflops": rate, "repetitions": args.repetitions, "calls": args.calls, "workloads": {}}
    print(f"{report['machine']}: {report['threads']} threads, fp32 matmul {rate:.0f} GFLOP/s")
    report["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if args.memory and not report["malloc_mmap_threshold"]:
        print("warning: MALLOC_MMAP_THRESHOLD_ is not set; freed heap is reused and growth is understated")
    if args.busy:
        loaded = loaded_workloads(args.small)
        runs = [(f"{key} {busy}", {**workload, "label": f"{workload['label']}, {busy} busy", "busy": busy})
                for busy in args.busy for key, workload in loaded.items()]
    else:
        runs = list({**workloads(args.small), **peer_workloads(args.small)}.items())
    for key, workload in runs:
        if args.only and args.only not in key:
            continue
        name = workload["label"]
        if args.memory:
            rows = {variant: {"peak_rss_growth_bytes": peak_rss_growth(fn)} for variant, fn in workload["variants"].items()}
            for variant, row in rows.items():
                growth = row["peak_rss_growth_bytes"]
                print(f"{name:28s} {variant:20s} peak +{'-' if growth is None else f'{growth / 2**20:.0f}'} MiB",
                      flush=True)
            report["workloads"][name] = {"baseline": workload["baseline"], "variants": rows}
            continue
        for variant, reason in workload.get("skipped", {}).items():
            print(f"{name:28s} {variant:20s} skipped: {reason}", flush=True)
        with busy_processes(workload.get("busy", 0)):
            load = os.getloadavg()[0]
            medians = time_in_turns(workload["variants"], args.repetitions, args.calls)
        base = statistics.median(medians[workload["baseline"]])
        rows = {}
        for variant, values in medians.items():
            median = statistics.median(values)
            row = {"median_s": median, "min_s": min(values), "max_s": max(values), "speedup": base / median,
                   "time_ratio": median / base}
            gflop = workload["gflop"].get(variant) if isinstance(workload["gflop"], dict) else workload["gflop"]
            if gflop:
                row["gflops"] = gflop / median
                row["fraction_of_matmul"] = row["gflops"] / rate
            rows[variant] = row
            extra = f"  {row['gflops']:.0f} GFLOP/s ({row['fraction_of_matmul']:.0%} of matmul)" if "gflops" in row else ""
            print(f"{name:28s} {variant:20s} {median * 1e3:9.1f} ms  [{min(values) * 1e3:.1f}, "
                  f"{max(values) * 1e3:.1f}]  {median / base:.2f}x {workload['baseline']}{extra}", flush=True)
        report["workloads"][name] = {key: workload[key] for key in ("baseline", "gflop", "skipped", "implementations",
                                                                    "busy") if key in workload}
        # The 1-minute load average as timing began: other users of the machine show here too.
        report["workloads"][name]["load_average_1min"] = load
        report["workloads"][name]["variants"] = rows
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
