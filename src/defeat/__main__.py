"""``python -m defeat`` = the ``defeat`` command (useful where console-script shims lag, e.g. pyenv)."""

import sys

from defeat.cli.main import main

sys.exit(main())
