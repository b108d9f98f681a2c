"""MSDS and DeepSSIM as torchmetrics metrics, for validation loops and metric collections.

`update(preds, target)` scores a batch and adds it to two states, the sum of
scores (float64) and the number of images; `compute()` returns their ratio,
the mean score over everything seen since the last `reset()`. Both states
are sums, so torchmetrics' distributed sync (all-gather, then sum) gives
exactly the single-process mean whatever the batch split. The scoring
module (trunk and options) is a submodule, never a state: it is not
gathered, synced or reset.

Needs the optional torchmetrics package: pip install "torch-msds[torchmetrics]".
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

try:
    from torchmetrics import Metric
except ImportError as err:  # the core package does not need torchmetrics
    raise ImportError(
        'msds.torchmetrics needs the torchmetrics package: pip install "torch-msds[torchmetrics]" '
        f"(or pip install torchmetrics); import failed with: {err}"
    ) from err

from msds.metric import DeepSSIM, MSDS, ReferenceFeatures


class _MeanScore(Metric):
    """The mean per-image score of a scoring module over every update."""

    higher_is_better = True  # 1 means identical
    is_differentiable = True  # forward() keeps the batch value's graph to preds
    full_state_update = False  # the global state is a plain sum of batch states
    plot_lower_bound = -1.0
    plot_upper_bound = 1.0

    score_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, scorer: Union[MSDS, DeepSSIM], **metric_kwargs: Any) -> None:
        super().__init__(**metric_kwargs)
        self.scorer = scorer
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: Union[torch.Tensor, ReferenceFeatures]) -> None:
        """Score a batch: preds (B, 3, H, W) against target (B, 3, H', W'), RGB in [0, 1]."""
        self._add(self.scorer(preds, target))

    def _add(self, scores: torch.Tensor) -> None:
        self.score_sum += scores.sum().to(torch.float64)
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        """The mean score over every image seen (float64); NaN before any update."""
        return self.score_sum / self.count


class MSDSMetric(_MeanScore):
    """Mean MSDS score as a torchmetrics Metric.

    Args:
        levels, weights, fusion, eps, backend, precision, fast, trunk_dtype,
            check_range: passed to msds.MSDS (the metric form: per-image
            scores, frozen fusion weights).
        metric_kwargs: torchmetrics options (sync_on_compute, dist_sync_fn, ...).

    `compute()` returns the mean fused score over every image given to
    `update(preds, target)`; 1 means identical, higher is better. Sizes of
    preds and target may differ (see msds.MSDS).
    """

    def __init__(
        self,
        levels: int = 3,
        weights: Any = "imagenet",
        *,
        fusion: Optional[str] = None,
        eps: float = 1e-6,
        backend: str = "auto",
        precision: str = "tf32x3",
        fast: Optional[bool] = None,
        trunk_dtype: Optional[torch.dtype] = None,
        check_range: Optional[bool] = None,
        **metric_kwargs: Any,
    ) -> None:
        scorer = MSDS(levels, weights, fusion=fusion, eps=eps, backend=backend, precision=precision, fast=fast,
                      trunk_dtype=trunk_dtype, check_range=check_range)
        super().__init__(scorer, **metric_kwargs)


class DeepSSIMMetric(_MeanScore):
    """Mean DeepSSIM (or DeepSSIM-Lite) score as a torchmetrics Metric.

    Args:
        weights, lite, eps, backend, precision, fast, trunk_dtype, check_range:
            passed to msds.DeepSSIM.
        metric_kwargs: torchmetrics options.

    `update(preds, target, mask_preds=None, mask_target=None)` takes the
    saliency masks of the calibrated variant, each the size of its image.
    """

    def __init__(
        self,
        weights: Any = "imagenet",
        *,
        lite: bool = False,
        eps: float = 1e-6,
        backend: str = "auto",
        precision: str = "tf32x3",
        fast: Optional[bool] = None,
        trunk_dtype: Optional[torch.dtype] = None,
        check_range: Optional[bool] = None,
        **metric_kwargs: Any,
    ) -> None:
        scorer = DeepSSIM(weights, lite=lite, eps=eps, backend=backend, precision=precision, fast=fast,
                          trunk_dtype=trunk_dtype, check_range=check_range)
        super().__init__(scorer, **metric_kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask_preds: Optional[torch.Tensor] = None,
               mask_target: Optional[torch.Tensor] = None) -> None:
        """Score a batch, with optional binary saliency masks (B, 1, H, W) of each image."""
        self._add(self.scorer(preds, target, mask_preds, mask_target))
