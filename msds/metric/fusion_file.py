"""The fusion file: the per-level logits that `msds fit` writes and MSDS(fusion=PATH) loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

import torch

FORMAT = "msds-fusion/1"


class FusionError(ValueError):
    """A fusion file or a per-level score file is missing or malformed."""


def save_fusion(path: Path, logits: Sequence[float], info: Dict[str, object]) -> None:
    data = {"format": FORMAT, "levels": len(logits), "logits": [float(v) for v in logits], **info}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def load_fusion(path, levels: int) -> torch.Tensor:
    """The fusion logits stored in `path`, checked against `levels`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FusionError(f"fusion: no such file: {path}") from None
    except (OSError, ValueError) as err:
        raise FusionError(f"fusion: {path} is not a readable fusion file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("logits"), list):
        raise FusionError(f"fusion: {path} is not an msds fusion file (expected format {FORMAT!r})")
    logits = data["logits"]
    if len(logits) != levels or not all(isinstance(v, (int, float)) for v in logits):
        raise FusionError(f"fusion: {path} holds {len(logits)} weights, expected {levels} numbers for levels={levels}")
    return torch.tensor(logits, dtype=torch.float32)
