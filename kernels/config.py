"""Kernel configurations: what a launch may ask for, the rule that picks one,
and the compile-time constants a launch passes (tests/sm90.py compiles with
the same)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

TILE = 4
MAX_LEVELS = 6

# Dot precisions for float32 features: "ieee" and "tf32x3" are fp32-accurate,
# "tf32" rounds the operands to 10-bit mantissas (faster, opt-in).
PRECISIONS = ("ieee", "tf32x3", "tf32")

SMALL_MAX = 64  # the small-level kernel loads a whole level at once
RESIDENT_MAX = 256  # gradient rows held in registers: BLOCK_C x this many positions


@dataclass(frozen=True)
class Config:
    block_c: int
    block_k: int
    num_warps: int
    num_stages: int
    tile_order: bool = False  # rows and columns in tile order (see _channel_order); block_c >= 32
    tail_k: int = 16  # positions per masked step past the last whole block_k; divides block_k
    persistent: int = 0  # forward only: programs per multiprocessor, each looping over the work; 0: one per item
    group: int = 1  # forward only: block pairs per program, side by side in a row of the folded triangle
    joint: bool = False  # x's and y's Gram blocks in one loop where every level's two lengths are equal
    split: int = 1  # backward only: each row block's sweep over column blocks split across this many programs
    small: int = 0  # forward only: levels of at most this many positions (<= 64) go to the small-level kernel
    small_group: int = 4  # forward only: block pairs per program of the small-level kernel
    both: bool = False  # backward only: both images' gradients from one launch, when both are wanted
    resident: int = 0  # backward only: levels of at most this many positions keep their gradient rows in registers
    grad16: bool = False  # backward only: 16-bit features multiply the gradient factor in 16-bit parts

    def __post_init__(self):
        if self.tile_order and self.block_c < 32:
            raise ValueError(f"tile order needs block_c >= 32, got {self.block_c}")
        if self.tail_k < 16 or self.block_k % self.tail_k:
            raise ValueError(f"tail_k must be at least 16 and divide block_k ({self.block_k}), got {self.tail_k}")
        if self.persistent < 0:
            raise ValueError(f"persistent must be >= 0 programs per multiprocessor, got {self.persistent}")
        if self.split < 1:
            raise ValueError(f"split must be >= 1 programs per row block, got {self.split}")
        if self.group < 1 or (self.group > 1 and self.persistent):
            raise ValueError(f"group must be >= 1 block pairs per program, and 1 with a persistent grid, "
                             f"got {self.group} (persistent {self.persistent})")
        if not 0 <= self.small <= SMALL_MAX:
            raise ValueError(f"small must be 0 (off) to {SMALL_MAX} positions, got {self.small}")
        if self.small_group < 1:
            raise ValueError(f"small_group must be >= 1 block pairs per program, got {self.small_group}")
        if not 0 <= self.resident <= RESIDENT_MAX:
            raise ValueError(f"resident must be 0 (off) to {RESIDENT_MAX} positions, got {self.resident}")


def pick_config(channels: int, dtype: torch.dtype, backward: bool = False, precision: str = "tf32x3") -> Config:
    """Block sizes by a fixed rule, so a shape always runs the same program.

    BLOCK_C is the largest of 64, 32, 16 that divides C, else 16 with the
    last block masked (16 is tl.dot's minimum; masking a larger block costs
    registers the Gram accumulators need); float64 blocks stop at 32, whose
    64-wide blocks spill. Positions per step in the forward: 64 for 64-wide
    float32 blocks (32 under "ieee", which spills at 64 on triton 3.9), else
    32, and 16 for float64 and 16-wide blocks. The backward, which also keeps
    the gradient block live, steps 16 positions. Every program runs 4 warps
    without software pipelining. 64-wide blocks are held in tile order (see
    _channel_order) and step through what is left of a level past its whole
    steps 16 positions at a time. Narrower blocks keep channel order and one
    tail step: their 16-bit and float64 dots use a layout in which tile
    order moves the tile sums across warps (twice the barriers on sm_90),
    and the 16-position tail makes the 32-wide fp32 "ieee" forward spill on
    triton 3.7.

    bench/sweep.py timed the alternatives on an H100 with triton 3.6 (table
    in bench/results): 4 warps and 1 stage beat 8 warps and 2 stages by up
    to 5x, and among configurations that compile without spilling on every
    supported triton this rule is the fastest, or within 12% of it, for each
    workload at C = 512. Tile order and the 16-position tail came later, from
    the compiled code rather than from timings: on sm_90 they cut the
    forward's warp shuffles from about 245 to 27 and its PTX by a quarter,
    and the shortest level's multiply work by up to 4x; bench/sweep.py
    times them against the earlier rule. tests/sm90.py checks every choice
    for sm_90.
    """
    widths = (32,) if dtype == torch.float64 else (64, 32)
    block_c = next((size for size in widths if channels % size == 0), 16)
    if backward or block_c == 16 or dtype == torch.float64:
        block_k = 16
    elif dtype == torch.float32 and block_c == 64 and precision != "ieee":
        block_k = 64
    else:
        block_k = 32
    wide = block_c == 64
    return Config(block_c=block_c, block_k=block_k, num_warps=4, num_stages=1,
                  tile_order=wide, tail_k=16 if wide else block_k)


def gram_precision(dtype: torch.dtype, precision: str) -> str:
    """Dot precision of the Gram products: `precision` for float32 features.

    16-bit products are exact in the fp32 accumulator and float64 dots are
    plain IEEE, so the choice only matters for float32.
    """
    return precision if dtype == torch.float32 else "ieee"


def gradient_precision(dtype: torch.dtype, precision: str) -> str:
    """Dot precision of dScore/dG @ F, whose operands are upcast to fp32 / fp64.

    16-bit features are exact in TF32, but dScore/dG is not, hence tf32x3.
    """
    if dtype == torch.float64:
        return "ieee"
    return precision if dtype == torch.float32 else "tf32x3"


def backward_parts(config: Config, channels: int) -> int:
    """Programs per row block of the backward: config.split, at most one per column block."""
    return min(config.split, triton.cdiv(channels, config.block_c))


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_constants(config: Config, dtype: torch.dtype, precision: str, channels: int, backward: bool,
                     aligned: bool = True, same_lengths: bool = True, resident: int = 0, both: bool = False) -> dict:
    """The compile-time arguments of a launch (tests/sm90.py compiles with the same).

    A tail as long as BLOCK_K is one step; the forward takes it without a
    loop (TAIL_K = 0) and the backward as a loop of one, the forms that
    spill least on sm_90 across the supported tritons. `same_lengths`: each
    level's two maps have the same number of positions (config.joint then
    applies). `aligned`: every length and stride of the maps is a multiple
    of 16 (see all_aligned); only blocks 64 or more wide then vectorise
    their loads (ALIGNED): in 32-wide ones, vector loads made ptxas spill on
    three of the four supported tritons (tests/sm90.py). Backward only:
    `resident`, the positions (a power of two, 0 for none) of the gradient
    rows a program holds in registers (see resident_positions); `both`, the
    launch computes both images' gradients.
    """
    constants = {
        "BLOCK_C": config.block_c,
        "BLOCK_K": config.block_k,
        "EVEN_C": channels % config.block_c == 0,
        "PRECISION": gram_precision(dtype, precision),
        "ACC": tl.float64 if dtype == torch.float64 else tl.float32,
        "TAIL_K": config.tail_k if backward or config.tail_k < config.block_k else 0,
        "TILE_ORDER": config.tile_order,
        "ALIGNED": aligned and config.block_c >= 64,
        "JOINT": config.joint and same_lengths,
    }
    if backward:
        constants["GRAD_PRECISION"] = gradient_precision(dtype, precision)
        constants["SPLIT"] = backward_parts(config, channels)
        constants["RESIDENT"] = resident
        constants["BOTH"] = both
        constants["GRAD16"] = config.grad16 and dtype in (torch.float16, torch.bfloat16)
    else:
        constants["PERSISTENT"] = config.persistent > 0
        constants["GROUP"] = config.group
    return constants


def small_level_constants(config: Config, dtype: torch.dtype, precision: str, channels: int,
                          kx: int, ky: int, aligned: bool = True) -> dict:
    """The compile-time arguments of a small-level launch: the level's lengths
    kx and ky, and one step of BLOCK_K positions that covers both."""
    constants = kernel_constants(replace(config, block_k=max(16, triton.next_power_of_2(max(kx, ky)))),
                                 dtype, precision, channels, backward=False, aligned=aligned, same_lengths=kx == ky)
    del constants["TAIL_K"], constants["PERSISTENT"]
    return {**constants, "KX": kx, "KY": ky, "GROUP": config.small_group}


def resident_positions(config: Config, lengths) -> int:
    """Positions of the gradient rows a backward program holds in registers
    for levels of these lengths: the next power of two (16 at least) of the
    longest, or 0 (rows streamed through memory) past config.resident."""
    longest = max(lengths)
    return max(16, triton.next_power_of_2(longest)) if longest <= config.resident else 0
