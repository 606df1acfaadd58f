"""makedumpfile's flattened stream (``-F``), its reader and reassembly (``-R``).

Facts (makedumpfile ``write_start_flat_header``, ``write_buffer``, ``rearrange_dumpdata``):
a 4096-byte header holding ``"makedumpfile"`` NUL-padded to 16 bytes, then big-endian
int64 type 1 and version 1; then records ``{int64 offset, int64 size}`` (big-endian), each
followed by ``size`` bytes to be placed at ``offset`` of the real file; later records may
overwrite earlier ones; ``{-1, -1}`` ends the stream. QEMU's kdump-zlib output is this format.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np

from kdumpy.errors import DumpFormatError

FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
FLAT_TYPE = 1
FLAT_VERSION = 1
_REC = struct.Struct(">qq")
#: No dump file is larger than the physical address space it describes.
MAX_FILE_OFFSET = 1 << 52
FLAT_END = _REC.pack(-1, -1)


def flat_header() -> bytes:
    head = FLAT_SIGNATURE.ljust(16, b"\0") + struct.pack(">qq", FLAT_TYPE, FLAT_VERSION)
    return head.ljust(FLAT_HEADER_SIZE, b"\0")


def flat_record_header(offset: int, size: int) -> bytes:
    return _REC.pack(offset, size)


def is_flattened(head: bytes) -> bool:
    return head[:16] == FLAT_SIGNATURE.ljust(16, b"\0")


def check_flat_header(head: bytes, path: str | None) -> None:
    if len(head) < FLAT_HEADER_SIZE:
        raise DumpFormatError(path, "flattened header", 0,
                              f"stream ends after {len(head)} of {FLAT_HEADER_SIZE} header bytes")
    if not is_flattened(head):
        raise DumpFormatError(path, "flattened header", 0, "signature is not 'makedumpfile'")
    ftype, version = struct.unpack_from(">qq", head, 16)
    if ftype != FLAT_TYPE:
        raise DumpFormatError(path, "flattened header", 16, f"type {ftype}, expected {FLAT_TYPE}")
    if version != FLAT_VERSION:
        raise DumpFormatError(path, "flattened header", 24, f"version {version}, expected {FLAT_VERSION}")


def reassemble(src: BinaryIO, fd: int, *, path: str | None = None, chunk: int = 1 << 20) -> int:
    """Apply a flattened stream read from ``src`` to file descriptor ``fd``; return its size.

    Streams in bounded memory (``chunk`` bytes at a time); works on pipes.
    """
    check_flat_header(_read_exact(src, FLAT_HEADER_SIZE, path, 0), path)
    pos = FLAT_HEADER_SIZE
    size = 0
    while True:
        rec = _read_exact(src, _REC.size, path, pos)
        offset, length = _REC.unpack(rec)
        if offset == -1 and length == -1:
            break
        if offset < 0 or length < 0 or offset + length > MAX_FILE_OFFSET:
            raise DumpFormatError(path, "flattened record", pos,
                                  f"offset {offset} / size {length} is out of range")
        pos += _REC.size
        left = length
        while left:
            piece = src.read(min(left, chunk))
            if not piece:
                raise DumpFormatError(path, "flattened record", pos,
                                      f"stream ends {left} bytes into a {length}-byte record")
            view = memoryview(piece)
            while len(view):
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n
            left -= len(piece)
            pos += len(piece)
        size = max(size, offset)
    return size


def _read_exact(src: BinaryIO, n: int, path: str | None, pos: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        what = "end marker or record" if pos >= FLAT_HEADER_SIZE else "header"
        raise DumpFormatError(path, "flattened stream", pos,
                              f"stream ends before the {what} ({len(data)} of {n} bytes)")
    return data


class FlattenedImage:
    """Random access to the file a flattened stream describes, without reassembling it.

    An index of ``(file offset, size, stream offset)`` pieces is built once by walking the
    records; where records overlap, the later one wins, as in ``makedumpfile -R``.
    Reads go through an mmap of the stream.
    """

    def __init__(self, buf: memoryview | bytes, *, path: str | None = None) -> None:
        self.path = path
        self.buf = buf
        check_flat_header(bytes(buf[:FLAT_HEADER_SIZE]), path)
        dst: list[int] = []
        size: list[int] = []
        srcpos: list[int] = []
        pos = FLAT_HEADER_SIZE
        total = len(buf)
        unpack = _REC.unpack_from
        while True:
            if pos + _REC.size > total:
                raise DumpFormatError(path, "flattened stream", pos,
                                      "stream ends without the {-1, -1} end marker")
            offset, length = unpack(buf, pos)
            if offset == -1 and length == -1:
                break
            if offset < 0 or length < 0 or offset + length > MAX_FILE_OFFSET:
                raise DumpFormatError(path, "flattened record", pos,
                                      f"offset {offset} / size {length} is out of range")
            if pos + _REC.size + length > total:
                raise DumpFormatError(path, "flattened record", pos,
                                      f"{length}-byte record runs past the end of the stream")
            dst.append(offset)
            size.append(length)
            srcpos.append(pos + _REC.size)
            pos += _REC.size + length
            if len(dst) % 64 == 0:
                _drop_mapped(buf)
        d = np.array(dst, dtype=np.int64)
        s = np.array(size, dtype=np.int64)
        p = np.array(srcpos, dtype=np.int64)
        order = np.argsort(d, kind="stable")
        d, s, p = d[order], s[order], p[order]
        if len(d) > 1 and np.any(d[:-1] + s[:-1] > d[1:]):
            d, s, p = _paint(dst, size, srcpos)
        self._dst, self._size, self._src = d, s, p
        self._end = d + s
        self.size = int(self._end.max()) if len(d) else 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self.size)
        return self.pread(start, max(0, stop - start))

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the reassembled file (holes read as zero)."""
        out = bytearray(length)
        end = offset + length
        i = int(np.searchsorted(self._end, offset, side="right"))
        n = len(self._dst)
        pieces = 0
        while i < n and self._dst[i] < end:
            pieces += 1
            if pieces % 64 == 0:  # a read across many records (a descriptor table)
                _drop_mapped(self.buf)
            lo = max(offset, int(self._dst[i]))
            hi = min(end, int(self._end[i]))
            if hi > lo:
                sp = int(self._src[i]) + lo - int(self._dst[i])
                out[lo - offset:hi - offset] = self.buf[sp:sp + hi - lo]
            i += 1
        return bytes(out)


