"""The Triton head as PyTorch operators: custom ops with autograd.

`msds::gram_ssim_forward` and `msds::gram_ssim_backward` are registered with
torch.library (with fake implementations), so torch.compile sees each as one
opaque node and keeps the graph whole; autograd is attached with
register_autograd. Only the feature maps are saved for the backward, which
recomputes the Gram tiles.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from msds.kernels.gram_ssim import (  # noqa: F401  (INTERPRETED is read by msds.metric.head)
    INTERPRETED,
    PRECISIONS,
    accumulator_dtype,
    gram_ssim_backward,
    gram_ssim_forward,
)


@torch.library.custom_op("msds::gram_ssim_forward", mutates_args=())
def gram_ssim_forward_op(xs: List[Tensor], ys: List[Tensor], eps: float, precision: str) -> Tensor:
    return gram_ssim_forward(xs, ys, eps, precision)


@gram_ssim_forward_op.register_fake
def _(xs: List[Tensor], ys: List[Tensor], eps: float, precision: str) -> Tensor:
    return xs[0].new_empty((xs[0].shape[0], len(xs)), dtype=accumulator_dtype(xs[0].dtype))


@torch.library.custom_op("msds::gram_ssim_backward", mutates_args=())
def gram_ssim_backward_op(
    grad: Tensor, xs: List[Tensor], ys: List[Tensor], eps: float, precision: str, need_x: bool, need_y: bool
) -> List[Tensor]:
    """Per-level gradients in the features' dtype: x's if need_x, then y's if need_y."""
    if need_x:
        grads = gram_ssim_backward(grad, xs, ys, eps, precision, both=need_y)
    else:  # the score is symmetric in x and y
        grads = gram_ssim_backward(grad, ys, xs, eps, precision) if need_y else []
    return [g.to(xs[0].dtype) for g in grads]


@gram_ssim_backward_op.register_fake
def _(grad, xs, ys, eps, precision, need_x, need_y) -> List[Tensor]:
    shapes = [f.shape for f in xs] * need_x + [f.shape for f in ys] * need_y
    return [xs[0].new_empty(shape) for shape in shapes]


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
    grads = gram_ssim_backward_op(grad, xs, ys, ctx.eps, ctx.precision, need_x, need_y)
    none: List[Optional[Tensor]] = [None] * ctx.levels  # a list input wants a list back
    grad_xs = grads[: ctx.levels] if need_x else none
    grad_ys = grads[-ctx.levels :] if need_y else none
    return grad_xs, grad_ys, None, None


gram_ssim_forward_op.register_autograd(_backward, setup_context=_setup_context)


def multiscale_scores(fxs: List[Tensor], fys: List[Tensor], eps: float, precision: str = "tf32x3") -> Tensor:
    """(B, L) head scores by the fused kernels; see msds.metric.head.multiscale_gram_ssim."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    fxs, fys = list(fxs), list(fys)
    if torch.compiler.is_compiling() or _needs_grad(fxs + fys):
        return gram_ssim_forward_op(fxs, fys, float(eps), precision)
    # Without autograd or a graph to capture, the operator's dispatch is pure
    # host time (tens of microseconds per call): launch directly.
    return gram_ssim_forward(fxs, fys, float(eps), precision)


def _needs_grad(tensors: List[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
