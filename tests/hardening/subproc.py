"""Running kdumpy as its users do: ``python -m kdumpy ARGS`` in a subprocess."""

from __future__ import annotations

import subprocess
import sys


def kdumpy(*args: object, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m kdumpy ARGS`` in a subprocess (text output, bounded in time)."""
    return subprocess.run([sys.executable, "-m", "kdumpy", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)
