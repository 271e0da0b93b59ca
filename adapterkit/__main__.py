"""``python -m adapterkit``: the same as the ``adapterkit`` command."""

import sys

from adapterkit.cli import main

sys.exit(main())
