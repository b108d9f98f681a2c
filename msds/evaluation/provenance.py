"""What made a results file: the record `msds eval` writes beside OUT as
OUT.meta.json, and the check that a resumed run has the same settings.

The record holds the metric, its levels, the trunk weights (the name given,
the file and its SHA-256, or "random"), the fusion file and its SHA-256,
the saliency masks, how images are read, the msds version, and the
direction of the opinion scores (MOS or DMOS, and who said so). Rows scored
under other settings are never mixed into OUT: a resumed run whose settings
differ stops with one line naming the first difference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from msds.evaluation.datasets import DatasetError
from msds.trunk.weights import sha256_of

FORMAT = "msds-results/1"

# The settings a resumed run must share with the run that began OUT.
SETTINGS = ("metric", "levels", "weights", "fusion", "saliency", "images", "msds_version")

# How `msds eval` reads images (msds.images.load_image_for): recorded so a
# later reader knows, and compared so a change of it is noticed.
IMAGE_HANDLING = "RGB, 8-bit values / 255, each image at its own size (no resizing or cropping)"


def meta_path(out: Path) -> Path:
    """Where the record of results file `out` lives: OUT.meta.json beside it."""
    return out.with_name(out.name + ".meta.json")


def file_record(path: Optional[str]) -> Optional[dict]:
    """A file named by its path and its SHA-256, or None for no file."""
    if path is None:
        return None
    return {"file": str(path), "sha256": sha256_of(Path(path).expanduser())}


def is_random(record: dict) -> bool:
    return record["settings"]["weights"]["name"] == "random"


def settings(metric: str, levels: int, weights: dict, fusion: Optional[str],
             saliency: Optional[tuple]) -> dict:
    from msds import __version__

    return {"metric": metric, "levels": levels, "weights": weights, "fusion": file_record(fusion),
            "saliency": None if saliency is None else {"ref_masks": str(saliency[0]), "dist_masks": str(saliency[1])},
            "images": IMAGE_HANDLING, "msds_version": __version__}


def _shown(key: str, value) -> str:
    if isinstance(value, dict) and "sha256" in value:
        name = value.get("name") or value.get("file")
        return "random" if value.get("sha256") is None else f"{name} (SHA-256 {value['sha256'][:12]})"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def check_resume(out: Path, current: dict, earlier_work: bool) -> None:
    """DatasetError, one line, if `out` (or its part files, `earlier_work`)
    was begun under other settings than `current`, or holds no record."""
    path = meta_path(out)
    if not path.exists():
        if earlier_work:
            raise DatasetError(f"{out}: holds results without a record of their settings ({path.name} is missing); "
                               "rerun with --restart to score again, or choose another --out")
        return
    try:
        recorded = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable msds results record ({err}); rerun with --restart") from None
    for key in SETTINGS:
        if recorded.get(key) != current[key]:
            raise DatasetError(f"{out}: made with {key} {_shown(key, recorded.get(key))}, this run has "
                               f"{_shown(key, current[key])}; rerun with --restart to score again, "
                               "or choose another --out")


def write(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = meta_path(out).with_name(meta_path(out).name + ".tmp")
    temporary.write_text(json.dumps({"format": FORMAT, **record}, indent=2) + "\n")
    os.replace(temporary, meta_path(out))


def read(out: Path) -> Optional[dict]:
    """The record beside results file `out`, or None if it has none."""
    path = meta_path(out)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None
