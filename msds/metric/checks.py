"""Argument checks shared by the public API.

Every error names the argument, what was expected and what was given, so a
bad call fails at the API boundary rather than deep inside torch.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

BACKENDS = ("auto", "reference", "triton")
REDUCTIONS = ("none", "mean", "sum")
PRECISIONS = ("tf32x3", "ieee", "tf32")  # kernel dot precisions for float32 features


def describe(value: object) -> str:
    """A short description of a value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{type(value).__name__} {value!r}"


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(value)}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {describe(value)}")
    return value


def check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {describe(eps)}")
    return float(eps)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_device_dtype(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Both tensors share device and dtype."""
    if a.device != b.device:
        raise ValueError(f"{name_b}: expected the same device as {name_a} ({a.device}), got {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b}: expected the same dtype as {name_a} ({a.dtype}), got {b.dtype}")


def check_feature_pair(name_x: str, fx: object, name_y: str, fy: object) -> None:
    """Feature maps (B, C, h, w) of the two images at one level.

    B and C must agree; h and w are each image's own (the two Gram matrices
    are C x C whatever the number of positions).
    """
    for name, f in ((name_x, fx), (name_y, fy)):
        check_tensor(name, f)
        if f.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D feature map (B, C, h, w), got shape {tuple(f.shape)}")
    if fy.shape[:2] != fx.shape[:2]:
        raise ValueError(
            f"{name_y}: expected the batch size and channel count of {name_x} (B, C) = {tuple(fx.shape[:2])}, "
            f"got {tuple(fy.shape[:2])} (shape {tuple(fy.shape)})"
        )
    check_device_dtype(name_x, fx, name_y, fy)
    channels = fx.shape[1]
    for name, f in ((name_x, fx), (name_y, fy)):
        if f.shape[0] < 1 or f.shape[2] < 1 or f.shape[3] < 1:
            raise ValueError(f"{name}: expected B, h and w all >= 1, got shape {tuple(f.shape)}")
    if channels < 4 or channels % 4:
        raise ValueError(
            f"{name_x}: expected a channel count that is a positive multiple of 4 "
            f"(the Gram matrix is cut into 4x4 tiles), got C = {channels}"
        )


def check_levels(levels: object) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected an integer >= 1, got {describe(levels)}")
    return levels


def check_image(name: str, image: object, levels: int) -> torch.Tensor:
    """An RGB batch (B, 3, H, W) large enough for `levels` pyramid levels (its values are
    check_pixel_range's business: that check synchronises with the device)."""
    check_tensor(name, image)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"{name}: expected an RGB batch of shape (B, 3, H, W), got shape {tuple(image.shape)}")
    if image.shape[0] < 1:
        raise ValueError(f"{name}: expected a batch of at least one image, got shape {tuple(image.shape)}")
    smallest = min_side(levels)
    height, width = image.shape[-2:]
    if min(height, width) < smallest:
        raise ValueError(
            f"{name}: expected images of at least {smallest}x{smallest} pixels for levels={levels} "
            f"(relu5_1 needs 16x16 pixels at the coarsest level), got {height}x{width}"
        )
    return image


def check_data_range(value: object) -> Tuple[float, float]:
    """The value range of the images: a number `high` for [0, high], or a pair (low, high)."""
    pair = (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
            and pair[0] < pair[1]):
        return float(pair[0]), float(pair[1])
    raise ValueError(
        f"data_range: expected a number high > 0 (images in [0, high]) or a pair (low, high) with low < high, "
        f"for example 1.0, 255 or (-1, 1); got {describe(value)}"
    )


