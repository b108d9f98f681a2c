"""Test inputs and the environment of child processes."""

import os
from pathlib import Path

import torch


def relu_features(shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Sparse, non-negative maps like a ReLU layer's output, with channel-varying scale."""
    scale = torch.rand(shape[1], 1, 1, generator=generator, dtype=torch.float64) * 3 + 0.1
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + 0.3).relu().to(dtype)


ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(**extra: str) -> dict:
    """The environment for a child Python: msds importable from this checkout, installed or not."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
