"""Mutation classes over real dumps, deterministic by seed.

Each :class:`Mutation` holds the mutated bytes and which PFNs' data it may change
(``explained``): ``"none"`` (the page data of any copy must equal the unmutated dump's),
``("pfns", [...])``, ``("from", pfn)`` (every PFN from there on: bitmap 2 fixes the rank of
every later descriptor) or ``"all"`` (the layout itself changed: a copy must then equal what
the mutated file itself reads, page for page).
"""

from __future__ import annotations

import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardening"))

from mutate import rewrite_vmcoreinfo_bytes, setting  # noqa: E402

from kdumpy.formats.flattened import FLAT_HEADER_SIZE  # noqa: E402
from kdumpy.formats.kdump import KdumpFile  # noqa: E402

INTERESTING = [0, 1, 3, 0x7F, 0x80, 0xFF, 0x1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 32, 1 << 52, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF]
VI_VALUES = ["-1", "-9", "0", "1", "3", "7", "4096", "65536", "2147483648", "4294967296",
             "99999999999999999999", "18446744073709551615", "ffffffffffffffff",
             "ffffffff00000000", "0x10", "zz", "", "1e9"]


@dataclass
class Mutation:
    cls: str
    what: str
    data: bytes
    explained: Any = "none"
    base: str = "kdump"      # which base it mutates: "kdump" or "flat"


@dataclass
class BaseFacts:
    """Where things are in the base files."""

    kdump: bytes
    flat: bytes
    header_size: int
    block_size: int
    sub_size: int
    note_off: int
    note_size: int
    bitmap1: int
    bitmap2: int
    bitmap_len: int
    desc_off: int
    num_dumpable: int
    data_off: int
    pfns: np.ndarray          #: PFN of each descriptor index
    vi_keys: list[str]
    records: list[tuple[int, int, int]]   #: flattened records: (stream pos, offset, size)

    @classmethod
    def load(cls, kdump_path: str, flat_path: str) -> "BaseFacts":
        kd = Path(kdump_path).read_bytes()
        fl = Path(flat_path).read_bytes()
        k = KdumpFile(kd, path=kdump_path)
        bits_idx = np.flatnonzero(np.unpackbits(np.frombuffer(
            k.bitmap2, dtype=np.uint8), bitorder="little")[:k.max_mapnr])
        vi = k.vmcoreinfo
        recs = []
        pos = FLAT_HEADER_SIZE
        while pos + 16 <= len(fl):
            off, size = struct.unpack_from(">qq", fl, pos)
            if off == -1:
                break
            recs.append((pos, off, size))
            pos += 16 + size
        lay = k.layout
        return cls(kd, fl, k.arch.header.size, k.header.block_size, k.arch.sub.size,
                   k.sub.offset_note, k.sub.size_note, lay.bitmap1_offset, lay.bitmap2_offset,
                   lay.bitmap_len, k.desc_offset, k.num_dumpable,
                   k.desc_offset + 24 * k.num_dumpable, bits_idx,
                   list(dict(vi).keys()) if vi is not None else [], recs)


def _put(data: bytearray, off: int, rng: random.Random) -> str:
    width = rng.choice((1, 2, 4, 8))
    off = min(off, len(data) - width)
    v = rng.choice(INTERESTING + [rng.getrandbits(8 * width)]) & ((1 << (8 * width)) - 1)
    data[off:off + width] = v.to_bytes(width, "little")
    return f"{width} bytes at {off:#x} = {v:#x}"


