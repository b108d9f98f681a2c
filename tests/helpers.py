"""Test inputs and the environment of child processes."""

import contextlib
import io
import math
import os
import subprocess
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


# setup.py installs triton on Linux x86_64 only.
TRITON_IS_A_DEPENDENCY = sys.platform.startswith("linux") and platform.machine() == "x86_64"


def require_triton() -> None:
    """Skip the calling test (or module) where triton is no dependency of msds.

    Where it is one, conftest.py stops the run before any test when it
    cannot be imported, so there this never skips.
    """
    if not TRITON_IS_A_DEPENDENCY:
        pytest.importorskip("triton", reason="triton is a dependency of msds on Linux x86_64 only")


def relu_features(shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Sparse, non-negative maps like a ReLU layer's output, with channel-varying scale."""
    scale = torch.rand(shape[1], 1, 1, generator=generator, dtype=torch.float64) * 3 + 0.1
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + 0.3).relu().to(dtype)


def images(shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Smooth-ish random images in [0, 1]: a blurred field plus fine noise."""
    coarse = torch.rand(shape[0], 3, shape[2] // 4 + 1, shape[3] // 4 + 1, generator=generator, dtype=torch.float64)
    field = torch.nn.functional.interpolate(coarse, size=shape[2:], mode="bilinear", align_corners=False)
    noise = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (0.8 * field + 0.2 * noise).clamp(0, 1).to(dtype)


def read_rgb(path, dtype=torch.float64) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [0, 1], read here with PIL and NumPy (not msds.images)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(dtype)


def state_of(model) -> dict:
    """The trunk weights of an msds module, for the oracle's conv chain."""
    return model.trunk.trunk_state_dict()


ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(**extra: str) -> dict:
    """The environment for a child Python: msds importable from this checkout, installed or not."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# Rounding bounds, derived once here. A float type rounds each operation to
# a relative error of at most its unit roundoff u (float32 2**-24, float16
# 2**-11, bfloat16 2**-8). A value that went through n roundings of relative
# size u (every term of the float32 sums it came from: dot products,
# convolutions; or, for a 16-bit trunk, which accumulates in float32, each
# layer's stored activations) carries their sum: independent roundings add
# like a random walk, to a relative error of standard deviation about
# u * sqrt(n) of the largest entries. A bound allows ten such deviations: the
# largest of many thousand entries lies within about five, and blocked or
# transformed convolution algorithms (oneDNN picks others on AVX-512 than on
# AVX2) round a few more times per term. Errors are measured in the max norm
# relative to the largest float64 entry, since small entries carry the
# absolute error of the large ones they were summed with.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8,
                 "tf32": 2.0**-10}  # TF32 keeps 10 mantissa bits: 2**-10 whether it truncates or rounds


def winograd_growth() -> float:
    """How many times a direct 3x3 sum's rounding F(4x4, 3x3) may carry (msds.trunk.winograd).

    Output p is carried back from the 36 transformed products by row p of
    A^T (x) A^T; product k multiplies filters weighted by row k of G (x) G and
    inputs weighted by row k of B^T (x) B^T, so its rounding is about
    |G_k| |B_k| times a direct term's, and the output's sums to
    sqrt(sum_k A_pk^2 |G_k|^2 |B_k|^2) of them, against sqrt(9) for the
    direct sum's 9 taps. The worst output (the block's far corner, where A^T
    carries 8s) gives 31.4. The transforms' coefficients themselves are
    checked in float64 (tests/test_winograd.py). Measured in float32 on
    random inputs: 0.2 to 0.5 of the direct bound, that is 5e-6 to 1.4e-5
    relative; on trunk activations (docs/head.md) 1.6e-6 to 5.7e-6, against
    2.7e-7 to 3.6e-7 for torch's direct NCHW convolution and 1.2e-6 to
    2.2e-6 for its channels_last one.
    """
    from msds.trunk.winograd import matrices

    bt, g, at = matrices()
    a2, g2, b2 = torch.kron(at, at), torch.kron(g, g), torch.kron(bt, bt)
    per_output = (a2**2 * ((g2**2).sum(1) * (b2**2).sum(1))[None, :]).sum(1)
    return math.sqrt(per_output.max().item() / 9)


def rounding_rtol(roundings: int, dtype: torch.dtype = torch.float32) -> float:
    """Relative error allowed to a result that went through `roundings` roundings in `dtype`."""
    return 10 * UNIT_ROUNDOFF[dtype] * math.sqrt(roundings)


def score_atol(roundings: int, dtype: torch.dtype = torch.float32, channels: int = 512) -> float:
    """Error allowed to a score whose features went through `roundings` roundings.

    A score is a mean over tiles of the C x C Grams; one channel's feature
    error is shared by every tile of its row and column, so the score
    averages C independent channel errors: 1/sqrt(C) of rounding_rtol.
    """
    return rounding_rtol(roundings, dtype) / math.sqrt(channels)


def assert_scores_within_rounding(got, fxs, fys, kind=torch.float32) -> None:
    """Head scores (B, L) within rounding of the oracle's exact scores of the same inputs.

    Each Gram entry sums K products and each tile 16 entries, in float32
    (kind "tf32" rounds every operand once more); the tile statistics
    amplify that by their condition, the score's typical one.
    """
    from oracle import deepssim_head

    exact = np.stack([deepssim_head(fx, fy) for fx, fy in zip(fxs, fys)], axis=1)
    error = np.abs(got.double().cpu().numpy() - exact).max()
    channels = fxs[0].shape[1]
    positions = max(f[0, 0].numel() for f in list(fxs) + list(fys))
    bound = score_atol(positions + 16, channels=channels)
    if kind == "tf32":
        bound += score_atol(1, "tf32", channels=channels)
    bound *= tile_condition(fxs, fys, typical=True)
    assert error <= bound, (error, bound)


def tile_condition(fxs, fys, typical: bool = False, eps: float = 1e-6) -> float:
    """How much the tile statistics amplify a relative error of the Gram entries.

    Centring subtracts a tile's mean, so an error relative to its entries
    becomes entries / spread times larger against the spread, the scale of
    the tile's score and gradient. The largest ratio (largest entry) over
    every tile, for a gradient's largest error; or with typical=True the
    root mean square over tiles of each tile's RMS entry / spread, for a
    score, which averages its tiles' errors. Grams in float64 by the
    oracle's matmul.
    """
    from oracle import gram_np

    ratios = []
    for fx, fy in zip(fxs, fys):
        tiles = []
        for f in (fx, fy):
            gram = gram_np(f.detach().cpu().double().numpy())
            batch, c, _ = gram.shape
            tiles.append(gram.reshape(batch, c // 4, 4, c // 4, 4).swapaxes(2, 3).reshape(batch, -1, 16))
        spread = np.sqrt((tiles[0].var(-1) + tiles[1].var(-1) + eps) / 2)
        if typical:
            ratios.append(np.sqrt((tiles[0] ** 2 + tiles[1] ** 2).mean(-1) / 2) / spread)
        else:
            ratios.append(np.maximum(np.abs(tiles[0]).max(-1), np.abs(tiles[1]).max(-1)) / spread)
    ratios = np.concatenate([r.ravel() for r in ratios])
    return float(np.sqrt((ratios**2).mean()) if typical else ratios.max())


def trunk_terms(model, backward: bool = False) -> int:
    """Terms summed by the trunk's convolutions (3x3 kernels): per output in the
    forward, per input in the backward too."""
    convs = [m for m in model.trunk.features if isinstance(m, torch.nn.Conv2d)]
    forward = sum(9 * c.in_channels for c in convs)
    return forward + (sum(9 * c.out_channels for c in convs) if backward else 0)


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """max |got - exact| / max |exact|, in float64."""
    return ((got.double() - exact.double()).abs().max() / exact.double().abs().max()).item()


class _BranchLayer(torch.nn.Module):
    """A ReLU or a 2x2 max-pool that records which way it went, or replays a record."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.is_pool = isinstance(layer, torch.nn.MaxPool2d)
        self.record: list = []
        self.replaying = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.replaying:
            taken = self.record.pop(0)
            if self.is_pool:
                return x.flatten(2).gather(2, taken.flatten(2)).view(taken.shape)
            return x * taken.to(x.dtype)
        if self.is_pool:
            out, taken = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
        else:
            out = torch.relu(x)
            taken = out > 0
        self.record.append(taken)
        return out


