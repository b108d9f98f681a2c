"""Test inputs."""

import torch


def relu_features(shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Sparse, non-negative maps like a ReLU layer's output, with channel-varying scale."""
    scale = torch.rand(shape[1], 1, 1, generator=generator, dtype=torch.float64) * 3 + 0.1
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + 0.3).relu().to(dtype)
