"""``python -m vitflow`` (and ``torchrun -m vitflow``): the ``vitflow`` command."""

import sys

from vitflow.cli import main

sys.exit(main())
