"""``python -m chronomoe.cli``: the ``chronomoe`` command."""

import sys

from . import main

sys.exit(main())
