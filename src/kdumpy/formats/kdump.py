"""makedumpfile's kdump-compressed ("diskdump") format.

Layout in blocks of ``block_size`` (= page size), from makedumpfile ``diskdump_mod.h`` and
``write_kdump_header``; readers crash ``diskdump.c`` and libkdumpfile ``diskdump.c``:

====================  ================================================================
block 0               :class:`DiskDumpHeader` (signature ``"KDUMP   "``, header_version 6)
1 .. sub_hdr_size     :class:`KdumpSubHeader`, then the input's whole PT_NOTE verbatim
next bitmap_blocks    bitmap 1 (present PFNs) then bitmap 2 (dumpable PFNs), LSB first
then                  ``page_desc`` table, one per set bit of bitmap 2, then page data
====================  ================================================================

The descriptor of PFN p is number ``popcount(bitmap2[start_pfn .. p-1])`` of its file.
A descriptor with offset 0 marks a page whose data was lost (incomplete dump). Split sets
(``--split``) repeat the headers and both full bitmaps in each file and divide the PFN
range ``[start_pfn_64, end_pfn_64)``; each file reserves descriptor slots for the total.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from kdumpy.errors import DumpFormatError
from kdumpy.formats import codecs
from kdumpy.formats.bitmap import bits_range, count_bits
from kdumpy.formats.notes import Note, VMCOREINFO_NOTE_NAME, parse_notes
from kdumpy.formats.source import BytesSource, Source, read_exact
from kdumpy.formats.vmcoreinfo import VmcoreInfo

KDUMP_SIGNATURE = b"KDUMP   "
DISKDUMP_SIGNATURE = b"DISKDUMP"
KDUMP_HEADER_VERSION = 6
UTS_LEN = 65
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")

#: the widest physical address of any architecture (x86_64 5-level paging, arm64 52-bit PA)
MAX_PHYSMEM_BITS = 52

#: number of PFNs whose descriptor-index prefix count is kept (crash's ``valid_pages``)
PREFIX_BLOCK_PFNS = 4096


@dataclass(frozen=True)
class KdumpArch:
    """Word size and struct packing of the crashed machine (the format is native-endian)."""

    word: int
    byteorder: str
    header_fmt: str
    sub_fmt: str

    @property
    def endian(self) -> str:
        return "<" if self.byteorder == "little" else ">"

    @property
    def header(self) -> struct.Struct:
        return struct.Struct(self.endian + self.header_fmt)

    @property
    def sub(self) -> struct.Struct:
        return struct.Struct(self.endian + self.sub_fmt)

    @property
    def desc_dtype(self) -> np.dtype:
        return _desc_dtype(self.endian)


_DESC_DTYPES: dict[str, np.dtype] = {}


def _desc_dtype(e: str) -> np.dtype:
    """``struct page_desc``: offset, size, flags, page_flags (24 bytes)."""
    dt = _DESC_DTYPES.get(e)
    if dt is None:
        dt = _DESC_DTYPES[e] = np.dtype([("offset", e + "i8"), ("size", e + "u4"),
                                         ("flags", e + "u4"), ("page_flags", e + "u8")])
    return dt


# 64-bit: utsname padded to 8, timeval of two longs; sub header of longs and off_t's.
ARCH64_LE = KdumpArch(8, "little", "8si390s6xqqIiiIIIIIIi", "QiiQQqQqQqQQQQ")
# i386 (packed, 4-byte alignment of 8-byte members; timeval of two 32-bit longs).
ARCH32_LE = KdumpArch(4, "little", "8si390s2xiiIiiIIIIIIi", "IiiIIqIqIqIQQQ")
ARCHES = {64: ARCH64_LE, 32: ARCH32_LE}
MACHINE_WORD = {"x86_64": 64, "aarch64": 64, "ppc64le": 64, "s390x": 64, "riscv64": 64,
                "i386": 32, "i686": 32, "arm": 32}


@dataclass
class DiskDumpHeader:
    """``struct disk_dump_header`` (block 0)."""

    signature: bytes = KDUMP_SIGNATURE
    header_version: int = KDUMP_HEADER_VERSION
    utsname: dict[str, str] = field(default_factory=lambda: {k: "" for k in UTS_FIELDS})
    tv_sec: int = 0
    tv_usec: int = 0
    status: int = 0
    block_size: int = 4096
    sub_hdr_size: int = 1
    bitmap_blocks: int = 0
    max_mapnr: int = 0
    total_ram_blocks: int = 0
    device_blocks: int = 0
    written_blocks: int = 0
    current_cpu: int = 0
    nr_cpus: int = 1

    @classmethod
    def parse(cls, buf: bytes, arch: KdumpArch, *, path: str | None = None) -> "DiskDumpHeader":
        st = arch.header
        if len(buf) < st.size:
            raise DumpFormatError(path, "disk_dump_header", 0,
                                  f"file holds {len(buf)} of the header's {st.size} bytes")
        v = st.unpack_from(buf, 0)
        uts_raw = v[2]
        uts = {name: uts_raw[i * UTS_LEN:(i + 1) * UTS_LEN].split(b"\0", 1)[0].decode("latin-1")
               for i, name in enumerate(UTS_FIELDS)}
        return cls(v[0], v[1], uts, *v[3:])

    def pack(self, arch: KdumpArch) -> bytes:
        uts = b"".join(self.utsname.get(k, "").encode("latin-1")[:UTS_LEN - 1].ljust(UTS_LEN, b"\0")
                       for k in UTS_FIELDS)
        return arch.header.pack(self.signature, self.header_version, uts, self.tv_sec,
                                self.tv_usec, self.status, self.block_size, self.sub_hdr_size,
                                self.bitmap_blocks, self.max_mapnr & 0xFFFFFFFF,
                                self.total_ram_blocks, self.device_blocks, self.written_blocks,
                                self.current_cpu, self.nr_cpus)


@dataclass
class KdumpSubHeader:
    """``struct kdump_sub_header`` (block 1); fields appear by header_version."""

    phys_base: int = 0
    dump_level: int = 0
    split: int = 0
    start_pfn: int = 0
    end_pfn: int = 0
    offset_vmcoreinfo: int = 0
    size_vmcoreinfo: int = 0
    offset_note: int = 0
    size_note: int = 0
    offset_eraseinfo: int = 0
    size_eraseinfo: int = 0
    start_pfn_64: int = 0
    end_pfn_64: int = 0
    max_mapnr_64: int = 0

    @classmethod
    def parse(cls, buf: bytes, arch: KdumpArch) -> "KdumpSubHeader":
        v = list(arch.sub.unpack_from(buf, 0))
        # phys_base is an unsigned long holding a two's-complement value.
        bits = 8 * arch.word
        if v[0] >> (bits - 1):
            v[0] -= 1 << bits
        return cls(*v)

    def pack(self, arch: KdumpArch) -> bytes:
        mask = (1 << (8 * arch.word)) - 1
        return arch.sub.pack(self.phys_base & mask, self.dump_level, self.split,
                             min(self.start_pfn, 0xFFFFFFFF),
                             min(self.end_pfn, 0xFFFFFFFF), self.offset_vmcoreinfo,
                             self.size_vmcoreinfo, self.offset_note, self.size_note,
                             self.offset_eraseinfo, self.size_eraseinfo, self.start_pfn_64,
                             self.end_pfn_64, self.max_mapnr_64)


def detect_arch(block0: bytes, path: str | None) -> KdumpArch:
    """Pick the word size from the header's utsname machine (the format is native)."""
    if len(block0) < 12 + 5 * UTS_LEN:
        raise DumpFormatError(path, "disk_dump_header", 0, "file is shorter than the header")
    machine = block0[12 + 4 * UTS_LEN:12 + 5 * UTS_LEN].split(b"\0", 1)[0].decode("latin-1")
    return ARCHES[MACHINE_WORD.get(machine, 64)]


