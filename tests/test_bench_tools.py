"""The benchmark plot is drawn from a pytest-benchmark file (a CPU smoke run here)."""

import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


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
    assert set(series) == {"plain", "fast-fp32", "fast-bf16"}
    assert [batch for batch, _ in series["plain"]] == [16, 64]
    assert all(rate > 0 for points in series.values() for _, rate in points)
    png = tmp_path / "plot.png"
    drawn = subprocess.run([sys.executable, "-m", "bench.plot", str(results), "--out", str(png)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert drawn.returncode == 0, drawn.stderr
    with Image.open(png) as image:
        assert image.size[0] > 600 and image.size[1] > 300
