"""The metric: MSDS and DeepSSIM as modules (modules.py), the head seam and its
dispatch (head.py), the plain PyTorch head that is also the oracle's twin
(reference.py), the image pyramid, the fusion file, and the argument checks."""

import importlib

from msds.metric.modules import MSDS, DataRange, DeepSSIM, ReferenceFeatures  # noqa: F401


def __getattr__(name: str):
    """The other names of the old msds/metric.py module (FIRST_CALL_SLACK, ...),
    now in msds.metric.modules, still reachable here."""
    modules = importlib.import_module("msds.metric.modules")
    if not name.startswith("__") and hasattr(modules, name):
        return getattr(modules, name)
    raise AttributeError(f"module 'msds.metric' has no attribute {name!r}")
