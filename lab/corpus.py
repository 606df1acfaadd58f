"""The lab's real dumps as a Python API (what the pytest fixtures in tests/conftest.py use).

``crash_for(release, crashkernel)`` returns a :class:`LabCrash` for a completed run, building
it on demand (downloads, initramfs, QEMU boot, crash, capture) and reusing the cache
otherwise. ``releases()`` gives the kernel releases the lab covers (newest Debian 12 6.1 and
6.12 packages unless ``KDUMPY_LAB_KERNELS`` pins others).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kernels import default_releases
from .run import DEFAULT_CRASHKERNEL, SMALL_CRASHKERNEL, CrashRun, RunOptions, ensure_run

__all__ = ["LabCrash", "crash_for", "releases", "DEFAULT_CRASHKERNEL", "SMALL_CRASHKERNEL"]


@dataclass(frozen=True)
class LabCrash:
    """One captured crash of a real kernel.

    ``raw_vmcore``: byte-exact copy of the capture kernel's /proc/vmcore (ELF).
    ``kdumpy_dump``: what ``kdumpy save -d 1 --compress lzo`` wrote inside the capture kernel.
    ``makedumpfile_flat``: ``makedumpfile -F -l -d 31`` output (flattened kdump, lzo).
    ``meta``: the run's meta.json (marker, meminfo, reserved range, timings, ...).
    """

    release: str
    crashkernel: str
    directory: Path
    raw_vmcore: Path
    kdumpy_dump: Path
    makedumpfile_flat: Path
    serial_log: Path
    meta: Mapping[str, Any]

    @property
    def marker(self) -> str:
        """The string planted in the kernel log just before the crash."""
        return str(self.meta["marker"])

    @classmethod
    def from_run(cls, run: CrashRun) -> LabCrash:
        art = run.meta["artifacts"]
        return cls(release=run.meta["release"], crashkernel=run.meta["crashkernel"],
                   directory=run.directory, raw_vmcore=Path(art["raw_vmcore"]),
                   # runs without the save / makedumpfile steps (the service run) lack these
                   kdumpy_dump=Path(art.get("kdumpy_dump", run.directory / "kdumpy.kdump")),
                   makedumpfile_flat=Path(art.get("makedumpfile_flat",
                                                  run.directory / "makedumpfile.flat")),
                   serial_log=Path(art["serial_log"]), meta=run.meta)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def crash_for(release: str, crashkernel: str = DEFAULT_CRASHKERNEL, *, fresh: bool = False,
              log: Callable[[str], None] = _stderr, **options: Any) -> LabCrash:
    """A completed lab crash for ``release`` (a full release or a series like ``6.12``)."""
    run = ensure_run(release, RunOptions(crashkernel=crashkernel, **options), fresh=fresh,
                     log=log)
    return LabCrash.from_run(run)


def releases() -> list[str]:
    """Kernel releases the lab covers (``unresolved-<series>`` if apt cannot resolve one)."""
    return default_releases()
