"""`python -m msds` runs the command line."""

import sys

from msds.cli import main

sys.exit(main())
