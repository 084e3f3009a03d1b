"""Run the server without the full CLI: ``python -m segmote.server [serve options]``."""

import sys

from .command import main

sys.exit(main())
