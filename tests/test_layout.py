"""The layout: no import circle among the project's modules, and the old module
paths (before the folders) still importing the same objects."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, subprocess_env

PACKAGES = {"msds": ROOT / "msds", "msds.kernels": ROOT / "kernels", "bench": ROOT / "bench"}


def module_files():
    """{module name: file} for every module of msds, its kernels and bench."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def import_graph():
    """Edges of every import statement of each module, at module level or
    inside a function (a deferred import is a circle all the same); a name
    imported from a package is an edge to its submodule when one exists,
    else to the package."""
    files = module_files()
    graph = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            graph[name].update(target for target in targets if target in files and target != name)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40 and graph["msds.metric.modules"] >= {"msds.trunk.vgg16", "msds.metric.head"}
    assert cycles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_folders_show_the_parts():
    folders = {path.name for path in (ROOT / "msds").iterdir() if (path / "__init__.py").is_file()}
    assert folders == {"metric", "trunk", "evaluation", "cli"}


OLD_PATHS = [("msds.metric", "MSDS", "msds.metric.modules"), ("msds.backbone", "VGG16Trunk", "msds.trunk.vgg16"),
             ("msds.weights", "resolve_weights", "msds.trunk.weights"),
             ("msds.fastpath", "is_fast", "msds.trunk.fastpath"), ("msds.winograd", "applies", "msds.trunk.winograd"),
             ("msds.head", "gram_ssim", "msds.metric.head"), ("msds.reference", "gram", "msds.metric.reference"),
             ("msds.pyramid", "image_pyramid", "msds.metric.pyramid"),
             ("msds.fusion", "load_fusion", "msds.metric.fusion_file"),
             ("msds.fusion", "fit_fusion", "msds.evaluation.fusion_fit"),
             ("msds.evaluate", "evaluate", "msds.evaluation.scoring"),
             ("msds.datasets", "read_dataset", "msds.evaluation.datasets"),
             ("msds.correlation", "correlations", "msds.evaluation.correlation"),
             ("msds.significance", "variance_test", "msds.evaluation.significance"),
             ("msds.analysis", "analyse", "msds.evaluation.analysis"),
             ("msds.plots", "save_eval_plot", "msds.evaluation.plots"), ("msds.demo", "reference_image", "msds.cli.demo"),
             ("msds.cli", "main", "msds.cli.commands"), ("msds.cli", "make_parser", "msds.cli.commands"),
             ("msds.cli", "CommandError", "msds.cli.commands"), ("msds.cli", "run_score", "msds.cli.commands"),
             ("msds.metric", "FIRST_CALL_SLACK", "msds.metric.modules"), ("msds.images", "load_image", "msds.images")]


@pytest.mark.parametrize("old,name,new", OLD_PATHS, ids=[f"{o}.{n}" for o, n, _ in OLD_PATHS])
def test_old_import_paths_give_the_same_objects(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_old_paths_in_a_fresh_interpreter():
    """Import order matters to aliases: a fresh process, old paths first."""
    code = ("from msds.winograd import applies; import msds.backbone, msds.fastpath; import msds; "
            "assert msds.winograd.applies is applies and msds.backbone.VGG16Trunk is msds.VGG16Trunk; "
            "from msds.fusion import FusionError; from msds.metric.fusion_file import FusionError as E; "
            "assert FusionError is E")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_checkout_runs_its_own_kernels():
    """From a checkout, msds.kernels is the kernels/ folder beside msds/, even
    where an editable install of another tree maps msds.kernels elsewhere."""
    import msds
    import msds.kernels.ops

    tree = Path(msds.__file__).resolve().parent.parent
    assert Path(msds.kernels.ops.__file__).resolve() == tree / "kernels" / "ops.py"


def test_unknown_names_of_the_old_modules_still_raise():
    import msds.cli
    import msds.metric

    for module in (msds.cli, msds.metric):
        with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
            module.not_a_name
