"""Time a grid of kernel configurations in one call: `python -m bench.sweep`.

For each head workload of the speed targets it prints the two floors (the
FLOPs over the card's measured matrix rate, the bytes over its measured copy
bandwidth), the reference head's median, and the median of every
configuration (BLOCK_C, BLOCK_K, num_warps, num_stages), marking the one
kernels.config.pick_config chooses. Then the float32 precisions' speeds.
The rule in pick_config is read off these tables; nothing is tuned at run
time. Rows under 0.2 ms are timed as CUDA graph replays, so host gaps
between launches do not hide kernel time. Every configuration is compiled
first in a pool of processes (they fill Triton's cache), so the grid costs
seconds, not minutes.

`--smoke` runs a tiny grid on the CPU under the Triton interpreter, to check
the script itself.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

if __name__ == "__main__" and "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

import msds  # noqa: E402
from bench.common import CHANNELS, peak_extra_memory, relu_like, synchronize  # noqa: E402
from msds.kernels import gram_ssim as kernels  # noqa: E402
from msds.kernels.gram_ssim import Config  # noqa: E402

if __name__ == "__main__" and "--smoke" in sys.argv:
    from tests import interpreter

    interpreter.patch_once()  # the same results under the interpreter, sooner (tests/interpreter.py)

EPS = 1e-6
LEVELS_256 = [(16, 16), (8, 8), (4, 4)]      # relu5_1 maps of a 3-level pyramid of 256 x 256 images
LEVELS_1024 = [(64, 64), (32, 32), (16, 16)]  # the same for 1024 x 1024


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    sizes: Tuple[Tuple[int, int], ...]
    dtype: str          # "fp32" or "bf16"
    backward: bool      # forward + backward of one input, else forward alone
    precision: str = "tf32x3"
    both: bool = False  # the backward of both inputs (a loss against a target that is learnt too)


WORKLOADS = [
    Workload("forward B256 256px fp32", 256, tuple(LEVELS_256), "fp32", False),
    Workload("forward B256 256px bf16", 256, tuple(LEVELS_256), "bf16", False),
    Workload("forward B16 1024px fp32", 16, tuple(LEVELS_1024), "fp32", False),
    Workload("forward+backward B256 256px fp32", 256, tuple(LEVELS_256), "fp32", True),
    Workload("forward+backward B256 256px bf16", 256, tuple(LEVELS_256), "bf16", True),
    # Few programs (16 images x 3 levels x 8 row blocks): where splitting the backward's sweep should pay.
    Workload("forward+backward B16 1024px fp32", 16, tuple(LEVELS_1024), "fp32", True),
    # Both images' gradients: one launch (Config.both) against the rule's two.
    Workload("forward+backward both inputs B256 256px bf16", 256, tuple(LEVELS_256), "bf16", True, both=True),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grid(workload: Workload) -> List[Config]:
    """The configurations tried for one workload; each BLOCK_K list spans 64 to 256 bytes of a row.

    Each block shape runs in plain order with one tail step (the layout of
    the first sweeps) and in tile order with 16-position tail steps; the
    forward also tries 128-wide blocks with 8 warps. The forward's 64-wide,
    4-warp, 1-stage shapes in tile order also run as a persistent grid of 2
    and 4 programs per multiprocessor, and with 2 and 4 block pairs per
    program (group); the backward's as 2 and 4 programs per row block
    (split); the 4-warp shapes in tile order also with x and y in one loop
    (joint).
    """
    if workload.backward:
        ks = (16, 32) if workload.dtype == "fp32" else (16, 32, 64)
    else:
        ks = (16, 32, 64) if workload.dtype == "fp32" else (32, 64, 128)
    shapes = itertools.product((32, 64), ks, (4, 8), (1, 2))
    configs = [layout(Config(c, k, w, s), tiles) for c, k, w, s in shapes for tiles in (False, True)]
    if not workload.backward:
        configs += [Config(128, k, 8, stages, tile_order=True) for k in (16, 32) for stages in (1, 2)]
        wide = [config for config in configs
                if config.tile_order and config.block_c == 64 and config.num_warps == 4 and config.num_stages == 1]
        configs += [replace(config, persistent=programs) for config in wide for programs in (2, 4)]
        configs += [replace(config, group=pairs) for config in wide for pairs in (2, 4)]
    else:
        configs += [replace(config, split=parts) for config in configs
                    if config.tile_order and config.block_c == 64 and config.num_warps == 4 for parts in (2, 4)]
    configs += [replace(config, joint=True) for config in configs
                if config.tile_order and config.num_warps == 4 and not config.persistent and config.group == 1
                and config.split == 1]
    if workload.both:  # each configuration in one launch for both images, beside the rule's two launches
        configs = [replace(config, both=True) for config in configs]
    rule = kernels.pick_config(CHANNELS, DTYPES[workload.dtype], backward=workload.backward,
                               precision=workload.precision)
    return configs + [config for _, config in options(rule, workload)[2:] if config not in configs]


def options(rule: Config, workload: Workload) -> List[Tuple[str, Config]]:
    """The rule, the earlier rule, and the rule with each option the rule does
    not take yet, by name: x and y in one loop; forward: persistent grids,
    groups of block pairs, 2 and 3 pipeline stages, 128-wide blocks with 8
    warps, the small-level kernel (where a level is short enough); backward:
    the sweep split across programs, gradient rows in registers, 16-bit
    gradient products (bf16), both images' gradients from one launch (where
    both are wanted). Options that would not change this workload's launches
    are left out."""
    # Joint steps at most 32 positions: two products a step hold twice the
    # operands (tests/sm90.py).
    named = [("rule", rule), ("earlier rule", layout(rule, False)),
             ("joint", replace(rule, joint=True, block_k=min(rule.block_k, 32)))]
    shortest = min(h * w for h, w in workload.sizes)
    if workload.both:  # 4 warps of 64-wide blocks spill with two gradient blocks live (tests/sm90.py)
        return named[:2] + [("both w8", replace(rule, both=True, num_warps=8)),
                            ("both 32 wide", replace(rule, both=True, block_c=32)),
                            ("both resident 16", replace(rule, both=True, resident=16)),
                            ("both 32 wide resident 64", replace(rule, both=True, block_c=32, resident=64))]
    if workload.backward:
        named += [(f"split {parts}", replace(rule, split=parts)) for parts in (2, 4)]
        # Held rows: BLOCK_C x 64 fp32 values a program (32 registers a thread at 4 warps).
        if shortest <= 64:
            named += [("resident 64", replace(rule, resident=64)), ("resident 64 w8", replace(rule, resident=64,
                                                                                              num_warps=8))]
        if workload.dtype == "bf16":
            named += [("grad16", replace(rule, grad16=True))]
        return named
    named += [(f"persistent x{programs}", replace(rule, persistent=programs)) for programs in (2, 4)]
    named += [(f"group {pairs}", replace(rule, group=pairs)) for pairs in (2, 4)]
    named += [(f"stages {stages}", replace(rule, num_stages=stages)) for stages in (2, 3)]
    named += [("128 wide", replace(rule, block_c=128, block_k=32, num_warps=8, tile_order=True, tail_k=16))]
    for limit, pairs in ((16, 4), (16, 9), (64, 4)):  # levels of 4 x 4 (and 8 x 8) maps
        if shortest <= limit:
            named += [(f"small {limit} x{pairs}", replace(rule, small=limit, small_group=pairs))]
    return named


def options_grid(workload: Workload) -> List[Config]:
    """The "options" subset: every option against the current rule, nothing else."""
    rule = kernels.pick_config(CHANNELS, DTYPES[workload.dtype], backward=workload.backward,
                               precision=workload.precision)
    return [config for _, config in options(rule, workload)]


def layout(config: Config, tiles: bool) -> Config:
    """The block shape of `config` in tile order with 16-position tails, or in
    plain order with one tail step (the layout before tile order)."""
    return replace(config, tile_order=tiles, tail_k=16 if tiles else config.block_k)


def smoke_workloads() -> List[Workload]:
    return [Workload("forward smoke", 2, ((3, 3), (2, 2)), "fp32", False),
            Workload("forward+backward smoke", 2, ((3, 3), (2, 2)), "fp32", True),
            Workload("forward+backward both inputs smoke", 2, ((3, 3), (2, 2)), "fp32", True, both=True)]


def smoke_grid(workload: Workload) -> List[Config]:
    """A few configurations of each kind, every option among them."""
    configs = [Config(16, 16, 4, 1), Config(32, 16, 4, 2), layout(Config(32, 32, 4, 1), True),
               Config(16, 16, 4, 1, joint=True)]
    if workload.both:
        return configs + [Config(16, 16, 4, 1, both=True), Config(16, 16, 4, 1, both=True, resident=16)]
    if workload.backward:
        return configs + [Config(16, 16, 4, 1, split=2), Config(16, 16, 4, 1, resident=16),
                          Config(16, 16, 4, 1, grad16=True)]
    return configs + [Config(32, 32, 4, 1, persistent=2), Config(16, 16, 4, 1, group=2),
                      Config(16, 16, 4, 1, small=16, small_group=2)]


# --- inputs and the functions timed ---------------------------------------------------------------

def features(workload: Workload, device: torch.device, channels: int, batch: Optional[int] = None):
    generator = torch.Generator().manual_seed(0)
    shape = (batch or workload.batch, channels)
    dtype = DTYPES[workload.dtype]
    fxs = [relu_like((*shape, h, w), dtype, device, generator) for h, w in workload.sizes]
    fys = [relu_like((*shape, h, w), dtype, device, generator) for h, w in workload.sizes]
    return fxs, fys


def kernel_call(workload: Workload, config: Optional[Config], fxs, fys, precision: Optional[str] = None):
    """The fused head with one configuration: the forward kernel, and for a
    backward workload the backward kernel too (the forward keeps the rule's
    configuration then, so the table isolates the backward's)."""
    precision = precision or workload.precision
    if not workload.backward:
        return lambda: kernels.gram_ssim_forward(fxs, fys, EPS, precision, config)
    grad = torch.ones(fxs[0].shape[0], len(fxs), device=fxs[0].device)

    def forward_backward():
        kernels.gram_ssim_forward(fxs, fys, EPS, precision)
        kernels.gram_ssim_backward(grad, fxs, fys, EPS, precision, config, both=workload.both)

    return forward_backward


def reference_call(workload: Workload, fxs, fys):
    if not workload.backward:
        def forward():
            with torch.no_grad():
                msds.multiscale_gram_ssim(fxs, fys, backend="reference")
        return forward
    leaves = [f.detach().requires_grad_() for f in fxs]
    others = [f.detach().requires_grad_(workload.both) for f in fys]

    def forward_backward():
        scores = msds.multiscale_gram_ssim(leaves, others, backend="reference")
        torch.autograd.grad(scores.sum(), leaves + (others if workload.both else []))

    return forward_backward


# Below this, host gaps between launches can hide kernel time: such rows are
# timed again as a CUDA graph replay.
GRAPH_BELOW_MS = 0.2


def median_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        median = float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        if median < GRAPH_BELOW_MS:
            try:
                median = float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))
            except RuntimeError as err:  # not capturable: keep the plain timing, say so
                print(f"   (CUDA graph capture failed, timed without: {str(err).splitlines()[0][:120]})")
        return median
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


