"""`python -m msds` runs the command line."""

import sys

from msds.cli.commands import main

sys.exit(main())
