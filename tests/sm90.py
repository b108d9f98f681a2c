"""Compile the head's kernels for Hopper (sm_90) without a GPU and read their resources.

Run as a script (without TRITON_INTERPRET) it prints one JSON line per kernel
configuration, then one per option at C = 512 ("option"): registers, stack
(spills), shared memory, and from the PTX its length and its global loads by
width (vector_loads: 8 bytes or more a load; scalar_loads: 2 or 4;
async_copies: cp.async, of pipelined loops). tests/test_sm90_compile.py runs
it in a subprocess, because the test session itself uses the interpreter.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from msds.kernels import gram_ssim as K

HOPPER = GPUTarget("cuda", 90, 32)
MAX_SHARED = 232448  # bytes of shared memory one block may use on H100 / H200

TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def configurations():
    """Every (dtype, precision, channels, aligned) class the launchers distinguish.

    Channel counts stand for each BLOCK_C the rule picks (16, 32, 64), with
    and without a partial last block (EVEN_C); aligned maps (every length
    and stride a multiple of 16) and others, where the kernels tell them
    apart (ALIGNED).
    """
    for dtype in TORCH_TO_TRITON:
        precisions = K.PRECISIONS if dtype == torch.float32 else ("ieee",)
        for precision, channels in itertools.product(precisions, (12, 16, 32, 512)):
            config = K.pick_config(channels, dtype, precision=precision)
            for aligned in {K.kernel_constants(config, dtype, precision, channels, False, aligned)["ALIGNED"]
                            for aligned in (True, False)}:
                yield dtype, precision, channels, aligned


def resources(kernel) -> dict:
    """Registers, stack frame and shared memory of a kernel as Triton compiled it.

    A stack frame above zero means ptxas spilled registers (the kernels keep
    no local arrays), so a spill-free kernel reports stack 0.
    """
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(kernel.asm["cubin"])
        handle.flush()
        report = subprocess.run([str(cuobjdump), "--dump-resource-usage", handle.name],
                                capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", report))
    return {
        "registers": int(usage["REG"]),
        "stack": int(usage["STACK"]) + int(usage["LOCAL"]),
        "shared": int(kernel.metadata.shared),
        **global_loads(kernel.asm["ptx"]),
    }


# ld.global[.modifiers][.vN].{b,f,u,s}BITS: N elements of BITS bits a load.
LOAD = re.compile(r"\bld\.global(?:\.[\w:]+?)*?(?:\.v(\d))?\.[bfus](\d+)\b")


def global_loads(ptx: str) -> dict:
    """PTX length and global load instructions by bytes a load: vector (8 or more), scalar (2 or 4),
    and asynchronous copies to shared memory (cp.async, what pipelined loops load with)."""
    widths = [int(elements or 1) * int(bits) // 8 for elements, bits in LOAD.findall(ptx)]
    return {
        "vector_loads": sum(width >= 8 for width in widths),
        "scalar_loads": sum(width in (2, 4) for width in widths),
        "async_copies": len(re.findall(r"\bcp\.async\.c[ag]\b", ptx)),
        "ptx_lines": ptx.count("\n"),
    }


def _pointers(prefix: str, elem: str) -> dict:
    return {f"{prefix}{level}": f"*{elem}" for level in range(K.MAX_LEVELS)}


def _compile(fn, signature: dict, constexprs: dict, config) -> dict:
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(source, target=HOPPER,
                            options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    return resources(kernel)


# Options the rule does not take yet (bench/sweep.py times them), compiled
# at C = 512 for the dtypes of the speed targets on aligned maps.
# Two products a step hold twice the operands: the joint forward steps 32
# positions (at 64, float32 tf32x3 spilled 80-208 bytes on every triton).
FORWARD_OPTIONS = ({"group": 2}, {"group": 4}, {"persistent": 2}, {"joint": True, "block_k": 32},
                   {"num_stages": 2}, {"num_stages": 3},
                   {"block_c": 128, "block_k": 32, "num_warps": 8, "tile_order": True, "tail_k": 16})
# The small-level kernel, compiled for levels of `small` positions in both
# images (4 x 4 and 8 x 8 maps, the 256 x 256 workloads' shortest two).
SMALL_LEVEL_OPTIONS = ({"small": 16, "small_group": 4}, {"small": 16, "small_group": 9},
                       {"small": 64, "small_group": 4})
# Resident rows compile for levels of `resident` positions (the launch that
# keeps its rows in registers; the others stream as the rule does). Both
# images' gradients at 4 warps of 64-wide blocks spill (fp32: 136 bytes; with
# rows of 32 or more positions held, 64 to 304), hence 8 warps or 32-wide
# blocks there.
BACKWARD_OPTIONS = ({"joint": True}, {"split": 2}, {"resident": 64}, {"resident": 64, "num_warps": 8},
                    {"grad16": True}, {"both": True, "num_warps": 8}, {"both": True, "block_c": 32},
                    {"both": True, "resident": 16}, {"both": True, "block_c": 32, "resident": 64})


def option_rows():
    """(kernel, dtype, precision, option, channels) for each option: at C = 512
    (64-wide blocks unless the option says otherwise), and at C = 100, where
    the rule's 16-wide blocks (or the option's) end in a partial block."""
    for dtype, precision in ((torch.float32, "tf32x3"), (torch.bfloat16, "ieee")):
        for kernel, options in (("forward", FORWARD_OPTIONS), ("small_level", SMALL_LEVEL_OPTIONS),
                                ("backward", BACKWARD_OPTIONS)):
            for option, channels in itertools.product(options, (512, 100)):
                if kernel == "backward" and option.get("grad16") and dtype == torch.float32:
                    continue  # 16-bit products are for 16-bit features
                yield kernel, dtype, precision, option, channels


def compile_forward(dtype: torch.dtype, precision: str, channels: int, aligned: bool, option: dict = {}) -> dict:
    config = replace(K.pick_config(channels, dtype, precision=precision), **option)
    elem = TORCH_TO_TRITON[dtype]
    acc = "fp64" if dtype == torch.float64 else "fp32"
    signature = {
        **_pointers("x", elem), **_pointers("y", elem), "meta_ptr": "*i64",
        "partial_ptr": f"*{acc}", "eps_ptr": f"*{acc}", "C": "i32", "L": "i32", "T": "i32", "ITEMS": "i32",
        "L_OUT": "i32", "P": "i32",
    }
    constexprs = K.kernel_constants(config, dtype, precision, channels, backward=False, aligned=aligned)
    return _compile(K._gram_ssim_forward_kernel, signature, constexprs, config)


def compile_small_level(dtype: torch.dtype, precision: str, channels: int, aligned: bool, option: dict) -> dict:
    config = replace(K.pick_config(channels, dtype, precision=precision), **option)
    elem = TORCH_TO_TRITON[dtype]
    acc = "fp64" if dtype == torch.float64 else "fp32"
    signature = {
        "x_ptr": f"*{elem}", "y_ptr": f"*{elem}", "partial_ptr": f"*{acc}", "eps_ptr": f"*{acc}",
        **{name: "i32" for name in ("C", "sxb", "sxc", "syb", "syc", "PAIRS", "L_OUT", "P", "OUT_LEVEL")},
    }
    constexprs = K.small_level_constants(config, dtype, precision, channels, config.small, config.small, aligned)
    return _compile(K._small_level_kernel, signature, constexprs, config)


def compile_backward(dtype: torch.dtype, precision: str, channels: int, aligned: bool, option: dict = {}) -> dict:
    config = replace(K.pick_config(channels, dtype, backward=True, precision=precision), **option)
    elem = TORCH_TO_TRITON[dtype]
    acc = "fp64" if dtype == torch.float64 else "fp32"
    signature = {
        **_pointers("x", elem), **_pointers("y", elem), **_pointers("gx", acc), **_pointers("gy", acc),
        "meta_ptr": "*i64", "grad_ptr": f"*{acc}", "eps_ptr": f"*{acc}", "C": "i32", "L": "i32", "NB": "i32",
    }
    constexprs = K.kernel_constants(config, dtype, precision, channels, backward=True, aligned=aligned,
                                    resident=config.resident, both=config.both)
    return _compile(K._gram_ssim_backward_kernel, signature, constexprs, config)


def compile_finish(acc: str) -> dict:
    signature = {"partial_ptr": f"*{acc}", "count_ptr": "*i32", "out_ptr": f"*{acc}", "L": "i32", "P": "i32",
                 "TILES": "i32"}
    return _compile(K._finish_kernel, signature, {"CHUNK": 256}, K.Config(16, 16, 4, 1))


COMPILERS = {"forward": compile_forward, "small_level": compile_small_level, "backward": compile_backward}


def main() -> None:
    only = sys.argv[1:]  # optional filter: forward / small_level / backward / finish
    for dtype, precision, channels, aligned in configurations():
        block_c = K.pick_config(channels, dtype).block_c
        row = {"dtype": str(dtype), "precision": precision, "channels": channels, "block_c": block_c,
               "aligned": aligned}
        if not only or "forward" in only:
            usage = compile_forward(dtype, precision, channels, aligned)
            print(json.dumps({"kernel": "forward", **row, **usage}), flush=True)
        if not only or "backward" in only:
            usage = compile_backward(dtype, precision, channels, aligned)
            print(json.dumps({"kernel": "backward", **row, **usage}), flush=True)
    for kernel, dtype, precision, option, channels in option_rows():
        if not only or kernel in only:
            block_c = option.get("block_c", K.pick_config(channels, dtype).block_c)
            row = {"dtype": str(dtype), "precision": precision, "channels": channels, "block_c": block_c,
                   "aligned": True, "option": option}
            usage = COMPILERS[kernel](dtype, precision, channels, True, option)
            print(json.dumps({"kernel": kernel, **row, **usage}), flush=True)
    if not only or "finish" in only:
        for acc in ("fp32", "fp64"):
            print(json.dumps({"kernel": "finish", "dtype": acc, "block_c": 16, **compile_finish(acc)}), flush=True)

if __name__ == "__main__":
    main()
