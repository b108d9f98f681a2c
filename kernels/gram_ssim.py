"""Fused DeepSSIM head: Gram tiles and 4x4-tile statistics for every level at once.

Work split. One program owns one (image, level) pair and one block pair
(bi, bj), bi <= bj, of the C x C Gram matrix cut into BLOCK_C x BLOCK_C
blocks. A tile's statistics do not change under transposition and tile (i, j)
of a Gram matrix is the transpose of tile (j, i), so only the upper triangle
of blocks is computed and off-diagonal blocks count twice. The program forms
both images' Gram blocks with tl.dot, reduces every 4x4 tile to its centred
statistics in registers and writes one partial sum of tile scores. Nothing
Gram-sized reaches memory; partials are summed once afterwards, so results
are deterministic (no atomics).

Levels. Each level's feature maps stay where the trunk wrote them (copying
them into one buffer would cost as much memory as the features): the kernel
takes up to MAX_LEVELS pointers per image and picks its level's at run time,
with lengths and strides from a small table. Each image has its own length
per level: the two Gram matrices are C x C whatever the number of positions,
so images of different sizes are compared as they are. Positions must be contiguous
(NCHW); other layouts (channels_last, slices) are copied once per level,
because loads along strided positions cost the kernel registers it spills.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from msds.kernels.backward import _gram_ssim_backward_kernel
from msds.kernels.config import (  # noqa: F401  (the launchers' public names)
    MAX_LEVELS,
    PRECISIONS,
    TILE,
    Config,
    accumulator_dtype,
    backward_parts,
    gradient_precision,
    gram_precision,
    kernel_constants,
    pick_config,
    resident_positions,
    small_level_constants,
)
from msds.kernels.forward import _finish_kernel, _gram_ssim_forward_kernel, _small_level_kernel
from msds.kernels.tiles import _block_pair, _folded_width  # noqa: F401  (tests/test_kernel_layouts.py)

# The kernels were defined for the Triton interpreter (TRITON_INTERPRET=1 when
# triton was imported); only then can they run on CPU tensors.
INTERPRETED = isinstance(_gram_ssim_forward_kernel, InterpretedFunction)


@functools.lru_cache(maxsize=16)
def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 elsewhere (the interpreter
    runs programs one by one, and 2 keeps a persistent grid's striding tested)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


@functools.lru_cache(maxsize=512)
def device_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small read-only tensor made once per value and device.

    Building it on every call would copy from the host each time, which
    synchronises the device (and cannot happen inside a CUDA graph capture).
    """
    return torch.tensor(values, dtype=dtype, device=device)


def folded_grid(blocks: int) -> Tuple[int, int]:
    """(width, rows) of the upper triangle of blocks x blocks block pairs folded
    into a rectangle, as _folded_width and _block_pair read it."""
    return blocks + 1 - blocks % 2, (blocks + 1) // 2


