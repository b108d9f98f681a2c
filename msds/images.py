"""Reading image files for the command line, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from msds._checks import check_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """An image file is missing, unreadable or unusable."""


def load_image(path: Path) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float32 tensor in [0, 1] (converted to RGB)."""
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from err
    return torch.from_numpy(pixels / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_image_for(path: Path, levels: int) -> torch.Tensor:
    """load_image, refused with the file's name if too small for `levels` pyramid levels."""
    image = load_image(path)
    try:
        check_image("image", image, levels, check_range=False)
    except ValueError as err:
        raise ImageError(f"{path}: {str(err).removeprefix('image: ')}") from err
    return image


def load_mask(path: Path, image: torch.Tensor, image_path: Path) -> torch.Tensor:
    """A saliency mask file as a (1, 1, H, W) float32 tensor of 0 and 1 (nonzero = salient).

    It must have the size of `image`, the (1, 3, H, W) image it calibrates.
    """
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as mask:
            values = np.asarray(mask.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from err
    height, width = image.shape[-2:]
    if values.shape != (height, width):
        raise ImageError(f"{path}: expected a mask the size of {image_path} ({width}x{height}), "
                         f"got {values.shape[1]}x{values.shape[0]}")
    return torch.from_numpy((values != 0).astype(np.float32))[None, None]


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image."""
    array = (tensor.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_paths(ref: Path, dist: Path) -> List[Tuple[Path, Path]]:
    """(reference, distorted) pairs: two files; one reference file and a folder
    of distorted images; or two folders paired by file name.

    A file in either folder without a partner of the same name is an error.
    """
    for path, role in ((ref, "REF"), (dist, "DIST")):
        if not path.exists():
            raise ImageError(f"{path}: no such file or folder ({role})")
    if ref.is_dir() and not dist.is_dir():
        raise ImageError(f"{ref} and {dist}: expected a folder of distorted images for a folder of references")
    if not ref.is_dir():
        if not dist.is_dir():
            return [(ref, dist)]
        files = image_files(dist)
        if not files:
            raise ImageError(f"{dist}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [(ref, path) for path in files]
    refs = {p.name: p for p in image_files(ref)}
    dists = {p.name: p for p in image_files(dist)}
    unmatched = sorted(set(refs) ^ set(dists))
    if unmatched:
        where = [str((ref if name in refs else dist) / name) for name in unmatched[:3]]
        raise ImageError(
            f"{', '.join(where)}{' ...' if len(unmatched) > 3 else ''}: no file of the same name in the other "
            f"folder ({len(unmatched)} unpaired)"
        )
    if not refs:
        raise ImageError(f"{ref}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [(refs[name], dists[name]) for name in sorted(refs)]
