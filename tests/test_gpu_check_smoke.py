"""The one-command GPU check runs end to end (on the CPU, in its --smoke mode)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--skip-bench", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tests"]["returncode"] == 0
    modes = report["precision"]["modes"]
    assert modes["triton fp32 tf32x3"]["max_abs_error"] < 1e-5
    assert report["compile"]["value_difference"] < 1e-6
    assert "score error vs float64" in result.stdout
