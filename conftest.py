"""Test and benchmark setup shared by tests/ and bench/.

Kernels run under the Triton interpreter on the CPU unless MSDS_TEST_DEVICE
names a CUDA device; the variable must be set before triton is imported.
"""

import os
import zlib

DEVICE = os.environ.get("MSDS_TEST_DEVICE", "cpu")
if not DEVICE.startswith("cuda"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def rng(request) -> torch.Generator:
    """A generator seeded from the test's id: varied across tests, repeatable per test."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
