"""VGG16's convolutional trunk up to relu5_1, frozen, with ImageNet normalisation.

The layers mirror torchvision's `vgg16().features[0:26]` index for index, so
torchvision's state-dict keys (`features.N.weight`) load without renaming.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from msds.trunk import winograd
from msds.trunk.weights import StateDict, WeightsArg, WeightsError, resolve_weights

# Output channels of each conv, "M" for a 2x2 max-pool; ends at conv5_1.
LAYOUT: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512]
CHANNELS = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0


def build_features() -> nn.Sequential:
    layers: List[nn.Module] = []
    in_channels = 3
    for item in LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers)


_random_weights: Dict[tuple, List[torch.Tensor]] = {}


def random_weights() -> List[torch.Tensor]:
    """The seeded random initialisation's conv weights, drawn once per process
    and layout (He initialisation, as torchvision's VGG; biases are zero)."""
    layout = tuple(LAYOUT)
    if layout not in _random_weights:
        generator = torch.Generator().manual_seed(RANDOM_SEED)
        weights, in_channels = [], 3
        for item in layout:
            if item != "M":
                std = (2.0 / (item * 9)) ** 0.5  # fan_out of a 3x3 convolution
                weights.append(torch.randn((item, in_channels, 3, 3), generator=generator) * std)
                in_channels = item
        _random_weights[layout] = weights
    return _random_weights[layout]


class VGG16Trunk(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> relu5_1 features (B, 512, H/16, W/16).

    Args:
        weights: "imagenet" (torchvision's ImageNet weights, see msds.trunk.weights),
            a path to a VGG16 state dict, or None for a seeded random
            initialisation (for tests; scores are then not meaningful).

    The trunk is frozen: its parameters never require gradients and it stays
    in eval mode. Each 2x2 max-pool floors odd sizes, as torchvision does.
    """

    def __init__(self, weights: WeightsArg = "imagenet") -> None:
        super().__init__()
        # Kept in float64 and cast at use, so a float64 trunk normalises exactly.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1), persistent=False)
        with torch.device("meta"):  # no default initialisation: every weight is written below
            self.features = build_features()
        self.features.to_empty(device="cpu")
        state = resolve_weights(weights)
        self.pretrained = state is not None
        if state is None:
            self._init_random()
        else:
            self._load(state)
        self.requires_grad_(False)
        self.eval()
        # Each wide conv's Winograd filters by layer index, made on first use (msds.trunk.winograd).
        self._winograd: Dict[int, winograd.FilterTransforms] = {}

    def train(self, mode: bool = True) -> "VGG16Trunk":
        return super().train(False)  # frozen: always in eval mode

    def clear_winograd_filters(self) -> None:
        """Free the fast path's Winograd filters (remade from the weights on next use).

        Moving or casting the trunk (`.to`, `.double()`, `.half()`, ...) frees
        them too; weight edits need nothing: every use compares the weights
        with those the filters were made from.
        """
        self._winograd.clear()

    def _apply(self, fn, recurse=True):
        # Every dtype and device change comes through here (also from a parent module's `.to`).
        if hasattr(self, "_winograd"):
            self.clear_winograd_filters()
        return super()._apply(fn, recurse)

    def _init_random(self) -> None:
        with torch.no_grad():
            for layer, weight in zip(self.convolutions(), random_weights()):
                layer.weight.copy_(weight)
                layer.bias.zero_()

    def convolutions(self) -> List[nn.Conv2d]:
        return [layer for layer in self.features if isinstance(layer, nn.Conv2d)]

    def _load(self, state: StateDict) -> None:
        expected = self.trunk_state_dict()
        missing = [key for key in expected if key not in state]
        if missing:
            raise WeightsError(
                f"weights: not a VGG16 state dict: missing {len(missing)} keys "
                f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
            )
        for key, tensor in expected.items():
            if state[key].shape != tensor.shape:
                raise WeightsError(
                    f"weights: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)} (VGG16)"
                )
        with torch.no_grad():
            for key, tensor in expected.items():
                tensor.copy_(state[key].to(tensor.dtype))

    def trunk_state_dict(self) -> StateDict:
        """The trunk's weights under torchvision's key names (features.N.*)."""
        return {f"features.{key}": value for key, value in self.features.state_dict().items()}

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None,
                winograd_convolutions: bool = False) -> torch.Tensor:
        """relu5_1 features; `mask` (B, 1, H, W), binary, multiplies the conv1_1 output.

        `winograd_convolutions` runs the wide convolutions by Winograd where
        msds.trunk.winograd.applies (float32 on the CPU): the fast path's choice.
        """
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = self.features[:2](x)
        if mask is not None:
            # Applied after relu1_1: a 0/1 mask commutes with the ReLU, so this
            # equals masking the conv1_1 output itself.
            x = x * mask
        for index in range(2, len(self.features)):
            layer = self.features[index]
            if winograd_convolutions and winograd.applies(x, layer):
                x = winograd.conv3x3(x, layer, self._winograd.setdefault(index, winograd.FilterTransforms()))
            else:
                x = layer(x)
        return x


def save_trimmed_weights(source: WeightsArg, destination: Union[str, "os.PathLike[str]"]) -> Path:
    """Save only the trunk's layers (up to relu5_1) of `source` to `destination`.

    Returns the destination path. The trimmed file (about 59 MB instead of
    528 MB) loads anywhere a torchvision VGG16 file does.
    """
    trunk = VGG16Trunk(source)
    destination = Path(destination)
    torch.save(trunk.trunk_state_dict(), destination)
    return destination
