"""The CPU fast path on the cores other processes leave free (msds.trunk.threads)."""

import os
import subprocess
import sys
import time

import pytest
import torch

import msds
from msds.trunk import threads, winograd

# Two CPUs, as /proc/stat prints them (ticks of 1/100 s), and lines that are not CPUs.
STAT = """cpu  1000 900 800 700 600 500 400 300 0 0
cpu0 100 50 20 1000 5 1 2 3 0 0
cpu1 7 7 7 7 7 7 7 7 0 0
cpu2 200 0 30 4000 9 4 6 10 0 0
intr 12345 0 1
ctxt 999
procs_running 3
"""


def test_busy_seconds_from_proc_stat():
    # cpu0: user 100 + nice 50 + system 20 + irq 1 + softirq 2 + steal 3 = 176 ticks (idle and iowait
    # left out); cpu2: 200 + 0 + 30 + 4 + 6 + 10 = 250; cpu1 and the total line are not among the CPUs
    # asked for.
    assert threads.cpu_busy_seconds(STAT, frozenset({0, 2}), 100) == pytest.approx(4.26)
    assert threads.cpu_busy_seconds(STAT, frozenset({1}), 50) == pytest.approx(42 / 50)


@pytest.mark.parametrize("free, torch_threads, expected", [
    (2.0, 2, 2), (1.7, 2, 2), (1.51, 2, 2), (1.49, 2, 1), (1.0, 2, 1), (0.2, 2, 1), (-1.0, 4, 1),
    (15.2, 8, 8), (6.6, 8, 7), (6.4, 8, 6), (3.0, 1, 1),
])
def test_threads_for_the_free_cores(free, torch_threads, expected):
    assert threads.threads_for(free, torch_threads) == expected


def test_the_load_is_averaged_over_a_window_of_the_fast_paths_own_time(monkeypatch):
    load = threads.CoreLoad()
    cpus, pid = frozenset({0, 1}), os.getpid()
    # (wall, busy CPU seconds of our CPUs, our own CPU seconds) at the start and end of each call.
    counters = [(10.0, 50.0, 5.0), (10.1, 50.15, 5.05),    # 0.1 s: not yet a window
                (11.0, 60.0, 6.0), (11.15, 60.4, 6.1),     # 0.25 s in all: busy 0.55, own 0.15
                (12.0, 70.0, 7.0), (12.5, 70.5, 7.5),      # one call of 0.5 s, all of it our own
                (13.0, 80.0, 8.0), (13.5, 81.0, 1.0)]      # a forked child: left out
    samples = iter([threads.Sample(*c, cpus, pid) for c in counters[:-1]] + [threads.Sample(*counters[-1], cpus, 1)])
    monkeypatch.setattr(load, "sample", lambda: next(samples))
    load.record(load.sample())
    assert load.others == 0.0
    load.record(load.sample())
    assert load.others == pytest.approx((0.55 - 0.15) / 0.25)
    load.record(load.sample())
    assert load.others == pytest.approx(0.0)
    load.record(load.sample())
    assert load.others == pytest.approx(0.0) and load._window == (0.0, 0.0, 0.0)


def test_threads_never_lowered_without_proc_stat_or_when_switched_off(tmp_path, monkeypatch):
    load = threads.CoreLoad(str(tmp_path / "missing"))
    load.others = 5.0
    assert load.sample() is None
    assert load.threads(4) == 4
    for value in ("1", "true", "Yes", "on"):
        monkeypatch.setenv("MSDS_FIXED_THREADS", value)
        load = threads.CoreLoad()
        load.others = 5.0
        assert load.threads(4) == 4, value
    for value in ("0", "false", "No", "off", ""):
        monkeypatch.setenv("MSDS_FIXED_THREADS", value)
        assert threads.CoreLoad().enabled, value
    monkeypatch.setenv("MSDS_FIXED_THREADS", "maybe")
    with pytest.raises(ValueError, match="MSDS_FIXED_THREADS: expected 1, true.*got 'maybe'"):
        threads.CoreLoad()


@pytest.fixture
def two_threads():
    # The lowering needs two threads to lower from, whatever the machine's default.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def busy_machine(monkeypatch):
    """LOAD reports every CPU but one busy with other processes."""
    monkeypatch.setattr(threads.LOAD, "others", len(os.sched_getaffinity(0)) - 1.0)
    monkeypatch.setattr(threads.LOAD, "record", lambda start: None)


@pytest.fixture
def thread_counts(monkeypatch):
    """The thread count each Winograd convolution ran on, forward and backward alike."""
    seen = []
    convolve = winograd.convolve

    def spy(*args):
        seen.append(torch.get_num_threads())
        return convolve(*args)

    monkeypatch.setattr(winograd, "convolve", spy)
    return seen


