"""The demo: a generated reference image, a ladder of distortions, a score table.

The reference is drawn here (gradients, shapes, stripes and fine texture) so
the demo needs no image files; distortions rise in strength so a working
metric shows scores falling down each ladder.
"""

from __future__ import annotations

import io
from typing import Callable, List, Tuple

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from msds.images import to_image

Distortion = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def reference_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic RGB scene, (size, size, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.stack([0.2 + 0.6 * u, 0.3 + 0.4 * v, 0.7 - 0.5 * u * v], axis=-1)
    # A few flat-coloured discs and boxes give edges at many orientations.
    for _ in range(6):
        cy, cx, radius = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.06, 0.18)
        disc = (v - cy) ** 2 + (u - cx) ** 2 < radius**2
        image[disc] = rng.uniform(0.05, 0.95, size=3)
    for _ in range(4):
        y0, x0 = rng.uniform(0.0, 0.7, size=2)
        height, width = rng.uniform(0.1, 0.3, size=2)
        box = (v > y0) & (v < y0 + height) & (u > x0) & (u < x0 + width)
        image[box] = rng.uniform(0.05, 0.95, size=3)
    stripes = (v > 0.72) & (u < 0.45)
    image[stripes] = (0.5 + 0.4 * np.sin(2 * np.pi * 24 * (u + 0.5 * v)))[stripes][:, None]
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    image = image + 0.06 * texture[..., None]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return image + rng.normal(0.0, sigma, image.shape).astype(np.float32)


def blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))


def jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    to_image(torch.from_numpy(image).permute(2, 0, 1)).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0


def reduce_contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = image.mean(axis=(0, 1), keepdims=True)
    return mean + factor * (image - mean)


# (name, function, strengths from mild to severe, how a strength is printed)
LADDER: List[Tuple[str, Distortion, Tuple[float, ...], str]] = [
    ("noise", add_noise, (0.02, 0.05, 0.1, 0.2), "sigma={}"),
    ("blur", blur, (0.5, 1.0, 2.0, 4.0), "sigma={}"),
    ("jpeg", jpeg, (90, 50, 20, 5), "quality={:.0f}"),
    ("contrast", reduce_contrast, (0.9, 0.7, 0.5, 0.3), "factor={}"),
]


def distortion_ladder(reference: np.ndarray, seed: int = 0) -> Tuple[List[Tuple[str, str]], torch.Tensor]:
    """Labels (distortion, strength) and the distorted images (N, 3, H, W) in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels, images = [], []
    for name, distort, strengths, fmt in LADDER:
        for strength in strengths:
            labels.append((name, fmt.format(strength)))
            images.append(np.clip(distort(reference, strength, rng), 0.0, 1.0))
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return labels, batch
