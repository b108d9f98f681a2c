"""The one-command GPU check runs end to end (on the CPU, in its --smoke mode) and survives failures."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT, subprocess_env


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--parity-only", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed_sections"] == []
    assert report["tests"]["returncode"] == 0
    modes = report["precision"]["modes"]
    assert modes["triton fp32 tf32x3"]["max_abs_error"] < 1e-5
    assert report["compile"]["value_difference"] < 1e-6
    assert "score error vs float64" in result.stdout
    assert "bench_head" not in report  # --parity-only


@pytest.fixture
def gpu_check():
    sys.path.insert(0, str(ROOT))
    from bench import gpu_check

    return gpu_check


def test_a_failing_section_is_reported_and_the_next_still_runs(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    results = {}

    def broken():
        raise RuntimeError("dynamo says no")

    shown = []
    assert not gpu_check.run_section(results, "compile", broken, shown.append, out)
    assert gpu_check.run_section(results, "fast_path", lambda: {"value": 1.0}, shown.append, out)
    saved = json.loads(out.read_text())  # written after each section
    assert "RuntimeError: dynamo says no" in saved["compile"]["error"]
    assert saved["fast_path"]["value"] == 1.0
    assert len(shown) == 1 and shown[0]["value"] == 1.0  # only the section that worked is shown
    assert "FAILED: RuntimeError: dynamo says no" in capsys.readouterr().out
