"""``python -m sagakit``: the same as the ``sagakit`` command."""

import sys

from .cli import main

sys.exit(main())
