"""Readers for the standard full-reference quality datasets, in the layouts
they ship in: each gives the (reference, distorted, score) pairs of a folder
and says whether its score is a MOS (higher is better) or a DMOS (lower is
better). `msds eval --dataset NAME ROOT` uses them.

A wrong or incomplete folder raises DatasetError with one line naming what
is missing (the score file, an image folder, or the first image the score
file lists that is not there).
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np


class DatasetError(ValueError):
    """A dataset's files cannot be used as they are."""


@dataclass(frozen=True)
class Dataset:
    name: str
    pairs: List[Tuple[str, str, str]]  # (reference, distorted, score), paths relative to the root
    score: str  # what the score is: "MOS", "DMOS" or "ELO"
    lower_is_better: bool
    note: str = ""  # how the direction was decided, where the files alone do not say


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: missing ({what})")
    return path


def _text(path: Path, what: str) -> str:
    return _need(path, what).read_text(encoding="utf-8-sig", errors="replace")


def _folder_index(folder: Path, what: str) -> Dict[str, str]:
    """File names of a folder by their lower-case form (the datasets mix cases: I01.BMP, i01_01_1.bmp)."""
    if not _need(folder, what).is_dir():
        raise DatasetError(f"{folder}: expected a folder ({what})")
    return {entry.name.lower(): entry.name for entry in folder.iterdir()}


def _find(index: Dict[str, str], folder: str, name: str, source: str) -> str:
    found = index.get(name.lower())
    if found is None:
        raise DatasetError(f"{folder}/{name}: missing (listed in {source})")
    return f"{folder}/{found}"


def _number(text: str, where: str) -> str:
    try:
        float(text)
    except ValueError:
        raise DatasetError(f"{where}: expected a number, got {text!r}") from None
    return text


def read_tid2013(root: Path) -> Dataset:
    """mos_with_names.txt ("MOS name" per line), reference_images/I01.BMP ...,
    distorted_images/i01_01_1.bmp ...; MOS from 0 to 9, higher is better."""
    source = root / "mos_with_names.txt"
    lines = _text(source, "TID2013's score file, 'MOS name' per line").splitlines()
    refs = _folder_index(root / "reference_images", "TID2013's references")
    dists = _folder_index(root / "distorted_images", "TID2013's distorted images")
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{source}, line {number}"
        if len(fields) != 2 or not re.match(r"^i(\d\d)_", fields[1], re.IGNORECASE):
            raise DatasetError(f"{where}: expected 'MOS iNN_DD_L.bmp', got {line.strip()!r}")
        mos, name = _number(fields[0], where), fields[1]
        ref = f"i{name[1:3]}.bmp"
        pairs.append((_find(refs, "reference_images", ref, where), _find(dists, "distorted_images", name, where), mos))
    return Dataset("TID2013", _nonempty(pairs, source), "MOS", lower_is_better=False)


def read_kadid10k(root: Path) -> Dataset:
    """dmos.csv (dist_img, ref_img, dmos, var) and images/ holding both; its
    "dmos" is the mean of degradation ratings from 1 to 5: higher is better."""
    source = root / "dmos.csv"
    rows = _csv_rows(source, "KADID-10k's score file", ("dist_img", "ref_img", "dmos"))
    images = _folder_index(root / "images", "KADID-10k's images")
    pairs = [(_find(images, "images", row["ref_img"], where), _find(images, "images", row["dist_img"], where),
              _number(row["dmos"], where)) for where, row in rows]
    return Dataset("KADID-10k", _nonempty(pairs, source), "MOS", lower_is_better=False)


