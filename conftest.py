"""Test and benchmark setup shared by tests/ and bench/.

Two tiers: plain `pytest` runs the quick tier; `pytest --full` adds every
test marked `full` (compiling every kernel configuration for Hopper, the GPU
check's and the peers' smoke runs, child-process and larger-input checks).
CI runs the full tier.

Kernels run under the Triton interpreter on the CPU unless MSDS_TEST_DEVICE
names a CUDA device; the variable must be set before triton is imported.
On Linux x86_64, where triton is a dependency (setup.py), a triton that
cannot be imported stops the run before any test: the kernel tests never
turn into skips there.
"""

import os
import zlib
from pathlib import Path

DEVICE = os.environ.get("MSDS_TEST_DEVICE", "cpu")
if not DEVICE.startswith("cuda"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import interpreter  # noqa: E402
from tests.helpers import TRITON_IS_A_DEPENDENCY  # noqa: E402


def pytest_sessionstart(session) -> None:
    if TRITON_IS_A_DEPENDENCY:
        try:
            import triton  # noqa: F401
        except Exception as error:  # a broken install raises more than ImportError
            pytest.exit(f"triton cannot be imported ({type(error).__name__}: {error}); on Linux x86_64 "
                        "msds needs it: pip install -e \".[test]\"", returncode=1)
    if os.environ.get("TRITON_INTERPRET") == "1":
        interpreter.patch_once()  # same results, a fraction of the time (tests/interpreter.py)


def pytest_addoption(parser) -> None:
    parser.addoption("--full", action="store_true",
                     help="run the full tier too: the tests marked full (CI runs them; see README, Testing)")


# The full tier's files whose time is almost all the Triton interpreter's.
INTERPRETER_BOUND = {"test_triton_backward.py", "test_triton_forward.py", "test_kernel_layouts.py",
                     "test_interpreter.py"}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test that takes the device fixture: `-m device` selects them
    (bench.gpu_check runs exactly these on the GPU). Without --full, leave
    out the full tier's tests (deselected, not skipped: they did not run);
    with it, run the interpreter-bound files first."""
    bench = Path(__file__).resolve().parent / "bench"
    # The benchmarks' smoke runs are in the full tier, unless bench/ was named
    # (`pytest bench --benchmark-enable` times them).
    named = config.args_source != pytest.Config.ArgsSource.TESTPATHS and any(
        bench == path or bench in path.parents for path in (Path(arg.split("::")[0]).resolve() for arg in config.args))
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
        if not named and bench in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.full)
    if config.getoption("--full"):
        # The kernels' interpreter-bound files first, the rest in their usual
        # order: they keep one core busy (the interpreter is plain Python), and
        # beside them CI's second job (the oldest pair's checks, the same kind
        # of work) keeps the other; the tests that spread over every core
        # (convolutions, child processes) then find the cores free.
        items.sort(key=lambda item: Path(str(item.path)).name not in INTERPRETER_BOUND)
        return
    quick = [item for item in items if item.get_closest_marker("full") is None]
    if len(quick) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("full") is not None])
        items[:] = quick
        config._msds_full_left_out = True


def pytest_terminal_summary(terminalreporter, config) -> None:
    if getattr(config, "_msds_full_left_out", False):
        deselected = len(terminalreporter.stats.get("deselected", []))
        terminalreporter.write_line(f"quick tier: {deselected} tests deselected, among them the full tier's; "
                                    "`pytest --full` runs everything (as CI does)")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def rng(request) -> torch.Generator:
    """A generator seeded from the test's id: varied across tests, repeatable per test."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
