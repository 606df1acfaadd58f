"""Fixtures of synthetic dumps (see ``tests/synth.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synth import SynthCore, make_vmcore  # noqa: E402


@pytest.fixture(scope="session")
def synth_core(tmp_path_factory: pytest.TempPathFactory) -> SynthCore:
    return make_vmcore(str(tmp_path_factory.mktemp("synth") / "vmcore"))
