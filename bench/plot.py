"""Plot throughput against batch size, fast path against plain, from a benchmark JSON.

    python -m bench.plot RESULTS.benchmarks.json --out bench/results/CARD.png

Reads the end-to-end rows (metric and loss step on 256 x 256 images, 3
levels) of a pytest-benchmark JSON file, as `bench.gpu_check` or
`pytest bench --benchmark-json` writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple


def throughput(report: dict, kind: str, size: int = 256, levels: int = 3) -> Dict[str, List[Tuple[int, float]]]:
    """config -> sorted (nominal batch, image pairs per second) for one kind of end-to-end row."""
    series: Dict[str, List[Tuple[int, float]]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        if not bench["group"].startswith(kind + " ") or "precomputed" in info:
            continue
        batch, side, depth = info["row"]
        if (side, depth) == (size, levels):
            rate = info["images_per_call"] / bench["stats"]["median"]
            series.setdefault(info["config"], []).append((batch, rate))
    return {config: sorted(points) for config, points in series.items()}


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = next((b["extra_info"].get("device") for b in report["benchmarks"]), "unknown device")
    if any(b["extra_info"].get("smoke") for b in report["benchmarks"]):
        device += " (CPU smoke run: tiny images, not a measurement)"
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (kind, title) in zip(axes, (("metric", "metric (no grad)"), ("loss-step", "loss step (fwd + bwd)"))):
        for config, points in throughput(report, kind).items():
            batches, rates = zip(*points)
            axis.plot(batches, rates, marker="o", label=config)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel("image pairs per second")
        axis.set_title(f"{title}, 256x256, 3 levels")
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle(f"MSDS throughput on {device}")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description="Plot MSDS throughput from a benchmark JSON file.")
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON file")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args()
    plot(json.loads(args.results.read_text()), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
