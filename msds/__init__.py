"""msds: fast, differentiable MSDS and DeepSSIM image-quality metrics for PyTorch.

MSDS (arXiv 2604.19159) computes DeepSSIM (Gram-matrix structural similarity
of VGG16 relu5_1 features, TPAMI 2025) at every level of an image pyramid and
fuses the per-level scores with learnable weights.
"""

import importlib
import importlib.util
import sys
from pathlib import Path


def _adopt_checkout_kernels() -> None:
    """Make kernels/ importable as msds.kernels when running from a source checkout.

    A checkout has kernels/ beside msds/: that folder is taken first, so a
    checkout run with PYTHONPATH uses its own kernels even where another
    tree is installed (an editable install maps msds.kernels to the tree it
    was made from). Installed copies place the kernels under msds/ instead.
    """
    folder = Path(__file__).resolve().parent.parent / "kernels"
    if not (folder / "__init__.py").is_file() or not (folder / "gram_ssim.py").is_file():
        return  # installed: msds.kernels is found the usual way
    spec = importlib.util.spec_from_file_location(
        "msds.kernels", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["msds.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module  # what the import system does for a found submodule


_adopt_checkout_kernels()

from msds import _moved  # noqa: E402

_moved.install()

from msds.trunk.vgg16 import VGG16Trunk  # noqa: E402
from msds.metric.head import gram_ssim, multiscale_gram_ssim  # noqa: E402
from msds.metric.modules import MSDS, DeepSSIM, ReferenceFeatures  # noqa: E402
from msds.metric.pyramid import image_pyramid  # noqa: E402
from msds.trunk.vgg16 import save_trimmed_weights  # noqa: E402
from msds.trunk.weights import WeightsError  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name: str):
    """msds.winograd and the other moved modules as attributes, as before they moved."""
    if f"msds.{name}" in _moved.MOVED:
        return importlib.import_module(f"msds.{name}")
    raise AttributeError(f"module 'msds' has no attribute {name!r}")

__all__ = [
    "MSDS",
    "DeepSSIM",
    "ReferenceFeatures",
    "VGG16Trunk",
    "WeightsError",
    "gram_ssim",
    "image_pyramid",
    "multiscale_gram_ssim",
    "save_trimmed_weights",
]
