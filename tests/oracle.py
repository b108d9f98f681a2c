"""An independent float64 implementation of DeepSSIM and MSDS, in NumPy.

Written from the published definition without reusing msds code: Gram
matrices by NumPy matmul, tiles cut with sliding windows (or plain loops and
np.cov), the trunk as an explicit chain of conv2d calls, the pyramid as a
reshape-mean. Tests compare msds against it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

C_CONST = 1e-6


def gram_np(features: np.ndarray) -> np.ndarray:
    """(B, C, h, w) -> (B, C, C) in float64."""
    flat = features.reshape(features.shape[0], features.shape[1], -1).astype(np.float64)
    return np.einsum("bck,bdk->bcd", flat, flat)


def tile_scores_windows(gx: np.ndarray, gy: np.ndarray, eps: float) -> np.ndarray:
    """Mean tile score per image, tiles via sliding windows with stride 4."""
    wx = np.lib.stride_tricks.sliding_window_view(gx, (4, 4), axis=(1, 2))[:, ::4, ::4]
    wy = np.lib.stride_tricks.sliding_window_view(gy, (4, 4), axis=(1, 2))[:, ::4, ::4]
    mx = wx.mean(axis=(-2, -1), keepdims=True)
    my = wy.mean(axis=(-2, -1), keepdims=True)
    cov = ((wx - mx) * (wy - my)).mean(axis=(-2, -1))
    vx = ((wx - mx) ** 2).mean(axis=(-2, -1))
    vy = ((wy - my) ** 2).mean(axis=(-2, -1))
    return ((2 * cov + eps) / (vx + vy + eps)).mean(axis=(1, 2))


def tile_scores_loops(gx: np.ndarray, gy: np.ndarray, eps: float) -> np.ndarray:
    """The same statistic tile by tile with np.cov: slow, for small C only."""
    batch, channels = gx.shape[:2]
    out = np.empty(batch)
    for b in range(batch):
        scores = []
        for i in range(0, channels, 4):
            for j in range(0, channels, 4):
                cov = np.cov(gx[b, i : i + 4, j : j + 4].ravel(), gy[b, i : i + 4, j : j + 4].ravel(), bias=True)
                scores.append((2 * cov[0, 1] + eps) / (cov[0, 0] + cov[1, 1] + eps))
        out[b] = np.mean(scores)
    return out


def deepssim_head(fx, fy, eps: float = C_CONST, loops: bool = False) -> np.ndarray:
    """(B,) DeepSSIM head scores of two feature maps (tensors or arrays)."""
    fx, fy = (np.asarray(torch.as_tensor(f).detach().cpu().double()) for f in (fx, fy))
    gx, gy = gram_np(fx), gram_np(fy)
    return (tile_scores_loops if loops else tile_scores_windows)(gx, gy, eps)


def lite_head(fx, fy, eps: float = C_CONST) -> np.ndarray:
    """DeepSSIM-Lite: each Gram / its own (C K), statistics over the whole matrix."""
    fx, fy = (np.asarray(torch.as_tensor(f).detach().cpu().double()) for f in (fx, fy))
    # Each Gram by its own C * h * w: the two images may differ in size.
    gx, gy = (gram_np(f) / (f.shape[1] * f.shape[2] * f.shape[3]) for f in (fx, fy))
    out = []
    for a, b in zip(gx, gy):
        cov = np.cov(a.ravel(), b.ravel(), bias=True)
        out.append((2 * cov[0, 1] + eps) / (cov[0, 0] + cov[1, 1] + eps))
    return np.array(out)


# VGG16 up to relu5_1: conv indices in torchvision's features and pools after them.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24)
POOL_AFTER = (2, 7, 14, 21)


def trunk_np(images: torch.Tensor, state: dict, mask: torch.Tensor | None = None) -> torch.Tensor:
    """relu5_1 features by an explicit conv chain in float64, weights from `state`."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = (images.double() - mean) / std
    for index in CONV_INDICES:
        weight = state[f"features.{index}.weight"].double()
        bias = state[f"features.{index}.bias"].double()
        x = torch.relu(F.conv2d(x, weight, bias, padding=1))
        if index == 0 and mask is not None:
            x = x * mask.double()
        if index in POOL_AFTER:
            x = F.max_pool2d(x, 2)
    return x


def pyramid_np(images: torch.Tensor, levels: int) -> list:
    """Level l+1 = mean of each 2x2 block of level l, odd edges dropped."""
    out = [images.double()]
    for _ in range(levels - 1):
        x = out[-1]
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        out.append(x.reshape(*x.shape[:-2], h // 2, 2, w // 2, 2).mean(dim=(-3, -1)))
    return out


def msds_level_scores(x: torch.Tensor, y: torch.Tensor, state: dict, levels: int, eps: float = C_CONST) -> np.ndarray:
    """(B, L) per-level DeepSSIM scores of images x against y."""
    columns = []
    for xl, yl in zip(pyramid_np(x, levels), pyramid_np(y, levels)):
        columns.append(deepssim_head(trunk_np(xl, state), trunk_np(yl, state), eps))
    return np.stack(columns, axis=1)
