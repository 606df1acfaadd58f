"""The capture image's file tree, and its rendering as a compressed newc cpio archive.

Facts relied on (Linux ``init/initramfs.c``, ``Documentation/driver-api/early-userspace/
buffer-format.rst``):

* newc entries: the magic ``070701``, thirteen 8-digit hex fields (ino, mode, uid, gid,
  nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the
  NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes; ``TRAILER!!!``
  ends the archive. A symlink's data is its target. A directory must precede its contents.
* The kernel unpacks gzip-, xz- or zstd-compressed archives when built with
  ``CONFIG_RD_GZIP``/``CONFIG_RD_XZ``/``CONFIG_RD_ZSTD``; the zstd frame must carry its
  content size or fit the kernel's window (``lib/decompress_unzstd.c`` streams; a plain
  ``zstd`` frame works).
* Every byte of the unpacked tree stays in the capture kernel's RAM (rootfs is a ramfs or
  tmpfs) for the whole capture, so nothing goes in that the capture does not use.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass
class Entry:
    kind: str                          # dir | file | symlink | chardev
    mode: int = 0o755
    rdev: tuple[int, int] = (0, 0)     # chardev: (major, minor)
    strip: bool = False                # an ELF object whose debug sections are dropped
    source: str | None = None          # host file whose bytes go in (file)
    data: bytes | None = None          # literal bytes (file) or the target (symlink)

    def size(self) -> int:
        if self.kind == "file" and self.strip and self.source:
            return len(_stripped(self.source))
        if self.kind == "file":
            return len(self.data) if self.data is not None else os.path.getsize(
                self.source or "")
        return len(self.data or b"") if self.kind == "symlink" else 0


@dataclass
class ImageTree:
    """Absolute image paths -> entries. Parents are created as directories on demand."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def _norm(self, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not absolute")
        return os.path.normpath(path)

    def resolve(self, path: str, *, follow_last: bool = False) -> str:
        """``path`` with the symlinks already in the tree followed (the parents; the last
        component too with ``follow_last``)."""
        path = self._norm(path)
        parts = path.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            e = self.entries.get(cur)
            hops = 0
            while e is not None and e.kind == "symlink" and (follow_last
                                                             or i < len(parts) - 1):
                target = (e.data or b"").decode()
                cur = self._norm(target if target.startswith("/")
                                 else os.path.join(os.path.dirname(cur), target))
                e = self.entries.get(cur)
                hops += 1
                if hops > 16:
                    raise ValueError(f"symlink loop at {cur}")
        return cur

    def mkdir(self, path: str, mode: int = 0o755) -> str:
        path = self.resolve(path, follow_last=True)
        if path == "/":
            return path
        self.mkdir(os.path.dirname(path))
        e = self.entries.get(path)
        if e is None:
            self.entries[path] = Entry("dir", mode)
        elif e.kind != "dir":
            raise ValueError(f"{path} exists and is not a directory")
        return path

    def _place(self, path: str) -> str:
        path = self.resolve(path)
        self.mkdir(os.path.dirname(path))
        return path

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> str:
        path = self._place(path)
        self.entries[path] = Entry("file", mode, data=data)
        return path

    def add_file(self, path: str, source: str, mode: int | None = None, *,
                 strip: bool = False) -> str:
        path = self._place(path)
        if mode is None:
            mode = stat.S_IMODE(os.stat(source).st_mode)
        self.entries[path] = Entry("file", mode, source=source, strip=strip)
        return path

    def symlink(self, path: str, target: str) -> str:
        path = self._place(path)
        if path in self.entries and self.entries[path].kind == "dir":
            raise ValueError(f"{path} is a directory, cannot become a symlink")
        self.entries[path] = Entry("symlink", 0o777, data=target.encode())
        return path

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> str:
        path = self._place(path)
        self.entries[path] = Entry("chardev", mode, rdev=(major, minor))
        return path

    def exists(self, path: str) -> bool:
        return self.resolve(path) in self.entries

    def copy_host_path(self, host_path: str, image_path: str | None = None, *,
                       strip: bool = False) -> str:
        """Copy a host file to the same absolute path in the image, recreating every symlink
        met on the way (``/lib -> usr/lib`` on a merged-/usr system, ``libc.so.6`` names),
        so paths baked into binaries and into ``ld.so`` keep working."""
        image_path = image_path or host_path
        host_path = os.path.normpath(host_path)
        parts = host_path.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            if os.path.islink(cur):
                target = os.readlink(cur)
                if cur not in self.entries:
                    self.symlink(cur, target)
                rest = "/".join(parts[i + 1:])
                nxt = os.path.normpath(os.path.join(os.path.dirname(cur), target))
                return self.copy_host_path(os.path.join(nxt, rest) if rest else nxt,
                                           strip=strip)
        if os.path.isdir(host_path):
            return self.mkdir(host_path)
        return self.add_file(host_path, host_path, strip=strip)

    def total_size(self) -> int:
        return sum(e.size() for e in self.entries.values())

    def write_cpio(self, out: Any, mtime: int = 0) -> None:
        ino = 1
        for path, e in _parents_first(self.entries):
            kind = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
                    "chardev": stat.S_IFCHR}[e.kind]
            if e.kind == "file" and e.strip and e.source:
                data = _stripped(e.source)
            elif e.kind == "file":
                data = e.data if e.data is not None else _read(e.source or "")
            else:
                data = e.data or b""
            _header(out, path.lstrip("/"), kind | e.mode, len(data), ino, mtime,
                    nlink=2 if e.kind == "dir" else 1, rdev=e.rdev)
            out.write(data)
            out.write(b"\0" * (-len(data) % 4))
            ino += 1
        _header(out, TRAILER, 0, 0, 0, 0, nlink=1)


def _parents_first(entries: dict[str, Entry]) -> list[tuple[str, Entry]]:
    return sorted(entries.items(), key=lambda kv: kv[0].split("/"))


@functools.lru_cache(maxsize=None)
def _stripped(path: str) -> bytes:
    """``path`` without its debug sections (``strip --strip-debug``, binutils), or as it is
    when strip is missing or fails: the sections ld.so and the code use stay."""
    data = _read(path)
    if data[:4] != b"\x7fELF" or shutil.which("strip") is None:
        return data
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "o")
        r = subprocess.run(["strip", "--strip-debug", "-o", out, path], capture_output=True,
                           check=False)
        if r.returncode != 0:
            return data
        small = _read(out)
    return small if len(small) < len(data) else data


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _header(out: Any, name: str, mode: int, size: int, ino: int, mtime: int, *,
            nlink: int, rdev: tuple[int, int] = (0, 0)) -> None:
    raw = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(raw), 0)
    head = NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)
    out.write(head + raw + b"\0" * (-(len(head) + len(raw)) % 4))


def write_image(tree: ImageTree, path: str, compression: str = "zstd") -> int:
    """Write ``tree`` as a compressed cpio to ``path`` (mode 0600, via a temporary name);
    returns the compressed size."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            if compression == "zstd":
                import zstandard
                cctx = zstandard.ZstdCompressor(level=10)
                with cctx.stream_writer(raw, closefd=False) as z:
                    tree.write_cpio(z)
            elif compression == "gzip":
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as z:
                    tree.write_cpio(z)
            else:
                tree.write_cpio(raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return os.path.getsize(path)
