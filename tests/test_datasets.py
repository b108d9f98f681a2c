"""The dataset readers on small copies of each layout (a few tiny images, the
score file in the dataset's own format), a missing file and a malformed row
for each, and `msds eval --dataset` end to end."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from helpers import ROOT
from msds.evaluation.datasets import DatasetError, read_dataset, read_xlsx

SIZE = 40


def image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix.lower() == ".png" else "BMP")


def tid2013(root: Path) -> Path:
    lines = []
    for r in (1, 2):
        image(root / "reference_images" / f"I{r:02d}.BMP", r)
        for d in (1, 2, 3):
            name = f"i{r:02d}_01_{d}.bmp"
            image(root / "distorted_images" / name, 10 * r + d)
            lines.append(f"{6 - d + r / 10:.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


def kadid(root: Path) -> Path:
    rows = ["dist_img,ref_img,dmos,var"]
    for r in (1, 2):
        image(root / "images" / f"I{r:02d}.png", r)
        for d in (1, 2):
            image(root / "images" / f"I{r:02d}_01_{d:02d}.png", 10 * r + d)
            rows.append(f"I{r:02d}_01_{d:02d}.png,I{r:02d}.png,{5 - d / 2},0.4")
    (root / "dmos.csv").write_text("\n".join(rows) + "\n")
    return root


def write_xlsx(path: Path, rows) -> None:
    """A minimal .xlsx (zip of XML parts) holding `rows` in a sheet all_by_image:
    strings as shared strings, numbers as numbers, a blank row first."""
    strings = sorted({cell for row in rows for cell in row if isinstance(cell, str)})
    columns = "ABCDEFGH"

    def cell(ref, value):
        if isinstance(value, str):
            return f'<c r="{ref}" t="s"><v>{strings.index(value)}</v></c>'
        return f'<c r="{ref}"><v>{value}</v></c>'

    body = "".join(f'<row r="{i + 2}">' + "".join(cell(f"{columns[j]}{i + 2}", v) for j, v in enumerate(row))
                   + "</row>" for i, row in enumerate(rows))
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
                         '<sheet name="note" sheetId="1" r:id="rId1"/>'
                         '<sheet name="all_by_image" sheetId="2" r:id="rId2"/></sheets></workbook>')
        archive.writestr("xl/_rels/workbook.xml.rels",
                         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                         '<Relationship Id="rId1" Target="worksheets/sheet1.xml"/>'
                         '<Relationship Id="rId2" Target="worksheets/sheet2.xml"/></Relationships>')
        archive.writestr("xl/sharedStrings.xml", f'<sst xmlns="{main}">'
                         + "".join(f"<si><t>{s}</t></si>" for s in strings) + "</sst>")
        archive.writestr("xl/worksheets/sheet1.xml", f'<worksheet xmlns="{main}"><sheetData/></worksheet>')
        archive.writestr("xl/worksheets/sheet2.xml", f'<worksheet xmlns="{main}"><sheetData>'
                         f'<row r="1"></row>{body}</sheetData></worksheet>')


def csiq(root: Path) -> Path:
    rows = [["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]]
    for name, seed in ((1600, 1), ("boston", 2)):
        image(root / "src_imgs" / f"{name}.png", seed)
        for kind, folder, tag, level in (("noise", "awgn", "AWGN", 1), ("jpeg 2000", "jpeg2000", "jpeg2000", 3)):
            image(root / "dst_imgs" / folder / f"{name}.{tag}.{level}.png", seed * 10 + level)
            rows.append([name, 1, kind, level, 0.05, 0.1 * level + seed / 100])
    write_xlsx(root / "csiq.DMOS.xlsx", rows)
    return root


def live(root: Path) -> Path:
    # 982 entries in LIVE's folder order; all but six are flagged as the
    # references themselves (orgs = 1), so only six distorted images exist.
    names = np.empty((1, 982), dtype=object)
    names[0, :] = "bikes.bmp"
    orgs = np.ones((1, 982))
    dmos = np.zeros((1, 982))
    image(root / "refimgs" / "bikes.bmp", 1)
    image(root / "refimgs" / "house.bmp", 2)
    for folder in ("jp2k", "jpeg", "wn", "gblur", "fastfading"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    kept = {0: ("jp2k", 1), 1: ("jp2k", 2), 227: ("jpeg", 1), 460: ("wn", 1), 634: ("gblur", 1), 981: ("fastfading", 174)}
    for i, (folder, k) in kept.items():
        orgs[0, i] = 0
        dmos[0, i] = 20 + i / 10
        names[0, i] = "house.bmp" if i % 2 else "bikes.bmp"
        image(root / folder / f"img{k}.bmp", i)
    savemat(root / "dmos.mat", {"dmos": dmos, "orgs": orgs})
    savemat(root / "refnames_all.mat", {"refnames_all": names})
    return root


def pipal(root: Path) -> Path:
    lines = []
    for r in (1, 2):
        image(root / "Train_Ref" / f"A{r:04d}.bmp", r)
        for d in (0, 1):
            name = f"A{r:04d}_{d:02d}_00.bmp"
            image(root / "Train_Dist" / name, 10 * r + d)
            lines.append(f"{name},{1500 + 10 * d + r}")
    (root / "Train_Label").mkdir()
    (root / "Train_Label" / "A0001.txt").write_text("\n".join(lines[:2]) + "\n")
    (root / "Train_Label" / "A0002.txt").write_text("\n".join(lines[2:]) + "\n")
    return root


def pyiqa(root: Path) -> Path:
    rows = ["ref_name,dist_name,dmos,std"]
    for r in (1, 2):
        image(root / "refs" / f"r{r}.png", r)
        for d in (1, 2):
            image(root / "dist" / f"r{r}_{d}.png", 10 * r + d)
            rows.append(f"r{r}.png,r{r}_{d}.png,{d * 0.2},0.01")
    (root / "meta_info_CSIQDataset.csv").write_text("\n".join(rows) + "\n")
    return root


def read(name, root):
    if name == "pyiqa":
        return read_dataset("pyiqa", root / "dist", meta=root / "meta_info_CSIQDataset.csv", ref_root=root / "refs")
    return read_dataset(name, root)


LAYOUTS = {
    "tid2013": (tid2013, 6, "MOS", False, ("reference_images/I01.BMP", "distorted_images/i01_01_1.bmp", "5.10000")),
    "kadid10k": (kadid, 4, "MOS", False, ("images/I01.png", "images/I01_01_01.png", "4.5")),
    "csiq": (csiq, 4, "DMOS", True, ("src_imgs/1600.png", "dst_imgs/awgn/1600.AWGN.1.png", "0.11")),
    "live": (live, 6, "DMOS", True, ("refimgs/bikes.bmp", "jp2k/img1.bmp", "20.0")),
    "pipal": (pipal, 4, "ELO", False, ("Train_Ref/A0001.bmp", "Train_Dist/A0001_00_00.bmp", "1501")),
    "pyiqa": (pyiqa, 4, "DMOS", True, (str(Path("..") / "refs" / "r1.png"), "r1_1.png", "0.2")),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_reader_finds_every_pair_with_its_score_and_direction(name, tmp_path):
    build, count, score, lower, first = LAYOUTS[name]
    dataset = read(name, build(tmp_path))
    assert len(dataset.pairs) == count
    assert dataset.score == score and dataset.lower_is_better is lower
    ref, dist, value = dataset.pairs[0]
    if name == "pyiqa":  # references outside ROOT are given as absolute paths
        assert Path(ref) == (tmp_path / "refs" / "r1.png").resolve() and (dist, value) == first[1:]
    else:
        assert (ref, dist, value) == first
    base = tmp_path / "dist" if name == "pyiqa" else tmp_path
    assert all((base / r).exists() and (base / d).exists() for r, d, _ in dataset.pairs)
    assert all(float(v) == float(v) for _, _, v in dataset.pairs)


# (layout, file to remove or corrupt, replacement text or None to delete, expected message)
BROKEN = [
    ("tid2013", "mos_with_names.txt", None, r"mos_with_names.txt: missing \(TID2013's score file"),
    ("tid2013", "distorted_images/i02_01_3.bmp", None, r"distorted_images/i02_01_3.bmp: missing \(listed in .*line 6\)"),
    ("tid2013", "mos_with_names.txt", "5.1 i01_01_1.bmp\nfive i01_01_2.bmp\n", r"line 2: expected a number, got 'five'"),
    ("kadid10k", "dmos.csv", "dist_img,ref_img,score\nI01_01_01.png,I01.png,4\n", "missing dmos"),
    ("kadid10k", "images/I02.png", None, r"images/I02.png: missing \(listed in .*line 4\)"),
    ("csiq", "csiq.DMOS.xlsx", None, r"csiq.DMOS.xlsx: missing"),
    ("csiq", "dst_imgs/jpeg2000", None, r"dst_imgs/jpeg2000: missing \(CSIQ's jpeg 2000 images\)"),
    ("live", "refnames_all.mat", None, r"refnames_all.mat: missing \(LIVE's reference names\)"),
    ("live", "fastfading/img174.bmp", None, r"fastfading/img174.bmp: missing \(listed in .*entry 982\)"),
    ("pipal", "Train_Label/A0002.txt", "A0002_00_00.bmp;1500\n", r"A0002.txt, line 1: expected 'A0001_00_00.bmp,score'"),
    ("pipal", "Train_Ref", None, r"Train_Ref: missing \(PIPAL's references\)"),
    ("pyiqa", "meta_info_CSIQDataset.csv", "ref_name,dist_name,dmos\nr1.png,r1_1.png\n", r"line 2: expected ref_name"),
    ("pyiqa", "refs/r2.png", None, r"refs/r2.png: missing \(listed in .*line 4\)"),
]


@pytest.mark.parametrize("name,target,text,message", BROKEN, ids=[f"{b[0]}-{Path(b[1]).name}" for b in BROKEN])
def test_a_wrong_folder_gets_one_line_naming_what_is_missing(name, target, text, message, tmp_path):
    root = LAYOUTS[name][0](tmp_path)
    path = root / target
    if text is not None:
        path.write_text(text)
    elif path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(DatasetError, match=message) as caught:
        read(name, root)
    assert "\n" not in str(caught.value)


def test_unknown_dataset_and_missing_meta_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="--dataset: expected one of tid2013, kadid10k, csiq, live, pipal, pyiqa"):
        read_dataset("tid2008", tmp_path)
    with pytest.raises(DatasetError, match="--meta: expected pyiqa's meta-information CSV"):
        read_dataset("pyiqa", tmp_path)


def test_xlsx_reader_reads_shared_strings_numbers_and_gaps(tmp_path):
    write_xlsx(tmp_path / "t.xlsx", [["a", "b"], [1.5, "x"]])
    assert read_xlsx(tmp_path / "t.xlsx", "all_by_image") == [[], ["a", "b"], ["1.5", "x"]]
    with pytest.raises(DatasetError, match="expected a sheet named 'nope', found note, all_by_image"):
        read_xlsx(tmp_path / "t.xlsx", "nope")


@pytest.mark.full
def test_eval_on_a_dataset_folder_end_to_end(tmp_path):
    # As a user would: msds eval --dataset tid2013 ROOT, JSON out, twice with
    # the same seed (byte-identical), the dataset's direction reported.
    root = tid2013(tmp_path / "tid")
    outputs = []
    for run in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "msds", "eval", "--dataset", "tid2013", str(root), "--out",
             str(tmp_path / f"out{run}.csv"), "--weights", "random", "--levels", "1", "--batch-size", "3",
             "--no-progress", "--resamples", "40", "--seed", "5", "--json"],
            capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    report = json.loads(outputs[0])
    assert report["dataset"] == {"name": "TID2013", "score": "MOS", "lower_is_better": False}
    assert report["scored"] == 6
    assert set(report["analysis"]["intervals"]["columns"]) == {"score", "level0"}
    assert report["analysis"]["intervals"]["contents"] == 2


def test_pipal_distorted_images_in_another_folder_name_and_subfolders(tmp_path):
    root = pipal(tmp_path)
    (root / "Train_Distort").mkdir()
    (root / "Train_Dist").rename(root / "Train_Distort" / "Distortion_1")
    dataset = read_dataset("pipal", root)
    assert dataset.pairs[0][1] == "Train_Distort/Distortion_1/A0001_00_00.bmp"
    assert all((root / d).exists() for _, d, _ in dataset.pairs)
    (root / "Train_Distort").rename(root / "elsewhere")
    with pytest.raises(DatasetError, match="missing PIPAL's distorted images .*Train_Dist, Train_Distort, Train_Dis"):
        read_dataset("pipal", root)


def test_pipal_ntire_2022_training_layout(tmp_path):
    # NTIRE 2022's release: Distortion_1 ... Distortion_4 beside Train_Ref and
    # Train_Label, no Train_Dist. Every listed image is found where it lies.
    root = pipal(tmp_path)
    for index, path in enumerate(sorted((root / "Train_Dist").iterdir())):
        target = root / f"Distortion_{index % 4 + 1}"
        target.mkdir(exist_ok=True)
        path.rename(target / path.name)
    (root / "Train_Dist").rmdir()
    dataset = read_dataset("pipal", root)
    assert [d for _, d, _ in dataset.pairs] == ["Distortion_1/A0001_00_00.bmp", "Distortion_2/A0001_01_00.bmp",
                                              "Distortion_3/A0002_00_00.bmp", "Distortion_4/A0002_01_00.bmp"]
    assert [s for _, _, s in dataset.pairs] == ["1501", "1511", "1502", "1512"]
    assert dataset.lower_is_better is False


@pytest.mark.parametrize("meta_name,folder,lower", [
    ("meta_info_LIVEIQADataset.csv", "data", True),   # pyiqa's LIVE file: DMOS under "mos"
    ("meta_info.csv", "LIVE", True),                   # a LIVE folder
    ("meta_info_TID2013Dataset.csv", "data", False),  # a real MOS
    ("meta_info_LIVEChallengeDataset.csv", "data", False),
])
def test_pyiqa_live_file_holds_dmos_under_a_mos_header(meta_name, folder, lower, tmp_path):
    root = tmp_path / folder
    rows = ["ref_name,dist_name,mos"]
    for r in (1, 2):
        image(root / f"r{r}.png", r)
        for d in (1, 2):
            image(root / f"r{r}_{d}.png", 10 * r + d)
            rows.append(f"r{r}.png,r{r}_{d}.png,{20 * d}")
    (root / meta_name).write_text("\n".join(rows) + "\n")
    dataset = read_dataset("pyiqa", root, meta=root / meta_name)
    assert dataset.lower_is_better is lower and dataset.score == ("DMOS" if lower else "MOS")
