"""What the benchmark suites share: shapes, synchronisation, memory, environment."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

# Feature maps of the trunk (C = 512) for 3 levels of 256 x 256 and 1024 x 1024 images.
HEAD_CASES: Dict[str, Tuple[int, List[Tuple[int, int]]]] = {
    "256px-B16": (16, [(16, 16), (8, 8), (4, 4)]),
    "256px-B64": (64, [(16, 16), (8, 8), (4, 4)]),
    "256px-B256": (256, [(16, 16), (8, 8), (4, 4)]),
    "1024px-B16": (16, [(64, 64), (32, 32), (16, 16)]),
}
CHANNELS = 512
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def trunk_gflops(height: int, width: int) -> float:
    """Multiply-add work (2 FLOP each) of the trunk on one image, in GFLOP."""
    from msds.trunk.vgg16 import LAYOUT

    flops, channels = 0.0, 3
    for item in LAYOUT:
        if item == "M":
            height, width = height // 2, width // 2
        else:
            flops += 2 * 9 * channels * item * height * width
            channels = item
    return flops / 1e9


def pyramid_gflops(size: int, levels: int) -> float:
    """Trunk work on one image over every pyramid level (2x2 average pools)."""
    return sum(trunk_gflops(size >> level, size >> level) for level in range(levels))


def bf16_matmul_tflops(device: torch.device) -> Optional[float]:
    """The card's measured dense bf16 matrix rate (8192^3 matmuls), TFLOP/s."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    synchronize(device)
    return 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12


def timing(config) -> bool:
    """Whether pytest-benchmark times (--benchmark-enable) rather than runs each row once."""
    return config.getoption("benchmark_enable") or not config.getoption("benchmark_disable")


def smoke(device: torch.device) -> bool:
    """On the CPU the suites only check that their code runs: tiny shapes."""
    return device.type != "cuda"


def head_shapes(case: str, device: torch.device) -> Tuple[int, int, List[Tuple[int, int]]]:
    """(batch, channels, per-level sizes) of a case, shrunk for a CPU smoke run."""
    batch, sizes = HEAD_CASES[case]
    if smoke(device):
        return 1, 16, [(min(h, 3), min(w, 3)) for h, w in sizes]
    return batch, CHANNELS, sizes


def relu_like(shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Sparse non-negative maps with the statistics of post-ReLU features."""
    values = torch.randn(shape, generator=generator) * torch.rand(shape[1], 1, 1, generator=generator) * 2 + 0.3
    return values.relu_().to(device=device, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes allocated at peak by a call of fn beyond what was allocated before it.

    fn runs once untimed first: the first call also compiles kernels and
    lets cuDNN's benchmark mode try algorithms with large workspaces, a
    one-off spike that says nothing of the memory a training loop holds.
    """
    if device.type != "cuda":
        return None
    fn()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_rss_growth(fn: Callable[[], object]) -> Optional[int]:
    """Bytes the process's resident set grew to at peak during a call of fn (Linux).

    fn runs once first, so one-off allocations (weights, caches) are not
    counted; the kernel's high-water mark is then reset (clear_refs 5).
    None where /proc does not offer that.
    """
    status = Path("/proc/self/status")

    def field(name: str) -> int:
        line = next(line for line in status.read_text().splitlines() if line.startswith(name + ":"))
        return int(line.split()[1]) * 1024

    try:
        fn()
        Path("/proc/self/clear_refs").write_text("5")
        before = field("VmRSS")
        fn()
        return field("VmHWM") - before
    except (OSError, StopIteration):
        return None


def environment(device: torch.device) -> Dict[str, object]:
    """What a benchmark result depends on, for its extra_info."""
    info: Dict[str, object] = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return info


def unfold_head(fx: torch.Tensor, fy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The obvious DeepSSIM head, as the official code writes it: (B,) scores."""
    def gram(f: torch.Tensor) -> torch.Tensor:
        flat = f.flatten(2)
        return torch.bmm(flat, flat.transpose(1, 2))

    tx = F.unfold(gram(fx).unsqueeze(1), kernel_size=4, stride=4)  # (B, 16, tiles)
    ty = F.unfold(gram(fy).unsqueeze(1), kernel_size=4, stride=4)
    mx, my = tx.mean(1, keepdim=True), ty.mean(1, keepdim=True)
    vx = ((tx - mx) ** 2).mean(1)
    vy = ((ty - my) ** 2).mean(1)
    cov = ((tx - mx) * (ty - my)).mean(1)
    return ((2 * cov + eps) / (vx + vy + eps)).mean(1)
