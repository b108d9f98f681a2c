"""How many threads the CPU fast path runs on: torch's count, or the cores
other processes leave free if that is fewer.

Torch splits each parallel operation over torch.get_num_threads() threads
and waits for the slowest. Where another process keeps one of the cores
busy (a DataLoader worker, a second job), one of those threads is often
descheduled and every operation waits a time slice for it: on the 2-core
development machine, with one or two other busy processes, the plain path's
two threads ran 2.7 to 10 times slower than on the idle machine (10 to 30
times in an earlier run), and the fast path pinned to one thread took 0.20
to 0.43 times its time (docs/benchmarks.md, "On busy cores").

So the fast path measures, during its own calls (and for the first one,
since msds was imported), how much of its CPUs other processes used
(Linux's /proc/stat, less this process's own CPU time), and runs its forward
and its backward on the cores left free: fewer threads than torch's setting,
never more, and at least one. Its results do not depend on
the thread count, bit for bit (tests/test_fastpath_equivalence.py), so this
changes only the time. Torch's setting is restored after each forward and
backward. Where /proc/stat cannot be read (not Linux), the count is never
lowered; MSDS_FIXED_THREADS=1 in the environment when msds is imported (or
`LOAD.enabled = False`) keeps torch's count everywhere, as the plain path does.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import ContextManager, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

import torch

from msds.trunk.winograd import _dual, _in_functorch_transform

# The load is averaged over at least this much of the fast path's own wall
# time (the kernel counts CPU time in ticks of 10 ms: 0.2 s on 2 cores is 40).
WINDOW_S = 0.2
STAT = "/proc/stat"


def cpu_busy_seconds(stat: str, cpus: FrozenSet[int], ticks_per_second: float) -> float:
    """CPU seconds spent on `cpus` by anything other than idling, from the text of /proc/stat.

    Lines read `cpuN user nice system idle iowait irq softirq steal ...`, in
    ticks. Niced processes count like any other: nice weighs processes only
    within one scheduling group, and another session's or container's niced
    job takes its group's share of the cores as a normal one does.
    """
    ticks = 0
    for line in stat.splitlines():
        name, _, values = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values.split()[:8])
        ticks += user + nice + system + irq + softirq + steal
    return ticks / ticks_per_second


# Cores' worth of other processes' CPU use tolerated before a thread steps
# down. Measured on the 2-core development machine, a loss step (B = 2,
# 128 x 128, 3 levels) beside a process busy about a third of the time took,
# in one run, 913 ms on the fast path's two threads and 729 ms on one; in
# another, 549-558 ms on two, 666-773 ms on one and 589-639 ms on the plain
# path. There two threads and one are close, and only two keep the fast path
# ahead of the plain one (which runs two threads too, as slowed); beside a
# process busy all the time one thread took 0.20 to 0.43 times the plain
# path's time. So a core counts as taken once others use half of it.
TOLERANCE = 0.5


def threads_for(free_cores: float, torch_threads: int) -> int:
    """Threads to run on: the free cores, a fraction of a core short counting as
    one short unless within TOLERANCE; at least 1, at most torch's setting."""
    return max(1, min(torch_threads, int(free_cores + TOLERANCE + 1e-9)))


def fixed_threads_requested() -> bool:
    """Whether MSDS_FIXED_THREADS asks for torch's thread count everywhere (read at import)."""
    value = os.environ.get("MSDS_FIXED_THREADS", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"MSDS_FIXED_THREADS: expected 1, true, yes or on (torch's thread count everywhere), or 0, "
                     f"false, no, off or unset (fewer threads on busy cores), got {value!r}")


class Sample(NamedTuple):
    wall: float  # seconds, time.perf_counter
    busy: float  # CPU seconds the CPUs below spent busy, by anyone, since boot
    own: float  # this process's CPU seconds
    cpus: FrozenSet[int]  # the CPUs it may run on
    pid: int


class CoreLoad:
    """How many of this process's CPUs other processes keep busy, measured
    while the fast path runs (between `sample()` and `record(start)`)."""

    def __init__(self, stat_path: str = STAT) -> None:
        self._stat_path = stat_path
        self._lock = threading.Lock()
        self._window = (0.0, 0.0, 0.0)  # wall, busy and own CPU seconds, summed over calls
        self.others = 0.0  # cores' worth of CPU time other processes used in the last full window
        self.readable = True
        self.enabled = not fixed_threads_requested()
        # The first call's estimate spans the time from here (msds's import)
        # to that call: building the model, loading data.
        self._first_window = self.sample()

    def cpus(self) -> FrozenSet[int]:
        return frozenset(os.sched_getaffinity(0))

    def sample(self) -> Optional[Sample]:
        """The counters now, or None where they cannot be read."""
        if not self.readable:
            return None
        try:
            with open(self._stat_path) as file:
                stat = file.read()
            cpus = self.cpus()
            busy = cpu_busy_seconds(stat, cpus, os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, AttributeError):  # no /proc/stat, sched_getaffinity or sysconf
            self.readable = False
            return None
        return Sample(time.perf_counter(), busy, time.process_time(), cpus, os.getpid())

    def record(self, start: Optional[Sample]) -> None:
        """Add the time since `start` to the window; past WINDOW_S, update `others`."""
        end = self.sample() if start is not None else None
        if end is None:
            return
        if (end.pid, end.cpus) != (start.pid, start.cpus):
            return  # a forked child (its CPU time restarts) or other CPUs: the counters do not compare
        with self._lock:
            wall, busy, own = (total + e - s for total, e, s in zip(self._window, end[:3], start[:3]))
            if wall < WINDOW_S:
                self._window = (wall, busy, own)
                return
            self._window = (0.0, 0.0, 0.0)
            self.others = max(0.0, busy - own) / wall

    def before_first_call(self) -> None:
        """Take the time since this object was made as the first window."""
        start, self._first_window = self._first_window, None
        if start is not None:
            self.record(start)

    def threads(self, torch_threads: int) -> int:
        """How many of torch's `torch_threads` to run on now."""
        if torch_threads <= 1 or not self.readable or not self.enabled:
            return torch_threads
        try:
            cores = len(self.cpus())
        except (OSError, AttributeError):
            return torch_threads
        return threads_for(cores - self.others, torch_threads)


