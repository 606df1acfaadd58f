"""``python -m kdumpy.lab``: the same as ``kdumpy lab``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
