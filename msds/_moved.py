"""Modules that moved into the package's folders, still importable by their old names.

`import msds.winograd` or `from msds.backbone import VGG16Trunk` written
against earlier releases keep working: the old name is an alias of the
module at its new place (docs/development.md lists them).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "msds.head": "msds.metric.head",
    "msds.reference": "msds.metric.reference",
    "msds.pyramid": "msds.metric.pyramid",
    "msds._checks": "msds.metric.checks",
    "msds.backbone": "msds.trunk.vgg16",
    "msds.weights": "msds.trunk.weights",
    "msds.fastpath": "msds.trunk.fastpath",
    "msds.winograd": "msds.trunk.winograd",
    "msds.evaluate": "msds.evaluation.scoring",
    "msds.datasets": "msds.evaluation.datasets",
    "msds.significance": "msds.evaluation.significance",
    "msds.correlation": "msds.evaluation.correlation",
    "msds.fusion": "msds.evaluation.fusion_fit",
    "msds.analysis": "msds.evaluation.analysis",
    "msds.plots": "msds.evaluation.plots",
    "msds.provenance": "msds.evaluation.provenance",
    "msds.demo": "msds.cli.demo",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and hands back the module at its new place."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None  # a placeholder, replaced in exec_module

    def exec_module(self, module) -> None:
        # The import system returns what sys.modules holds under the name afterwards.
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def names_now_in(package: str, module: str):
    """The __getattr__ of a package that was once a module: the old module's
    other names, now defined in `module`, still reachable as package.NAME."""

    def __getattr__(name: str):
        target = importlib.import_module(module)
        if not name.startswith("__") and hasattr(target, name):
            return getattr(target, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
