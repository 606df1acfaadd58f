"""``kdumpy.save``: write a filtered, compressed copy of a dump to a local file.

The same pipeline as ``kdumpy save``/``convert`` (:func:`kdumpy.capture.pipeline.save`):
the dump level is makedumpfile's ``-d`` bitmask (1 zero pages, 2 page cache without
private data, 4 page cache with private data, 8 user pages, 16 free pages); levels above 1
read the crashed kernel's ``struct page`` arrays through VMCOREINFO. The file is written
under ``DEST.incomplete`` and renamed when whole; an existing DEST is never replaced
unless ``force``.
"""

from __future__ import annotations

import os

from kdumpy.capture.pipeline import SaveOptions, SaveResult, check_dump_level
from kdumpy.capture.pipeline import save as _save
from kdumpy.capture.pipeline import usable_cpus
from kdumpy.capture.targets import LocalTarget
from kdumpy.dump import Dump
from kdumpy.errors import KdumpyError

__all__ = ["save", "SaveResult"]

FORMATS = ("kdump", "elf", "flat")


def save(dump: Dump, dest: str | os.PathLike[str], *, level: int = 1, compress: str = "lzo",
         format: str = "kdump", force: bool = False, threads: int | None = None) -> SaveResult:
    """Write ``dump`` to ``dest`` at dump ``level`` (0-31) with ``compress`` (lzo, zlib,
    zstd, snappy, none) as ``format`` ("kdump" compressed, "elf", or "flat": makedumpfile's
    flattened stream). The source's own dump level is kept in the new header (as
    ``kdumpy convert`` does). Returns what was written; raises :class:`KdumpyError`
    (``DumpIncomplete`` when the file could not be finished: it is left as
    ``DEST.incomplete``, marked incomplete).
    """
    check_dump_level(level)
    if format not in FORMATS:
        raise KdumpyError(f"unknown output format {format!r} (kdump, elf, flat)")
    if format == "elf" and compress != "none":
        raise KdumpyError(f"compress={compress!r}: ELF dumps hold raw pages")
    path = os.fspath(dest)
    recorded = (dump.dump_level or 0) | level
    opts = SaveOptions(dump_level=level, compress=compress,
                       format="elf" if format == "elf" else "kdump",
                       threads=threads or usable_cpus(), recorded_dump_level=recorded)
    return _save(dump, lambda: LocalTarget(path, force=force, flattened=format == "flat"), opts)
