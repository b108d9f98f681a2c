"""One command for every GPU check: `python -m bench.gpu_check`.

On a CUDA machine, with only that machine's own packages, it
1. runs every test that takes the device fixture on the GPU (kernels in
   fp32, fp16, bf16 and TF32 mode, gradients, layouts, unequal lengths; the
   modules on the Triton head; the fast path),
2. measures each precision mode's score error against float64 on trunk
   features of real-looking images, each against its bound,
3. checks torch.compile(fullgraph=True) of the MSDS loss, forward and backward,
4. compares the fast path's scores with the plain configuration's, against
   their bounds,
5. runs the head benchmarks (Triton against the reference, same run), the
   end-to-end ones (fast path against plain, same run) and the peers
   (LPIPS-VGG and DISTS beside msds, bench/bench_peers.py),
and prints a short table of each as soon as it is done, saving everything
as JSON (--out) next to the raw pytest-benchmark file (for `python -m
bench.plot`). Each section reports its own failure and the rest still run;
the JSON is rewritten after every section, so a run cut off at a time limit
keeps what it measured. `--parity-only` runs steps 1-4, `--bench-only` step 5.
`--smoke` runs the same code on the CPU with tiny shapes under the Triton
interpreter, to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU dry run with tiny shapes (interpreter)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    half = parser.add_mutually_exclusive_group()
    half.add_argument("--parity-only", action="store_true",
                      help="parity tests, precision table, compile check and fast-path agreement only")
    half.add_argument("--bench-only", action="store_true", help="the benchmarks only")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

import msds  # noqa: E402
from msds.cli import demo  # noqa: E402
from msds.metric import reference
from tests.helpers import score_atol, trunk_terms  # noqa: E402  (the bounds the tests use, derived there)

if ARGS is not None and ARGS.smoke:
    from tests import interpreter

    interpreter.patch_once()  # the same results under the interpreter, sooner (tests/interpreter.py)


def device_env(smoke: bool) -> dict:
    env = dict(os.environ)
    env["MSDS_TEST_DEVICE"] = "cpu" if smoke else "cuda"
    if smoke:  # benchmark rows that time full sizes on the CPU (bench/bench_peers.py) keep to tiny ones
        env["MSDS_BENCH_SMOKE"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def run_pytest(arguments: list, smoke: bool, timeout: float) -> subprocess.CompletedProcess:
    """pytest in a child process on the check's device; a timeout is reported, not raised.

    The limits budget a card's command; the CPU smoke run (the interpreter,
    on a machine that may be busy with other tests) gets ten times as long."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments]
    timeout = 10 * timeout if smoke else timeout
    try:
        return subprocess.run(command, cwd=ROOT, env=device_env(smoke), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        return subprocess.CompletedProcess(command, 124, output + f"\ntimed out after {timeout:.0f} s", "")


def device_tests(smoke: bool) -> list:
    """Every test that takes the device fixture (pytest -m device), by node id."""
    listed = run_pytest(["tests", "--full", "-m", "device", "--collect-only"], smoke, timeout=120)
    return [line for line in listed.stdout.splitlines() if "::" in line]


def run_tests(smoke: bool) -> dict:
    """Every test that takes the device fixture, on the GPU: kernels (forward,
    gradients, layouts, unequal lengths), the modules on the Triton head and the
    fast path. --smoke lists them all and runs a few under the interpreter."""
    tests = device_tests(smoke)
    selection = ["-k", "float64_matches_oracle and B1-C4 or scores_match_the_oracle and group2"] if smoke else []
    if not smoke and importlib.util.find_spec("xdist") is not None:
        selection += ["-n", "8"]  # the tests are mostly kernel compilation, which is CPU-bound
    started = time.time()
    result = run_pytest(["tests", "--full", "-m", "device", *selection], smoke, timeout=300)
    lines = result.stdout.strip().splitlines()
    summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line),
                   lines[-1] if lines else result.stderr.strip()[-500:])
    failures = [line for line in lines if line.startswith("FAILED")]
    return {"returncode": result.returncode, "summary": summary, "failures": failures, "device_tests": tests,
            "files": sorted({test.split("::")[0] for test in tests}), "seconds": round(time.time() - started, 1)}


