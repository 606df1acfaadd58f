"""Packed PFN bitmaps as the kdump format stores them: bit for PFN p is byte p>>3, bit p&7.

All helpers work on numpy ``uint8`` arrays in bounded chunks, so a bitmap of any size
(one bit per page frame) is scanned without unpacking it whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_CHUNK_BYTES = 1 << 20


_ZERO8 = np.zeros(1, dtype=np.int8)


def new_bitmap(nbits: int) -> np.ndarray:
    return np.zeros((nbits + 7) >> 3, dtype=np.uint8)


def count_bits(bitmap: np.ndarray, start_bit: int = 0, end_bit: int | None = None) -> int:
    """Set bits in ``[start_bit, end_bit)``."""
    nbits = len(bitmap) * 8
    end_bit = nbits if end_bit is None else min(end_bit, nbits)
    if end_bit <= start_bit:
        return 0
    sb, eb = start_bit >> 3, end_bit >> 3
    if sb == eb:
        v = int(bitmap[sb])
        return bin((v >> (start_bit & 7)) & ((1 << (end_bit - start_bit)) - 1)).count("1")
    total = 0
    if start_bit & 7:
        total += bin(int(bitmap[sb]) >> (start_bit & 7)).count("1")
        sb += 1
    for i in range(sb, eb, _CHUNK_BYTES):
        total += int(_POPCOUNT[bitmap[i:min(i + _CHUNK_BYTES, eb)]].sum(dtype=np.int64))
    if end_bit & 7:
        total += bin(int(bitmap[eb]) & ((1 << (end_bit & 7)) - 1)).count("1")
    return total


def bits_range(bitmap: np.ndarray, start: int, count: int) -> np.ndarray:
    """Bools for bits ``[start, start+count)`` (False past the bitmap's end)."""
    if count <= 0:
        return np.zeros(0, dtype=bool)
    sb = start >> 3
    eb = (start + count + 7) >> 3
    raw = np.asarray(bitmap[sb:min(eb, len(bitmap))], dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little").view(bool)
    lo = start - sb * 8
    out = bits[lo:lo + count]
    if len(out) < count:
        out = np.concatenate((out, np.zeros(count - len(out), dtype=bool)))
    return out


def test_bit(bitmap: np.ndarray, bit: int) -> bool:
    byte = bit >> 3
    return byte < len(bitmap) and bool((int(bitmap[byte]) >> (bit & 7)) & 1)


def set_range(bitmap: np.ndarray, start: int, end: int, value: bool = True) -> None:
    """Set (or clear) bits ``[start, end)`` in place."""
    if end <= start:
        return

    def apply(i: int, mask: int) -> None:
        cur = int(bitmap[i])
        bitmap[i] = (cur | mask) if value else (cur & ~mask & 0xFF)

    sb, eb = start >> 3, end >> 3
    if sb == eb:
        apply(sb, ((1 << (end - start)) - 1) << (start & 7))
        return
    if start & 7:
        apply(sb, (0xFF << (start & 7)) & 0xFF)
        sb += 1
    bitmap[sb:eb] = 0xFF if value else 0
    if end & 7:
        apply(eb, (1 << (end & 7)) - 1)


def put_bits(bitmap: np.ndarray, start: int, bits: np.ndarray) -> None:
    """Write a bool array at bit ``start``; ``start`` must be a multiple of 8."""
    assert start % 8 == 0
    packed = np.packbits(bits, bitorder="little")
    sb = start >> 3
    n = len(bits)
    full = n >> 3
    bitmap[sb:sb + full] = packed[:full]
    if n & 7:
        keep = int(bitmap[sb + full]) & ~((1 << (n & 7)) - 1) & 0xFF
        bitmap[sb + full] = keep | int(packed[full])


def runs(bitmap: np.ndarray, nbits: int | None = None, chunk_bits: int = 1 << 20) -> Iterator[tuple[int, int]]:
    """Half-open ``(start, end)`` runs of set bits, in ascending order, chunk by chunk."""
    nbits = len(bitmap) * 8 if nbits is None else nbits
    open_start: int | None = None  # a run that reached the end of the previous chunk
    for base in range(0, nbits, chunk_bits):
        n = min(chunk_bits, nbits - base)
        bits = bits_range(bitmap, base, n).view(np.int8)
        if open_start is not None and not bits[0]:
            yield (open_start, base)
            open_start = None
        # int8 throughout: a Python 0 in the concatenation would make it (and the diff)
        # int64, eight times the memory of the chunk
        edges = np.flatnonzero(np.diff(np.concatenate((_ZERO8, bits, _ZERO8))))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            s = base + a
            if a == 0 and open_start is not None:
                s, open_start = open_start, None
            if b == n and base + n < nbits:
                open_start = s
            else:
                yield (s, base + b)
    if open_start is not None:
        yield (open_start, nbits)
