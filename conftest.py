"""Test and benchmark setup shared by tests/ and bench/.

Kernels run under the Triton interpreter on the CPU unless MSDS_TEST_DEVICE
names a CUDA device; the variable must be set before triton is imported.
On Linux x86_64, where triton is a dependency (setup.py), a triton that
cannot be imported stops the run before any test: the kernel tests never
turn into skips there.
"""

import os
import zlib

DEVICE = os.environ.get("MSDS_TEST_DEVICE", "cpu")
if not DEVICE.startswith("cuda"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import TRITON_IS_A_DEPENDENCY  # noqa: E402


def pytest_sessionstart(session) -> None:
    if TRITON_IS_A_DEPENDENCY:
        try:
            import triton  # noqa: F401
        except Exception as error:  # a broken install raises more than ImportError
            pytest.exit(f"triton cannot be imported ({type(error).__name__}: {error}); on Linux x86_64 "
                        "msds needs it: pip install -e \".[test]\"", returncode=1)


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that takes the device fixture: `-m device` selects them
    (bench.gpu_check runs exactly these on the GPU)."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def rng(request) -> torch.Generator:
    """A generator seeded from the test's id: varied across tests, repeatable per test."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