def record_branches(model) -> None:
    """From now on, the model's trunk records each ReLU's and max-pool's choices."""
    features = model.trunk.features
    for i, layer in enumerate(features):
        if isinstance(layer, (torch.nn.ReLU, torch.nn.MaxPool2d)):
            features[i] = _BranchLayer(layer)


def replay_branches(model) -> None:
    """From now on, the trunk takes the recorded choices, call by call, whatever its inputs.

    A float32 trunk and a float64 one can take different branches where an
    activation lies within rounding of zero or two pooled values within
    rounding of each other: the gradient then jumps (one unit's receptive
    field gets another gradient), which is no rounding error. A float64 run
    that replays the float32 run's branches gives the exact gradient of the
    very function the float32 run differentiated.
    """
    for layer in model.trunk.features:
        if isinstance(layer, _BranchLayer):
            layer.replaying = True


def run_msds(*args, env=None) -> subprocess.CompletedProcess:
    """`msds ARGS` in this process through msds.cli.main (what the entry point
    calls), with `env` added to the environment: its exit status, stdout and
    stderr as a subprocess would report them. It saves a child's start-up
    (importing torch); an uncaught exception fails the calling test, as a
    traceback on stderr would. The entry point itself is tested as a command."""
    import msds.cli

    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = msds.cli.main([str(a) for a in args])
            except SystemExit as exit_:
                status = exit_.code
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(["msds", *args], status, stdout.getvalue(), stderr.getvalue())
