"""`python -m gpumux` runs the same command line as `gpumux`."""

from __future__ import annotations

import sys

from gpumux.cli.main import main

sys.exit(main())
