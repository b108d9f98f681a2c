"""MSDS and DeepSSIM as torchmetrics metrics, for validation loops and metric collections.

`update(preds, target)` scores a batch and adds it to two states, the sum of
scores (float64) and the number of images; `compute()` returns their ratio,
the mean score over everything seen since the last `reset()`. Both states
are sums, so torchmetrics' distributed sync (all-gather, then sum) gives
exactly the single-process mean whatever the batch split. The scoring
module (trunk and options) is a submodule, never a state: it is not
gathered, synced or reset.

Metrics built with the same `weights` share one frozen VGG16 trunk (a
MetricCollection of MSDSMetric and DeepSSIMMetric holds one), and the
trunk's weights are left out of the metric's state_dict, so checkpoints of
a model that holds the metric stay small; loading an older checkpoint that
still holds them works (they are ignored: the trunk is frozen).

Needs the optional torchmetrics package: pip install "torch-msds[torchmetrics]".
"""

from __future__ import annotations

import os
import re
import weakref
from pathlib import Path
from typing import Any, Dict, Hashable, Optional, Union

import torch

try:
    from torchmetrics import Metric
except ImportError as err:  # the core package does not need torchmetrics
    raise ImportError(
        'msds.torchmetrics needs the torchmetrics package: pip install "torch-msds[torchmetrics]" '
        f"(or pip install torchmetrics); import failed with: {err}"
    ) from err

from msds.trunk.vgg16 import VGG16Trunk
from msds.metric.modules import DataRange, DeepSSIM, MSDS, ReferenceFeatures
from msds.trunk.weights import ENV_VAR

_TRUNK_PREFIX = "scorer.trunk."
_trunks: "weakref.WeakValueDictionary[Hashable, VGG16Trunk]" = weakref.WeakValueDictionary()


def _weights_key(weights: Any) -> Hashable:
    """What identifies a trunk's weights: the same key, the same trunk."""
    if weights is None:
        return ("random",)
    if isinstance(weights, VGG16Trunk):
        return ("trunk", id(weights))
    if isinstance(weights, str) and weights == "imagenet":
        return ("imagenet", os.environ.get(ENV_VAR))
    path = Path(weights).resolve()
    return ("file", str(path), path.stat().st_mtime_ns if path.is_file() else None)


def shared_trunk(weights: Any) -> VGG16Trunk:
    """The VGG16 trunk for `weights`, built once and shared while any metric holds it."""
    if isinstance(weights, VGG16Trunk):
        return weights
    key = _weights_key(weights)
    trunk = _trunks.get(key)
    if trunk is None:
        trunk = _trunks[key] = VGG16Trunk(weights)
    return trunk


# The scorer's argument names and the wrappers' (whole words only).
_RENAMES: Dict[str, str] = {"x": "preds", "y": "target", "mask_x": "mask_preds", "mask_y": "mask_target"}
_NAME = re.compile(r"\b(" + "|".join(sorted(_RENAMES, key=len, reverse=True)) + r")\b")


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
        self._register_state_dict_hook(_drop_trunk_keys)
        self._register_load_state_dict_pre_hook(_ignore_trunk_keys, with_module=False)
        self.register_load_state_dict_post_hook(_trunk_keys_not_missing)

    def update(self, preds: torch.Tensor, target: Union[torch.Tensor, ReferenceFeatures]) -> None:
        """Score a batch: preds (B, 3, H, W) against target (B, 3, H', W'), RGB in data_range."""
        self._add(self._score(preds, target))

    def _score(self, *args: Any) -> torch.Tensor:
        """The scorer's per-image scores, its errors naming this metric's arguments."""
        try:
            return self.scorer(*args)
        except (TypeError, ValueError) as error:
            message = _NAME.sub(lambda match: _RENAMES[match.group(1)], str(error))
            raise type(error)(message) from None

    def _add(self, scores: torch.Tensor) -> None:
        self.score_sum += scores.sum().to(torch.float64)
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        """The mean score over every image seen (float64); NaN before any update."""
        return self.score_sum / self.count


def _drop_trunk_keys(module: torch.nn.Module, state: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + _TRUNK_PREFIX)]:
        del state[key]


def _ignore_trunk_keys(state: Dict[str, Any], prefix: str, *args: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + _TRUNK_PREFIX)]:
        del state[key]  # an older checkpoint's copy of the frozen trunk


def _trunk_keys_not_missing(module: torch.nn.Module, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if _TRUNK_PREFIX not in k]


class MSDSMetric(_MeanScore):
    """Mean MSDS score as a torchmetrics Metric.

    Args:
        levels, weights, fusion, eps, backend, precision, fast, trunk_dtype,
            check_range, data_range: passed to msds.MSDS (the metric form:
            per-image scores, frozen fusion weights). Metrics with the same
            weights share one trunk.
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
        data_range: DataRange = 1.0,
        **metric_kwargs: Any,
    ) -> None:
        scorer = MSDS(levels, shared_trunk(weights), fusion=fusion, eps=eps, backend=backend, precision=precision,
                      fast=fast, trunk_dtype=trunk_dtype, check_range=check_range, data_range=data_range)
        super().__init__(scorer, **metric_kwargs)


class DeepSSIMMetric(_MeanScore):
    """Mean DeepSSIM (or DeepSSIM-Lite) score as a torchmetrics Metric.

    Args:
        weights, lite, eps, backend, precision, fast, trunk_dtype, check_range,
            data_range: passed to msds.DeepSSIM. Metrics with the same
            weights share one trunk.
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
        data_range: DataRange = 1.0,
        **metric_kwargs: Any,
    ) -> None:
        scorer = DeepSSIM(shared_trunk(weights), lite=lite, eps=eps, backend=backend, precision=precision, fast=fast,
                          trunk_dtype=trunk_dtype, check_range=check_range, data_range=data_range)
        super().__init__(scorer, **metric_kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask_preds: Optional[torch.Tensor] = None,
               mask_target: Optional[torch.Tensor] = None) -> None:
        """Score a batch, with optional binary saliency masks (B, 1, H, W) of each image."""
        self._add(self._score(preds, target, mask_preds, mask_target))