def trunk_features(model: msds.MSDS, size: int, device: torch.device, pairs: int):
    """Per-level features of the demo reference and its distortions (real-looking images)."""
    reference_image = demo.reference_image(size)
    _, distorted = demo.distortion_ladder(reference_image)
    distorted = distorted[:: max(1, len(distorted) // pairs)][:pairs]
    y = torch.from_numpy(reference_image).permute(2, 0, 1).unsqueeze(0).expand(len(distorted), -1, -1, -1)
    with torch.no_grad():
        xs = [model.trunk(level.to(device)) for level in msds.image_pyramid(distorted.to(device), model.levels)]
        ys = [model.trunk(level.to(device)) for level in msds.image_pyramid(y.contiguous().to(device), model.levels)]
    return xs, ys


def precision_table(device: torch.device, smoke: bool) -> dict:
    """Max and mean |score - float64 score| of each mode on realistic features."""
    size, levels, pairs = (32, 2, 1) if smoke else (256, 3, 16)
    model, weights = msds.MSDS(levels=levels, weights=None).to(device), "random"  # nothing to download
    xs, ys = trunk_features(model, size, device, pairs)
    truth = reference.multiscale_scores([f.double() for f in xs], [f.double() for f in ys], 1e-6)
    modes = {"reference fp32": lambda: reference.multiscale_scores(xs, ys, 1e-6)}
    for precision in ("ieee", "tf32x3", "tf32"):
        modes[f"triton fp32 {precision}"] = lambda p=precision: msds.multiscale_gram_ssim(
            xs, ys, backend="triton", precision=p)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        low = ([f.to(dtype) for f in xs], [f.to(dtype) for f in ys])
        modes[f"reference {name} features"] = lambda low=low: reference.multiscale_scores(*low, 1e-6)
        if not (smoke and dtype == torch.bfloat16):  # the interpreter cannot do bf16 dots
            modes[f"triton {name} features"] = lambda low=low: msds.multiscale_gram_ssim(*low, backend="triton")
    rows = {}
    positions = xs[0][0, 0].numel()
    for name, fn in modes.items():
        error = (fn().double() - truth).abs()
        bound = precision_bound(name, positions, xs[0].shape[1])
        rows[name] = {"max_abs_error": error.max().item(), "mean_abs_error": error.mean().item(), "bound": bound}
    over = [name for name, row in rows.items() if row["max_abs_error"] > row["bound"]]
    return {"weights": weights, "image_size": size, "levels": levels, "pairs": xs[0].shape[0], "modes": rows,
            "over_bound": over, "returncode": 1 if over else 0}


def precision_bound(mode: str, positions: int, channels: int) -> float:
    """The score error each mode may have (score_atol of tests/helpers.py, whose
    derivation the README's Testing section sums up): float32 Grams and tile
    statistics, plus one rounding of every operand to TF32 ("tf32") or of
    every feature to 16 bits (16-bit features)."""
    bound = score_atol(positions + 16, channels=channels)
    rounded = {"tf32": "tf32", "fp16 features": torch.float16, "bf16 features": torch.bfloat16}
    kind = next((kind for suffix, kind in rounded.items() if mode.endswith(" " + suffix)), None)
    return bound if kind is None else bound + score_atol(1, kind, channels=channels)


def compile_check(device: torch.device, smoke: bool) -> dict:
    """torch.compile(fullgraph=True) of the loss: value and gradient against eager.

    Both are also compared with the float64 gradient of the same loss, since
    on a GPU cuDNN's TF32 convolutions make eager and compiled differ by their
    own rounding; the check fails when the compiled gradient is more than
    twice as far from float64 as the eager one (plus 1e-5).
    """
    size = 32 if smoke else 64
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True, backend="triton").to(device)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, size, size, generator=generator).to(device)
    pred = (target + 0.1 * torch.rand(target.shape, generator=generator).to(device)).clamp(0, 1)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager" if smoke else "inductor")
    target, pred = (target[:1], pred[:1]) if smoke else (target, pred)
    results = []
    for fn in (loss_fn, compiled):
        x = pred.clone().requires_grad_()
        value = fn(x, target)
        value.backward()
        results.append((value.detach(), x.grad))
    (eager_value, eager_grad), (value, grad) = results
    x64 = pred.double().requires_grad_()
    exact = copy.deepcopy(loss_fn).double()
    if smoke:  # the interpreter's float64 kernels at C = 512 take long; the reference head is as exact
        exact.backend = "reference"
    exact(x64, target.double()).backward()

    def relative(g: torch.Tensor) -> float:
        return ((g.double() - x64.grad).abs().max() / x64.grad.abs().max()).item()

    eager_error, compiled_error = relative(eager_grad), relative(grad)
    return {
        "backend": "aot_eager" if smoke else "inductor",
        "value_difference": (value - eager_value).abs().item(),
        "grad_relative_difference": ((grad - eager_grad).abs().max() / eager_grad.abs().max()).item(),
        "eager_grad_error_vs_float64": eager_error,
        "compiled_grad_error_vs_float64": compiled_error,
        "returncode": 0 if compiled_error <= 2 * eager_error + 1e-5 else 1,
    }


