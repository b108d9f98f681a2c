"""How the trunk runs: the fast path (the default on CUDA) or the plain configuration.

Fast: both images share one trunk pass where their gradient needs match,
images go in channels_last, cuDNN picks its algorithms by timing them
(benchmark mode, scoped to the trunk call), the trunk may run under autocast
in bf16 or fp16 (opt-in), and the head is the fused Triton kernel where it
can run. Plain: fp32 NCHW trunk, each image in its own pass, the reference
head; the baseline every benchmark compares against.
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
    """`fast`, or when it is None, whether the images are on a CUDA device."""
    return device.type == "cuda" if fast is None else fast


@contextmanager
def trunk_context(fast: bool, trunk_dtype: Optional[torch.dtype], device: torch.device) -> Iterator[None]:
    """cuDNN benchmark mode and the trunk's autocast, for the fast path only."""
    with ExitStack() as stack:
        if fast and device.type == "cuda":
            cudnn = torch.backends.cudnn
            stack.enter_context(cudnn.flags(enabled=True, benchmark=True, deterministic=cudnn.deterministic,
                                            allow_tf32=cudnn.allow_tf32))
        if fast and trunk_dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=trunk_dtype))
        yield


def trunk_input(images: torch.Tensor, fast: bool) -> torch.Tensor:
    """Images in the memory format the trunk should see."""
    return images.contiguous(memory_format=torch.channels_last) if fast else images
