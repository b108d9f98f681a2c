"""The losses and metrics people already use, beside msds's, on the same images.

Each contender maps two batches of images in [0, 1], (B, 3, H, W), to
per-image values, differentiably in the first; `loss_step` and `metric`
make the two workloads every row is timed on: a loss step (forward of
prediction and target, backward to the prediction) and the no-grad metric.

- LPIPS-VGG: the `lpips` package with its calibrated linear layers (shipped
  inside it) on a VGG16 trunk with random weights (`pnet_rand=True`: no
  download, the same time as the pretrained trunk). Where `lpips` is not
  installed (the GPU machines), torchmetrics' copy of the same network with
  its own bundled linear layers.
- DISTS: the `DISTS_pytorch` package with its shipped alpha/beta weights,
  else torchmetrics' DISTS; their VGG16 trunk, which both would download,
  is built with random weights instead (same time, no network).
- DeepSSIM (official): the official formulation end to end: VGG16 to
  relu5_1 on each image, then the head as the official code writes it
  (torch.bmm Grams, unfold into 4x4 tiles).
- msds DeepSSIM, DeepSSIM-Lite and MSDS at 1, 3 and 5 levels, as a user
  builds them (`weights=None`: the trunk's weights do not change the time).

The peers need a torchvision built for the installed torch; where it cannot
be imported (PyPI has none for the CPU build of torch 2.13) their rows are
skipped with the reason, and everything else still runs.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Dict, List, Tuple

import torch

import msds
from bench.common import pyramid_gflops, trunk_gflops, unfold_head

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LPIPS = "LPIPS-VGG"  # the baseline of every ratio
MSDS_LEVELS = (1, 3, 5)


@dataclass
class Contender:
    name: str
    implementation: str
    score: Score  # (B,) values, differentiable in the first argument
    gflop_per_pair: Callable[[int], float]  # trunk work on one pair of size x size images


def vgg16_gflops(size: int) -> float:
    """The 13 convolutions of VGG16 (to relu5_3) on one image, as LPIPS-VGG and DISTS run them."""
    return trunk_gflops(size, size) + 2 * 2 * 9 * 512 * 512 * (size // 16) ** 2 / 1e9


def torchvision_problem() -> str:
    """Why torchvision cannot be used here, or "" when it can."""
    try:
        importlib.import_module("torchvision")
        return ""
    except Exception as error:  # a build for another torch fails with RuntimeError, not ImportError
        return f"torchvision cannot be imported ({type(error).__name__}: {str(error).splitlines()[0][:120]})"


@contextlib.contextmanager
def random_vgg16(module):
    """Within the block, `module.models.vgg16` / `module.vgg16` build VGG16 with random
    weights, whatever weights the caller asks for: no download."""
    from torchvision.models import vgg16

    def offline(*args, **kwargs):
        return vgg16(weights=None)

    saved = {name: getattr(module, name) for name in ("models", "vgg16") if hasattr(module, name)}
    if "models" in saved:
        module.models = SimpleNamespace(vgg16=offline)
    if "vgg16" in saved:
        module.vgg16 = offline
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def lpips_vgg() -> Tuple[str, torch.nn.Module]:
    try:
        import lpips

        return "lpips package, LPIPS(net='vgg', pnet_rand=True)", lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    except ImportError:
        from torchmetrics.functional.image.lpips import _LPIPS

        return "torchmetrics _LPIPS(net='vgg', pnet_rand=True)", _LPIPS(pretrained=True, net="vgg", pnet_rand=True)


def dists() -> Tuple[str, torch.nn.Module]:
    try:
        from DISTS_pytorch import DISTS_pt

        with random_vgg16(DISTS_pt):
            return "DISTS_pytorch package, DISTS() (random VGG16 trunk)", DISTS_pt.DISTS()
    except ImportError:
        from torchmetrics.functional.image import dists as tm_dists

        with random_vgg16(tm_dists):
            return "torchmetrics DISTSNetwork (random VGG16 trunk)", tm_dists.DISTSNetwork()


def peer_contenders(device: torch.device) -> Tuple[List[Contender], Dict[str, str]]:
    """LPIPS-VGG and DISTS where they can be built, and why not where they cannot."""
    problem = torchvision_problem()
    if problem:
        return [], {LPIPS: problem, "DISTS": problem}
    found, skipped = [], {}
    try:
        implementation, lpips_net = lpips_vgg()
        lpips_net = lpips_net.to(device).eval().requires_grad_(False)
        found.append(Contender(LPIPS, implementation, lambda x, y: lpips_net(x, y, normalize=True).flatten(),
                               lambda size: 2 * vgg16_gflops(size)))
    except Exception as error:  # noqa: BLE001 - a peer that cannot be built is a skipped row
        skipped[LPIPS] = f"{type(error).__name__}: {error}"[:200]
    try:
        implementation, dists_net = dists()
        dists_net = dists_net.to(device).eval().requires_grad_(False)
        # Both take images in [0, 1] and run their trunk without autograd
        # unless told a gradient is wanted (the image itself is one of their
        # feature levels, so a loss would still get a gradient, through that
        # level alone). DISTS_pytorch gives per-image values with batch_average=False.
        if "DISTS_pytorch" in implementation:
            score = lambda x, y: dists_net(x, y, require_grad=x.requires_grad, batch_average=False)  # noqa: E731
        else:
            score = lambda x, y: dists_net(x, y, require_grad=x.requires_grad)  # noqa: E731
        found.append(Contender("DISTS", implementation, score, lambda size: 2 * vgg16_gflops(size)))
    except Exception as error:  # noqa: BLE001
        skipped["DISTS"] = f"{type(error).__name__}: {error}"[:200]
    return found, skipped


def own_contenders(device: torch.device, size: int = 256) -> List[Contender]:
    """The official DeepSSIM formulation and msds's metrics (MSDS at the
    levels that size x size images allow)."""
    official = msds.DeepSSIM(weights=None, fast=False, check_range=False).to(device)
    rows = [Contender("DeepSSIM (official)", "VGG16 to relu5_1 per image, bmm Grams, unfold 4x4 tiles",
                      lambda x, y: unfold_head(official.trunk(x), official.trunk(y)),
                      lambda size: 2 * trunk_gflops(size, size))]
    for name, model in (("msds DeepSSIM", msds.DeepSSIM(weights=None, check_range=False)),
                        ("msds DeepSSIM-Lite", msds.DeepSSIM(weights=None, lite=True, check_range=False))):
        rows.append(Contender(name, "msds, default settings", model.to(device),
                              lambda size: 2 * trunk_gflops(size, size)))
    for levels in (levels for levels in MSDS_LEVELS if size >> (levels - 1) >= 16):
        model = msds.MSDS(levels=levels, weights=None, check_range=False).to(device)
        rows.append(Contender(f"msds MSDS L{levels}", "msds, default settings", model,
                              lambda size, levels=levels: 2 * pyramid_gflops(size, levels)))
    return rows


def contenders(device: torch.device, size: int = 256) -> Tuple[List[Contender], Dict[str, str]]:
    """Every contender that can run on size x size images here (peers first), and the skipped ones with why."""
    peers, skipped = peer_contenders(device)
    return peers + own_contenders(device, size), skipped


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA for the "bf16" rows; nothing otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def loss_step(contender: Contender, prediction: torch.Tensor, target: torch.Tensor, bf16: bool = False):
    """One training step's worth of the loss: forward of both images, backward to the prediction."""
    leaf = prediction.detach().clone().requires_grad_()

    def step() -> None:
        leaf.grad = None
        with autocast(prediction.device, bf16):
            value = contender.score(leaf, target).float().mean()
        value.backward()

    return step


def metric(contender: Contender, x: torch.Tensor, y: torch.Tensor, bf16: bool = False):
    """The no-grad metric on a batch of pairs."""
    def score() -> torch.Tensor:
        with torch.no_grad(), autocast(x.device, bf16):
            return contender.score(x, y)

    return score
