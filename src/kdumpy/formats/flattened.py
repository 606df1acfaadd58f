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
from kdumpy.formats.source import Source

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
    records; where records overlap, the later one wins, as in ``makedumpfile -R``. The index
    holds three integers per record present and is built in O(n log n) time, whatever
    offsets the records name. A stream cut short (the disk filled while it was written)
    opens up to the last byte that landed: :attr:`truncated` is set and what is missing
    reads as a hole. It is itself a :class:`~kdumpy.formats.source.Source`.
    """

    def __init__(self, src: Source) -> None:
        self.path = src.path
        self._src = src
        check_flat_header(src.pread(0, FLAT_HEADER_SIZE), src.path)
        #: the stream ends without its ``{-1, -1}`` end marker (cut short)
        self.truncated = False
        self.truncated_at: int | None = None
        dst: list[int] = []
        size: list[int] = []
        srcpos: list[int] = []
        pos = FLAT_HEADER_SIZE
        total = src.size
        unpack = _REC.unpack_from
        window = b""
        wpos = pos
        while True:
            if pos + _REC.size > total:
                self._cut(pos)
                break
            if pos + _REC.size > wpos + len(window):
                wpos = pos
                window = src.pread(pos, 1 << 16)
                if len(window) < _REC.size:
                    self._cut(pos)
                    break
            offset, length = unpack(window, pos - wpos)
            if offset == -1 and length == -1:
                break
            if offset < 0 or length < 0 or offset + length > MAX_FILE_OFFSET:
                raise DumpFormatError(self.path, "flattened record", pos,
                                      f"offset {offset} / size {length} is out of range")
            landed = min(length, total - pos - _REC.size)
            if landed:
                dst.append(offset)
                size.append(landed)
                srcpos.append(pos + _REC.size)
            if landed < length:
                self._cut(pos + _REC.size + landed)
                break
            pos += _REC.size + length
        d = np.array(dst, dtype=np.int64)
        s = np.array(size, dtype=np.int64)
        p = np.array(srcpos, dtype=np.int64)
        order = np.argsort(d, kind="stable")
        d, s, p = d[order], s[order], p[order]
        if len(d) > 1 and np.any(d[:-1] + s[:-1] > d[1:]):
            d, s, p = _paint(dst, size, srcpos)
        self._dst, self._size, self._srcpos = d, s, p
        self._end = d + s
        self.size = int(self._end.max()) if len(d) else 0

    def _cut(self, pos: int) -> None:
        self.truncated = True
        self.truncated_at = pos

    def __len__(self) -> int:
        return self.size

    def pieces(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """``(file offset, size, stream offset)`` of the records' data within
        ``[offset, offset+length)`` of the reassembled file, in file order."""
        end = offset + length
        i = int(np.searchsorted(self._end, offset, side="right"))
        j = int(np.searchsorted(self._dst, end, side="left"))
        out = []
        for k in range(i, j):
            lo = max(offset, int(self._dst[k]))
            hi = min(end, int(self._end[k]))
            if hi > lo:
                out.append((lo, hi - lo, int(self._srcpos[k]) + lo - int(self._dst[k])))
        return out

    def covered(self, offset: int, length: int) -> bool:
        """Whether records cover every byte of ``[offset, offset+length)``."""
        return sum(n for _o, n, _s in self.pieces(offset, length)) == length

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the reassembled file (holes read as zero)."""
        length = max(0, min(length, self.size - offset))
        pieces = self.pieces(offset, length)
        if len(pieces) == 1 and pieces[0][0] == offset and pieces[0][1] == length:
            return self._src.pread(pieces[0][2], length)
        out = bytearray(length)
        for lo, n, sp in pieces:
            out[lo - offset:lo - offset + n] = self._src.pread(sp, n)
        return bytes(out)

    def pread_into(self, offset: int, out: np.ndarray) -> None:
        """Fill ``out`` (uint8, zeroed by the caller) from ``offset``, touching only the
        bytes that records cover: a sparse region costs no memory beyond its records."""
        for lo, n, sp in self.pieces(offset, len(out)):
            out[lo - offset:lo - offset + n] = np.frombuffer(self._src.pread(sp, n), np.uint8)


def _paint(dst: list[int], size: list[int], srcpos: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resolve overlapping records (later wins) into disjoint sorted pieces.

    The records' start and end points cut the file into elementary intervals; the records
    are then applied latest first, each claiming the intervals no later record claimed
    (a union-find over "next unclaimed interval" visits each interval once). O(n log n)
    for the sort, near-linear after it.
    """
    d = np.asarray(dst, dtype=np.int64)
    s = np.asarray(size, dtype=np.int64)
    p = np.asarray(srcpos, dtype=np.int64)
    keep = s > 0
    d, s, p = d[keep], s[keep], p[keep]
    points = np.unique(np.concatenate((d, d + s)))
    first = np.searchsorted(points, d).tolist()
    last = np.searchsorted(points, d + s).tolist()
    m = len(points) - 1
    owner = [-1] * m
    nxt = list(range(m + 1))          # nxt[j]: an unclaimed interval at or after j
    for k in range(len(first) - 1, -1, -1):
        j, stop = first[k], last[k]
        while True:
            root = j                  # find, then compress the path
            while nxt[root] != root:
                root = nxt[root]
            while nxt[j] != root:
                nxt[j], j = root, nxt[j]
            j = root
            if j >= stop:
                break
            owner[j] = k
            nxt[j] = j + 1
    own = np.asarray(owner, dtype=np.int64)
    pts = points[:-1]
    claimed = own >= 0
    pts, own, ends = pts[claimed], own[claimed], points[1:][claimed]
    src = p[own] + (pts - d[own])
    # merge neighbours that continue the same record
    cont = np.zeros(len(pts), dtype=bool)
    if len(pts) > 1:
        cont[1:] = (own[1:] == own[:-1]) & (pts[1:] == ends[:-1])
    starts = np.flatnonzero(~cont)
    out_d = pts[starts]
    out_e = np.maximum.reduceat(ends, starts) if len(starts) else ends[:0]
    return out_d, out_e - out_d, src[starts]
