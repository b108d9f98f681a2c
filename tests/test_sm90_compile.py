"""Every kernel configuration compiles for Hopper (sm_90), fits in shared memory and does not spill."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import subprocess_env

pytest.importorskip("triton")

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def report():
    # The test session runs kernels under the interpreter; compiling for a
    # GPU needs a process where TRITON_INTERPRET is unset.
    env = subprocess_env(TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, str(HERE / "sm90.py")], capture_output=True, text=True,
                            env=env, timeout=900, cwd=HERE)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_every_configuration_was_compiled(report):
    sys.path.insert(0, str(HERE))
    import sm90

    expected = 2 * len(list(sm90.configurations()))  # a forward and a backward kernel each
    assert len(report) == expected
    assert {row["block_c"] for row in report} == {16, 32, 64}


def test_shared_memory_fits_and_nothing_spills(report):
    from sm90 import MAX_SHARED

    problems = [row for row in report if row["stack"] > 0 or row["shared"] > MAX_SHARED]
    assert not problems, problems
