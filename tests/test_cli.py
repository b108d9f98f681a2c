"""The command line on files the test writes: `msds ARGS` run in this process
through msds.cli.main (what the entry point calls), and as a real command
where the process itself matters (the entry point, a missing package)."""

import json
from pathlib import Path
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import msds
import msds.cli.commands
from helpers import read_rgb, run_msds as run
from oracle import deepssim_head, lite_head, msds_level_scores, trunk_np


def run_command(*args, env=None):
    """`python -m msds ARGS` in a child process."""
    return subprocess.run([sys.executable, "-m", "msds", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def write_image(path, seed, size=(40, 36), noise=0.0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 1, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    pixels = np.clip(base + noise * rng.standard_normal(base.shape), 0, 1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def pair(tmp_path):
    return write_image(tmp_path / "ref.png", 0), write_image(tmp_path / "dist.png", 1, noise=0.2)


def test_score_two_files_json(pair):
    ref, dist = pair
    result = run("score", str(ref), str(dist), "--levels", "2", "--weights", "random", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["levels"] == 2 and report["weights"].startswith("random")
    (entry,) = report["pairs"]
    assert len(entry["level_scores"]) == 2 and 0 < entry["score"] < 1
    assert entry["score"] == pytest.approx(np.mean(entry["level_scores"]), abs=1e-6)


def test_identical_files_score_one(pair):
    ref, _ = pair
    result = run("score", str(ref), str(ref), "--levels", "1", "--weights", "random", "--json")
    assert json.loads(result.stdout)["pairs"][0]["score"] == pytest.approx(1.0, abs=1e-6)


def test_score_folders_pairs_by_name_and_prints_a_table(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "dist").mkdir()
    for i, name in enumerate(("a.png", "b.jpg")):
        write_image(tmp_path / "ref" / name, i)
        write_image(tmp_path / "dist" / name, i + 10, noise=0.1)
    result = run("score", str(tmp_path / "ref"), str(tmp_path / "dist"), "--levels", "1", "--weights", "random")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert result.stderr.startswith("trunk weights: random")  # only results on stdout
    assert "level0" in lines[0] and "MSDS" in lines[0] and len(lines) == 4  # header, rule, two rows
    assert any("a.png" in line for line in lines) and any("b.jpg" in line for line in lines)


@pytest.mark.parametrize(
    "problem,expected",
    [
        ("missing", "missing.png: no such file"),
        ("unreadable", "junk.png: not a readable image"),
        ("small", "s1.png: expected images of at least 32x32 pixels"),
        ("small distorted", "s2.png: expected images of at least 32x32 pixels"),
    ],
)
def test_file_problems_give_one_line_and_nonzero_exit(problem, expected, tmp_path, pair):
    ref, dist = pair
    if problem == "missing":
        dist = tmp_path / "missing.png"
    elif problem == "unreadable":
        dist = tmp_path / "junk.png"
        dist.write_bytes(b"\x89PNG this is not an image")
    elif problem == "small":
        ref, dist = write_image(tmp_path / "s1.png", 0, (20, 40)), write_image(tmp_path / "s2.png", 1, (40, 40))
    else:
        dist = write_image(tmp_path / "s2.png", 1, (40, 31))
    result = run("score", str(ref), str(dist), "--levels", "2", "--weights", "random")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_unpaired_file_in_folders_is_named(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "dist").mkdir()
    write_image(tmp_path / "ref" / "a.png", 0)
    write_image(tmp_path / "dist" / "a.png", 1)
    write_image(tmp_path / "ref" / "lonely.png", 2)
    result = run("score", str(tmp_path / "ref"), str(tmp_path / "dist"), "--weights", "random")
    assert result.returncode != 0 and "lonely.png" in result.stderr and "Traceback" not in result.stderr


def test_bad_weights_file_is_one_line(pair, tmp_path):
    ref, dist = pair
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    result = run("score", str(ref), str(dist), "--weights", str(bad))
    assert result.returncode != 0 and "bad.pth is not a readable" in result.stderr and "Traceback" not in result.stderr


def test_demo_falls_back_to_the_random_trunk_and_says_so(tmp_path):
    env = {"MSDS_VGG16_WEIGHTS": str(tmp_path / "absent.pth")}
    result = run("demo", "--levels", "2", "--size", "48", env=env)
    assert result.returncode == 0, result.stderr
    assert "RANDOM (untrained) trunk" in result.stderr and "absent.pth" in result.stderr
    assert "trunk weights: random" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("noise", "blur", "jpeg", "contrast"))]
    assert len(rows) == 16


def test_demo_json_and_saved_images(tmp_path):
    result = run("demo", "--levels", "1", "--size", "32", "--weights", "random", "--json", "--save", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    noise = [row["score"] for row in rows if row["distortion"] == "noise"]
    assert len(rows) == 16 and noise == sorted(noise, reverse=True)
    assert (tmp_path / "reference.png").is_file() and (tmp_path / "contact_sheet.png").is_file()
    assert len(list(tmp_path.glob("*.png"))) == 18  # the reference, 16 distortions, the contact sheet


def test_trim_weights_command(tmp_path):
    from msds.trunk.vgg16 import build_features

    state = {f"features.{k}": torch.rand(v.shape) for k, v in build_features().state_dict().items()}
    state["classifier.6.bias"] = torch.rand(1000)
    torch.save(state, tmp_path / "full.pth")
    result = run("trim-weights", str(tmp_path / "full.pth"), str(tmp_path / "trim.pth"))
    assert result.returncode == 0, result.stderr
    assert "classifier.6.bias" not in torch.load(tmp_path / "trim.pth", weights_only=True)


def test_one_reference_against_a_folder(tmp_path, pair):
    ref, _ = pair
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"d{i}.png", 10 + i, noise=0.05 * (i + 1))
    result = run("score", str(ref), str(folder), "--levels", "2", "--weights", "random", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["pairs"]
    assert [Path(e["dist"]).name for e in entries] == ["d0.png", "d1.png", "d2.png"]
    single = run("score", str(ref), str(folder / "d1.png"), "--levels", "2", "--weights", "random", "--json")
    assert json.loads(single.stdout)["pairs"][0]["score"] == pytest.approx(entries[1]["score"], abs=1e-6)


@pytest.mark.parametrize("metric", ["msds", "deepssim", "lite"])
def test_a_shared_reference_runs_through_the_trunk_once(metric, tmp_path, pair, monkeypatch, capsys):
    # In-process, to count the trunk's passes: the reference once, then each
    # distorted image once, whatever the metric (sizes differ, so no pass is shared).
    ref, _ = pair
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"d{i}.png", 10 + i, size=(32, 48), noise=0.05 * (i + 1))
    passes = []
    forward = msds.trunk.vgg16.VGG16Trunk.forward
    monkeypatch.setattr(msds.trunk.vgg16.VGG16Trunk, "forward",
                        lambda self, images, *rest: passes.append(images.shape[0]) or forward(self, images, *rest))
    assert msds.cli.commands.main(["score", str(ref), str(folder), "--metric", metric, "--levels", "1", "--weights", "random",
                          "--json", "--no-progress"]) == 0
    entries = json.loads(capsys.readouterr().out)["pairs"]
    assert len(entries) == 3 and passes == [1, 1, 1, 1]


@pytest.fixture(scope="module")
def random_state():
    return msds.MSDS(levels=1, weights=None).trunk.trunk_state_dict()


def test_files_of_different_sizes_match_the_oracle(tmp_path, random_state):
    ref = write_image(tmp_path / "ref.png", 0, size=(64, 44))
    dist = write_image(tmp_path / "retargeted.png", 1, size=(40, 44), noise=0.05)
    result = run("score", str(ref), str(dist), "--levels", "2", "--weights", "random", "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["pairs"][0]
    expected = msds_level_scores(read_rgb(dist), read_rgb(ref), random_state, 2)[0]
    np.testing.assert_allclose(entry["level_scores"], expected, rtol=0, atol=2e-6)


def test_folders_of_mixed_sizes_pair_by_name(tmp_path, random_state):
    (tmp_path / "ref").mkdir()
    (tmp_path / "dist").mkdir()
    sizes = {"a.png": ((48, 40), (32, 40)), "b.png": ((40, 40), (40, 56)), "c.png": ((33, 37), (70, 35))}
    for i, (name, (ref_size, dist_size)) in enumerate(sizes.items()):
        write_image(tmp_path / "ref" / name, i, size=ref_size)
        write_image(tmp_path / "dist" / name, i + 10, size=dist_size, noise=0.1)
    result = run("score", str(tmp_path / "ref"), str(tmp_path / "dist"), "--levels", "1", "--weights", "random",
                 "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["pairs"]
    assert [Path(e["dist"]).name for e in entries] == list(sizes)
    for entry in entries:
        expected = msds_level_scores(read_rgb(entry["dist"]), read_rgb(entry["ref"]), random_state, 1)[0, 0]
        assert entry["score"] == pytest.approx(expected, abs=2e-6)


def write_mask(path, seed, size, kind="binary"):
    """A mask file: 0/255 ("binary"), graded values ("soft") or nothing salient ("empty")."""
    rng = np.random.default_rng(seed)
    salient = rng.random((size[1], size[0])) > 0.4
    values = {"binary": salient * 255, "soft": salient * rng.integers(1, 256, salient.shape),
              "empty": salient * 0}[kind]
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def test_saliency_calibrated_deepssim_matches_the_oracle(tmp_path, random_state):
    ref = write_image(tmp_path / "ref.png", 0, size=(64, 44))
    dist = write_image(tmp_path / "dist.png", 1, size=(40, 44), noise=0.05)
    ref_mask, dist_mask = write_mask(tmp_path / "ref_mask.png", 2, (64, 44)), write_mask(tmp_path / "dm.png", 3, (40, 44))
    result = run("score", str(ref), str(dist), "--saliency", str(ref_mask), str(dist_mask), "--weights", "random",
                 "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metric"] == "deepssim" and report["saliency"]

    def binary(path):
        return torch.from_numpy(np.asarray(Image.open(path)) == 255).double()[None, None]

    expected = deepssim_head(trunk_np(read_rgb(dist), random_state, binary(dist_mask)),
                             trunk_np(read_rgb(ref), random_state, binary(ref_mask)))[0]
    assert report["pairs"][0]["score"] == pytest.approx(expected, abs=2e-6)
    plain = deepssim_head(trunk_np(read_rgb(dist), random_state), trunk_np(read_rgb(ref), random_state))[0]
    assert abs(plain - expected) > 1e-4  # the masks made a difference
    table = run("score", str(ref), str(dist), "--metric", "deepssim", "--weights", "random")
    assert table.returncode == 0 and "DeepSSIM" in table.stdout.splitlines()[0]
    # The table's six decimals, against the oracle within the JSON's 2e-6 plus their rounding.
    assert float(table.stdout.split()[-1]) == pytest.approx(plain, abs=2e-6 + 5e-7)
    lite = run("score", str(ref), str(dist), "--metric", "lite", "--weights", "random", "--json")
    expected_lite = lite_head(trunk_np(read_rgb(dist), random_state), trunk_np(read_rgb(ref), random_state))[0]
    assert json.loads(lite.stdout)["pairs"][0]["score"] == pytest.approx(expected_lite, abs=2e-6)


@pytest.mark.parametrize("problem,expected", [
    ("mask of the other size", "dm.png: expected a mask the size of"),
    ("missing mask", "absent.png: no such file"),
    ("saliency with msds", "--saliency: applies to --metric deepssim"),
    ("soft mask", "dm.png: expected a binary mask (0 = not salient, 1 or 255 = salient)"),
    ("empty mask", "dm.png: no salient pixel"),
])
def test_saliency_problems_give_one_line(problem, expected, tmp_path):
    ref = write_image(tmp_path / "ref.png", 0, size=(64, 44))
    dist = write_image(tmp_path / "dist.png", 1, size=(40, 44))
    ref_mask = write_mask(tmp_path / "ref_mask.png", 2, (64, 44))
    kind = {"soft mask": "soft", "empty mask": "empty"}.get(problem, "binary")
    dist_mask = write_mask(tmp_path / "dm.png", 3, (64, 44) if problem == "mask of the other size" else (40, 44), kind)
    if problem == "missing mask":
        dist_mask = tmp_path / "absent.png"
    extra = ["--metric", "msds"] if problem == "saliency with msds" else []
    result = run("score", str(ref), str(dist), "--saliency", str(ref_mask), str(dist_mask), "--weights", "random",
                 *extra)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr


def test_demo_contact_sheet_is_written_and_decodes(tmp_path):
    result = run("demo", "--levels", "2", "--size", "32", "--weights", "random", "--save", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        sheet.load()
        assert sheet.format == "PNG" and sheet.size == (1150, 1020)  # 5 x 4 thumbnails at 100 dpi


def test_plots_without_matplotlib_fail_in_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib").mkdir()
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    result = run_command("demo", "--levels", "1", "--size", "16", "--weights", "random", "--save", str(tmp_path / "d"),
                         env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == 'msds: error: plots need matplotlib: pip install "torch-msds[plot]" ' \
                                    "(or pip install matplotlib)"


def test_the_entry_point_runs_as_a_command(pair):
    ref, dist = pair
    result = run_command("score", str(ref), str(dist), "--levels", "1", "--weights", "random", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "ref,dist,level0,MSDS" and len(result.stdout.splitlines()) == 2
    bad = run_command("score", str(ref), str(dist), "--device", "nowhere")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
