"""``python -m kdumpy`` runs the command-line interface."""

import sys

from kdumpy.cli import main

sys.exit(main())
