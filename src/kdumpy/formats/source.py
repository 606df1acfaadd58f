"""Where a dump's bytes come from: one :class:`Source` per file, read with ``pread``.

Every reader (ELF core, kdump-compressed, flattened stream) takes a :class:`Source`: the
file's size when it was opened, and ``pread(offset, size)``, which may return fewer bytes
when the file ends early (it was cut, or shrank after it was opened). Readers compare what
they need with :attr:`Source.size` first and name the structure and offset when it is not
there; nothing reads through a memory map of a file that can shrink, since touching a page
of a map past the end of its file raises SIGBUS, which no Python code can catch.

``/proc/vmcore`` is the exception: the old kernel's memory cannot shrink, and its ``read``
copies one page at a time through a temporary mapping while its ``mmap`` maps the whole
range once (``fs/proc/vmcore.c``), so :class:`FileSource` maps it and slices the map.
"""

from __future__ import annotations

import mmap
import os
from typing import BinaryIO, Protocol, runtime_checkable

from kdumpy.errors import DumpFormatError

__all__ = ["Source", "FileSource", "BytesSource", "StreamSource", "read_exact"]


@runtime_checkable
class Source(Protocol):
    """Random access to the bytes of one dump file."""

    @property
    def path(self) -> str | None:
        """The file's name in messages (``None`` for an anonymous buffer)."""
        ...

    @property
    def size(self) -> int:
        """Bytes in the file when it was opened."""
        ...

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; fewer when the file ends before."""
        ...


def read_exact(src: Source, offset: int, size: int, structure: str) -> bytes:
    """``pread`` that raises a located :class:`DumpFormatError` when the bytes are not all
    there (the structure runs past the end of the file, or the file shrank)."""
    if offset < 0 or size < 0 or offset + size > src.size:
        raise DumpFormatError(src.path, structure, offset,
                              f"{size} bytes at {offset:#x} lie outside the {src.size}-byte file")
    data = src.pread(offset, size)
    if len(data) != size:
        raise DumpFormatError(src.path, structure, offset,
                              f"file ends {len(data)} bytes into a {size}-byte read "
                              "(it shrank after it was opened)")
    return data


class BytesSource:
    """A dump held in memory (tests, small images)."""

    def __init__(self, data: bytes | bytearray | memoryview, path: str | None = None) -> None:
        self._data = bytes(data)
        self.path = path
        self.size = len(self._data)

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"bad read {offset:#x} +{size:#x}")
        return self._data[offset:offset + size]

    def preadv(self, buffers: list[memoryview], offset: int) -> int:
        n = 0
        for b in buffers:
            part = self._data[offset + n:offset + n + len(b)]
            b[:len(part)] = part
            n += len(part)
        return n

    def close(self) -> None:
        pass


class StreamSource:
    """An open seekable binary file object (``open(path, "rb")``)."""

    def __init__(self, stream: BinaryIO, path: str | None = None) -> None:
        self._stream = stream
        self.path = path
        self.size = stream.seek(0, os.SEEK_END)

    def pread(self, offset: int, size: int) -> bytes:
        self._stream.seek(offset)
        return self._stream.read(size)


class FileSource:
    """A dump file opened read-only; ``pread`` on its descriptor (a map for /proc/vmcore)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise DumpFormatError(self.path, "file", None, exc.strerror or str(exc)) from None
        try:
            st = os.fstat(self._file.fileno())
        except OSError as exc:
            self._file.close()
            raise DumpFormatError(self.path, "file", None, exc.strerror or str(exc)) from None
        self.size = st.st_size
        #: the whole of /proc/vmcore mapped once (see the module notes), else None
        self.map: mmap.mmap | None = None
        if self.path.startswith("/proc/") and self.size:
            try:
                self.map = mmap.mmap(self._file.fileno(), self.size, prot=mmap.PROT_READ)
                self.map.madvise(mmap.MADV_SEQUENTIAL)
            except (OSError, ValueError, AttributeError):
                self.map = None

    def fileno(self) -> int:
        return self._file.fileno()

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"bad read {offset:#x} +{size:#x}")
        if self.map is not None:
            return self.map[offset:offset + size]
        try:
            return os.pread(self._file.fileno(), size, offset)
        except OSError as exc:
            raise DumpFormatError(self.path, "file", offset, exc.strerror or str(exc)) from None

    def preadv(self, buffers: list[memoryview], offset: int) -> int:
        """Read into ``buffers`` (one copy, no intermediate bytes); returns bytes read."""
        if self.map is not None:
            n = 0
            for b in buffers:
                part = self.map[offset + n:offset + n + len(b)]
                b[:len(part)] = part
                n += len(part)
            return n
        return os.preadv(self._file.fileno(), buffers, offset)

    def trim(self) -> None:
        """Drop this process's mappings of the pages read (``MADV_DONTNEED``): pages of
        a map count toward RSS once touched; the data stays in the old kernel's memory."""
        if self.map is not None:
            try:
                self.map.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError, AttributeError):
                pass

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except (BufferError, ValueError):
                pass
        self._file.close()
