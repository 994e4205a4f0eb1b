"""``python -m rxf.cli`` runs the ``rxf`` command."""

import sys

from rxf.cli import main

sys.exit(main())
