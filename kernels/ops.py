"""The Triton head as PyTorch operators: level packing, custom ops, autograd.

`msds::gram_ssim_forward` and `msds::gram_ssim_backward` are registered with
torch.library (with fake implementations), so torch.compile sees each as one
opaque node and keeps the graph whole; autograd is attached with
register_autograd. Only the feature maps are saved for the backward, which
recomputes the Gram tiles.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from triton import knobs

from msds.kernels.gram_ssim import PRECISIONS, accumulator_dtype, gram_ssim_backward, gram_ssim_forward

# Kernels were defined for the interpreter (TRITON_INTERPRET=1) when this
# module was imported; only then can they run on CPU tensors.
INTERPRETED = bool(knobs.runtime.interpret)


def pack_levels(features: Sequence[Tensor]) -> Tuple[Tensor, Tuple[int, ...], Tuple[int, ...]]:
    """Lay per-level maps (B, C, h_l, w_l) end to end along K: (B, C, K_total).

    A single level is passed as a strided view when it flattens without a
    copy (contiguous and channels_last maps do); several levels are copied
    once by torch.cat. Returns the packed tensor, level starts and lengths.
    """
    flat = [f.flatten(2) for f in features]
    lens = tuple(f.shape[2] for f in flat)
    starts = tuple(sum(lens[:i]) for i in range(len(lens)))
    packed = flat[0] if len(flat) == 1 else torch.cat(flat, dim=2)
    return packed, starts, lens


def unpack_levels(packed: Tensor, like: Sequence[Tensor]) -> List[Tensor]:
    """Split (B, C, K_total) back into views shaped like the maps in `like`."""
    sizes = [f.shape[2] * f.shape[3] for f in like]
    return [part.reshape(f.shape) for part, f in zip(packed.split(sizes, dim=2), like)]


@torch.library.custom_op("msds::gram_ssim_forward", mutates_args=())
def gram_ssim_forward_op(xs: List[Tensor], ys: List[Tensor], eps: float, precision: str) -> Tensor:
    x, starts, lens = pack_levels(xs)
    y, _, _ = pack_levels(ys)
    return gram_ssim_forward(x, y, starts, lens, eps, precision)


@gram_ssim_forward_op.register_fake
def _(xs: List[Tensor], ys: List[Tensor], eps: float, precision: str) -> Tensor:
    return xs[0].new_empty((xs[0].shape[0], len(xs)), dtype=accumulator_dtype(xs[0].dtype))


@torch.library.custom_op("msds::gram_ssim_backward", mutates_args=())
def gram_ssim_backward_op(
    grad: Tensor, xs: List[Tensor], ys: List[Tensor], eps: float, precision: str, need_x: bool, need_y: bool
) -> List[Tensor]:
    """Packed (B, C, K_total) gradients in the features' dtype: x's if need_x, then y's if need_y.

    Returned packed, not per level: a custom op's outputs may not alias one
    another, and the per-level views are taken outside it for free.
    """
    x, starts, lens = pack_levels(xs)
    y, _, _ = pack_levels(ys)
    grads = gram_ssim_backward(grad, x, y, starts, lens, eps, need_x, need_y, precision)
    return [g.to(xs[0].dtype) for g in grads if g is not None]


@gram_ssim_backward_op.register_fake
def _(grad, xs, ys, eps, precision, need_x, need_y) -> List[Tensor]:
    batch, channels = xs[0].shape[:2]
    total = sum(f.shape[2] * f.shape[3] for f in xs)
    return [xs[0].new_empty((batch, channels, total)) for need in (need_x, need_y) if need]


def _setup_context(ctx, inputs, output) -> None:
    xs, ys, eps, precision = inputs
    ctx.save_for_backward(*xs, *ys)
    ctx.levels = len(xs)
    ctx.eps = eps
    ctx.precision = precision


def _backward(ctx, grad: Tensor):
    saved = ctx.saved_tensors
    xs, ys = list(saved[: ctx.levels]), list(saved[ctx.levels :])
    need_x, need_y = any(ctx.needs_input_grad[0]), any(ctx.needs_input_grad[1])
    grads = iter(gram_ssim_backward_op(grad.contiguous(), xs, ys, ctx.eps, ctx.precision, need_x, need_y))
    none: List[Optional[Tensor]] = [None] * ctx.levels  # a list input wants a list back
    grad_xs = unpack_levels(next(grads), xs) if need_x else none
    grad_ys = unpack_levels(next(grads), ys) if need_y else none
    return grad_xs, grad_ys, None, None


gram_ssim_forward_op.register_autograd(_backward, setup_context=_setup_context)


def multiscale_scores(fxs: List[Tensor], fys: List[Tensor], eps: float, precision: str = "tf32x3") -> Tensor:
    """(B, L) head scores by the fused kernels; see msds.head.multiscale_gram_ssim."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return gram_ssim_forward_op(list(fxs), list(fys), float(eps), precision)