@dataclass(frozen=True)
class KdumpLayout:
    """Where each part of a kdump-compressed file begins, in bytes."""

    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    num_desc_slots: int
    desc_size: int = 24

    @property
    def sub_offset(self) -> int:
        return self.block_size

    @property
    def bitmap1_offset(self) -> int:
        return self.block_size * (1 + self.sub_hdr_size)

    @property
    def bitmap_len(self) -> int:
        """Bytes in ONE bitmap."""
        return self.bitmap_blocks // 2 * self.block_size

    @property
    def bitmap2_offset(self) -> int:
        return self.bitmap1_offset + self.bitmap_len

    @property
    def desc_offset(self) -> int:
        return self.bitmap1_offset + self.bitmap_blocks * self.block_size

    @property
    def data_offset(self) -> int:
        return self.desc_offset + self.num_desc_slots * self.desc_size

    @classmethod
    def plan(cls, block_size: int, max_mapnr: int, note_size: int, num_desc_slots: int,
             sub_size: int = 104) -> "KdumpLayout":
        sub_blocks = -(-(sub_size + note_size) // block_size)
        one = -(-(-(-max_mapnr // 8)) // block_size)
        return cls(block_size, sub_blocks, 2 * one, num_desc_slots)


#: page sizes a kdump header may give: powers of two from 4 KiB (x86, arm64 4K) to 64 KiB
#: (arm64 and ppc64 64K pages)
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 4096, 65536
#: descriptors read per step when scanning the whole table
_DESC_STEP = 1 << 16


class KdumpFile:
    """One file of a kdump-compressed dump, read through a :class:`Source`.

    A file cut short (``head -c``, a full disk) opens as long as its headers and bitmaps
    are whole: descriptors past the end, or pointing at data past the end, are lost pages
    (as are descriptors with offset 0, which makedumpfile writes for data that never
    landed), :attr:`truncated` is set, and reading a lost page is the caller's fault to
    report, never zeros.
    """

    def __init__(self, src: Source | bytes, *, path: str | None = None) -> None:
        if isinstance(src, (bytes, bytearray, memoryview)):
            src = BytesSource(src, path)
        self.src = src
        self.path = src.path if src.path is not None else path
        self.file_size = src.size
        self.corrections: list[str] = []
        self._read_headers()
        self._read_pfn_range()
        self._read_notes()
        self._read_bitmaps()
        self._index_descriptors()
        h = self.header
        self.codec_name = {0: "none"}.get(h.status & codecs.CODEC_FLAGS) or next(
            (c.name for c in codecs.CODECS.values() if c.flag and h.status & c.flag), "none")

    # -- opening, one structure at a time -------------------------------------------------
    def _read_headers(self) -> None:
        """disk_dump_header (block 0) and kdump_sub_header (block 1)."""
        path, size = self.path, self.file_size
        head = self.src.pread(0, 4096)
        sig = head[:8]
        if sig not in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
            raise DumpFormatError(path, "disk_dump_header", 0,
                                  f"signature {sig!r} is not 'KDUMP   ' or 'DISKDUMP'")
        self.arch = arch = detect_arch(head, path)
        self.header = h = DiskDumpHeader.parse(head, arch, path=path)
        bs = h.block_size
        if bs < MIN_BLOCK_SIZE or bs > MAX_BLOCK_SIZE or bs & (bs - 1):
            raise DumpFormatError(path, "disk_dump_header", 0x1ac if arch.word == 8 else 0x1a0,
                                  f"block_size {bs} is not a power of two page size from "
                                  f"{MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}")
        if h.header_version < 0 or h.header_version > 64:
            raise DumpFormatError(path, "disk_dump_header", 8, f"header_version {h.header_version} is not valid")
        if h.sub_hdr_size < 0 or h.bitmap_blocks == 0 or h.bitmap_blocks % 2:
            raise DumpFormatError(path, "disk_dump_header", 0,
                                  f"sub_hdr_size {h.sub_hdr_size} / bitmap_blocks {h.bitmap_blocks} "
                                  "are not a valid layout")
        if size < bs * (1 + max(h.sub_hdr_size, 1)):
            raise DumpFormatError(path, "kdump_sub_header", bs,
                                  f"file ends at {size:#x}, before the sub header ends")
        self.sub = KdumpSubHeader.parse(read_exact(self.src, bs, arch.sub.size, "kdump_sub_header"),
                                        arch)

    def _read_pfn_range(self) -> None:
        """max_mapnr and, in a split file, this file's ``[start_pfn, end_pfn)``."""
        h, sub, bs = self.header, self.sub, self.header.block_size
        v = h.header_version
        self.max_mapnr = sub.max_mapnr_64 if v >= 6 and sub.max_mapnr_64 else h.max_mapnr
        if self.max_mapnr > (1 << MAX_PHYSMEM_BITS) // bs:
            raise DumpFormatError(self.path, "kdump_sub_header", bs + 96,
                                  f"max_mapnr {self.max_mapnr:#x} is beyond a 52-bit physical "
                                  "address space")
        if v >= 6 and sub.split:
            self.start_pfn, self.end_pfn = sub.start_pfn_64, sub.end_pfn_64
        elif sub.split and v >= 2:
            self.start_pfn, self.end_pfn = sub.start_pfn, sub.end_pfn
        else:
            self.start_pfn, self.end_pfn = 0, self.max_mapnr
        if not (0 <= self.start_pfn <= self.end_pfn <= self.max_mapnr):
            raise DumpFormatError(self.path, "kdump_sub_header", bs + 80,
                                  f"PFN range [{self.start_pfn:#x}, {self.end_pfn:#x}) is outside "
                                  f"max_mapnr {self.max_mapnr:#x}")

    def _read_notes(self) -> None:
        """The PT_NOTE copy, VMCOREINFO and eraseinfo that the sub header points at."""
        sub, arch, bs, v = self.sub, self.arch, self.header.block_size, self.header.header_version
        self.notes: list[Note] = []
        self.note_bytes = b""
        self.vmcoreinfo: VmcoreInfo | None = None
        if v >= 4 and sub.size_note:
            self.note_bytes = self._region(sub.offset_note, sub.size_note, "notes (offset_note)",
                                           bs + (48 if arch.word == 8 else 28))
            self.notes = parse_notes(self.note_bytes, byteorder=arch.byteorder, path=self.path,  # type: ignore[arg-type]
                                     base_offset=sub.offset_note)
        if v >= 3 and sub.size_vmcoreinfo:
            raw = self._region(sub.offset_vmcoreinfo, sub.size_vmcoreinfo,
                               "vmcoreinfo (offset_vmcoreinfo)", bs + 32)
            self.vmcoreinfo = VmcoreInfo.parse(raw, path=self.path, offset=sub.offset_vmcoreinfo)
        else:
            for n in self.notes:
                if n.name == VMCOREINFO_NOTE_NAME:
                    self.vmcoreinfo = VmcoreInfo.parse(n.desc, path=self.path)
        self.eraseinfo = b""
        if v >= 5 and sub.size_eraseinfo:
            self.eraseinfo = self._region(sub.offset_eraseinfo, sub.size_eraseinfo,
                                          "eraseinfo", bs + 64)

    def _read_bitmaps(self) -> None:
        """Bitmap 1 and 2, read whole (the bytes up to max_mapnr): both must be in the file."""
        h, bs = self.header, self.header.block_size
        nbytes_one = h.bitmap_blocks // 2 * bs
        self.layout = KdumpLayout(bs, h.sub_hdr_size, h.bitmap_blocks, 0)
        if nbytes_one * 8 < self.max_mapnr:
            raise DumpFormatError(self.path, "bitmap", self.layout.bitmap1_offset,
                                  f"each bitmap holds {nbytes_one * 8} bits, fewer than "
                                  f"max_mapnr {self.max_mapnr}")
        if self.layout.desc_offset > self.file_size:
            raise DumpFormatError(self.path, "bitmap", self.layout.bitmap1_offset,
                                  f"bitmaps end at {self.layout.desc_offset:#x}, past the end of "
                                  f"the {self.file_size}-byte file")
        used = (self.max_mapnr + 7) >> 3
        self.bitmap1 = self._read_bytes(self.layout.bitmap1_offset, used, "bitmap 1")
        self.bitmap2 = self._read_bytes(self.layout.bitmap2_offset, used, "bitmap 2")

    def _index_descriptors(self) -> None:
        """Prefix counts of bitmap 2, and how much of the descriptor table landed."""
        self._prefix = self._prefix_counts()
        self.num_dumpable = int(self._prefix[-1])
        self.desc_offset = self.layout.desc_offset
        #: descriptors wholly inside the file
        self.descs_in_file = min(self.num_dumpable,
                                 max(0, (self.file_size - self.desc_offset) // 24))
        self._lost: int | None = None
        #: the file ends before its last page's descriptor or data (cut short)
        self.truncated = self.descs_in_file < self.num_dumpable or self._data_cut()

    def _data_cut(self) -> bool:
        """Whether the last stored page's data runs past the end of the file. Data is
        written in PFN order, so the last descriptor not pointing at the shared zero page
        holds the highest offset."""
        n = self.descs_in_file
        while n > 0:
            lo = max(0, n - _DESC_STEP)
            d = self.desc_range(lo, n)
            offs = d["offset"].astype(np.int64)
            real = np.flatnonzero(offs > 0)
            if len(real):
                ends = offs[real] + d["size"][real].astype(np.int64)
                return bool(ends.max() > self.file_size)
            n = lo
        return False

    # -- reading ---------------------------------------------------------------------------
    def _read_bytes(self, offset: int, count: int, what: str) -> np.ndarray:
        pread_into = getattr(self.src, "pread_into", None)
        if pread_into is None:
            return np.frombuffer(read_exact(self.src, offset, count, what), dtype=np.uint8)
        # A flattened image fills in only the records present. Anonymous memory that is
        # never written costs nothing, as long as it is not backed by transparent huge
        # pages: numpy advises its own large arrays to use them, and a machine with
        # /sys/kernel/mm/transparent_hugepage/enabled = always gives them to any mapping,
        # so each record written (or, without the huge zero page, each 2 MiB read) would
        # cost 2 MiB. MADV_NOHUGEPAGE keeps holes on the shared 4 KiB zero page.
        anon = mmap.mmap(-1, max(count, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        nohuge = getattr(mmap, "MADV_NOHUGEPAGE", None)
        if nohuge is not None:
            try:
                anon.madvise(nohuge)
            except OSError:                   # a kernel without THP: nothing to turn off
                pass
        out = np.frombuffer(anon, dtype=np.uint8, count=count)
        pread_into(offset, out)
        return out

    def desc_range(self, lo: int, hi: int) -> np.ndarray:
        """Descriptors ``[lo, hi)`` of this file; those past the end of the file read as
        zeros (offset 0: lost)."""
        dt = self.arch.desc_dtype
        out = np.zeros(hi - lo, dtype=dt)
        n = max(0, min(hi, self.descs_in_file) - lo)
        if n:
            raw = read_exact(self.src, self.desc_offset + 24 * lo, 24 * n, "page_desc table")
            out[:n] = np.frombuffer(raw, dtype=dt)
        return out

    @property
    def descs(self) -> np.ndarray:
        """The whole descriptor table (read on each use; for small files and tests)."""
        return self.desc_range(0, self.num_dumpable)

    def _region(self, offset: int, size: int, what: str, field_offset: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.file_size:
            raise DumpFormatError(self.path, f"kdump_sub_header {what}", field_offset,
                                  f"region [{offset:#x}, +{size:#x}) lies outside the "
                                  f"{self.file_size}-byte file")
        return read_exact(self.src, offset, size, what)

    def _prefix_counts(self) -> np.ndarray:
        """prefix[k] = dumpable pages in [start_pfn, start_pfn + k*PREFIX_BLOCK_PFNS)."""
        n = self.end_pfn - self.start_pfn
        nblocks = -(-n // PREFIX_BLOCK_PFNS)
        out = np.zeros(nblocks + 1, dtype=np.int64)
        if self.start_pfn % 8 == 0 and hasattr(np, "bitwise_count"):
            # whole bytes: a popcount per byte, summed per block, no unpacking
            first = self.start_pfn >> 3
            per = PREFIX_BLOCK_PFNS >> 3
            for b0 in range(0, nblocks, 4096):
                lo = first + b0 * per
                hi = min(first + (b0 + 4096) * per, (self.end_pfn + 7) >> 3)
                raw = np.asarray(self.bitmap2[lo:hi], dtype=np.uint8).copy()
                if hi == (self.end_pfn + 7) >> 3 and self.end_pfn & 7:
                    raw[-1] &= (1 << (self.end_pfn & 7)) - 1
                pad = (-len(raw)) % per
                if pad:
                    raw = np.concatenate((raw, np.zeros(pad, dtype=np.uint8)))
                sums = np.bitwise_count(raw).reshape(-1, per).sum(axis=1, dtype=np.int64)
                out[b0 + 1:b0 + 1 + len(sums)] = sums
            return np.cumsum(out)
        step = PREFIX_BLOCK_PFNS * 256
        for b0 in range(0, nblocks, 256):
            s = self.start_pfn + b0 * PREFIX_BLOCK_PFNS
            cnt = min(step, self.end_pfn - s)
            bits = bits_range(self.bitmap2, s, cnt)
            pad = (-len(bits)) % PREFIX_BLOCK_PFNS
            if pad:
                bits = np.concatenate((bits, np.zeros(pad, dtype=bool)))
            sums = bits.reshape(-1, PREFIX_BLOCK_PFNS).sum(axis=1)
            out[b0 + 1:b0 + 1 + len(sums)] = sums
        return np.cumsum(out)

    @property
    def incomplete(self) -> bool:
        """makedumpfile's COMPRESSED_INCOMPLETE mark, or a file cut short."""
        return bool(self.header.status & codecs.DUMP_DH_COMPRESSED_INCOMPLETE) or self.truncated

    def ranks(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """For PFNs ``[start, start+count)`` inside this file: dumpable mask and descriptor index."""
        bits = bits_range(self.bitmap2, start, count)
        rel = start - self.start_pfn
        blk = rel // PREFIX_BLOCK_PFNS
        base = int(self._prefix[blk])
        before = count_bits(self.bitmap2, self.start_pfn + blk * PREFIX_BLOCK_PFNS, start)
        idx = base + before + np.cumsum(bits, dtype=np.int64) - bits
        return bits, idx

    def _descs_for(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) == 0:
            return np.zeros(0, dtype=self.arch.desc_dtype)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return self.desc_range(lo, hi)[idx - lo]

    def _lost_mask(self, d: np.ndarray) -> np.ndarray:
        offs = d["offset"].astype(np.int64)
        return (offs == 0) | (offs + d["size"].astype(np.int64) > self.file_size)

    def stored_bits(self, start: int, count: int) -> np.ndarray:
        """Bool per PFN of ``[start, start+count)``: set in bitmap 2 and its data in the
        file (not lost)."""
        bits, idx = self.ranks(start, count)
        sel = np.flatnonzero(bits)
        if len(sel):
            bits = bits.copy()
            bits[sel[self._lost_mask(self._descs_for(idx[sel]))]] = False
        return bits

    def read_pages(self, start: int, count: int, out: np.ndarray, want: np.ndarray | None = None) -> np.ndarray:
        """Decode dumpable pages of ``[start, start+count)`` into ``out`` (count x page).

        Returns the mask of pages that hold data (dumpable and not lost). Pages not
        dumpable, and lost pages, are left as they are in ``out``.
        """
        bs = self.header.block_size
        bits, idx = self.ranks(start, count)
        if want is not None:
            bits = bits & want
        have = np.zeros(count, dtype=bool)
        sel = np.flatnonzero(bits)
        if len(sel) == 0:
            return have
        d = self._descs_for(idx[sel])
        offs = d["offset"].astype(np.int64)
        sizes = d["size"].astype(np.int64)
        flags = d["flags"]
        lost = self._lost_mask(d)
        bad = (~lost) & ((offs < self.desc_offset) | (sizes > bs) | (sizes <= 0))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            pfn = start + int(sel[j])
            raise DumpFormatError(self.path, f"page_desc of PFN {pfn:#x}",
                                  self.desc_offset + 24 * int(idx[sel[j]]),
                                  f"data at {int(offs[j]):#x} size {int(sizes[j])} is outside the "
                                  f"file's data area (size {self.file_size}) or larger than a page")
        fetch = self._span_reader(offs[~lost], sizes[~lost])
        flat = out.reshape(count, bs)
        for i, o, n, fl, gone in zip(sel.tolist(), offs.tolist(), sizes.tolist(),
                                     flags.tolist(), lost.tolist()):
            if gone:
                continue
            raw = fetch(o, n)
            if len(raw) != n:
                raise DumpFormatError(self.path, f"page data of PFN {start + i:#x}", o,
                                      f"file ends {len(raw)} bytes into a {n}-byte page "
                                      "(it shrank after it was opened)")
            if fl == 0:
                if n != bs:
                    raise DumpFormatError(self.path, f"page_desc of PFN {start + i:#x}",
                                          self.desc_offset + 24 * int(idx[i]),
                                          f"raw page is {n} bytes, not {bs}")
                flat[i] = np.frombuffer(raw, dtype=np.uint8)
            else:
                try:
                    page = codecs.decompress_page(fl, raw, bs)
                except codecs.CodecError as exc:
                    raise DumpFormatError(self.path, f"page data of PFN {start + i:#x}", o,
                                          str(exc)) from None
                flat[i] = np.frombuffer(page, dtype=np.uint8)
            have[i] = True
        return have

    def _span_reader(self, offs: np.ndarray, sizes: np.ndarray) -> Callable[[int, int], bytes]:
        """A ``(offset, size) -> bytes`` reader for one batch's page data.

        A batch's data is contiguous in PFN order, apart from the shared zero page at the
        start of the data area, so it is fetched with one read (two with the zero page).
        """
        src = self.src
        if len(offs) == 0:
            return lambda o, n: src.pread(o, n)
        first = int(offs.min())
        cache = {first: src.pread(first, int(sizes[offs == first].max()))}
        rest = offs != first
        if not rest.any():
            return lambda o, n: cache[o][:n]
        lo = int(offs[rest].min())
        hi = int((offs[rest] + sizes[rest]).max())
        if hi - lo > 64 << 20:
            return lambda o, n: src.pread(o, n)
        blob = src.pread(lo, hi - lo)

        def read(o: int, n: int) -> bytes:
            if o == first:
                return cache[first][:n]
            return blob[o - lo:o - lo + n]
        return read

    def lost_pages(self) -> int:
        """Pages whose data never landed: descriptors with offset 0 (makedumpfile's
        incomplete dump), past the end of the file, or pointing past it."""
        if self._lost is None:
            total = self.num_dumpable - self.descs_in_file
            for i in range(0, self.descs_in_file, _DESC_STEP):
                d = self.desc_range(i, min(self.descs_in_file, i + _DESC_STEP))
                total += int(np.count_nonzero(self._lost_mask(d)))
            self._lost = total
        return self._lost


def order_split_files(files: Sequence[KdumpFile]) -> list[KdumpFile]:
    """Sort a split set by start PFN and check that it is one whole dump: every file of a
    ``--split`` set repeats the same headers (utsname, crash time, block size, max_mapnr)
    and the same notes, which hold the crash's VMCOREINFO and registers."""
    fs = sorted(files, key=lambda f: f.start_pfn)
    first = fs[0]
    for f in fs[1:]:
        differ = [what for what, a, b in (
            ("max_mapnr", f.max_mapnr, first.max_mapnr),
            ("block size", f.header.block_size, first.header.block_size),
            ("utsname", f.header.utsname, first.header.utsname),
            ("crash time", (f.header.tv_sec, f.header.tv_usec),
             (first.header.tv_sec, first.header.tv_usec)),
            ("notes", f.note_bytes, first.note_bytes)) if a != b]
        if differ:
            raise DumpFormatError(f.path, "kdump_sub_header", f.header.block_size,
                                  f"split file belongs to another dump ({', '.join(differ)} "
                                  f"differ from {first.path})")
    expect = 0
    for f in fs:
        if f.start_pfn != expect:
            raise DumpFormatError(f.path, "kdump_sub_header", f.header.block_size + 80,
                                  f"split file starts at PFN {f.start_pfn:#x}, expected {expect:#x}")
        expect = f.end_pfn
    if expect != first.max_mapnr:
        raise DumpFormatError(fs[-1].path, "kdump_sub_header", fs[-1].header.block_size + 88,
                              f"split set ends at PFN {expect:#x}, not max_mapnr {first.max_mapnr:#x}")
    return fs


class KdumpWriter:
    """Places the parts of a kdump-compressed file through a sink.

    The caller knows how many pages bitmap 2 holds before any page is written (makedumpfile
    counts dumpable pages first), so the descriptor table's size, and with it where page data
    starts, are fixed up front; descriptors and data are then written batch by batch in PFN
    order. The bitmaps are either given whole, or (``num_dumpable`` given instead) written
    cycle by cycle with :meth:`write_bitmaps`; the flattened format carries either, since
    its records name their offsets.
    """

    def __init__(self, sink, *, arch: KdumpArch = ARCH64_LE, page_size: int, max_mapnr: int,
                 bitmap1: np.ndarray | None, bitmap2: np.ndarray | None, notes: bytes,
                 vmcoreinfo_offset_in_notes: int | None, vmcoreinfo_size: int,
                 utsname: dict[str, str], crash_time: int, codec_flag: int, dump_level: int,
                 phys_base: int, nr_cpus: int, share_zero_page: bool,
                 split: tuple[int, int] | None = None, num_desc_slots: int | None = None,
                 num_dumpable: int | None = None) -> None:
        self.sink = sink
        self.arch = arch
        self.page_size = page_size
        self.max_mapnr = max_mapnr
        if bitmap1 is None or bitmap2 is None:
            # cyclic: the caller counted bitmap 2 and hands its parts to write_bitmaps()
            if num_dumpable is None or split is not None:
                raise ValueError("without whole bitmaps, num_dumpable is required (no split)")
            self.num_dumpable = num_dumpable
        else:
            self.num_dumpable = count_bits(bitmap2, 0 if split is None else split[0],
                                           max_mapnr if split is None else split[1])
        slots = self.num_dumpable if num_desc_slots is None else num_desc_slots
        self.layout = KdumpLayout.plan(page_size, max_mapnr, len(notes), slots, arch.sub.size)
        lay = self.layout
        note_off = lay.sub_offset + arch.sub.size
        self.header = DiskDumpHeader(
            utsname={k: utsname.get(k, "") for k in UTS_FIELDS}, tv_sec=crash_time,
            status=codec_flag, block_size=page_size, sub_hdr_size=lay.sub_hdr_size,
            bitmap_blocks=lay.bitmap_blocks, max_mapnr=min(max_mapnr, 0xFFFFFFFF),
            nr_cpus=nr_cpus)
        start, end = split if split is not None else (0, 0)  # makedumpfile: set only when split
        self.sub = KdumpSubHeader(
            phys_base=phys_base, dump_level=dump_level, split=1 if split else 0,
            start_pfn=start, end_pfn=end,
            offset_vmcoreinfo=(note_off + vmcoreinfo_offset_in_notes
                               if vmcoreinfo_offset_in_notes is not None else 0),
            size_vmcoreinfo=vmcoreinfo_size if vmcoreinfo_offset_in_notes is not None else 0,
            offset_note=note_off, size_note=len(notes), start_pfn_64=start, end_pfn_64=end,
            max_mapnr_64=max_mapnr)
        self._notes = notes
        self._bitmaps = (bitmap1, bitmap2)
        self.data_cursor = lay.data_offset
        self.zero_offset: int | None = None
        self._share_zero = share_zero_page
        self.next_rank = 0

    def write_headers(self) -> None:
        """Headers, notes and (when given whole) the bitmaps. The header goes out with
        ``DUMP_DH_COMPRESSED_INCOMPLETE`` set: only :meth:`finish` clears it, once every page
        has landed, so a file cut short by a kill or a power loss is marked incomplete."""
        lay, bs, sink = self.layout, self.page_size, self.sink
        self.header.status |= codecs.DUMP_DH_COMPRESSED_INCOMPLETE
        sink.pwrite(0, self.header.pack(self.arch).ljust(bs, b"\0"))
        sub = self.sub.pack(self.arch) + self._notes
        sink.pwrite(lay.sub_offset, sub.ljust(lay.sub_hdr_size * bs, b"\0"))
        nbytes = lay.bitmap_len
        used = (self.max_mapnr + 7) >> 3
        for i in (0, 1):
            off = lay.bitmap1_offset + i * nbytes
            whole = self._bitmaps[i]
            if whole is not None:
                self._put_bits(off, 0, whole[:used])
        # Bitmap bytes are written only where a bit is set (_put_bits): the rest is a hole of
        # a regular file, or no record of a flattened stream, both of which read as zeros, so
        # a sparse physical address space costs no output. The region's last byte is always
        # written, so that the file reaches the descriptor table even when no page follows.
        sink.pwrite(lay.bitmap1_offset + 2 * nbytes - 1, b"\0")
        if self._share_zero:
            self.zero_offset = self.data_cursor
            sink.pwrite(self.data_cursor, bytes(bs))
            self.data_cursor += bs

    def write_bitmaps(self, start_pfn: int, bitmap1: np.ndarray, bitmap2: np.ndarray) -> None:
        """One cycle's part of both bitmaps (bit 0 = ``start_pfn``, a multiple of 8)."""
        if start_pfn & 7:
            raise ValueError(f"bitmap part must start on a byte: PFN {start_pfn}")
        lay = self.layout
        self._put_bits(lay.bitmap1_offset, start_pfn >> 3, bitmap1)
        self._put_bits(lay.bitmap2_offset, start_pfn >> 3, bitmap2)

    def _put_bits(self, offset: int, first_byte: int, bits: np.ndarray) -> None:
        """Write bitmap bytes from ``first_byte`` on; bits past max_mapnr stay clear."""
        used = (self.max_mapnr + 7) >> 3
        raw = np.asarray(bits[:max(0, used - first_byte)], dtype=np.uint8)
        if self.max_mapnr & 7 and first_byte + len(raw) == used and len(raw):
            raw = raw.copy()
            raw[-1] &= (1 << (self.max_mapnr & 7)) - 1
        step = 1 << 16
        for s in range(0, len(raw), step):
            piece = raw[s:s + step]
            if piece.any():       # all-zero pieces stay holes (see write_headers)
                self.sink.pwrite(offset + first_byte + s, piece.tobytes())

    def write_stored(self, count: int, zero: np.ndarray | None, sizes: np.ndarray,
                     flags: np.ndarray, parts: list, *, lost: np.ndarray | None = None) -> None:
        """Descriptors and data of the next ``count`` dumpable pages, in PFN order.

        ``zero`` (None: no zero page among them) marks the pages that point at the shared
        zero page; ``lost`` (None: none) the pages whose data is lost (descriptor all zero,
        offset 0, as an incomplete dump leaves them); ``sizes``, ``flags`` and ``parts``
        (the stored bytes) describe the others, whose data is written with one gathered
        write.
        """
        if lost is not None:
            zero = (np.zeros(count, dtype=bool) if zero is None else zero) | lost
        descs = np.zeros(count, dtype=self.arch.desc_dtype)
        ends = np.cumsum(sizes)
        stored = int(ends[-1]) if len(ends) else 0
        offs = ends - sizes
        offs += self.data_cursor
        if zero is None:
            descs["offset"] = offs
            descs["size"] = sizes
            descs["flags"] = flags
        else:
            descs["offset"] = self.zero_offset if self.zero_offset is not None else 0
            descs["size"] = self.page_size
            keep = ~zero
            descs["offset"][keep] = offs
            descs["size"][keep] = sizes
            descs["flags"][keep] = flags
            if lost is not None:
                descs[lost] = 0
        desc_at = self.layout.desc_offset + 24 * self.next_rank
        self.sink.pwrite(desc_at, descs.data.cast("B"))
        if stored:
            try:
                self.sink.pwritev(self.data_cursor, parts)
            except OSError:
                # As makedumpfile does: descriptors whose data did not land become zeros
                # (offset 0 = page lost), so readers see lost pages, not pointers past EOF.
                if getattr(self.sink, "seekable", False):
                    try:
                        self.sink.pwrite(desc_at, bytes(24 * count))
                    except OSError:
                        pass
                raise
        self.data_cursor += stored
        self.next_rank += count

    def finish(self) -> None:
        """Clear the incomplete mark: the data is synced first (a sink with ``sync``), so
        the cleared header never reaches the disk ahead of the pages it vouches for. On a
        flattened stream the clean header is one more record for offset 0, which replaces
        the first on reassembly (later records win)."""
        sync = getattr(self.sink, "sync", None)
        if sync is not None:
            sync()
        self.header.status &= ~codecs.DUMP_DH_COMPRESSED_INCOMPLETE
        self.sink.pwrite(0, self.header.pack(self.arch))

    def mark_incomplete(self) -> None:
        """Set COMPRESSED_INCOMPLETE in the header (only a seekable sink can go back)."""
        self.header.status |= codecs.DUMP_DH_COMPRESSED_INCOMPLETE
        if getattr(self.sink, "seekable", False):
            self.sink.pwrite(0, self.header.pack(self.arch))


def vmcoreinfo_desc_offset(notes: list[Note]) -> tuple[int | None, int]:
    """Offset of the VMCOREINFO descriptor inside the note bytes, and its size."""
    for n in notes:
        if n.name == VMCOREINFO_NOTE_NAME:
            return n.desc_offset, len(n.desc)
    return None, 0