LOAD = CoreLoad()


def _after_fork_in_child() -> None:
    # The parent's counters do not compare with the child's (its CPU time
    # restarts), and a lock another thread held stays held: start afresh,
    # the child's first call measuring from the fork.
    LOAD._lock = threading.Lock()
    LOAD._window = (0.0, 0.0, 0.0)
    LOAD._first_window = LOAD.sample()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# Per thread (autograd runs a CPU backward on the thread that called it):
# (torch's count, the count lowered to) for each fast-path backward under way.
_saved = threading.local()


def _stack() -> List[Tuple[int, int]]:
    if not hasattr(_saved, "counts"):
        _saved.counts = []
    return _saved.counts


class _LowerInBackward(torch.autograd.Function):
    """Identity on the scores; its backward, the first of the fast path's
    backward, lowers the thread count to the free cores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        return scores.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        torch_threads = torch.get_num_threads()
        lowered = LOAD.threads(torch_threads)
        _stack().append((torch_threads, lowered))
        if lowered < torch_threads:
            torch.set_num_threads(lowered)
        return grad


class _RestoreInBackward(torch.autograd.Function):
    """Identity on the images; its backward, the last of the fast path's
    backward, restores the thread count."""

    @staticmethod
    def forward(ctx, *images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(image.view_as(image) for image in images)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        counts = _stack()
        if counts:
            torch.set_num_threads(counts.pop()[0])
        return grads


def _restore_after_a_failed_backward() -> None:
    # A backward that raised between the two Functions left the count lowered:
    # restored now, unless the program has set another count since.
    counts = _stack()
    if counts:
        if torch.get_num_threads() == counts[-1][1]:
            torch.set_num_threads(counts[0][0])
        counts.clear()


def _autograd_can_carry(images: List[torch.Tensor]) -> bool:
    """Whether the backward will run the two Functions: reverse mode only."""
    return torch.is_grad_enabled() and not _in_functorch_transform() and not _dual(*images)


class Scope:
    """Marks where the fast path's backward begins (its scores) and ends (its images)."""

    def __init__(self, lowered: bool) -> None:
        self._lowered = lowered
        self._carried = False

    def images(self, *images: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
        """The images, those that need a gradient passed through the Function that ends the backward.

        Only those: an image that needs none (a loss's target) must stay so.
        """
        wanting = [i for i, image in enumerate(images) if isinstance(image, torch.Tensor) and image.requires_grad]
        if not (self._lowered and wanting and _autograd_can_carry([images[i] for i in wanting])):
            return images
        self._carried = True
        carried = dict(zip(wanting, _RestoreInBackward.apply(*(images[i] for i in wanting))))
        return tuple(carried.get(i, image) for i, image in enumerate(images))

    def scores(self, scores: torch.Tensor) -> torch.Tensor:
        return _LowerInBackward.apply(scores) if self._carried else scores


def on_free_cores(active: bool) -> ContextManager[Scope]:
    """Run the block (the fast path's forward on the CPU) on the free cores,
    and, through the scope's `images` and `scores`, its backward too.

    Inactive, or under torch.compile, the block runs as it is.
    """
    if not active or torch.compiler.is_compiling() or not LOAD.enabled:
        return nullcontext(Scope(False))
    _restore_after_a_failed_backward()
    if torch.get_num_threads() == 1:  # nothing to lower (torchrun's processes, DataLoader workers)
        return nullcontext(Scope(False))
    return _on_free_cores()


@contextmanager
def _on_free_cores() -> Iterator[Scope]:
    LOAD.before_first_call()
    start = LOAD.sample()
    torch_threads = torch.get_num_threads()
    threads = LOAD.threads(torch_threads)
    if threads < torch_threads:
        torch.set_num_threads(threads)
    try:
        yield Scope(threads < torch_threads)
    finally:
        if threads < torch_threads:
            torch.set_num_threads(torch_threads)
        LOAD.record(start)
