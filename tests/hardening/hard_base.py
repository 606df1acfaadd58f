"""The hardening tests' real dumps, derived from one lab crash.

``hard_base`` is built once per session from the first lab release's 256M crash (its
``vmcore.raw``, the capture kernel's /proc/vmcore): ``kdump`` (``kdumpy save -d 31``, lzo,
about 40 MiB), ``flat`` (the same as a flattened stream), and ``raw`` (the ELF vmcore itself,
read-only). The outcome of the tests does not depend on the kernel release, so one is enough.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from subproc import kdumpy  # noqa: E402


@dataclass(frozen=True)
class HardBase:
    release: str
    raw: Path
    kdump: Path
    flat: Path
    directory: Path


@pytest.fixture(scope="session")
def hard_base(tmp_path_factory) -> HardBase:
    from lab.corpus import DEFAULT_CRASHKERNEL, crash_for, releases
    from lab.run import LabError

    release = releases()[0]
    try:
        crash = crash_for(release, DEFAULT_CRASHKERNEL)
    except (LabError, RuntimeError, LookupError, OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"lab run for {release} failed:\n{exc}", pytrace=False)
    d = tmp_path_factory.mktemp("hard_base")
    kd, fl = d / "base31.kdump", d / "base31.flat"
    for out, fmt in ((kd, "kdump"), (fl, "flat")):
        p = kdumpy("save", "-q", "--no-dmesg", "-d", "31", "-f", fmt, crash.raw_vmcore, out)
        assert p.returncode == 0, p.stderr
    return HardBase(release, Path(crash.raw_vmcore), kd, fl, d)
