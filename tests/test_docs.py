"""Every Python and shell block of README.md and docs/*.md runs as written,
unless its first line marks it a fragment (`# fragment: why`).

The blocks run on the CPU in a scratch folder that holds the small image
files they name, with the trunk's weights (weights="imagenet") taken from a
seeded random file through $MSDS_VGG16_WEIGHTS: nothing is downloaded.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import msds
from helpers import ROOT, subprocess_env

# The full tier (pytest --full; CI).
pytestmark = pytest.mark.full

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
RUNNABLE = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell"}


def blocks():
    """(id, language, code) of every Python and shell block, fragments included."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            language = RUNNABLE.get(match.group(1))
            if language:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{document.relative_to(ROOT)}:{line}", language, match.group(2)))
    return found


def is_fragment(code: str) -> bool:
    return code.lstrip().startswith("# fragment")


RUN = [block for block in blocks() if not is_fragment(block[2])]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with the files the blocks name, and random weights standing in for ImageNet's."""
    folder = tmp_path_factory.mktemp("docs")
    generator = np.random.default_rng(0)
    sizes = {"photo": (128, 88), "retargeted": (64, 88)}  # the docs' 1024 x 700 and 512 x 700, scaled down
    for name, (width, height) in sizes.items():
        pixels = (generator.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(folder / f"{name}.png")
        saliency = np.linspace(0, 255, width)[None, :].repeat(height, 0).astype(np.uint8)  # a soft map
        Image.fromarray(saliency).save(folder / f"{name}_saliency.png")
    msds.save_trimmed_weights(None, folder / "random-vgg16.pth")
    return folder


@pytest.mark.parametrize("where,language,code", RUN, ids=[block[0] for block in RUN])
def test_block_runs_as_written(where, language, code, scratch):
    env = subprocess_env(MSDS_VGG16_WEIGHTS=str(scratch / "random-vgg16.pth"), MPLBACKEND="Agg")
    # `python` and `msds` are this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{where} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_the_documents_have_blocks_to_run():
    """The collection itself: a broken fence pattern would silently test nothing."""
    assert len(RUN) >= 5
    assert any(where.startswith("README.md") for where, _, _ in RUN)


def test_fragments_say_why():
    for where, _, code in blocks():
        if is_fragment(code):
            first = code.lstrip().splitlines()[0]
            assert re.match(r"# fragment: \S", first), f"{where}: a fragment's first line says why: {first!r}"