def same_lengths(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> bool:
    """Whether every level's two flat maps have the same number of positions."""
    return all(x.shape[2] == y.shape[2] for x, y in zip(xs, ys))


def all_aligned(maps: Sequence[torch.Tensor]) -> bool:
    """Whether every flat map starts 16-byte aligned and its length and batch
    and channel strides are multiples of 16 elements, so that every run of
    positions a kernel loads starts 16-byte aligned (the kernels then
    vectorise their loads): true of the trunk's maps whenever h * w is a
    multiple of 16."""
    return all(f.data_ptr() % 16 == 0 and f.shape[2] % 16 == 0 and f.stride(0) % 16 == 0 and f.stride(1) % 16 == 0
               for f in maps)


def flat_levels(features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """(B, C, h, w) maps as (B, C, h*w) with contiguous positions.

    NCHW maps (and batch-broadcast or channel-sliced ones) are views; maps
    whose positions are not contiguous, such as channels_last, are copied.
    """
    flats = [f.flatten(2) for f in features]
    return [f if f.stride(2) == 1 or f.shape[2] == 1 else f.contiguous() for f in flats]


def level_table(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
                out_levels: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(L, 7) int64: per level, x's length (positions) and batch and channel
    strides, then y's, then the level's row in the forward's output (its
    index unless `out_levels` says otherwise: a launch may take a subset of
    the levels). The two images' lengths differ when their sizes do."""
    layouts = tuple((tuple(f.shape), f.stride()) for f in list(xs) + list(ys))
    out_levels = tuple(range(len(xs)) if out_levels is None else out_levels)
    return _level_table(layouts, out_levels, xs[0].device)


@functools.lru_cache(maxsize=256)
def _level_table(layouts: tuple, out_levels: tuple, device: torch.device) -> torch.Tensor:
    """level_table from the maps' (shape, strides), cached: it runs on every launch."""
    for shape, strides in layouts:
        extent = sum((size - 1) * abs(stride) for size, stride in zip(shape[1:], strides[1:]))
        if extent >= 2**31:
            raise ValueError(f"feature maps of shape {shape} are too large for 32-bit offsets per image")
    xs, ys = layouts[:len(out_levels)], layouts[len(out_levels):]
    rows = tuple((x[0][2], x[1][0], x[1][1], y[0][2], y[1][0], y[1][1], out)
                 for x, y, out in zip(xs, ys, out_levels))
    return device_constant(rows, torch.int64, device)


def padded(tensors: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """Pad a per-level list to MAX_LEVELS arguments by repeating the first."""
    return list(tensors) + [tensors[0]] * (MAX_LEVELS - len(tensors))


def check_levels(levels: int) -> None:
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"the Triton head takes 1 to {MAX_LEVELS} levels, got {levels}")


def gram_ssim_forward(
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    eps: float,
    precision: str = "tf32x3",
    config: Optional[Config] = None,
) -> torch.Tensor:
    """Launch the forward kernel over every level at once.

    Args:
        xs, ys: per-level feature maps (B, C, h_l, w_l) of both images; any
            strides (maps whose positions are not contiguous are copied).
        eps: the tile score's constant c.
        precision: dot precision for float32 features (see PRECISIONS).
        config: block sizes and launch settings instead of pick_config's
            (bench/sweep.py times alternatives through this).

    Returns:
        (B, L) mean tile scores, float64 for float64 inputs, float32 otherwise.
    """
    check_levels(len(xs))
    fx, fy = flat_levels(xs), flat_levels(ys)
    batch, channels = fx[0].shape[:2]
    levels = len(fx)
    dtype = fx[0].dtype
    config = config or pick_config(channels, dtype, precision=precision)
    acc = accumulator_dtype(dtype)
    device = fx[0].device
    level_table(fx, fy)  # checks every map's offsets fit in 32 bits
    blocks = triton.cdiv(channels, config.block_c)
    pairs = blocks * (blocks + 1) // 2
    small = [level for level in range(levels) if max(fx[level].shape[2], fy[level].shape[2]) <= config.small]
    large = [level for level in range(levels) if level not in small]
    # Partial sums per (image, level): one per program of the main launch
    # (or per block pair with a persistent grid), one per program of a small
    # level's. Every launch writes its rows of one buffer, and one small
    # kernel sums them.
    width, rows = folded_grid(blocks)
    main_grid = (triton.cdiv(width, config.group), rows)
    counts = tuple(triton.cdiv(pairs, config.small_group) if level in small
                   else pairs if config.persistent else main_grid[0] * main_grid[1] for level in range(levels))
    partials = torch.empty(batch, levels, max(counts), dtype=acc, device=device)
    eps_t = device_constant((eps,), acc, device)
    if large:
        lx, ly = [fx[level] for level in large], [fy[level] for level in large]
        items = pairs * batch * len(large)
        grid = (min(items, config.persistent * multiprocessors(device)),) if config.persistent \
            else (*main_grid, batch * len(large))
        _gram_ssim_forward_kernel[grid](
            *padded(lx), *padded(ly), level_table(lx, ly, large), partials, eps_t,
            channels, len(large), pairs, items, levels, partials.shape[2],
            **kernel_constants(config, dtype, precision, channels, backward=False, aligned=all_aligned(lx + ly),
                               same_lengths=same_lengths(lx, ly)),
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    for level in small:
        x, y = fx[level], fy[level]
        _small_level_kernel[(triton.cdiv(pairs, config.small_group), batch)](
            x, y, partials, eps_t, channels, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
            pairs, levels, partials.shape[2], level,
            **small_level_constants(config, dtype, precision, channels, x.shape[2], y.shape[2],
                                    aligned=all_aligned([x, y])),
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    scores = torch.empty(batch, levels, dtype=acc, device=device)
    _finish_kernel[(batch * levels,)](partials, device_constant(counts, torch.int32, device), scores, levels,
                                      partials.shape[2], (channels // TILE) ** 2,
                                      CHUNK=min(256, triton.next_power_of_2(partials.shape[2])))
    return scores


def gram_ssim_backward(
    grad: torch.Tensor,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    eps: float,
    precision: str = "tf32x3",
    config: Optional[Config] = None,
    both: bool = False,
) -> List[torch.Tensor]:
    """Gradient of the (B, L) scores with respect to every level of `xs`
    (and of `ys` too, with `both`).

    Args:
        grad: (B, L) upstream gradient.
        xs, ys, eps, precision, config: as for gram_ssim_forward. The score
            is symmetric, so swapping xs and ys gives the gradient for ys.
        both: return ys's gradients after xs's: from the same launch with
            config.both, else from a second launch with the two swapped.

    Returns:
        Per-level gradients (B, C, h_l, w_l), contiguous, in float32
        (float64 for float64 features): xs's, then ys's with `both`.
    """
    check_levels(len(xs))
    fx, fy = flat_levels(xs), flat_levels(ys)
    batch, channels = fx[0].shape[:2]
    levels = len(fx)
    dtype = fx[0].dtype
    config = config or pick_config(channels, dtype, backward=True, precision=precision)
    if both and not config.both:
        return (gram_ssim_backward(grad, xs, ys, eps, precision, config)
                + gram_ssim_backward(grad, ys, xs, eps, precision, config))
    acc = accumulator_dtype(dtype)
    device = fx[0].device
    blocks = triton.cdiv(channels, config.block_c)
    split = backward_parts(config, channels)
    # Every row and position is written (by each part), so no zero fill is needed.
    grads_x = [torch.empty((split, *f.shape), dtype=acc, device=device) for f in xs]
    grads_y = [torch.empty((split, *f.shape), dtype=acc, device=device) for f in ys] if both else grads_x
    scaled = (grad.to(acc) / (channels // TILE) ** 2).contiguous()
    eps_t = device_constant((eps,), acc, device)
    # Levels short enough keep their gradient rows in registers (config.resident):
    # they take a launch of their own, the others one that streams its rows.
    lengths = [max(x.shape[2], y.shape[2]) if both else x.shape[2] for x, y in zip(fx, fy)]
    kept = [level for level in range(levels) if lengths[level] <= config.resident]
    streamed = [level for level in range(levels) if level not in kept]
    for subset in (streamed, kept):
        if not subset:
            continue
        sx, sy = [fx[level] for level in subset], [fy[level] for level in subset]
        resident = resident_positions(config, [lengths[level] for level in subset]) if subset is kept else 0
        _gram_ssim_backward_kernel[(blocks, batch * len(subset), split)](
            *padded(sx), *padded(sy), *padded([grads_x[level] for level in subset]),
            *padded([grads_y[level] for level in subset]),
            level_table(sx, sy), scaled if len(subset) == levels else scaled[:, subset].contiguous(), eps_t,
            channels, len(subset), blocks,
            **kernel_constants(config, dtype, precision, channels, backward=True, aligned=all_aligned(sx + sy),
                               same_lengths=same_lengths(sx, sy), resident=resident, both=both),
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    grads = grads_x + grads_y if both else grads_x
    return [g[0] if split == 1 else g.sum(0) for g in grads]  # parts summed in order: deterministic
