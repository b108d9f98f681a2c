"""The `msds` command (commands.py) and its demo (demo.py)."""

from msds.cli.commands import main  # noqa: F401