def check_pixel_range(name: str, image: torch.Tensor, data_range: Tuple[float, float] = (0.0, 1.0),
                      slack: float = 0.0) -> None:
    """Pixel values within data_range, widened by `slack` times its width on each side; no NaN or inf."""
    low, high = data_range
    margin = slack * (high - low)
    # One fused test that also catches NaN, which fails both comparisons.
    if bool(((image >= low - margin) & (image <= high + margin)).all()):
        return
    allowed = f"[{low:g}, {high:g}]"
    if margin:
        allowed = f"[{low - margin:g}, {high + margin:g}] (data_range {allowed} with a margin for overshoot)"
    nan, inf = int(image.isnan().sum()), int(image.isinf().sum())
    if nan or inf:
        found = f"{nan} NaN and {inf} infinite values"
    else:
        found = f"values in [{image.min().item():.4g}, {image.max().item():.4g}]"
    raise ValueError(
        f"{name}: expected pixel values in {allowed}, no NaN or inf, got {found}; "
        "set data_range to the images' range, or pass check_range=False to skip this check"
    )


def check_images(x: object, y: object, levels: int) -> None:
    """Two RGB batches of one batch size on one device (see check_image).

    Heights and widths are each image's own: DeepSSIM compares C x C Gram
    matrices, so references need not match the test image's geometry. The
    dtypes may differ too (a bf16 prediction against a float32 target):
    the metric casts both to one working dtype.
    """
    check_image("x", x, levels)
    check_image("y", y, levels)
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y: expected the batch size of x ({x.shape[0]}), got {y.shape[0]} "
            f"(x {tuple(x.shape)}, y {tuple(y.shape)})"
        )
    if x.device != y.device:
        raise ValueError(f"y: expected the same device as x ({x.device}), got {y.device}")


def min_side(levels: int) -> int:
    """Smallest image side that leaves 16 pixels at the coarsest of `levels` levels."""
    return 16 * 2 ** (levels - 1)


def check_mask(name: str, mask: object, image: torch.Tensor) -> torch.Tensor:
    """A binary saliency mask for `image`, returned as (B, 1, H, W) 0/1 in the image's dtype.

    The one rule for masks, from tensors and from files alike: 0 is not
    salient, and the salient value is 1 (bool True, or 1 in any numeric
    dtype) or, for 8-bit data (uint8 tensors, 8-bit mask files), 255. A mask
    with other values (a soft saliency map) is refused: threshold it first.
    A mask with nothing salient in some image is refused too: it would
    zero that image's features and score 1 whatever the image.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(mask)}")
    batch, _, height, width = image.shape
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or tuple(mask.shape) != (batch, 1, height, width):
        raise ValueError(
            f"{name}: expected a mask of shape ({batch}, 1, {height}, {width}) or "
            f"({batch}, {height}, {width}), got shape {tuple(mask.shape)}"
        )
    if mask.device != image.device:
        raise ValueError(f"{name}: expected a tensor on {image.device}, got {mask.device}")
    if mask.dtype.is_complex:
        raise TypeError(f"{name}: expected a bool, integer or floating mask, got {describe(mask)}")
    salient = mask != 0
    on_values = (255,) if mask.dtype == torch.uint8 else ()
    on_values = (1,) + on_values
    binary = [bool((salient <= (mask == value)).all()) for value in on_values]
    if not any(binary):
        allowed = "1 or 255" if mask.dtype == torch.uint8 else "1"
        found = torch.unique(mask[salient])
        others = [v for v in found.tolist() if v not in on_values]
        got = (f"other values (e.g. {', '.join(f'{v:g}' for v in others[:4])})" if others
               else "both 1 and 255 for salient pixels (use one)")
        raise ValueError(
            f"{name}: expected a binary mask (0 = not salient, {allowed} = salient), got {got}; "
            "threshold a soft saliency map first"
        )
    empty = (~salient).flatten(1).all(1)
    if bool(empty.any()):
        index = int(empty.nonzero()[0, 0])
        raise ValueError(
            f"{name}: expected at least one salient pixel in every image, got none in batch index {index} "
            "(an empty mask zeroes the image's features, so any two such images would score 1)"
        )
    return salient.to(image.dtype)
