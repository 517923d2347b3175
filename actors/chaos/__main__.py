"""``python -m actors.chaos``: the same as ``contactor-chaos``."""

import sys

from actors.chaos.cli import main

sys.exit(main())
