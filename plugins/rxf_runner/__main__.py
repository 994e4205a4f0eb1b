"""``python -m rxf_runner`` runs the ``rxf`` command."""

import sys

from rxf_runner import main

sys.exit(main())
