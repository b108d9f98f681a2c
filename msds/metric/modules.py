"""The MSDS and DeepSSIM modules: images in, scores (or losses) out.

Data flows one way: images -> pyramid -> frozen VGG16 trunk (once per level,
both images in one batch where their gradient needs match) -> per-level
feature maps -> head (all levels in one call) -> (B, L) scores -> fused score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ContextManager, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from msds.metric import checks
from msds.trunk import fastpath, threads
from msds.trunk.vgg16 import VGG16Trunk
from msds.metric.fusion_file import load_fusion
from msds.metric.head import lite_score, multiscale_gram_ssim
from msds.metric.pyramid import image_pyramid
from msds.trunk.weights import WeightsArg

# The images' value range: a number high for [0, high] (1.0, 255), or a pair (low, high) such as (-1, 1).
DataRange = Union[float, Tuple[float, float]]
# How far, in widths of data_range, a loss's first call lets the prediction and
# the target stray outside it: an untrained model's output strays (a small
# denoiser at initialisation gave [-0.67, 0.12]); a target straight from the
# data only by a resampling filter's overshoot.
FIRST_CALL_SLACK = (1.0, 0.1)


@dataclass(frozen=True)
class ReferenceFeatures:
    """A reference image's per-level trunk features, computed once and reused.

    Made by `MSDS.precompute(y)` or `DeepSSIM.precompute(y, mask_y)`; pass it
    in place of `y` to score many images against the same reference without
    rerunning the trunk on it.
    """

    features: Tuple[torch.Tensor, ...]  # per level, (B_ref, 512, h_l, w_l)
    image_shape: Tuple[int, ...]  # (B_ref, 3, H, W)
    dtype: torch.dtype
    device: torch.device


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


class _DeepFeatureMetric(nn.Module):
    """What MSDS and DeepSSIM share: the trunk, the options, the pair pass."""

    def __init__(
        self,
        weights: Union[WeightsArg, VGG16Trunk],
        as_loss: bool,
        reduction: Optional[str],
        check_range: Optional[bool],
        eps: float,
        backend: str,
        precision: str,
        fast: Optional[bool],
        trunk_dtype: Optional[torch.dtype],
        data_range: DataRange,
    ) -> None:
        super().__init__()
        self.as_loss = bool(as_loss)
        self.reduction = checks.check_choice(
            "reduction", "mean" if reduction is None and as_loss else reduction or "none", checks.REDUCTIONS
        )
        self.data_range = checks.check_data_range(data_range)
        # The range check synchronises with the device, so by default a loss
        # checks its inputs on its first call only; the metric checks every call.
        self.check_range = (not self.as_loss) if check_range is None else bool(check_range)
        self.check_first_call = self.as_loss and check_range is None
        self._inputs_checked = False
        self.eps = checks.check_eps(eps)
        self.backend = checks.check_choice("backend", backend, checks.BACKENDS)
        self.precision = checks.check_choice("precision", precision, checks.PRECISIONS)
        if fast is not None and not isinstance(fast, bool):
            raise TypeError(f"fast: expected True, False or None, got {checks.describe(fast)}")
        self.fast = fast
        self.trunk_dtype = fastpath.check_trunk_dtype(trunk_dtype)
        # A VGG16Trunk given as `weights` is shared, not copied (one trunk for several metrics).
        self.trunk = weights if isinstance(weights, VGG16Trunk) else VGG16Trunk(weights)

    @property
    def pretrained(self) -> bool:
        """False when the trunk is the seeded random initialisation."""
        return self.trunk.pretrained

    @property
    def higher_is_better(self) -> bool:
        """True for scores (1 = identical), False for losses (1 - score): torchmetrics' name."""
        return not self.as_loss

    @property
    def lower_better(self) -> bool:
        """The opposite of higher_is_better: pyiqa's name for the same fact."""
        return self.as_loss

    def _check_values(self, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None) -> None:
        """The range and finiteness check of the prediction x and the target y
        (either may be absent): every call, or a loss's first call by default.

        A loss's first
        call lets values stray outside data_range (FIRST_CALL_SLACK) and
        refuses NaN, inf and another convention (0-255 images against
        [0, 1]); later calls stay free of host synchronisation. Under
        torch.compile the first-call check is skipped (a data-dependent
        branch cannot be traced).
        """
        first_call = self.check_first_call and not self._inputs_checked and not torch.compiler.is_compiling()
        if not (self.check_range or first_call):
            return
        for name, image, slack in (("x", x, FIRST_CALL_SLACK[0]), ("y", y, FIRST_CALL_SLACK[1])):
            if image is not None:
                checks.check_pixel_range(name, image, self.data_range, slack=0.0 if self.check_range else slack)
        self._inputs_checked = True

    def _trunk_dtype(self) -> torch.dtype:
        return self.trunk.features[0].weight.dtype

    def _is_fast(self, images: torch.Tensor) -> bool:
        return fastpath.is_fast(self.fast, images.device)

    def _on_free_cores(self, x: object) -> ContextManager[threads.Scope]:
        """The CPU fast path's forward and backward on the cores other processes leave free (msds.trunk.threads)."""
        cpu = isinstance(x, torch.Tensor) and x.device.type == "cpu"
        return threads.on_free_cores(cpu and self._is_fast(x))

    def _backend(self, fast: bool) -> str:
        return self.backend if fast else "reference"

    def _working_dtype(self, *dtypes: torch.dtype) -> torch.dtype:
        """The dtype both images are scored in: the trunk's parameter dtype
        (float32 unless the module was cast), or float64 when either image is
        float64 (then the trunk runs float64 copies of its weights).

        So a bf16 or fp16 prediction against a float32 target (a model's
        output under autocast) is cast to float32 first: the result is the
        one both images cast to float32 would give, under the same autocast
        if one is active (which then runs the trunk in 16 bits). The
        prediction's gradient comes back in its own dtype.
        """
        return torch.float64 if torch.float64 in dtypes else self._trunk_dtype()

    def _pyramid(self, images: torch.Tensor, dtype: torch.dtype) -> List[torch.Tensor]:
        # Cast first, so the pooled levels are rounded in the working dtype, not the images'.
        images = images.to(dtype)
        low, high = self.data_range
        if (low, high) != (0.0, 1.0):
            images = (images - low) / (high - low)  # on the device: no host synchronisation
        return image_pyramid(images, self.levels)

    def _run_trunk(self, images: torch.Tensor, fast: bool, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """relu5_1 features of images, cast to the working dtype, in the fast or the plain configuration."""
        dtype = self._working_dtype(images.dtype)
        images = fastpath.trunk_input(images.to(dtype), fast)
        mask = None if mask is None else mask.to(dtype)
        step = fastpath.images_per_pass(images, fast)
        if step < images.shape[0]:
            return torch.cat([
                self._run_trunk(images[i : i + step], fast, None if mask is None else mask[i : i + step])
                for i in range(0, images.shape[0], step)
            ])
        with fastpath.trunk_context(fast, self.trunk_dtype, images.device):
            if dtype == self._trunk_dtype():
                return self.trunk(images, mask, fast)
            weights = {name: p.to(dtype) for name, p in self.trunk.named_parameters()}
            return torch.func.functional_call(self.trunk, weights, (images, mask, fast))

    def _precompute(self, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> ReferenceFeatures:
        checks.check_image("y", y, self.levels)
        self._check_values(y=y)
        fast = self._is_fast(y)
        with self._on_free_cores(y):
            # Contiguous (NCHW) so that a broadcast batch stays a view for the kernels.
            features = tuple(self._run_trunk(level, fast, mask if index == 0 else None).contiguous()
                             for index, level in enumerate(self._pyramid(y, self._working_dtype(y.dtype))))
        return ReferenceFeatures(features, tuple(y.shape), y.dtype, y.device)

    def _reference_pair(
        self, x: torch.Tensor, ref: ReferenceFeatures, mask_x: Optional[torch.Tensor] = None
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Trunk features of x at every level, and the precomputed reference's, broadcast to x's batch."""
        checks.check_image("x", x, self.levels)
        ref_batch = ref.image_shape[0]
        if len(ref.features) != self.levels:
            raise ValueError(f"y: expected reference features for {self.levels} levels, got {len(ref.features)}")
        if ref_batch not in (1, x.shape[0]):
            raise ValueError(
                f"x: expected a batch of {ref_batch} images like the precomputed reference "
                f"{tuple(ref.image_shape)} (or a reference batch of 1, which broadcasts), got {tuple(x.shape)}"
            )
        dtype = ref.features[0].dtype
        if x.device != ref.device:
            raise ValueError(f"x: expected a tensor on {ref.device} like the precomputed reference, got {x.device}")
        if self._working_dtype(x.dtype, dtype) != dtype:
            raise TypeError(
                f"x: expected images that score in {dtype} like the precomputed reference (made from {ref.dtype} "
                f"images), got {x.dtype}; precompute the reference from {x.dtype} images"
            )
        self._check_values(x)
        fast = self._is_fast(x)
        fxs = [self._run_trunk(level, fast, mask_x if index == 0 else None)
               for index, level in enumerate(self._pyramid(x, dtype))]
        fys = [f.expand(x.shape[0], *f.shape[1:]) for f in ref.features]
        return fxs, fys

    def _pair_features(
        self,
        xs: Sequence[torch.Tensor],
        ys: Sequence[torch.Tensor],
        mask_x: Optional[torch.Tensor] = None,
        mask_y: Optional[torch.Tensor] = None,
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Trunk features of both images at every level.

        On the fast path, where both images need a gradient or neither does
        and the level's images share a size, they share one trunk pass.
        Otherwise each has its own pass (images of different sizes always
        do), and one that needs no gradient (the target, in a loss) runs
        without autograd.
        """
        fast = self._is_fast(xs[0])
        same_grad = not torch.is_grad_enabled() or xs[0].requires_grad == ys[0].requires_grad
        fxs, fys = [], []
        for level, (x, y) in enumerate(zip(xs, ys)):
            masks = (mask_x, mask_y) if level == 0 else (None, None)
            if fast and same_grad and x.shape[-2:] == y.shape[-2:]:
                mask = None
                if masks != (None, None):
                    ones = torch.ones_like(x[:, :1])
                    mask = torch.cat([m if m is not None else ones for m in masks])
                fx, fy = self._run_trunk(torch.cat([x, y]), fast, mask).split(x.shape[0])
            else:
                outputs = []
                for image, mask in zip((x, y), masks):
                    with torch.set_grad_enabled(torch.is_grad_enabled() and image.requires_grad):
                        outputs.append(self._run_trunk(image, fast, mask))
                fx, fy = outputs
            fxs.append(fx)
            fys.append(fy)
        return fxs, fys

    def _finish(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-image scores (B,) -> the loss or the score, reduced."""
        return _reduce(1 - scores if self.as_loss else scores, self.reduction)


class MSDS(_DeepFeatureMetric):
    """MSDS: DeepSSIM at every level of an image pyramid, fused by learnable weights.

    Args:
        levels: pyramid levels L (level 0 is the input, each next one a 2x2
            average pool of the previous). Images need sides of at least
            16 * 2**(L-1) pixels.
        weights: "imagenet", a path to a VGG16 state dict, None for a
            seeded random trunk (see msds.trunk.weights), or a VGG16Trunk to share
            (for example another metric's `.trunk`: one trunk in memory).
        as_loss: return 1 - score, mean-reduced by default, for training
            (then higher_is_better is False).
        reduction: "none" (per-image, the metric's default), "mean" (the
            loss's default) or "sum".
        check_range: refuse pixel values outside `data_range` (and NaN, inf).
            None (the default): the metric checks every call, the loss its
            first call only (the check synchronises with the device); True:
            every call; False: never.
        fit_fusion: let the fusion logits receive gradients (never with
            as_loss, where every weight is frozen).
        fusion: a fusion file written by `msds fit` (msds.evaluation.fusion_fit) whose
            logits replace the uniform start.
        eps: the constant c of the tile score.
        backend: head implementation, "auto", "reference" or "triton".
        precision: the kernels' dot precision for float32 features, "tf32x3"
            (default, fp32-accurate), "ieee" or "tf32" (faster; see README).
        fast: the fast path (True; msds.trunk.fastpath says what it does), the
            plain configuration (False: fp32 NCHW trunk of direct
            convolutions, one pass per image, reference head), or None (the
            default): fast for CUDA and CPU tensors, plain otherwise.
        trunk_dtype: None, or torch.bfloat16 / torch.float16 to run the trunk
            under autocast on the fast path (head statistics stay fp32).
        data_range: the images' value range, a number high for [0, high]
            (1.0, the default; 255 for 8-bit values) or a pair (low, high)
            such as (-1, 1); mapped to [0, 1] on the device, without a host
            synchronisation.

    x and y may have different floating dtypes (a bf16 model output against
    a float32 target): both are cast to the working dtype, the module's
    parameter dtype (float32), or float64 if either image is float64.

    The fused score is sum_l softmax(fusion_logits)_l * S_l; the logits start
    at zero (uniform weights). 1 means identical; higher is more similar.
    """

    def __init__(
        self,
        levels: int = 3,
        weights: Union[WeightsArg, VGG16Trunk] = "imagenet",
        *,
        as_loss: bool = False,
        reduction: Optional[str] = None,
        check_range: Optional[bool] = None,
        fit_fusion: bool = False,
        fusion: Optional[Union[str, "os.PathLike[str]"]] = None,
        eps: float = 1e-6,
        backend: str = "auto",
        precision: str = "tf32x3",
        fast: Optional[bool] = None,
        trunk_dtype: Optional[torch.dtype] = None,
        data_range: DataRange = 1.0,
    ) -> None:
        super().__init__(weights, as_loss, reduction, check_range, eps, backend, precision, fast, trunk_dtype,
                         data_range)
        self.levels = checks.check_levels(levels)
        if fit_fusion and as_loss:
            raise ValueError("fit_fusion: expected False with as_loss=True (a loss keeps its weights frozen), got True")
        logits = torch.zeros(self.levels) if fusion is None else load_fusion(fusion, self.levels)
        self.fusion_logits = nn.Parameter(logits, requires_grad=bool(fit_fusion))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, as_loss={self.as_loss}, reduction={self.reduction!r}, backend={self.backend!r}"

    def fusion_weights(self) -> torch.Tensor:
        """The per-level weights softmax(fusion_logits), (L,)."""
        return self.fusion_logits.softmax(0)

    @torch.no_grad()
    def precompute(self, y: torch.Tensor) -> ReferenceFeatures:
        """Trunk features of reference images (B_ref, 3, H, W), for reuse as `y`.

        A batch of one reference is broadcast against any batch of `x`, and
        `x` may have any size of its own.
        """
        return self._precompute(y)

    def level_scores(self, x: torch.Tensor, y: Union[torch.Tensor, ReferenceFeatures]) -> torch.Tensor:
        """Per-level DeepSSIM scores (B, L) of images x against references y.

        Args:
            x: images (B, 3, H, W) in [0, 1].
            y: references (B, 3, H', W') of the same batch size, dtype and
                device, or the ReferenceFeatures of `precompute`. H' and W'
                need not equal H and W: each image gets its own pyramid and
                trunk pass, and the Gram matrices compared are 512 x 512
                whatever the sizes. Each image needs sides of at least
                16 * 2**(L-1) pixels.
        """
        with self._on_free_cores(x) as cores:
            x, y = cores.images(x, y)
            if isinstance(y, ReferenceFeatures):
                fxs, fys = self._reference_pair(x, y)
            else:
                checks.check_images(x, y, self.levels)
                self._check_values(x, y)
                dtype = self._working_dtype(x.dtype, y.dtype)
                fxs, fys = self._pair_features(self._pyramid(x, dtype), self._pyramid(y, dtype))
            backend = self._backend(self._is_fast(x))
            return cores.scores(multiscale_gram_ssim(fxs, fys, eps=self.eps, backend=backend,
                                                     precision=self.precision))

    def fuse(self, level_scores: torch.Tensor) -> torch.Tensor:
        """(B, L) level scores -> (B,) fused scores."""
        weights = self.fusion_weights().to(level_scores.dtype)
        return (level_scores * weights).sum(1)  # not a matmul, which autocast would run in 16 bits

    def forward(self, x: torch.Tensor, y: Union[torch.Tensor, ReferenceFeatures]) -> torch.Tensor:
        """Fused MSDS score of x against y, (B,) or reduced; 1 - score as a loss."""
        return self._finish(self.fuse(self.level_scores(x, y)))


class DeepSSIM(_DeepFeatureMetric):
    """DeepSSIM: Gram-matrix structural similarity of VGG16 relu5_1 features.

    Args:
        weights, as_loss, reduction, check_range, eps, backend, precision, fast,
        trunk_dtype, data_range: as for MSDS (x and y may differ in dtype too).
        lite: the DeepSSIM-Lite variant meant for optimisation: each Gram
            divided by its own C*h*w and one global tile over the whole C x C matrix
            (always computed by the reference head; it is cheap). Use it with
            as_loss=True for the published 1 - S loss.

    `forward(x, y, mask_x=None, mask_y=None)` scores images x (B, 3, H, W)
    against references y (B, 3, H', W'), which may differ in size (for
    example a retargeted or cropped image against its original); each needs
    sides of at least 16 pixels. Optional binary saliency masks (B, 1, H, W)
    or (B, H, W), each the size of its own image, multiply the conv1_1
    output of the matching image (the saliency-calibrated variant): bool, or
    0/1 in any dtype (0/255 in uint8); every image needs a salient pixel.
    1 means identical; higher is more similar.
    """

    levels = 1

    def __init__(
        self,
        weights: Union[WeightsArg, VGG16Trunk] = "imagenet",
        *,
        lite: bool = False,
        as_loss: bool = False,
        reduction: Optional[str] = None,
        check_range: Optional[bool] = None,
        eps: float = 1e-6,
        backend: str = "auto",
        precision: str = "tf32x3",
        fast: Optional[bool] = None,
        trunk_dtype: Optional[torch.dtype] = None,
        data_range: DataRange = 1.0,
    ) -> None:
        super().__init__(weights, as_loss, reduction, check_range, eps, backend, precision, fast, trunk_dtype,
                         data_range)
        self.lite = bool(lite)

    def extra_repr(self) -> str:
        return f"lite={self.lite}, as_loss={self.as_loss}, reduction={self.reduction!r}, backend={self.backend!r}"

    @torch.no_grad()
    def precompute(self, y: torch.Tensor, mask_y: Optional[torch.Tensor] = None) -> ReferenceFeatures:
        """Trunk features of reference images (B_ref, 3, H, W), with their
        saliency masks if any, for reuse as `y` (see MSDS.precompute)."""
        if mask_y is not None:
            mask_y = checks.check_mask("mask_y", mask_y, y)
        return self._precompute(y, mask_y)

    def score(
        self,
        x: torch.Tensor,
        y: Union[torch.Tensor, ReferenceFeatures],
        mask_x: Optional[torch.Tensor] = None,
        mask_y: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Per-image DeepSSIM scores (B,), unreduced and never as a loss.

        `y` may be the ReferenceFeatures of `precompute` (its mask applied there).
        """
        with self._on_free_cores(x) as cores:
            x, y = cores.images(x, y)
            if isinstance(y, ReferenceFeatures):
                if mask_y is not None:
                    raise ValueError("mask_y: expected None with a precomputed reference (give the mask to "
                                     f"precompute), got {checks.describe(mask_y)}")
                if mask_x is not None:
                    mask_x = checks.check_mask("mask_x", mask_x, x)
                (fx,), (fy,) = self._reference_pair(x, y, mask_x)
            else:
                checks.check_images(x, y, 1)
                if mask_x is not None:
                    mask_x = checks.check_mask("mask_x", mask_x, x)
                if mask_y is not None:
                    mask_y = checks.check_mask("mask_y", mask_y, y)
                self._check_values(x, y)
                dtype = self._working_dtype(x.dtype, y.dtype)
                (fx,), (fy,) = self._pair_features(self._pyramid(x, dtype), self._pyramid(y, dtype), mask_x, mask_y)
            if self.lite:
                return cores.scores(lite_score(fx, fy, self.eps))
            backend = self._backend(self._is_fast(x))
            return cores.scores(multiscale_gram_ssim([fx], [fy], eps=self.eps, backend=backend,
                                                     precision=self.precision)[:, 0])

    def forward(
        self,
        x: torch.Tensor,
        y: Union[torch.Tensor, ReferenceFeatures],
        mask_x: Optional[torch.Tensor] = None,
        mask_y: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """DeepSSIM of x against y (images or precomputed), (B,) or reduced; 1 - score as a loss."""
        return self._finish(self.score(x, y, mask_x, mask_y))
