"""``python -m scmech``: the command-line interface."""

import sys

from scmech._cli import main

sys.exit(main())