def fast_path_agreement(device: torch.device, smoke: bool) -> dict:
    """Max |score difference| of the fast path (fp32 and bf16 trunk) from the plain configuration."""
    size, levels, pairs = (32, 2, 2) if smoke else (256, 3, 16)
    reference_image = demo.reference_image(size)
    _, distorted = demo.distortion_ladder(reference_image)
    x = distorted[:pairs].to(device)
    y = torch.from_numpy(reference_image).permute(2, 0, 1)[None].expand(len(x), -1, -1, -1).contiguous().to(device)
    backend = "reference" if smoke else "auto"
    # PyTorch runs cuDNN's float32 convolutions in TF32 by default, in both
    # configurations: a TF32 rounding of every layer's inputs, 11 of them.
    fp32_kind = "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else torch.float32
    with torch.no_grad():
        plain_model = msds.MSDS(levels=levels, weights=None, fast=False).to(device)  # nothing to download
        plain = plain_model(x, y)
        rows, bounds = {}, {}
        for name, dtype in (("fast-fp32", None), ("fast-bf16", torch.bfloat16)):
            model = msds.MSDS(levels=levels, weights=None, fast=True, trunk_dtype=dtype, backend=backend)
            rows[name] = (model.to(device)(x, y) - plain).abs().max().item()
            # Both sides' roundings: the trunk's terms in float32, its layers' inputs in TF32 or 16 bits.
            bounds[name] = 2 * score_atol(trunk_terms(plain_model)) + 2 * score_atol(12, dtype or fp32_kind)
    over = [name for name in rows if rows[name] > bounds[name]]
    return {"weights": "random", "pairs": len(x), "image_size": size, "max_abs_difference": rows,
            "bounds": bounds, "over_bound": over, "returncode": 1 if over else 0}


# The end-to-end rows behind the targets and the plot; `pytest bench` runs them all.
END_TO_END_ROWS = "many_against_one or B16-256px-L3 or B64-256px-L3 or B256-256px-L3 or B64-512px-L3"


