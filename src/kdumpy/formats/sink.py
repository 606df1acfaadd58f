"""Positional output: every dump writer emits ``(offset, bytes)`` pieces to a sink.

A :class:`FileSink` writes them with ``pwrite`` into a seekable file; a :class:`FlatSink`
turns each piece into a record of makedumpfile's flattened stream (see
:mod:`kdumpy.formats.flattened`), so the same writer serves a pipe, stdout or SSH.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO, Protocol

#: buffers per ``pwritev`` call (Linux ``IOV_MAX`` is 1024)
_IOV_MAX = 1024


class Sink(Protocol):
    seekable: bool

    def pwrite(self, offset: int, data: bytes | memoryview) -> None: ...

    def pwritev(self, offset: int, parts: Sequence[bytes | memoryview]) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """``pwrite`` into an open file descriptor (a regular file).

    ``writeback_every`` (bytes): each time that much page data has been written with
    :meth:`pwritev`, the kernel is asked to start writing it to disk
    (``POSIX_FADV_DONTNEED`` starts writeback of dirty pages without waiting for it; pages
    just written are dirty, so none is dropped). A final ``fsync`` then waits only for the
    tail instead of for the whole dump, the disk having worked during compression.
    """

    seekable = True

    def __init__(self, fd: int, *, writeback_every: int | None = None) -> None:
        self.fd = fd
        self.high_water = 0
        self._every = writeback_every if hasattr(os, "posix_fadvise") else None
        self._kick_lo = -1
        self._kick_hi = 0

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
        self.high_water = max(self.high_water, offset)

    def pwritev(self, offset: int, parts: Sequence[bytes | memoryview]) -> None:
        """``parts`` back to back from ``offset``, up to ``IOV_MAX`` buffers a system call."""
        fd = self.fd
        for i in range(0, len(parts), _IOV_MAX):
            chunk = parts[i:i + _IOV_MAX]
            want = sum(map(len, chunk))
            n = os.pwritev(fd, chunk, offset)
            if n != want:  # short write (e.g. the disk filled up): finish it piece by piece
                self.pwrite(offset + n, memoryview(b"".join(chunk))[n:])
            offset += want
        self.high_water = max(self.high_water, offset)
        if self._every:
            self._kick(offset - sum(map(len, parts)), offset)

    def _kick(self, lo: int, hi: int) -> None:
        if self._kick_lo < 0:
            self._kick_lo = lo
        self._kick_lo = min(self._kick_lo, lo)
        self._kick_hi = max(self._kick_hi, hi)
        if self._kick_hi - self._kick_lo >= self._every:  # type: ignore[operator]
            try:
                os.posix_fadvise(self.fd, self._kick_lo, self._kick_hi - self._kick_lo,
                                 os.POSIX_FADV_DONTNEED)
            except OSError:
                self._every = None  # only a hint: never fail a dump over it
            self._kick_lo = -1
            self._kick_hi = 0

    def sync(self) -> None:
        """Wait until everything written so far is on disk."""
        os.fsync(self.fd)

    def close(self) -> None:
        pass


class FlatSink:
    """Flattened stream: a 4096-byte header, then ``{offset, size}`` records, then ``{-1,-1}``."""

    seekable = False

    def __init__(self, stream: BinaryIO) -> None:
        from kdumpy.formats.flattened import flat_header, flat_record_header
        self._record = flat_record_header
        self.stream = stream
        stream.write(flat_header())
        self.closed = False

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if len(data) == 0:
            return
        self.stream.write(self._record(offset, len(data)))
        self.stream.write(data)

    def pwritev(self, offset: int, parts: Sequence[bytes | memoryview]) -> None:
        """One record holding ``parts`` back to back."""
        size = sum(map(len, parts))
        if size == 0:
            return
        write = self.stream.write
        write(self._record(offset, size))
        for p in parts:
            write(p)

    def close(self) -> None:
        from kdumpy.formats.flattened import FLAT_END
        if not self.closed:
            self.stream.write(FLAT_END)
            self.stream.flush()
            self.closed = True
