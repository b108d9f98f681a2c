"""The head: the seam between the trunk's feature maps and the scores.

`multiscale_gram_ssim` takes the per-level feature maps of both images and
returns (B, L) DeepSSIM scores. Behind it sit two interchangeable
implementations, chosen per call from the tensors' device: the reference
(plain PyTorch, msds.metric.reference) and the fused Triton kernels (msds.kernels).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch

from msds.metric import checks, reference

HeadFn = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], float, str], torch.Tensor]


def _reference_head(fxs: Sequence[torch.Tensor], fys: Sequence[torch.Tensor], eps: float, precision: str) -> torch.Tensor:
    return reference.multiscale_scores(fxs, fys, eps)  # always exact fp32 / fp64 products


def _load_triton_head() -> tuple[Optional[HeadFn], str]:
    """The Triton head and '' if it can be used, else None and the reason."""
    try:
        from msds.kernels import ops
    except ImportError as err:  # triton missing or broken
        return None, f"the Triton kernels could not be imported ({err})"
    return ops.multiscale_scores, ""


# The kernels take each level as its own pointer argument, up to this many.
KERNEL_MAX_LEVELS = 6


def select_head(backend: str, device: torch.device, levels: int = 1) -> HeadFn:
    """The head implementation for `backend`, tensors on `device` and `levels` levels."""
    checks.check_choice("backend", backend, checks.BACKENDS)
    if backend == "triton" and levels > KERNEL_MAX_LEVELS:
        raise ValueError(f"fxs: backend='triton' takes 1 to {KERNEL_MAX_LEVELS} levels, got {levels}")
    if backend == "reference" or (backend == "auto" and (device.type != "cuda" or levels > KERNEL_MAX_LEVELS)):
        return _reference_head
    head, reason = _load_triton_head()
    if head is None:
        if backend == "auto":
            return _reference_head
        raise RuntimeError(f"backend='triton' cannot run: {reason}")
    if device.type != "cuda":
        from msds.kernels import ops

        if not ops.INTERPRETED:
            raise RuntimeError(
                f"backend='triton' on {device.type} tensors needs the Triton interpreter: set the "
                "environment variable TRITON_INTERPRET=1 before triton is first imported"
            )
    return head


def multiscale_gram_ssim(
    fxs: Sequence[torch.Tensor],
    fys: Sequence[torch.Tensor],
    *,
    eps: float = 1e-6,
    backend: str = "auto",
    precision: str = "tf32x3",
) -> torch.Tensor:
    """DeepSSIM head scores for every pyramid level at once.

    Args:
        fxs, fys: per-level feature maps of the two images, each (B, C, h, w);
            the same B, C, device and dtype on every level, h and w free per
            level; C a multiple of 4.
        eps: the stabilising constant c of the tile score.
        backend: "auto" (Triton kernels for CUDA tensors when triton imports,
            the reference otherwise or beyond 6 levels), "reference" or "triton".
        precision: the Triton kernels' dot precision for float32 features:
            "tf32x3" (default) and "ieee" are fp32-accurate, "tf32" is faster
            and rounds products to TF32 (see README, "Precision"). The
            reference always multiplies in full fp32 / fp64.

    Returns:
        (B, L) scores, float64 for float64 features and float32 otherwise.
        1 means identical Gram structure; higher is more similar.
    """
    eps = checks.check_eps(eps)
    checks.check_choice("precision", precision, checks.PRECISIONS)
    for name, value in (("fxs", fxs), ("fys", fys)):
        if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or len(value) == 0:
            raise TypeError(
                f"{name}: expected a non-empty list of (B, C, h, w) feature maps, got {checks.describe(value)}"
            )
    if len(fxs) != len(fys):
        raise ValueError(f"fys: expected {len(fxs)} levels like fxs, got {len(fys)}")
    for level, (fx, fy) in enumerate(zip(fxs, fys)):
        checks.check_feature_pair(f"fxs[{level}]", fx, f"fys[{level}]", fy)
        first = fxs[0]
        if fx.shape[:2] != first.shape[:2] or fx.dtype != first.dtype or fx.device != first.device:
            raise ValueError(
                f"fxs[{level}]: expected the batch size, channel count, dtype and device of fxs[0] "
                f"({checks.describe(first)}), got {checks.describe(fx)}"
            )
    head = select_head(backend, fxs[0].device, len(fxs))
    with _fp32_statistics(fxs[0].device.type):
        return head(list(fxs), list(fys), eps, precision)


def lite_score(fx: torch.Tensor, fy: torch.Tensor, eps: float) -> torch.Tensor:
    """DeepSSIM-Lite's head, (B,): Grams and statistics in fp32 (fp64 for fp64
    features) under autocast too, like every other head."""
    with _fp32_statistics(fx.device.type):
        return reference.lite_level_score(fx, fy, eps)


def _fp32_statistics(device_type: str):
    """Autocast switched off where it is on: it would recast the heads' fp32
    Gram products to 16 bits."""
    if not _autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (False where it does not exist).

    Dynamo in torch 2.11 cannot trace torch.amp.is_autocast_available, so under
    torch.compile (CUDA and CPU tensors, where autocast exists) it is not asked.
    """
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(device_type):
        return False
    return torch.is_autocast_enabled(device_type)


def gram_ssim(
    fx: torch.Tensor,
    fy: torch.Tensor,
    *,
    eps: float = 1e-6,
    backend: str = "auto",
    precision: str = "tf32x3",
) -> torch.Tensor:
    """DeepSSIM head score for one level of feature maps.

    Args:
        fx, fy: feature maps (B, C, h, w) of the two images, C a multiple of 4.
        eps: the stabilising constant c of the tile score.
        backend, precision: see multiscale_gram_ssim.

    Returns:
        (B,) mean over the 4x4 tiles of the two Gram matrices of
        (2 cov + c) / (var_x + var_y + c); 1 for identical features.
    """
    checks.check_feature_pair("fx", fx, "fy", fy)
    return multiscale_gram_ssim([fx], [fy], eps=eps, backend=backend, precision=precision)[:, 0]
