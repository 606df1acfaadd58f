"""Errors that name the file, the on-disk structure and the byte offset at fault.

Every reader raises :class:`DumpFormatError` for bad input so that the CLI can print one
line (``FILE: STRUCTURE at offset 0x..: what is wrong``) and exit 1, never a traceback.
"""

from __future__ import annotations

import os


class KdumpyError(Exception):
    """Base class of every error kdumpy reports to its user as one line."""


class DumpFormatError(KdumpyError):
    """A dump (or a part of one) is not what its format says it must be."""

    def __init__(self, path: str | os.PathLike[str] | None, structure: str,
                 offset: int | None, message: str) -> None:
        self.path = os.fspath(path) if path is not None else "<stream>"
        self.structure = structure
        self.offset = offset
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" at offset {self.offset:#x}" if self.offset is not None else ""
        return f"{self.path}: {self.structure}{where}: {self.message}"


class UnsupportedError(KdumpyError):
    """A request kdumpy understands but does not (yet) carry out."""


class TargetExistsError(KdumpyError):
    """The destination exists and ``--force`` was not given: a dump is never overwritten."""
