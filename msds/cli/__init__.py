"""The `msds` command (commands.py) and its demo (demo.py)."""

from msds._moved import names_now_in
from msds.cli.commands import main  # noqa: F401

# The other names of the old msds/cli.py module (make_parser, run_score, CommandError, ...).
__getattr__ = names_now_in(__name__, "msds.cli.commands")