# --- compiling every configuration in parallel ----------------------------------------------------

def compile_one(workload: Workload, config: Config, channels: int, smoke: bool) -> Optional[str]:
    """Run one configuration once on a one-image batch (same specialisation,
    so the same compiled program); returns the error, if any."""
    device = torch.device("cpu" if smoke else "cuda")
    try:
        fxs, fys = features(workload, device, channels, batch=1)
        kernel_call(workload, config, fxs, fys)()
        synchronize(device)
        return None
    except Exception as err:  # noqa: BLE001 - a configuration that cannot compile is a table entry
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]


def compile_all(jobs: List[Tuple[Workload, Config]], channels: int, smoke: bool) -> Dict[Tuple[Workload, Config], str]:
    """Compile in worker processes; returns the configurations that failed, with why."""
    if smoke:
        return {job: error for job in jobs if (error := compile_one(*job, channels, smoke))}
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) - 2))
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {job: pool.submit(compile_one, *job, channels, smoke) for job in jobs}
        return {job: error for job, future in futures.items() if (error := future.result())}


# --- the card's ceilings and each workload's floors -----------------------------------------------

def copy_bandwidth(device: torch.device) -> float:
    """TB/s of a 2 GiB device-to-device copy, counting bytes read and written."""
    source = torch.empty(2**29, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / median_ms(lambda: target.copy_(source), device) / 1e9


def ceilings(device: torch.device) -> Dict[str, Optional[float]]:
    """Measured copy bandwidth (bytes read + written) and dense matrix rates."""
    if device.type != "cuda":
        return {"copy_tb_s": None, "bf16_tflops": None, "tf32_tflops": None, "fp32_tflops": None}
    rates = {"copy_tb_s": copy_bandwidth(device)}
    n = 8192
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                                  ("fp32", torch.float32, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            rates[f"{name}_tflops"] = 2 * n**3 / median_ms(lambda: a @ b, device) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return rates


def floors(workload: Workload, channels: int, card: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """Milliseconds no implementation beats: arithmetic and memory traffic.

    Arithmetic: the upper triangle of 4x4 tiles of both Gram matrices
    (2 FLOP per entry per position), plus for the backward the product
    dScore/dG @ F over the full C x C; at the bf16 rate for bf16 features,
    else three TF32 products each (tf32x3), one (tf32) or the fp32 rate (ieee).
    Memory: every feature map read once, and the gradient written once.
    """
    positions = sum(h * w for h, w in workload.sizes)
    tiles = channels // kernels.TILE
    triangle = tiles * (tiles + 1) // 2 * kernels.TILE**2
    flops = workload.batch * 2 * (2 * triangle * positions)
    itemsize = DTYPES[workload.dtype].itemsize
    data = workload.batch * 2 * channels * positions * itemsize
    if workload.backward:
        inputs = 2 if workload.both else 1
        flops *= 2  # the Gram blocks are formed again for the gradient (once for both inputs at best)
        flops += inputs * workload.batch * 2 * channels**2 * positions
        data += inputs * workload.batch * channels * positions * 4
    if workload.dtype == "bf16":
        rate = card["bf16_tflops"]
    else:
        rate = {"ieee": card["fp32_tflops"], "tf32": card["tf32_tflops"],
                "tf32x3": card["tf32_tflops"] and card["tf32_tflops"] / 3}[workload.precision]
    return {
        "gflop": flops / 1e9,
        "gbytes": data / 1e9,
        "arithmetic_ms": flops / rate / 1e9 if rate else None,
        "memory_ms": data / card["copy_tb_s"] / 1e9 if card["copy_tb_s"] else None,
    }


# --- the sweep ------------------------------------------------------------------------------------

def sweep(workloads: List[Workload], grids: Dict[Workload, List[Config]], device: torch.device,
          channels: int, card: Dict[str, Optional[float]], failed: Dict) -> List[dict]:
    results = []
    for workload in workloads:
        fxs, fys = features(workload, device, channels)
        rule = kernels.pick_config(channels, DTYPES[workload.dtype], backward=workload.backward,
                                   precision=workload.precision)
        reference_ms = median_ms(reference_call(workload, fxs, fys), device)
        rows = []
        for config in grids[workload]:
            if (workload, config) in failed:
                rows.append({"config": asdict(config), "error": failed[workload, config]})
                continue
            call = kernel_call(workload, config, fxs, fys)
            rows.append({"config": asdict(config), "median_ms": median_ms(call, device)})
        rule_call = kernel_call(workload, None, fxs, fys)
        result = {
            "workload": asdict(workload),
            "floors": floors(workload, channels, card),
            "reference_ms": reference_ms,
            "reference_peak_extra_bytes": peak_extra_memory(reference_call(workload, fxs, fys), device),
            "rule": asdict(rule),
            "earlier_rule": asdict(layout(rule, False)),
            "rule_ms": median_ms(rule_call, device),
            "rule_peak_extra_bytes": peak_extra_memory(rule_call, device),
            "configs": rows,
        }
        print_workload(result)
        results.append(result)
        del fxs, fys
    return results


def precision_speeds(device: torch.device, channels: int, smoke: bool) -> List[dict]:
    """The rule's configuration under each float32 dot precision."""
    rows = []
    for base in (smoke_workloads() if smoke else [WORKLOADS[0], WORKLOADS[3]]):
        fxs, fys = features(base, device, channels)
        for precision in kernels.PRECISIONS:
            rows.append({"workload": base.name, "precision": precision,
                         "median_ms": median_ms(kernel_call(base, None, fxs, fys, precision), device)})
    return rows


def level_split(device: torch.device, channels: int, smoke: bool) -> List[dict]:
    """The forward on each level alone, by the rule, the earlier rule and each
    option: where a multi-level launch spends its time. Every level has the
    same number of programs and the same tile statistics to reduce, so the
    levels with few positions show the cost that does not scale with the
    positions (statistics, launch and setup)."""
    rows = []
    for base in (smoke_workloads()[:1] if smoke else WORKLOADS[:2]):
        fxs, fys = features(base, device, channels)
        rule = kernels.pick_config(channels, DTYPES[base.dtype], precision=base.precision)
        for name, config in options(rule, base):
            for level, size in enumerate(base.sizes):
                one = Workload(f"{base.name} level {level}", base.batch, (size,), base.dtype, False)
                call = kernel_call(one, config, fxs[level:level + 1], fys[level:level + 1])
                rows.append({"workload": base.name, "config": name, "level": level,
                             "positions": size[0] * size[1], "median_ms": median_ms(call, device)})
    return rows


def option_name(config: Config) -> str:
    """The options a configuration takes, as describe() prints them."""
    names = [f"persistent x{config.persistent}"] if config.persistent else []
    names += [f"group {config.group}"] if config.group > 1 else []
    names += [f"split {config.split}"] if config.split > 1 else []
    names += [f"small {config.small} x{config.small_group}"] if config.small else []
    names += [f"resident {config.resident}"] if config.resident else []
    names += [name for name in ("joint", "both", "grad16") if getattr(config, name)]
    return " ".join(names)


def describe(config: dict) -> str:
    order = "tiles" if config["tile_order"] else "plain"
    taken = option_name(Config(**config))
    return (f"C{config['block_c']:<3d} K{config['block_k']:<4d} w{config['num_warps']} s{config['num_stages']} "
            f"{order} tail{config['tail_k']:<3d}{' ' + taken if taken else ''}")


def print_workload(result: dict) -> None:
    floor = result["floors"]
    shown = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{result['workload']['name']}: {floor['gflop']:.1f} GFLOP, {floor['gbytes']:.3f} GB; floors "
          f"arithmetic {shown(floor['arithmetic_ms'])} ms, memory {shown(floor['memory_ms'])} ms; "
          f"reference {result['reference_ms']:.3f} ms")
    timed = sorted((row for row in result["configs"] if "median_ms" in row), key=lambda row: row["median_ms"])
    best = timed[0]["median_ms"] if timed else None
    for row in timed:
        names = [name for name in ("rule", "earlier_rule") if row["config"] == result[name]]
        mark = "  <- " + " = ".join(names).replace("_", " ") if names else ""
        speedup = result["reference_ms"] / row["median_ms"]
        print(f"   {describe(row['config'])}  {row['median_ms']:8.3f} ms  x{speedup:6.1f}"
              f"  {row['median_ms'] / best:5.2f} of best{mark}")
    for row in result["configs"]:
        if "error" in row:
            print(f"   {describe(row['config'])}  failed: {row['error']}")
    print(f"   rule {describe(result['rule'])}: {result['rule_ms']:.3f} ms, "
          f"x{result['reference_ms'] / result['rule_ms']:.1f} the reference")


SUBSETS = {"options": options_grid}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU dry run with a tiny grid (interpreter)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--only", help="run the workloads whose name contains this text")
    parser.add_argument("--subset", choices=sorted(SUBSETS),
                        help="a named set of configurations instead of the full grid: " + "; ".join(
                            f"{name}: {grid_fn.__doc__.split(':', 1)[1].strip()}" for name, grid_fn in SUBSETS.items()))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        print("bench.sweep needs a CUDA GPU; use --smoke for a CPU dry run", file=sys.stderr)
        return 2
    channels = 16 if args.smoke else CHANNELS
    workloads = smoke_workloads() if args.smoke else WORKLOADS
    workloads = [w for w in workloads if args.only is None or args.only in w.name]
    grid_fn = smoke_grid if args.smoke else SUBSETS.get(args.subset, grid)
    grids = {w: grid_fn(w) for w in workloads}
    started = time.time()
    card = ceilings(device)
    print("card:", torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
          "| " + ", ".join(f"{k} {v:.1f}" for k, v in card.items() if v is not None))
    jobs = [(w, c) for w in workloads for c in grids[w]]
    failed = compile_all(jobs, channels, args.smoke)
    print(f"compiled {len(jobs)} configurations in {time.time() - started:.0f} s ({len(failed)} failed)")
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
               "torch": torch.__version__, "triton": __import__("triton").__version__, "ceilings": card,
               "workloads": sweep(workloads, grids, device, channels, card, failed)}
    results["precisions"] = precision_speeds(device, channels, args.smoke)
    print("\nfloat32 precisions (the rule's configuration):")
    for row in results["precisions"]:
        print(f"   {row['workload']:40s} {row['precision']:7s} {row['median_ms']:.3f} ms")
    results["levels"] = level_split(device, channels, args.smoke)
    print("\neach level alone (forward):")
    for row in results["levels"]:
        print(f"   {row['workload']:28s} {row['config']:12s} level {row['level']} ({row['positions']:4d} positions) "
              f"{row['median_ms']:.3f} ms")
    results["seconds"] = round(time.time() - started, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(f"\nsweep took {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
