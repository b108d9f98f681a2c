"""Reading image files for the command line, with errors that name the file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from msds.metric.checks import check_image, check_mask

PathArg = Union[str, "os.PathLike[str]"]
# Pillow's modes of 16-bit (and 32-bit integer) single-channel images: their
# values are scaled by 65535, not clipped to 8 bits as convert("RGB") would.
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """An image file is missing, unreadable or unusable."""


def load_image(path: PathArg) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float32 tensor in [0, 1].

    8-bit images are divided by 255, 16-bit grayscale ones by 65535 (16-bit
    RGB files are read at 8 bits by Pillow, at their true scale); grayscale
    is repeated into three channels. An alpha channel is dropped: an image
    with any pixel not fully opaque gets a warning naming the file, since
    its transparent parts are scored as the colours stored under them.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            pixels = _rgb_in_unit_range(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from err
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()


def _rgb_in_unit_range(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from any Pillow image, at its true scale."""
    if image.mode in WIDE_GRAY_MODES:
        values = np.asarray(image).astype(np.float32)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"expected 16-bit values in [0, 65535], got values in [{values.min():g}, {values.max():g}]")
        return np.repeat(values[..., None] / 65535.0, 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not (values.min() >= 0 and values.max() <= 1):
            raise ValueError(f"expected floating-point values in [0, 1], got values in [{values.min():g}, {values.max():g}]")
        return np.repeat(values[..., None], 3, axis=2)
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            warnings.warn(f"{path}: the image is not fully opaque (alpha as low as {alpha.min()} of 255); its alpha "
                          "channel is ignored, so transparent pixels are scored as the colours stored under them",
                          stacklevel=3)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image_for(path: PathArg, levels: int) -> torch.Tensor:
    """load_image, refused with the file's name if too small for `levels` pyramid levels."""
    image = load_image(path)
    try:
        check_image("image", image, levels)
    except ValueError as err:
        raise ImageError(f"{path}: {str(err).removeprefix('image: ')}") from err
    return image


def load_mask(path: PathArg, image: torch.Tensor, image_path: PathArg) -> torch.Tensor:
    """A saliency mask file as a (1, 1, H, W) float32 tensor of 0 and 1.

    The rule of msds's masks (msds.metric.checks.check_mask): 0 is not salient;
    the salient value is 1 or the file's full value (255 in an 8-bit file,
    65535 in a 16-bit one, white in a bilevel one). Other values (a soft
    saliency map) and a mask with no salient pixel are refused. The mask
    must have the size of `image`, the (1, 3, H, W) image it calibrates.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as mask:
            values = np.asarray(mask if mask.mode in WIDE_GRAY_MODES + ("1",) else mask.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from err
    height, width = image.shape[-2:]
    if values.shape != (height, width):
        raise ImageError(f"{path}: expected a mask the size of {image_path} ({width}x{height}), "
                         f"got {values.shape[1]}x{values.shape[0]}")
    if values.dtype != np.bool_ and values.dtype != np.uint8:
        # 16-bit: full scale is 65535; as 8-bit data it is 255, the same rule.
        values = np.where(values == 65535, 255, values)
        values = values.astype(np.uint8) if values.max() <= 255 and values.min() >= 0 else values.astype(np.int64)
    if not values.any():
        raise ImageError(f"{path}: no salient pixel (every value is 0); a saliency mask marks salient pixels "
                         "with 1 or the file's full value (255 in an 8-bit file)")
    try:
        return check_mask("mask", torch.from_numpy(values.copy())[None, None], image).float()
    except ValueError as err:
        raise ImageError(f"{path}: {str(err).removeprefix('mask: ')}") from err


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image."""
    array = (tensor.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_paths(ref: PathArg, dist: PathArg) -> List[Tuple[Path, Path]]:
    """(reference, distorted) pairs: two files; one reference file and a folder
    of distorted images; or two folders paired by file name.

    Folders pair by file stem, whatever the extension and its case
    (img0.png with img0.JPG): a lossy copy often changes the extension. Two
    files of one folder with the same stem, and a file without a partner,
    are errors naming them.
    """
    ref, dist = Path(ref), Path(dist)
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
    refs, dists = files_by_stem(ref), files_by_stem(dist)
    unmatched = sorted(set(refs) ^ set(dists))
    if unmatched:
        where = [str(refs.get(stem) or dists[stem]) for stem in unmatched[:3]]
        raise ImageError(
            f"{', '.join(where)}{' ...' if len(unmatched) > 3 else ''}: no file of the same name (stem) in the "
            f"other folder ({len(unmatched)} unpaired)"
        )
    if not refs:
        raise ImageError(f"{ref}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [(refs[stem], dists[stem]) for stem in sorted(refs)]


def files_by_stem(folder: Path) -> Dict[str, Path]:
    """A folder's image files by stem, refusing two that share one."""
    found: Dict[str, Path] = {}
    for path in image_files(folder):
        if path.stem in found:
            raise ImageError(f"{found[path.stem]} and {path}: two images named {path.stem!r} in one folder, "
                             "so which to pair is ambiguous; rename or move one")
        found[path.stem] = path
    return found