def loss_step(model, x, y):
    prediction = x.clone().requires_grad_()
    loss = model(prediction, y)
    after_forward = torch.get_num_threads()
    loss.backward()
    return loss.detach(), prediction.grad, after_forward


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux's sched_getaffinity")
def test_forward_and_backward_run_on_the_free_cores_and_torch_setting_comes_back(
        two_threads, rng, thread_counts, monkeypatch):
    x = torch.rand(2, 3, 48, 48, generator=rng)
    y = torch.rand(2, 3, 48, 48, generator=rng)
    model = msds.MSDS(levels=2, weights=None, as_loss=True)
    monkeypatch.setattr(threads.LOAD, "record", lambda start: None)  # the load stays as set below
    monkeypatch.setattr(threads.LOAD, "others", 0.0)
    idle = loss_step(model, x, y)
    assert set(thread_counts) == {2} and idle[2] == 2
    thread_counts.clear()
    monkeypatch.setattr(threads.LOAD, "others", len(os.sched_getaffinity(0)) - 1.0)
    busy = loss_step(model, x, y)
    # Forward and backward convolutions alike on one thread; torch's two after each.
    assert thread_counts and set(thread_counts) == {1}
    assert busy[2] == 2 and torch.get_num_threads() == 2
    # Only the time changes: the fast path's results do not depend on the thread count.
    assert torch.equal(busy[0], idle[0]) and torch.equal(busy[1], idle[1])
    plain = loss_step(msds.MSDS(levels=2, weights=None, as_loss=True, fast=False), x, y)
    assert torch.allclose(busy[0], plain[0], atol=1e-6)


def test_a_target_without_gradient_stays_without(two_threads, busy_machine, rng):
    x = torch.rand(1, 3, 32, 32, generator=rng).requires_grad_()
    y = torch.rand(1, 3, 32, 32, generator=rng)
    with threads.on_free_cores(True) as cores:
        carried_x, carried_y = cores.images(x, y)
        assert torch.get_num_threads() == 1
    assert carried_y is y and carried_x is not x and carried_x.requires_grad
    model = msds.DeepSSIM(weights=None, as_loss=True)
    model(x, y).backward()
    assert x.grad is not None and y.grad is None


def test_a_backward_that_fails_midway_leaves_the_count_lowered_until_the_next_call(
        two_threads, busy_machine, rng, monkeypatch):
    x = torch.rand(1, 3, 32, 32, generator=rng).requires_grad_()
    y = torch.rand(1, 3, 32, 32, generator=rng)
    model = msds.DeepSSIM(weights=None, as_loss=True)
    loss = model(x, y)
    convolve = winograd.convolve

    def failing(*args):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(winograd, "convolve", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        loss.backward()
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(winograd, "convolve", convolve)
    with torch.no_grad():
        model(x, y)
    assert torch.get_num_threads() == 2
    # A count the program set after the failure is its own: kept.
    loss = model(x, y)
    monkeypatch.setattr(winograd, "convolve", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        loss.backward()
    torch.set_num_threads(3)
    monkeypatch.setattr(winograd, "convolve", convolve)
    with torch.no_grad():
        model(x, y)
    assert torch.get_num_threads() == 3


def test_the_plain_path_and_the_other_devices_keep_torch_setting(two_threads, busy_machine, thread_counts, rng):
    x = torch.rand(1, 3, 32, 32, generator=rng)
    seen = []
    model = msds.DeepSSIM(weights=None, fast=False)
    model.trunk.features[0].register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    model(x, x)
    assert seen and set(seen) == {2}  # plain: each image in its own pass
    with threads.on_free_cores(False) as cores:
        assert torch.get_num_threads() == 2
        assert cores.images(x.requires_grad_()) == (x,)


def test_compiles_without_the_lowering(two_threads, busy_machine, rng):
    model = msds.DeepSSIM(weights=None, as_loss=True)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.rand(1, 3, 32, 32, generator=rng)
    assert torch.allclose(compiled(x, x), model(x, x))


@pytest.mark.skipif(not os.path.exists(threads.STAT) or not hasattr(os, "sched_setaffinity"),
                    reason="needs Linux's /proc/stat and sched_setaffinity")
def test_another_busy_process_is_measured():
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {cpu})  # on one of our CPUs, where it competes with us
        time.sleep(0.2)  # started and spinning
        # Before the first call: from the load's making (msds's import) on.
        first = threads.CoreLoad()
        time.sleep(2 * threads.WINDOW_S)  # building a model, say; idle here: all the CPU used is others'
        first.before_first_call()
        # During the fast path's calls.
        load = threads.CoreLoad()
        load.before_first_call()  # too soon for a window: nothing measured
        start = load.sample()
        time.sleep(2 * threads.WINDOW_S)  # the fast path's own time, idle here too
        load.record(start)
    finally:
        spinner.kill()
        spinner.wait()
    # The spinner alone keeps its core busy while this process sleeps (whatever else shares the
    # machine counts as others too).
    cores = len(os.sched_getaffinity(0))
    for measured in (first, load):
        assert 0.75 <= measured.others <= cores + 0.1
        assert measured.threads(cores) == max(1, cores - 1) if measured.others < 1.5 else measured.threads(cores) < cores


def _load_in_the_child(queue):
    first = threads.LOAD._first_window
    queue.put((first is not None and first.pid == os.getpid(), threads.LOAD._window))


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists(threads.STAT), reason="needs os.fork and /proc/stat")
def test_a_forked_child_measures_from_the_fork():
    import multiprocessing

    threads.LOAD.record(threads.LOAD.sample())  # a window under way in the parent
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_load_in_the_child, args=(queue,))
    child.start()
    own_first_window, window = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert own_first_window and window == (0.0, 0.0, 0.0)
