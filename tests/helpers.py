"""Test inputs and the environment of child processes."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def relu_features(shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Sparse, non-negative maps like a ReLU layer's output, with channel-varying scale."""
    scale = torch.rand(shape[1], 1, 1, generator=generator, dtype=torch.float64) * 3 + 0.1
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + 0.3).relu().to(dtype)


def images(shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Smooth-ish random images in [0, 1]: a blurred field plus fine noise."""
    coarse = torch.rand(shape[0], 3, shape[2] // 4 + 1, shape[3] // 4 + 1, generator=generator, dtype=torch.float64)
    field = torch.nn.functional.interpolate(coarse, size=shape[2:], mode="bilinear", align_corners=False)
    noise = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (0.8 * field + 0.2 * noise).clamp(0, 1).to(dtype)


def read_rgb(path, dtype=torch.float64) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [0, 1], read here with PIL and NumPy (not msds.images)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(dtype)


def state_of(model) -> dict:
    """The trunk weights of an msds module, for the oracle's conv chain."""
    return model.trunk.trunk_state_dict()


ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(**extra: str) -> dict:
    """The environment for a child Python: msds importable from this checkout, installed or not."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
