"""Finding, checking and loading the VGG16 weights of the trunk.

Sources, in the order `resolve_weights` tries them for weights="imagenet":
the file named by $MSDS_VGG16_WEIGHTS, then torchvision's ImageNet file in the
torch.hub cache (its SHA-256 prefix checked), then a download of that file.
A local path may hold torchvision's full VGG16 state dict or the trimmed one
that `save_trimmed_weights` writes (only the layers up to relu5_1).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch

IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
IMAGENET_FILENAME = "vgg16-397923af.pth"
IMAGENET_SHA256_PREFIX = "397923af"
ENV_VAR = "MSDS_VGG16_WEIGHTS"

WeightsArg = Union[None, str, "os.PathLike[str]"]
StateDict = Dict[str, torch.Tensor]

_verified: set = set()  # (path, size, mtime) of cache files whose hash was checked


class WeightsError(ValueError):
    """The trunk's weights are unavailable, corrupt or do not match VGG16."""


def how_to_provide() -> str:
    return (
        f"download {IMAGENET_URL} on a machine with network access and either put it at "
        f"{imagenet_cache_path()}, pass its path as weights=PATH (--weights PATH), or set "
        f"{ENV_VAR}=PATH; or use weights=None (--weights random) for an untrained trunk"
    )


def imagenet_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_cached_hash(path: Path) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    if not sha256_of(path).startswith(IMAGENET_SHA256_PREFIX):
        raise WeightsError(
            f"weights: the cached file {path} does not have the SHA-256 prefix "
            f"{IMAGENET_SHA256_PREFIX} of torchvision's VGG16 ImageNet weights (corrupt or "
            "truncated download); delete it and try again, or " + how_to_provide()
        )
    _verified.add(key)


def imagenet_file(download: bool = True) -> Path:
    """Path of torchvision's VGG16 ImageNet file, hash-checked, downloading it if allowed."""
    path = imagenet_cache_path()
    if path.exists():
        _check_cached_hash(path)
        return path
    if not download:
        raise WeightsError(f"weights: the ImageNet VGG16 file is not cached; {how_to_provide()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(IMAGENET_URL, str(path), hash_prefix=IMAGENET_SHA256_PREFIX)
    # The causes are folded into one message: no chain of urllib tracebacks.
    except RuntimeError as err:  # raised by torch.hub on a hash mismatch
        raise WeightsError(f"weights: the downloaded VGG16 file failed its hash check ({err})") from None
    except OSError as err:  # no network, DNS failure, refused connection, disk full
        reason = getattr(err, "reason", None) or err.strerror or err
        raise WeightsError(
            f"weights: could not download the ImageNet VGG16 weights from {IMAGENET_URL} ({reason}); "
            f"{how_to_provide()}"
        ) from None
    _verified.add((str(path), path.stat().st_size, path.stat().st_mtime_ns))
    return path


def load_state_dict(path: Union[str, "os.PathLike[str]"], source: str = "weights") -> StateDict:
    """Read a state dict of tensors from `path`, with errors that name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{source}: no such weights file: {path} (weights are 'imagenet', the path of a "
                           "VGG16 state dict, or None for a random trunk)")
    expected = ("expected a VGG16 state dict of tensors saved by torch.save, such as torchvision's "
                f"{IMAGENET_FILENAME} or a file written by `msds trim-weights`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        # torch's own message may advise weights_only=False, which runs any code
        # a file holds: not advice to pass on for a file of unknown origin.
        raise WeightsError(f"{source}: {path} is not a readable weights file ({type(err).__name__} from "
                           f"torch.load); {expected}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: {path} does not hold a state dict of tensors; {expected}")
    return state


def weights_record(weights: WeightsArg, pretrained: bool) -> Dict[str, Optional[str]]:
    """Where the trunk's weights came from: source ("imagenet", "env", "file"
    or "random"), the name given, the file read and its SHA-256."""
    if not pretrained:
        return {"source": "random", "name": "random", "file": None, "sha256": None}
    override = os.environ.get(ENV_VAR) if weights == "imagenet" else None
    if weights == "imagenet":
        source, path = ("env", Path(override).expanduser()) if override else ("imagenet", imagenet_cache_path())
    else:
        source, path = "file", Path(weights).expanduser()
    return {"source": source, "name": str(weights), "file": str(path), "sha256": sha256_of(path)}


def weights_label(record: Dict[str, Optional[str]]) -> str:
    """A weights record in words, saying exactly which file was read."""
    source = record.get("source") or ("random" if record["name"] == "random" else "file")
    digest = (record["sha256"] or "")[:12]
    if source == "random":
        return "random (untrained: scores say nothing about image quality)"
    if source == "imagenet":
        return f"imagenet (torchvision file {record['file']}, sha256 {digest})"
    if source == "env":
        return f"env {ENV_VAR}={record['file']} (sha256 {digest})"
    return f"file {record['file']} (sha256 {digest})"


def resolve_weights(weights: WeightsArg) -> Optional[StateDict]:
    """The state dict that `weights` names, or None for a random trunk."""
    if weights is None:
        return None
    if weights == "imagenet":
        override = os.environ.get(ENV_VAR)
        if override:
            return load_state_dict(override, source=f"${ENV_VAR}")
        return load_state_dict(imagenet_file())
    if isinstance(weights, (str, os.PathLike)):
        return load_state_dict(weights)
    raise TypeError(f"weights: expected 'imagenet', a file path or None, got {type(weights).__name__} {weights!r}")
