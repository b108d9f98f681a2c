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
BACKWARD_OPTIONS = ({"joint": True}, {"split": 2})


def option_rows():
    """(kernel, dtype, precision, option) for each option."""
    for dtype, precision in ((torch.float32, "tf32x3"), (torch.bfloat16, "ieee")):
        for kernel, options in (("forward", FORWARD_OPTIONS), ("backward", BACKWARD_OPTIONS)):
            for option in options:
                yield kernel, dtype, precision, option


def compile_forward(dtype: torch.dtype, precision: str, channels: int, aligned: bool, option: dict = {}) -> dict:
    config = replace(K.pick_config(channels, dtype, precision=precision), **option)
    elem = TORCH_TO_TRITON[dtype]
    acc = "fp64" if dtype == torch.float64 else "fp32"
    signature = {
        **_pointers("x", elem), **_pointers("y", elem), "meta_ptr": "*i64",
        "partial_ptr": f"*{acc}", "eps_ptr": f"*{acc}", "C": "i32", "L": "i32", "T": "i32", "ITEMS": "i32",
    }
    constexprs = K.kernel_constants(config, dtype, precision, channels, backward=False, aligned=aligned)
    return _compile(K._gram_ssim_forward_kernel, signature, constexprs, config)


def compile_backward(dtype: torch.dtype, precision: str, channels: int, aligned: bool, option: dict = {}) -> dict:
    config = replace(K.pick_config(channels, dtype, backward=True, precision=precision), **option)
    elem = TORCH_TO_TRITON[dtype]
    acc = "fp64" if dtype == torch.float64 else "fp32"
    signature = {
        **_pointers("x", elem), **_pointers("y", elem), **_pointers("gx", acc),
        "meta_ptr": "*i64", "grad_ptr": f"*{acc}", "eps_ptr": f"*{acc}", "C": "i32", "L": "i32", "NB": "i32",
    }
    constexprs = K.kernel_constants(config, dtype, precision, channels, backward=True, aligned=aligned)
    return _compile(K._gram_ssim_backward_kernel, signature, constexprs, config)


def main() -> None:
    only = sys.argv[1:]  # optional filter: forward / backward
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
    for kernel, dtype, precision, option in option_rows():
        if not only or kernel in only:
            row = {"dtype": str(dtype), "precision": precision, "channels": 512, "block_c": option.get("block_c", 64),
                   "aligned": True, "option": option}
            usage = (compile_forward if kernel == "forward" else compile_backward)(dtype, precision, 512, True, option)
            print(json.dumps({"kernel": kernel, **row, **usage}), flush=True)


if __name__ == "__main__":
    main()
