"""The one-command GPU check and the configuration sweep run end to end (on the CPU,
in --smoke mode); the check survives failures."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT, subprocess_env

# The full tier (pytest --full; CI).
pytestmark = pytest.mark.full


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--parity-only", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed_sections"] == []
    assert report["tests"]["returncode"] == 0
    # Every test that takes the device fixture is listed (and runs on a GPU).
    assert set(report["tests"]["files"]) >= {"tests/test_triton_forward.py", "tests/test_triton_backward.py",
                                             "tests/test_kernel_layouts.py", "tests/test_disparate_sizes.py",
                                             "tests/test_fastpath.py"}
    assert any("test_kernel_gradcheck_with_unequal_lengths" in t for t in report["tests"]["device_tests"])
    modes = report["precision"]["modes"]
    assert modes["triton fp32 tf32x3"]["max_abs_error"] < 1e-5
    # The precision and fast-path sections hold every figure to a bound.
    assert report["precision"]["returncode"] == 0 and report["precision"]["over_bound"] == []
    assert all(row["max_abs_error"] <= row["bound"] for row in modes.values())
    assert report["fast_path"]["returncode"] == 0 and set(report["fast_path"]["bounds"]) == {"fast-fp32", "fast-bf16"}
    assert report["compile"]["value_difference"] < 1e-6
    assert "score error vs float64" in result.stdout
    assert "bench_head" not in report  # --parity-only


@pytest.fixture
def gpu_check():
    sys.path.insert(0, str(ROOT))
    from bench import gpu_check

    return gpu_check


def test_a_figure_over_its_bound_fails_its_section(gpu_check):
    assert gpu_check.precision_bound("triton fp32 tf32", 256, 512) > 100 * gpu_check.precision_bound(
        "triton fp32 tf32x3", 256, 512)
    table = {"weights": "random", "pairs": 2, "image_size": 32, "levels": 2, "over_bound": ["reference fp32"],
             "modes": {"reference fp32": {"max_abs_error": 1e-3, "mean_abs_error": 1e-4, "bound": 1e-7}}}
    assert gpu_check.run_section({}, "precision", lambda: {**table, "returncode": 1}, gpu_check.print_precision,
                                 None) is False


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


def test_sweep_smoke_times_every_configuration_and_marks_the_rule(tmp_path):
    out = tmp_path / "sweep.json"
    result = subprocess.run([sys.executable, "-m", "bench.sweep", "--smoke", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    for workload in report["workloads"]:
        assert all("median_ms" in row for row in workload["configs"]), workload["configs"]
        assert workload["rule_ms"] > 0 and workload["reference_ms"] > 0
    assert {row["precision"] for row in report["precisions"]} == {"ieee", "tf32x3", "tf32"}
    names = ["rule", "earlier rule", "joint", "persistent x2", "persistent x4", "group 2", "group 4", "stages 2",
             "stages 3", "128 wide", "small 16 x4", "small 16 x9", "small 64 x4"]
    assert [(row["config"], row["level"]) for row in report["levels"]] == [(n, level) for n in names for level in (0, 1)]
    # The smoke grid holds the rule's configuration for 16 channels, which
    # is also the earlier rule's (16-wide blocks stay in plain order).
    assert "<- rule = earlier rule" in result.stdout
    assert "tiles tail16" in result.stdout
    # Every forward option of the full grid appears in the smoke grid too.
    forward = report["workloads"][0]["configs"]
    assert any(row["config"]["persistent"] for row in forward) and any(row["config"]["group"] > 1 for row in forward)
    assert all(any(row["config"]["joint"] for row in workload["configs"]) for workload in report["workloads"])
    backward, both = report["workloads"][1]["configs"], report["workloads"][2]["configs"]
    assert any(row["config"]["split"] > 1 for row in backward) and any(row["config"]["resident"] for row in backward)
    assert any(row["config"]["grad16"] for row in backward)
    assert any(row["config"]["both"] and row["config"]["resident"] for row in both)
    assert any(row["config"]["small"] for row in forward)
    for option in ("group 2", "persistent x2", "joint", "small 16 x2", "resident 16", "grad16", "both", "split 2"):
        assert option in result.stdout, option


def test_sweep_floors_count_the_upper_triangle_and_every_byte():
    sys.path.insert(0, str(ROOT))
    from bench import sweep

    card = {"copy_tb_s": 2.0, "bf16_tflops": 800.0, "tf32_tflops": 300.0, "fp32_tflops": 50.0}
    workload = sweep.Workload("w", 2, ((4, 4),), "bf16", False)
    floors = sweep.floors(workload, 8, card)
    # C = 8: 2 x 2 tiles, 3 in the upper triangle, 16 entries each; 16 positions, 2 FLOP, 2 images, B = 2.
    assert floors["gflop"] * 1e9 == pytest.approx(2 * 2 * (2 * 3 * 16 * 16))
    assert floors["gbytes"] * 1e9 == pytest.approx(2 * 2 * 8 * 16 * 2)  # B, two images, C, positions, 2 bytes
    assert floors["arithmetic_ms"] == pytest.approx(floors["gflop"] / 800.0)
    tf32x3 = sweep.floors(sweep.Workload("w", 2, ((4, 4),), "fp32", False), 8, card)
    assert tf32x3["arithmetic_ms"] == pytest.approx(tf32x3["gflop"] / 100.0)  # three TF32 products per dot


def test_peers_section_times_every_contender_or_says_why_not(gpu_check, tmp_path, capsys):
    # The CPU smoke run of the peers' rows: msds's and the official DeepSSIM
    # always run; LPIPS-VGG and DISTS run where torchvision works with this
    # torch, and are skipped with the reason where it does not.
    section = gpu_check.run_benchmarks("bench/bench_peers.py", None, True, tmp_path / "peers.json", timeout=300)
    assert section["returncode"] == 0 and section["failures"] == []
    metric = next(row for group, row in section["groups"].items() if "metric" in group and "fp32" in group)
    assert {"DeepSSIM (official)", "msds DeepSSIM", "msds DeepSSIM-Lite", "msds MSDS L1", "msds MSDS L3"} <= set(metric)
    for peer in ("LPIPS-VGG", "DISTS"):
        assert peer in metric or any(peer in line for line in section["skipped"]), section["skipped"]
    if "LPIPS-VGG" in metric:  # every row as a fraction of LPIPS-VGG's time
        assert metric["LPIPS-VGG"]["time_ratio_to_lpips"] == 1.0
        assert all(entry["time_ratio_to_lpips"] > 0 for entry in metric.values())
    gpu_check.print_peers(section)
    shown = capsys.readouterr().out
    assert "ms/pair" in shown and "msds MSDS L3" in shown