# CSIQ's distortion types as its score file names them: (folder, file tag).
CSIQ_TYPES = {"noise": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"), "jpeg 2000": ("jpeg2000", "jpeg2000"),
              "fnoise": ("fnoise", "fnoise"), "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}


def read_csiq(root: Path) -> Dataset:
    """csiq.DMOS.xlsx (sheet "all_by_image": image, dst_idx, dst_type,
    dst_lev, dmos_std, dmos), src_imgs/1600.png ..., dst_imgs/awgn/1600.AWGN.1.png
    ...; DMOS from 0 to 1, lower is better."""
    source = root / "csiq.DMOS.xlsx"
    table = read_xlsx(_need(source, "CSIQ's score file"), "all_by_image")
    header_row = next((i for i, row in enumerate(table) if {"image", "dst_type", "dst_lev", "dmos"} <= set(row)), None)
    if header_row is None:
        raise DatasetError(f"{source}: expected a sheet all_by_image with columns image, dst_type, dst_lev, dmos")
    header = table[header_row]
    refs = _folder_index(root / "src_imgs", "CSIQ's references")
    folders: Dict[str, Dict[str, str]] = {}
    pairs = []
    for offset, cells in enumerate(table[header_row + 1:], start=header_row + 2):
        row = dict(zip(header, cells))
        if not row.get("image"):
            continue
        where = f"{source}, row {offset}"
        kind = str(row.get("dst_type", "")).strip().lower()
        if kind not in CSIQ_TYPES:
            raise DatasetError(f"{where}: expected a dst_type among {', '.join(CSIQ_TYPES)}, got {kind!r}")
        folder, tag = CSIQ_TYPES[kind]
        image = _integral(row["image"])
        level = _integral(_number(row.get("dst_lev", ""), where))
        if folder not in folders:
            folders[folder] = _folder_index(root / "dst_imgs" / folder, f"CSIQ's {kind} images")
        pairs.append((_find(refs, "src_imgs", f"{image}.png", where),
                      _find(folders[folder], f"dst_imgs/{folder}", f"{image}.{tag}.{level}.png", where),
                      _number(row.get("dmos", ""), where)))
    return Dataset("CSIQ", _nonempty(pairs, source), "DMOS", lower_is_better=True)


# LIVE release 2's folders in the order of its 982 scores, with their image counts.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def read_live(root: Path) -> Dataset:
    """LIVE release 2: dmos_realigned.mat (dmos_new, orgs) or else dmos.mat
    (dmos, orgs), refnames_all.mat (refnames_all), refimgs/, and the folders
    jp2k, jpeg, wn, gblur, fastfading of img1.bmp ... in score order; the
    entries with orgs = 1 are the references themselves and are left out.
    DMOS, lower is better."""
    from scipy.io import loadmat

    realigned = root / "dmos_realigned.mat"
    source, key = (realigned, "dmos_new") if realigned.exists() else (root / "dmos.mat", "dmos")
    scores = _mat_vector(source, key, "LIVE's scores (dmos_realigned.mat or dmos.mat)")
    orgs = _mat_vector(source, "orgs", "LIVE's reference flags")
    names_file = root / "refnames_all.mat"
    names = [str(np.asarray(name).ravel()[0]) for name in
             np.asarray(loadmat(_need(names_file, "LIVE's reference names"))["refnames_all"]).ravel()]
    total = sum(count for _, count in LIVE_FOLDERS)
    if not len(scores) == len(orgs) == len(names) == total:
        raise DatasetError(f"{source}: expected {total} scores, reference flags and names (LIVE release 2), "
                           f"got {len(scores)}, {len(orgs)} and {len(names)}")
    refs = _folder_index(root / "refimgs", "LIVE's references")
    pairs, start = [], 0
    for folder, count in LIVE_FOLDERS:
        images = _folder_index(root / folder, f"LIVE's {folder} images")
        for k in range(count):
            i = start + k
            if orgs[i] == 1:
                continue
            where = f"{source}, entry {i + 1}"
            pairs.append((_find(refs, "refimgs", names[i], where), _find(images, folder, f"img{k + 1}.bmp", where),
                          repr(float(scores[i]))))
        start += count
    return Dataset("LIVE", _nonempty(pairs, source), "DMOS", lower_is_better=True)


# What copies of PIPAL name the folder of distorted training images.
PIPAL_DISTORTED = ("Train_Dist", "Train_Distort", "Train_Dis")


def read_pipal(root: Path) -> Dataset:
    """Train_Label/*.txt ("A0001_00_00.bmp,1555.7" per line), Train_Ref/A0001.bmp,
    Train_Dist/A0001_00_00.bmp (or Train_Distort/, Train_Dis/, also with
    subfolders such as Distortion_1/; or, as NTIRE 2022 ships the training
    set, Distortion_1/ ... Distortion_4/ directly under the root); Elo
    scores, higher is better."""
    labels = root / "Train_Label"
    files = sorted(_need(labels, "PIPAL's score files").glob("*.txt"))
    if not files:
        raise DatasetError(f"{labels}: missing (PIPAL's score files, *.txt)")
    refs = _folder_index(root / "Train_Ref", "PIPAL's references")
    folder = next((name for name in PIPAL_DISTORTED if (root / name).is_dir()), None)
    if folder is not None:
        # Some copies keep the distorted images in subfolders (Distortion_1, ...): index them all.
        dists = {path.name.lower(): str(path.relative_to(root / folder)) for path in (root / folder).rglob("*")
                 if path.is_file()}
    else:
        # NTIRE 2022's training release: Distortion_1 ... Distortion_4 directly under the root.
        parts = sorted(path for path in root.glob("Distortion_*") if path.is_dir())
        if not parts:
            raise DatasetError(f"{root}: missing PIPAL's distorted images (a folder named "
                               f"{', '.join(PIPAL_DISTORTED)}, or Distortion_1, Distortion_2, ... beside Train_Ref)")
        folder = "."
        dists = {path.name.lower(): str(path.relative_to(root)) for part in parts for path in part.rglob("*")
                 if path.is_file()}
    pairs = []
    for path in files:
        for number, line in enumerate(_text(path, "a PIPAL score file").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            fields = [field.strip() for field in line.split(",")]
            if len(fields) != 2 or "_" not in fields[0]:
                raise DatasetError(f"{where}: expected 'A0001_00_00.bmp,score', got {line.strip()!r}")
            name, score = fields[0], _number(fields[1], where)
            ref = name.split("_")[0] + Path(name).suffix
            dist = _find(dists, folder, name, where)
            pairs.append((_find(refs, "Train_Ref", ref, where), dist[2:] if dist.startswith("./") else dist, score))
    return Dataset("PIPAL", _nonempty(pairs, labels), "ELO", lower_is_better=False)


def read_pyiqa(root: Path, meta: Optional[Path] = None, ref_root: Optional[Path] = None) -> Dataset:
    """A pyiqa meta-information CSV of a full-reference dataset: a header, then
    the reference's name, the distorted image's name and the score in the
    first three columns (ref_name, dist_name, mos / dmos / elo_score, ...).
    Distorted images are found under ROOT, references under --ref-root
    (ROOT by default). A score column named dmos is a DMOS (lower is better),
    except KADID-10k's (a file whose name has "kadid"), which is a mean of
    ratings where higher is better."""
    if meta is None:
        raise DatasetError("--meta: expected pyiqa's meta-information CSV for --dataset pyiqa")
    text = _text(meta, "pyiqa's meta-information CSV")
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2 or len(rows[0]) < 3:
        raise DatasetError(f"{meta}: expected a header and rows of at least 3 columns (ref_name, dist_name, score)")
    score_name = rows[0][2].strip().lower()
    ref_root = ref_root or root
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{meta}, line {number}"
        if len(row) < 3:
            raise DatasetError(f"{where}: expected ref_name, dist_name and a score, got {','.join(row)!r}")
        ref, dist, score = (cell.strip() for cell in row[:3])
        for folder, name in ((ref_root, ref), (root, dist)):
            if not (folder / name).exists():
                raise DatasetError(f"{folder / name}: missing (listed in {where})")
        pairs.append((_relative(ref_root / ref, root), dist, _number(score, where)))
    lower = score_name == "dmos" and "kadid" not in meta.name.lower()
    note = f"the score file's header names its score {rows[0][2].strip()!r}"
    if score_name == "mos" and is_live(meta, root):
        lower = True
        note = "pyiqa's LIVE file heads LIVE's DMOS 'mos': read as a DMOS"
    return Dataset(f"pyiqa:{meta.name}", _nonempty(pairs, meta), "DMOS" if lower else score_name.upper() or "MOS",
                   lower_is_better=lower, note=note)


def is_live(meta: Path, root: Path) -> bool:
    """Whether a pyiqa meta file is LIVE's (release 2, whose scores are DMOS):
    its name, or a folder of ROOT, names LIVE (meta_info_LIVEIQADataset.csv,
    datasets/LIVEIQA/...), but not LIVE's other sets (LIVE Challenge, LIVE
    in the Wild, LIVE-MD), which are not this DMOS."""
    names = [meta.name.lower().removeprefix("meta_info_")] + [part.lower() for part in root.resolve().parts[-3:]]
    others = ("challenge", "itw", "wild", "livec", "livemd", "live_md", "live-md", "livemultiply", "livevqc")
    return any(name.startswith("live") and not any(other in name for other in others) for name in names)


READERS: Dict[str, Callable[..., Dataset]] = {
    "tid2013": read_tid2013, "kadid10k": read_kadid10k, "csiq": read_csiq, "live": read_live,
    "pipal": read_pipal, "pyiqa": read_pyiqa,
}


def read_dataset(name: str, root: Path, meta: Optional[Path] = None, ref_root: Optional[Path] = None) -> Dataset:
    """The pairs of dataset `name` (one of READERS) in folder `root`."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in READERS:
        raise DatasetError(f"--dataset: expected one of {', '.join(READERS)}, got {name!r}")
    if not root.is_dir():
        raise DatasetError(f"{root}: expected the dataset's folder")
    if key == "pyiqa":
        return read_pyiqa(root, meta, ref_root)
    return READERS[key](root)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path.resolve())


def _nonempty(pairs: list, source: Path) -> list:
    if not pairs:
        raise DatasetError(f"{source}: no pairs")
    return pairs


def _integral(text) -> str:
    """A spreadsheet number as its file names write it (1600.0 -> 1600)."""
    text = str(text).strip()
    return text[:-2] if text.endswith(".0") else text


def _csv_rows(path: Path, what: str, needed: Tuple[str, ...]):
    reader = csv.DictReader(io.StringIO(_text(path, what)))
    missing = [column for column in needed if column not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: expected columns {', '.join(needed)}; missing {', '.join(missing)}")
    return [(f"{path}, line {number}", {k: (v or "").strip() for k, v in row.items() if k})
            for number, row in enumerate(reader, start=2)]


def _mat_vector(path: Path, key: str, what: str) -> np.ndarray:
    from scipy.io import loadmat

    content = loadmat(_need(path, what))
    if key not in content:
        raise DatasetError(f"{path}: expected a variable {key!r} ({what})")
    return np.asarray(content[key], dtype=np.float64).ravel()


SPREADSHEET = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
RELATIONSHIP = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"


def read_xlsx(path: Path, sheet: str) -> List[List[str]]:
    """The cells of one sheet of an .xlsx file as text, row by row (no
    dependency: an .xlsx is a zip of XML parts). Empty cells are ""."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DatasetError(f"{path}: not an .xlsx file") from None
    with archive:
        names = set(archive.namelist())
        strings = []
        if "xl/sharedStrings.xml" in names:
            for item in ElementTree.fromstring(archive.read("xl/sharedStrings.xml")).iter(f"{SPREADSHEET}si"):
                strings.append("".join(node.text or "" for node in item.iter(f"{SPREADSHEET}t")))
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        ids = {s.get("name"): s.get(f"{RELATIONSHIP}id") for s in workbook.iter(f"{SPREADSHEET}sheet")}
        if sheet not in ids:
            raise DatasetError(f"{path}: expected a sheet named {sheet!r}, found {', '.join(ids) or 'none'}")
        links = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        target = next(link.get("Target") for link in links if link.get("Id") == ids[sheet])
        part = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
        rows = []
        for row in ElementTree.fromstring(archive.read(part)).iter(f"{SPREADSHEET}row"):
            cells: Dict[int, str] = {}
            for cell in row.iter(f"{SPREADSHEET}c"):
                column = _column_number(re.match(r"[A-Z]+", cell.get("r", "A")).group(0))
                value = cell.find(f"{SPREADSHEET}v")
                inline = cell.find(f"{SPREADSHEET}is")
                if cell.get("t") == "s" and value is not None:
                    cells[column] = strings[int(value.text)]
                elif inline is not None:
                    cells[column] = "".join(node.text or "" for node in inline.iter(f"{SPREADSHEET}t"))
                elif value is not None:
                    cells[column] = value.text or ""
            rows.append([cells.get(i, "").strip() for i in range(max(cells, default=-1) + 1)])
        return rows


def _column_number(letters: str) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    return number - 1
