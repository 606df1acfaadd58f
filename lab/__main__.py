"""``python -m lab``: the QEMU crash lab (``scripts/demo`` runs ``python -m lab run``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