def _drop_mapped(buf) -> None:
    """Each record header read through an mmap faults in its neighbourhood (fault-around):
    walking a large stream would map most of it. Drop the mappings as the walk goes."""
    madvise = getattr(buf, "madvise", None)
    if madvise is not None:
        import mmap
        try:
            madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _paint(dst: list[int], size: list[int], srcpos: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resolve overlapping records (later wins) into disjoint sorted pieces."""
    import bisect
    starts: list[int] = []
    pieces: dict[int, tuple[int, int]] = {}  # start -> (end, src)
    for o, n, sp in zip(dst, size, srcpos):
        if n == 0:
            continue
        e = o + n
        i = bisect.bisect_left(starts, o)
        if i > 0:
            ps = starts[i - 1]
            pe, psrc = pieces[ps]
            if pe > o:  # previous piece overlaps our start: cut it
                pieces[ps] = (o, psrc)
                if pe > e:
                    pieces[e] = (pe, psrc + (e - ps))
                    bisect.insort(starts, e)
        i = bisect.bisect_left(starts, o)
        while i < len(starts) and starts[i] < e:
            ps = starts[i]
            pe, psrc = pieces.pop(ps)
            starts.pop(i)
            if pe > e:
                pieces[e] = (pe, psrc + (e - ps))
                bisect.insort(starts, e)
                break
        bisect.insort(starts, o)
        pieces[o] = (e, sp)
    d = np.array(starts, dtype=np.int64)
    s = np.array([pieces[k][0] - k for k in starts], dtype=np.int64)
    p = np.array([pieces[k][1] for k in starts], dtype=np.int64)
    return d, s, p
