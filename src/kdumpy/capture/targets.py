"""Where a dump is written, and how it is finished.

A local dump is written to ``DEST.incomplete`` (mode 0600, created exclusively so nothing
is ever overwritten), fsynced and renamed to ``DEST`` only when whole; an existing
``DEST`` is kept unless the caller forces. A dump that fails part-way stays as
``DEST.incomplete`` with the format's incomplete mark set, as makedumpfile does.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import BinaryIO

from kdumpy.errors import KdumpyError, TargetExistsError
from kdumpy.formats.sink import FileSink, FlatSink

INCOMPLETE_SUFFIX = ".incomplete"


class LocalTarget:
    """A dump file on a local (or NFS-mounted) filesystem, finished atomically."""

    def __init__(self, dest: str, *, force: bool = False, flattened: bool = False) -> None:
        self.dest = os.path.abspath(dest)
        self.tmp = self.dest + INCOMPLETE_SUFFIX
        self.force = force
        self.flattened = flattened
        if os.path.lexists(self.dest) and not force:
            raise TargetExistsError(f"{dest}: exists; kdumpy never overwrites a dump "
                                    "(remove it or pass --force)")
        make_private_dirs(os.path.dirname(self.dest))
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.tmp, flags, 0o600)
        except FileExistsError:
            if not force:
                raise TargetExistsError(
                    f"{self.tmp}: an unfinished dump is already there; move it away or pass "
                    "--force") from None
            os.unlink(self.tmp)
            self.fd = os.open(self.tmp, flags, 0o600)
        os.fchmod(self.fd, 0o600)
        self._stream: BinaryIO | None = None
        if flattened:
            self._stream = os.fdopen(os.dup(self.fd), "wb", buffering=1 << 20)
            self.sink: FileSink | FlatSink = FlatSink(self._stream)
        else:
            self.sink = FileSink(self.fd)

    def commit(self) -> str:
        """Flush, fsync, rename into place and fsync the directory; return the final path."""
        self.sink.close()
        if self._stream is not None:
            self._stream.close()
        os.fsync(self.fd)
        os.close(self.fd)
        os.replace(self.tmp, self.dest)
        _fsync_dir(os.path.dirname(self.dest))
        return self.dest

    def abandon(self) -> str | None:
        """Leave the unfinished file in place under its ``.incomplete`` name and return that
        name; None when nothing had been written (the empty file is removed)."""
        try:
            if self._stream is not None:
                self._stream.close()
        except OSError:
            pass
        try:
            os.fsync(self.fd)
            empty = os.fstat(self.fd).st_size == 0
        except OSError:
            empty = False
        os.close(self.fd)
        if empty:  # nothing was written: there is no partial dump to keep
            os.unlink(self.tmp)
            return None
        return self.tmp


class StdoutTarget:
    """A flattened stream on standard output (``kdumpy save ... -``)."""

    def __init__(self) -> None:
        if sys.stdout.isatty():
            raise KdumpyError("-: refusing to write a dump to a terminal; redirect stdout")
        self.stream = sys.stdout.buffer
        self.sink = FlatSink(self.stream)
        self.dest = "-"

    def commit(self) -> str:
        self.sink.close()
        return "-"

    def abandon(self) -> str | None:
        return None  # a stream cannot be marked afterwards; the reader sees no end marker


def make_private_dirs(path: str) -> None:
    """Create ``path`` and missing parents, each new one mode 0700 (dumps hold secrets)."""
    missing = []
    p = path
    while p and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)
