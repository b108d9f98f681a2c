"""The image pyramid MSDS scores at."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


def image_pyramid(images: torch.Tensor, levels: int) -> List[torch.Tensor]:
    """Level 0 is `images`; level l+1 is a 2x2 average pool of level l.

    This choice is ours (the MSDS paper does not fix it), following MS-SSIM.
    Odd sizes are floored, dropping the last row or column.
    """
    pyramid = [images]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], kernel_size=2))
    return pyramid