def run_benchmarks(file: str, selection: Optional[str], smoke: bool, json_path: Path, timeout: float) -> dict:
    """One benchmark file in a child pytest; its rows grouped for the tables."""
    arguments = [file, "--benchmark-enable", f"--benchmark-json={json_path}"]
    arguments += ["-k", selection] if selection else []
    # A few rounds per row keep the whole check within minutes; each row has
    # run once untimed before (its memory measurement), which warms it up.
    arguments += ["--benchmark-max-time=0.01", "--benchmark-min-rounds=1"] if smoke else \
        ["--benchmark-max-time=0.2", "--benchmark-min-rounds=3"]
    json_path.unlink(missing_ok=True)
    result = run_pytest(arguments, smoke, timeout)
    if not json_path.exists():  # nothing measured (a timeout, or pytest failed to start)
        raise RuntimeError(f"pytest exited with {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    failures = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    groups: dict = {}
    for bench in json.loads(json_path.read_text())["benchmarks"]:
        info = bench["extra_info"]
        entry = {"median_ms": bench["stats"]["median"] * 1e3, "peak_extra_bytes": info["peak_extra_bytes"],
                 "trunk_tflops": info.get("trunk_tflops"), "fraction_of_bf16_rate": info.get("fraction_of_bf16_rate")}
        if "implementation" in info:  # a peers row: which package ran it, and per pair of images
            entry.update(implementation=info["implementation"], batch=info["batch"],
                         trunk_gflops=info.get("trunk_gflops"))
        if "backend" in info:
            key = info["backend"]
        else:
            key = "precomputed" if info.get("precomputed") else "each-reference" if "precomputed" in info else info["config"]
        groups.setdefault(bench["group"], {})[key] = entry
    for fast, base in (("triton", "reference"), ("fast-fp32", "plain"), ("fast-bf16", "plain"),
                       ("plain-cudnn-benchmark", "plain"), ("precomputed", "each-reference")):
        compare(groups, fast, base)
    for row in groups.values():  # peers rows: each contender's time as a fraction of LPIPS-VGG's
        if "LPIPS-VGG" in row:
            for entry in row.values():
                entry["time_ratio_to_lpips"] = entry["median_ms"] / row["LPIPS-VGG"]["median_ms"]
    # Rows that ran are kept even when others failed; the failures make the section fail.
    return {"file": file, "json": str(json_path), "groups": groups, "returncode": result.returncode,
            "failures": failures, "skipped": skipped}


def compare(groups: dict, fast: str, base: str) -> None:
    """Speedup and memory ratio of `fast` over `base` in every group that has both."""
    for row in groups.values():
        if fast in row and base in row:
            row[fast]["speedup"] = row[base]["median_ms"] / row[fast]["median_ms"]
            mems = row[fast]["peak_extra_bytes"], row[base]["peak_extra_bytes"]
            row[fast]["memory_ratio"] = mems[0] / mems[1] if None not in mems and mems[1] else None


def print_tests(tests: dict) -> None:
    print(f"{len(tests['device_tests'])} tests take the device ({', '.join(tests['files'])})")
    print(f"parity tests ({tests['seconds']} s): {tests['summary']}")
    for line in tests["failures"]:
        print("   ", line)


def print_precision(table: dict) -> None:
    print(f"score error vs float64 ({table['weights']} trunk, {table['pairs']} pairs of "
          f"{table['image_size']}px images, {table['levels']} levels)")
    for name, row in table["modes"].items():
        mark = "   OVER THE BOUND" if name in table["over_bound"] else ""
        print(f"   {name:28s} max {row['max_abs_error']:.2e}   mean {row['mean_abs_error']:.2e}"
              f"   bound {row['bound']:.1e}{mark}")


def print_compile(check: dict) -> None:
    print(f"torch.compile(fullgraph=True, backend={check['backend']}) of the loss: value diff "
          f"{check['value_difference']:.1e}, grad rel diff {check['grad_relative_difference']:.1e}; "
          f"grad error vs float64: eager {check['eager_grad_error_vs_float64']:.1e}, "
          f"compiled {check['compiled_grad_error_vs_float64']:.1e}")
    if check["returncode"]:
        print("   FAILED: the compiled gradient is more than twice as far from float64 as eager's")


def print_fast_path(agreement: dict) -> None:
    differences = ", ".join(f"{k} {v:.1e} (bound {agreement['bounds'][k]:.1e})"
                            for k, v in agreement["max_abs_difference"].items())
    print(f"fast path vs plain ({agreement['weights']} trunk, {agreement['pairs']} pairs of "
          f"{agreement['image_size']}px): max |score difference| {differences}")
    for name in agreement["over_bound"]:
        print(f"   FAILED: {name} is over its bound")


def print_head(bench: dict) -> None:
    print("head benchmarks (median ms; speedup and peak extra memory vs the reference, same run)")
    print_groups(bench["groups"], "reference")
    print_failures(bench)


def print_end_to_end(bench: dict) -> None:
    print("end to end (median ms; speedup and peak memory vs plain, same run; trunk TFLOP/s)")
    print_groups(bench["groups"], None)
    print_failures(bench)


def print_peers(bench: dict) -> None:
    print("beside LPIPS and DISTS (ms per image pair, peak extra memory, time as a fraction of LPIPS-VGG's)")
    for group, row in sorted(bench["groups"].items()):
        print(f"   {group}")
        for name, entry in row.items():
            ratio = f"{entry['time_ratio_to_lpips']:.2f}x LPIPS" if "time_ratio_to_lpips" in entry else "-"
            memory = entry["peak_extra_bytes"]
            print(f"      {name:22s} {entry['median_ms'] / entry['batch']:8.3f} ms/pair  "
                  f"{'-' if memory is None else f'{memory / 2**20:.0f} MiB':>9s}  {ratio:>12s}  ({entry['implementation']})")
    for line in bench.get("skipped", []):
        print("   ", line)
    print_failures(bench)


def print_failures(bench: dict) -> None:
    if bench["returncode"] != 0:
        print(f"   pytest exited with {bench['returncode']}")
    for line in bench["failures"]:
        print("   ", line)


def print_groups(groups: dict, base: Optional[str]) -> None:
    for group, row in sorted(groups.items()):
        cells = []
        for key, entry in row.items():
            text = f"{key} {entry['median_ms']:.3f}"
            if "speedup" in entry:
                memory = entry.get("memory_ratio")
                text += f" (x{entry['speedup']:.1f}, mem {'-' if memory is None else f'{memory:.1%}'})"
            if entry.get("trunk_tflops") is not None and base is None:
                text += f" [{entry['trunk_tflops']:.0f} TF/s]"
            cells.append(text)
        print(f"   {group:40s} " + "  ".join(cells))


def run_section(results: dict, name: str, measure: Callable[[], dict], show: Callable[[dict], None],
                out: Optional[Path]) -> bool:
    """Run one section, print its table at once, record it (or its failure) and save the JSON.

    A failing section is reported and the next one still runs.
    """
    print(f"\n== {name}", flush=True)
    started = time.time()
    try:
        results[name] = measure()
        show(results[name])
        ok = results[name].get("returncode", 0) == 0
    except Exception as err:  # noqa: BLE001 - one section's failure must not end the check
        results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        print(f"FAILED: {results[name]['error']}\n{results[name]['traceback']}")
        ok = False
    results[name]["section_seconds"] = round(time.time() - started, 1)
    sys.stdout.flush()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return ok


def main() -> int:
    args = ARGS or parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # a run cut off at a time limit still shows what it measured
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        print("bench.gpu_check needs a CUDA GPU; use --smoke for a CPU dry run", file=sys.stderr)
        return 2
    import triton

    started = time.time()
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
               "torch": torch.__version__, "triton": triton.__version__}
    print(f"== device: {results['device']} | torch {results['torch']} | triton {results['triton']}", flush=True)
    raw = (args.out or ROOT / "bench" / "results" / "last.json").with_suffix("")
    sections = []
    if not args.bench_only:
        sections += [
            ("tests", lambda: run_tests(args.smoke), print_tests),
            ("precision", lambda: precision_table(device, args.smoke), print_precision),
            ("compile", lambda: compile_check(device, args.smoke), print_compile),
            ("fast_path", lambda: fast_path_agreement(device, args.smoke), print_fast_path),
        ]
    if not args.parity_only:
        raw.parent.mkdir(parents=True, exist_ok=True)
        sections += [
            ("bench_head", lambda: run_benchmarks("bench/bench_head.py", None, args.smoke,
                                                  Path(f"{raw}.head.benchmarks.json"), timeout=75), print_head),
            ("bench_end_to_end", lambda: run_benchmarks("bench/bench_end_to_end.py", END_TO_END_ROWS, args.smoke,
                                                        Path(f"{raw}.end_to_end.benchmarks.json"), timeout=105),
             print_end_to_end),
            ("bench_peers", lambda: run_benchmarks("bench/bench_peers.py", None, args.smoke,
                                                   Path(f"{raw}.peers.benchmarks.json"), timeout=200), print_peers),
        ]
    failed = [name for name, measure, show in sections if not run_section(results, name, measure, show, args.out)]
    results["seconds"] = round(time.time() - started, 1)
    results["failed_sections"] = failed
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(f"\n== total {results['seconds']} s; " + (f"FAILED: {', '.join(failed)}" if failed else "every section passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
