"""Fixtures of the hardening tests (:mod:`hard_base`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hard_base import hard_base  # noqa: E402,F401
