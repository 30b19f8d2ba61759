"""`python -m bobby_tui` runs the same entry point as the `bobby-tui` console script."""

import sys

from bobby_tui.cli import main

sys.exit(main())
