"""The fuzz suite mutates the hardening tests' real dumps (:mod:`hard_base`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardening"))

from hard_base import hard_base  # noqa: E402,F401
