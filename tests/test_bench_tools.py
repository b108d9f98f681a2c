"""Benchmark tools: the baseline the CPU ratios are taken against gives the
true scores, and the plot is drawn from a pytest-benchmark file (a CPU smoke
run here)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import msds
from bench.common import unfold_head
from helpers import images
from oracle import deepssim_head

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("size", [64, 112])
def test_official_baseline_head_gives_the_true_scores(size, rng):
    # Trunk features of images (relu5_1 of 4x4 and 7x7 positions), float32 as
    # bench/cpu.py times them, against the float64 oracle on the same values.
    # Measured 6e-8 to 7e-8 (the rounding of a score near 1 is 6e-8).
    x = images((2, 3, size, size), rng, torch.float32)
    y = (x + 0.1 * torch.rand(x.shape, generator=rng)).clamp(0, 1)
    trunk = msds.MSDS(levels=1, weights=None).trunk
    with torch.no_grad():
        fx, fy = trunk(x), trunk(y)
    got = unfold_head(fx, fy)
    assert got.dtype == torch.float32 and got.shape == (2,)
    np.testing.assert_allclose(got.double().numpy(), deepssim_head(fx, fy), rtol=0, atol=1e-6)


@pytest.mark.full
def test_plot_from_a_benchmark_file(tmp_path):
    results = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench/bench_end_to_end.py",
                          "-k", "B16-256px-L3 or B64-256px-L3", "--benchmark-enable", "--benchmark-max-time=0.001",
                          "--benchmark-min-rounds=1", f"--benchmark-json={results}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:]
    from bench.plot import throughput

    import json

    report = json.loads(results.read_text())
    series = throughput(report, "metric")
    assert set(series) == {"plain", "plain-cudnn-benchmark", "fast-fp32", "fast-bf16"}
    assert [batch for batch, _ in series["plain"]] == [16, 64]
    assert all(rate > 0 for points in series.values() for _, rate in points)
    png = tmp_path / "plot.png"
    drawn = subprocess.run([sys.executable, "-m", "bench.plot", str(results), "--out", str(png)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert drawn.returncode == 0, drawn.stderr
    with Image.open(png) as image:
        assert image.size[0] > 600 and image.size[1] > 300
