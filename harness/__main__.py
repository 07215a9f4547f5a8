"""``python -m harness`` is the ``harness`` command (also what ``torchrun -m harness`` starts)."""

import sys

from harness.cli import main

sys.exit(main())
