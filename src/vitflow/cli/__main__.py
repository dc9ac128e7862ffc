"""``python -m vitflow.cli`` (as ``python -m vitflow`` and the ``vitflow`` script)."""

import sys

from vitflow.cli import main

sys.exit(main())