def mutate(cls: str, seed: int, b: BaseFacts) -> Mutation:
    rng = random.Random(f"{cls}:{seed}")
    if cls == "header":
        d = bytearray(b.kdump)
        what = _put(d, rng.randrange(8, b.header_size), rng)
        return Mutation(cls, what, bytes(d), "all")
    if cls == "subheader":
        d = bytearray(b.kdump)
        what = _put(d, b.block_size + rng.randrange(0, b.sub_size), rng)
        return Mutation(cls, what, bytes(d), "all")
    if cls == "notes":
        d = bytearray(b.kdump)
        what = _put(d, b.note_off + rng.randrange(0, b.note_size), rng)
        return Mutation(cls, what, bytes(d), "none")
    if cls == "vmcoreinfo":
        keys = b.vi_keys
        n = rng.choice((1, 1, 1, 2, 3))
        edits: dict[str, str | None] = {}
        for _ in range(n):
            key = rng.choice(keys)
            edits[key] = None if rng.random() < 0.15 else rng.choice(VI_VALUES)
        return Mutation(cls, repr(edits), rewrite_vmcoreinfo_bytes(b.kdump, setting(edits)),
                        "none")
    if cls == "desc":
        d = bytearray(b.kdump)
        picks = sorted({rng.randrange(b.num_dumpable) for _ in range(rng.choice((1, 1, 4)))})
        whats = []
        for i in picks:
            at = b.desc_off + 24 * i
            field = rng.choice(("offset", "size", "flags", "page_flags", "other"))
            if field == "other":  # point at another page's stored data
                j = rng.randrange(b.num_dumpable)
                d[at:at + 16] = b.kdump[b.desc_off + 24 * j:b.desc_off + 24 * j + 16]
                whats.append(f"desc {i} <- desc {j}")
            else:
                o = {"offset": 0, "size": 8, "flags": 12, "page_flags": 16}[field]
                w = 8 if field in ("offset", "page_flags") else 4
                v = rng.choice(INTERESTING + [rng.getrandbits(8 * w)]) & ((1 << (8 * w)) - 1)
                d[at + o:at + o + w] = v.to_bytes(w, "little")
                whats.append(f"desc {i}.{field} = {v:#x}")
        return Mutation(cls, "; ".join(whats), bytes(d),
                        ("pfns", [int(b.pfns[i]) for i in picks]))
    if cls == "bitmap":
        d = bytearray(b.kdump)
        which = rng.choice((1, 2, 2))
        base_off = b.bitmap1 if which == 1 else b.bitmap2
        byte = rng.randrange(0, b.bitmap_len)
        if rng.random() < 0.5:
            d[base_off + byte] ^= 1 << rng.randrange(8)
        else:
            d[base_off + byte] = rng.getrandbits(8)
        if d == b.kdump:
            d[base_off + byte] ^= 1
        return Mutation(cls, f"bitmap{which} byte {byte:#x}", bytes(d),
                        "none" if which == 1 else ("from", byte * 8))
    if cls == "truncate":
        size = len(b.kdump)
        spot = rng.choice(("head", "bitmaps", "descs", "data", "data", "tail"))
        lo, hi = {"head": (0, b.bitmap1), "bitmaps": (b.bitmap1, b.desc_off),
                  "descs": (b.desc_off, b.data_off), "data": (b.data_off, size),
                  "tail": (max(0, size - 65536), size)}[spot]
        cut = rng.randrange(lo, max(lo + 1, hi))
        return Mutation(cls, f"cut at {cut:#x} ({spot})", b.kdump[:cut], "none")
    if cls == "flat":
        d = bytearray(b.flat)
        kind = rng.choice(("record", "record", "cut", "header"))
        if kind == "cut":
            cut = rng.randrange(0, len(d))
            return Mutation(cls, f"flat cut at {cut:#x}", bytes(d[:cut]), "none", "flat")
        if kind == "header":
            what = _put(d, rng.randrange(0, 32), rng)
            return Mutation(cls, f"flat header {what}", bytes(d), "all", "flat")
        pos, off, size = rng.choice(b.records)
        field = rng.choice((0, 8))
        v = rng.choice([0, 1, -1, -2, 4096, size + 1, size - 1, off + 1, 1 << 40, 1 << 62,
                        rng.getrandbits(63)])
        struct.pack_into(">q", d, pos + field, v)
        return Mutation(cls, f"record at {pos:#x} {'offset' if field == 0 else 'size'} = {v}",
                        bytes(d), "all", "flat")
    raise ValueError(cls)


CLASSES = ("header", "subheader", "notes", "vmcoreinfo", "desc", "bitmap", "truncate", "flat")
