"""How the trunk runs: the fast path (the default) or the plain configuration.

Fast: both images share one trunk pass where their gradient needs match and
their sizes agree, images go in channels_last, and the trunk may run under
autocast in bf16 or fp16 (opt-in). On CUDA, cuDNN also picks its algorithms
by timing them (benchmark mode, scoped to the trunk call) and the head is the
fused Triton kernel where it can run; on the CPU the head is the reference,
channels_last applies to float32 and 16-bit images (oneDNN's fast
convolutions; float64 stays NCHW, which oneDNN does not take), the float32
trunk's wide convolutions run by Winograd (msds.trunk.winograd), the trunk
runs a few images per pass, and the forward and backward run on the cores
other processes leave free (msds.trunk.threads). Plain: NCHW
trunk, each image in its own pass, the reference head; the baseline every
benchmark compares against.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Optional

import torch

TRUNK_DTYPES = (None, torch.bfloat16, torch.float16)


def check_trunk_dtype(dtype: object) -> Optional[torch.dtype]:
    if dtype not in TRUNK_DTYPES:
        raise ValueError(f"trunk_dtype: expected None, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def is_fast(fast: Optional[bool], device: torch.device) -> bool:
    """`fast`, or when it is None, whether the device has a fast path (CUDA and the CPU)."""
    return device.type in ("cuda", "cpu") if fast is None else fast


@contextmanager
def trunk_context(fast: bool, trunk_dtype: Optional[torch.dtype], device: torch.device) -> Iterator[None]:
    """cuDNN benchmark mode and the trunk's autocast, for the fast path only."""
    with ExitStack() as stack:
        # cudnn.flags cannot be traced by torch.compile, whose own kernels
        # choose their convolution algorithms anyway.
        if fast and device.type == "cuda" and not torch.compiler.is_compiling():
            cudnn = torch.backends.cudnn
            stack.enter_context(cudnn.flags(enabled=True, benchmark=True, deterministic=cudnn.deterministic,
                                            allow_tf32=cudnn.allow_tf32))
        if fast and trunk_dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=trunk_dtype))
        yield


# On the CPU the fast path runs the trunk in passes of about this many pixels
# (two 256 x 256 images): on a 2-core EPYC one pass over 8 such images took
# 5-13% longer than passes of 2 or 4, and without autograd small passes also
# keep the activations' memory small.
CPU_PASS_PIXELS = 2 * 256 * 256


def images_per_pass(images: torch.Tensor, fast: bool) -> int:
    """How many images one trunk pass takes: a few at a time on the CPU fast path, else all."""
    if not fast or images.device.type != "cpu":
        return images.shape[0]
    return max(1, CPU_PASS_PIXELS // (images.shape[-2] * images.shape[-1]))


def trunk_input(images: torch.Tensor, fast: bool) -> torch.Tensor:
    """Images in the memory format the trunk should see."""
    if fast and (images.device.type != "cpu" or images.dtype != torch.float64):
        return images.contiguous(memory_format=torch.channels_last)
    return images
