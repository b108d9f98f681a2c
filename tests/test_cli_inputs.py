"""What a user types at the command line: every bad input gets one line on
stderr and a nonzero exit, never a traceback; folders pair by stem; only
results reach stdout; the weights label names what was read.

The command runs in-process (msds.cli.commands.main), which is what `msds` runs; the
subprocess tests in test_cli.py cover the entry point itself.
"""

import csv
import hashlib
import io
import json
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

import msds
import msds.cli.commands
from helpers import subprocess_env


def write_image(path, seed, size=(40, 36)):
    pixels = np.random.default_rng(seed).random((size[1], size[0], 3))
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of `msds ARGS`, however it ends."""
    try:
        status = msds.cli.commands.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse: usage errors, --version
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def files(tmp_path):
    """Images, folders and weights files, good and bad, for the table below."""
    made = {"ref": write_image(tmp_path / "ref.png", 0), "dist": write_image(tmp_path / "dist.png", 1)}
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    made["corrupt"] = tmp_path / "corrupt.png"
    made["empty_dir"] = tmp_path / "empty"
    made["empty_dir"].mkdir()
    for name in ("refs", "dists", "twins"):
        (tmp_path / name).mkdir()
    write_image(tmp_path / "refs" / "a.png", 2)
    write_image(tmp_path / "dists" / "b.png", 3)
    write_image(tmp_path / "twins" / "a.png", 4)
    write_image(tmp_path / "twins" / "a.jpg", 5)
    made.update(refs=tmp_path / "refs", dists=tmp_path / "dists", twins=tmp_path / "twins")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    made.update(garbage=tmp_path / "garbage.pth", foreign=tmp_path / "foreign.pth", list=tmp_path / "list.pth",
                missing=tmp_path / "absent.png", csv=tmp_path / "absent.csv", tmp=tmp_path)
    return made


DEVICES = [("--device", "foo", "expected a torch device"), ("--device", "cuda:99", "cuda:99"),
           ("--device", "meta", "expected cpu, cuda[:N] or mps")]
if torch.version.cuda is None:
    DEVICES.append(("--device", "cuda", "a build without CUDA"))

LEVEL1 = ["--levels", "1", "--weights", "random"]
SCORE = ["score", "{ref}", "{dist}", *LEVEL1]
CASES = [
    *[(f"score {flag} {value}", [*SCORE, flag, value], message) for flag, value, message in DEVICES],
    *[(f"demo {flag} {value}", ["demo", "--weights", "random", flag, value], message)
      for flag, value, message in DEVICES],
    *[(f"eval {flag} {value}", ["eval", "--csv", "{csv}", "--out", "{tmp}/o.csv", flag, value], message)
      for flag, value, message in DEVICES],
    ("score missing file", ["score", "{ref}", "{missing}", *LEVEL1], "absent.png: no such file"),
    ("score corrupt file", ["score", "{ref}", "{corrupt}", *LEVEL1], "corrupt.png: not a readable image"),
    ("score empty folder", ["score", "{ref}", "{empty_dir}", *LEVEL1], "no image files"),
    ("score unpaired folders", ["score", "{refs}", "{dists}", *LEVEL1], "unpaired"),
    ("score ambiguous stems", ["score", "{refs}", "{twins}", *LEVEL1], "ambiguous"),
    ("score garbage weights", ["score", "{ref}", "{dist}", "--weights", "{garbage}"],
     "garbage.pth is not a readable weights file"),
    ("score foreign weights", ["score", "{ref}", "{dist}", "--weights", "{foreign}"], "not a VGG16 state dict"),
    ("score a list as weights", ["score", "{ref}", "{dist}", "--weights", "{list}"], "does not hold a state dict"),
    ("score missing weights", ["score", "{ref}", "{dist}", "--weights", "{missing}"], "no such weights file"),
    ("score levels 0", [*SCORE[:3], "--levels", "0"], "--levels: expected an integer >= 1"),
    ("score levels word", [*SCORE[:3], "--levels", "three"], "--levels"),
    ("score bad format", [*SCORE, "--format", "xml"], "--format"),
    ("demo missing weights", ["demo", "--weights", "{missing}"], "no such weights file"),
    ("demo tiny size", ["demo", "--weights", "random", "--size", "8"], "--size: expected at least"),
    ("eval missing csv", ["eval", "--csv", "{csv}", "--out", "{tmp}/o.csv", "--weights", "random"], "absent.csv"),
    ("eval no source", ["eval", "--out", "{tmp}/o.csv"], "expected either --csv"),
    ("eval unknown dataset", ["eval", "--dataset", "imagenet", "{tmp}", "--out", "{tmp}/o.csv"], "imagenet"),
    ("fit missing scores", ["fit", "{csv}", "--out", "{tmp}/f.json"], "absent.csv"),
    ("trim missing source", ["trim-weights", "{missing}", "{tmp}/t.pth"], "no such weights file"),
    ("trim garbage source", ["trim-weights", "{garbage}", "{tmp}/t.pth"], "garbage.pth is not a readable"),
    ("unknown command", ["rate", "{ref}"], "invalid choice"),
]


@pytest.mark.parametrize("case,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_without_a_traceback(case, args, message, files, capsys):
    status, out, err = run_cli(capsys, *(a.format(**files) for a in args))
    assert status in (1, 2), (status, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msds") and "error" in lines[0], err
    assert message in lines[0], err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert out == ""


def test_offline_default_weights_fail_in_one_paragraph(files, capsys, monkeypatch, tmp_path):
    """No cached file and no network: one paragraph, not urllib's chained tracebacks."""
    monkeypatch.delenv("MSDS_VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    status, out, err = run_cli(capsys, "score", files["ref"], files["dist"], "--levels", "1")
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "could not download" in err and "name resolution" in err
    assert "MSDS_VGG16_WEIGHTS" in err  # how to provide the file offline
    with pytest.raises(msds.WeightsError) as caught:
        msds.MSDS(levels=1)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_version(capsys):
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and out.startswith(f"msds {msds.__version__} (torch {torch.__version__}")


# -- msds score on folders ----------------------------------------------------

@pytest.fixture
def folders(tmp_path):
    refs, dists = tmp_path / "refs", tmp_path / "dists"
    refs.mkdir(), dists.mkdir()
    for index, (ref_name, dist_name) in enumerate([("a.png", "a.jpg"), ("b.PNG", "b.png"), ("c.bmp", "c.bmp")]):
        write_image(refs / ref_name, index)
        write_image(dists / dist_name, 10 + index)
    return refs, dists


def test_folders_pair_by_stem_and_csv_holds_only_results(folders, capsys):
    refs, dists = folders
    status, out, err = run_cli(capsys, "score", refs, dists, "--levels", "2", "--weights", "random",
                               "--format", "csv", "--no-progress")
    assert status == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["ref", "dist", "level0", "level1", "MSDS"]
    assert [(r[0].rsplit("/", 1)[1], r[1].rsplit("/", 1)[1]) for r in rows[1:]] == [
        ("a.png", "a.jpg"), ("b.PNG", "b.png"), ("c.bmp", "c.bmp")]
    metric = msds.MSDS(levels=2, weights=None)
    for row in rows[1:]:
        expected = metric(msds.images.load_image(row[1]), msds.images.load_image(row[0])).item()
        assert float(row[-1]) == pytest.approx(expected, abs=1e-6)
    assert "trunk weights: random" in err  # the run's description is on stderr


def test_skip_bad_lists_each_file_and_counts(folders, capsys, tmp_path):
    refs, dists = folders
    (dists / "b.png").write_bytes(b"broken")
    status, out, err = run_cli(capsys, "score", refs, dists, "--levels", "1", "--weights", "random",
                               "--format", "json", "--skip-bad", "--no-progress", "--out", tmp_path / "scores.json")
    assert status == 0, err
    assert out == ""
    report = json.loads((tmp_path / "scores.json").read_text())
    assert [p["dist"].rsplit("/", 1)[1] for p in report["pairs"]] == ["a.jpg", "c.bmp"]
    assert "skipped:" in err and "b.png: not a readable image" in err
    assert "scored 2 of 3 pairs (1 skipped)" in err
    status, out, err = run_cli(capsys, "score", refs, dists, "--levels", "1", "--weights", "random")
    assert status == 1 and "b.png: not a readable image" in err and out == ""  # without --skip-bad: stops


def test_weights_labels_say_what_was_read(files, capsys, monkeypatch, tmp_path):
    weights = tmp_path / "trunk.pth"
    msds.save_trimmed_weights(None, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    score = ["score", files["ref"], files["dist"], "--levels", "1", "--json"]
    _, out, _ = run_cli(capsys, *score, "--weights", weights)
    assert json.loads(out)["weights"] == f"file {weights} (sha256 {digest})"
    monkeypatch.setenv("MSDS_VGG16_WEIGHTS", str(weights))
    _, out, _ = run_cli(capsys, *score)
    assert json.loads(out)["weights"] == f"env MSDS_VGG16_WEIGHTS={weights} (sha256 {digest})"
    _, out, _ = run_cli(capsys, *score, "--weights", "random")
    assert json.loads(out)["weights"].startswith("random")


def test_saliency_masks_pair_by_stem_and_missing_ones_are_skipped(tmp_path, capsys):
    refs, dists, ref_masks, dist_masks = (tmp_path / name for name in ("r", "d", "mr", "md"))
    for folder in (refs, dists, ref_masks, dist_masks):
        folder.mkdir()
    mask = np.zeros((36, 40), np.uint8)
    mask[5:30, 5:30] = 255
    for stem in ("a", "b"):
        write_image(refs / f"{stem}.png", 1)
        write_image(dists / f"{stem}.jpg", 2)
        Image.fromarray(mask).save(ref_masks / f"{stem}.png")
    Image.fromarray(mask).save(dist_masks / "a.png")  # a PNG mask for a JPEG image; b's is missing
    status, out, err = run_cli(capsys, "score", refs, dists, "--metric", "deepssim", "--weights", "random",
                               "--saliency", ref_masks, dist_masks, "--skip-bad", "--format", "csv")
    assert status == 0, err
    assert [row.split(",")[1].rsplit("/", 1)[1] for row in out.splitlines()[1:]] == ["a.jpg"]
    assert "md/b.jpg: no such file (DIST saliency mask" in err and "scored 1 of 2 pairs (1 skipped)" in err


def test_out_that_cannot_be_written_is_one_line(files, capsys, tmp_path):
    score = [a.format(**files) for a in SCORE]
    for target in (tmp_path / "no" / "such" / "x.csv", tmp_path):
        status, out, err = run_cli(capsys, *score, "--format", "csv", "--out", target)
        assert status == 1 and err.splitlines()[-1].startswith("msds: error: --out: cannot write"), err
        assert "Traceback" not in err


def test_a_transparent_image_warns_in_one_line(files, capsys, tmp_path):
    rgba = np.full((36, 40, 4), 128, np.uint8)
    rgba[:5, :5, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    # A real command: pytest records warnings in-process instead of printing them.
    result = subprocess.run([sys.executable, "-m", "msds", "score", str(files["ref"]), str(tmp_path / "rgba.png"),
                             *LEVEL1, "--json"], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    status, err = result.returncode, result.stderr
    assert status == 0, err
    (line,) = [line for line in err.splitlines() if "not fully opaque" in line]
    assert line.startswith("msds: warning: ") and line.endswith("the colours stored under them")
    assert "images.py" not in err  # no source listing


def test_json_and_another_format_conflict(files, capsys):
    status, _, err = run_cli(capsys, *[a.format(**files) for a in SCORE], "--json", "--format", "csv")
    assert status == 1 and "--json: is --format json, got --format csv too" in err
