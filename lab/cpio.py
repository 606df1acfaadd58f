"""A writer for the "newc" cpio archive format that the kernel unpacks as an initramfs.

Facts relied on (Linux ``init/initramfs.c`` and ``Documentation/driver-api/early-userspace/
buffer-format.rst``):

* Each entry is a 110-byte ASCII header: the magic ``070701`` followed by thirteen 8-digit
  upper- or lower-case hexadecimal fields (ino, mode, uid, gid, nlink, mtime, filesize,
  devmajor, devminor, rdevmajor, rdevminor, namesize, check), then the NUL-terminated name
  (``namesize`` counts the NUL), padded with NULs to a multiple of 4 bytes measured from the
  start of the header, then the file data, padded the same way.
* Device nodes carry their device number in ``rdevmajor``/``rdevminor`` and no data; symlinks
  carry the target as their data (without NUL); directories carry nothing.
* The archive ends with an entry named ``TRAILER!!!``. The kernel ignores ``check`` for the
  ``070701`` magic.
* The kernel's unpacker accepts entries in any order as long as a directory precedes its
  contents; entries are created as root with the given mode.

Writing the archive ourselves means no root privileges, no ``mknod`` and no external ``cpio`` are
needed to put ``/dev/console`` in an initramfs.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass, field

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    """NUL bytes needed to bring ``length`` up to a multiple of 4."""
    return b"\0" * (-length % 4)


@dataclass
class CpioWriter:
    """Collects entries in memory and renders a newc archive.

    Paths are given without a leading slash (``"dev/console"``); parents are not created
    implicitly, so callers add directories first (``mkdir`` does it for a whole path).
    """

    mtime: int = 0
    _buf: io.BytesIO = field(default_factory=io.BytesIO)
    _ino: int = 1
    _names: set[str] = field(default_factory=set)
    _closed: bool = False

    def _entry(self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise ValueError("archive already finished")
        name = name.lstrip("/")
        if not name:
            raise ValueError("empty path")
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, self.mtime, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded), 0)
        header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
        self._ino += 1
        self._buf.write(header)
        self._buf.write(encoded)
        self._buf.write(_pad4(len(header) + len(encoded)))
        self._buf.write(data)
        self._buf.write(_pad4(len(data)))

    def __contains__(self, name: str) -> bool:
        return name.lstrip("/") in self._names

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Add directory ``path`` and any missing parents."""
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in self._names:
                self._entry(sub, stat.S_IFDIR | mode, nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file with contents ``data``."""
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        """Add a symbolic link ``path`` -> ``target``."""
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node."""
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def blockdev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a block device node."""
        self._entry(path, stat.S_IFBLK | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """Append the trailer and return the uncompressed archive."""
        if not self._closed:
            self._entry(TRAILER, 0, nlink=1)
            self._closed = True
        return self._buf.getvalue()

    def finish_gzip(self, level: int = 6) -> bytes:
        """The archive compressed with gzip (deterministic: header mtime 0, no file name)."""
        return gzip.compress(self.finish(), compresslevel=level, mtime=0)


@dataclass(frozen=True)
class CpioEntry:
    """One parsed entry (used by tests and ``kdumpy lab`` diagnostics)."""

    name: str
    mode: int
    nlink: int
    rdev: tuple[int, int]
    data: bytes


def read_newc(archive: bytes) -> list[CpioEntry]:
    """Parse a newc archive up to its trailer; raises ``ValueError`` on malformed input."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        header = archive[pos:pos + 110]
        if len(header) != 110 or header[:6] != NEWC_MAGIC:
            raise ValueError(f"bad cpio header at offset {pos}")
        values = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, nlink, filesize = values[1], values[4], values[6]
        rdev = (values[9], values[10])
        namesize = values[11]
        name_start = pos + 110
        name = archive[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize
        data_start += -data_start % 4
        data = archive[data_start:data_start + filesize]
        if len(data) != filesize:
            raise ValueError(f"truncated data for {name!r}")
        pos = data_start + filesize
        pos += -pos % 4
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, nlink, rdev, data))
