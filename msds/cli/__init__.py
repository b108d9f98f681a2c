"""The `msds` command (commands.py) and its demo (demo.py)."""

import importlib

from msds.cli.commands import main  # noqa: F401


def __getattr__(name: str):
    """The other names of the old msds/cli.py module (make_parser, run_score,
    CommandError, ...), now in msds.cli.commands, still reachable here."""
    commands = importlib.import_module("msds.cli.commands")
    if not name.startswith("__") and hasattr(commands, name):
        return getattr(commands, name)
    raise AttributeError(f"module 'msds.cli' has no attribute {name!r}")
