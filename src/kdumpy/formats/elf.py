"""ELF core files: ``/proc/vmcore``, ``makedumpfile -E`` output, QEMU ``dump-guest-memory``.

One class per on-disk structure (:class:`ElfIdent`-keyed :class:`ElfClass`, :class:`ElfHeader`,
program headers as a numpy record array) and a reader, :class:`ElfCore`, that takes a file.

Facts relied on (``include/uapi/linux/elf.h``, ``fs/proc/vmcore.c``, makedumpfile
``elf_info.c``): a kdump core is ``ET_CORE`` with one PT_NOTE and one PT_LOAD per physical
range; ``p_filesz < p_memsz`` means the tail of the range was not dumped; when more than
0xfffe program headers exist ``e_phnum`` is ``PN_XNUM`` and section header 0's ``sh_info``
holds the count. QEMU 7.2 places its section headers at offset 64 and the program headers
after them, with ``e_ehsize`` 8; readers must honour ``e_phoff``.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Literal, cast

import numpy as np

from kdumpy.errors import DumpFormatError
from kdumpy.formats.notes import Note, parse_notes
from kdumpy.formats.source import Source, StreamSource, read_exact

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_CORE = 4
PT_NULL, PT_LOAD, PT_NOTE = 0, 1, 4
PN_XNUM = 0xFFFF
SHT_NULL = 0
#: makedumpfile sets bit 0 of ``e_flags`` in an ELF dump it could not finish.
EF_KDUMP_INCOMPLETE = 1

ByteOrder = Literal["little", "big"]

PHDR_FIELDS = ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz",
               "p_memsz", "p_align")


@dataclass(frozen=True)
class ElfClass:
    """Word size and byte order: everything that differs between ELF32/64 LE/BE cores."""

    bits: int
    byteorder: ByteOrder

    @property
    def endian(self) -> str:
        return "<" if self.byteorder == "little" else ">"

    @property
    def ehdr(self) -> struct.Struct:
        w = "Q" if self.bits == 64 else "I"
        return struct.Struct(f"{self.endian}16sHHI{w}{w}{w}IHHHHHH")

    @property
    def shdr(self) -> struct.Struct:
        w = "Q" if self.bits == 64 else "I"
        return struct.Struct(f"{self.endian}II{w}{w}{w}{w}II{w}{w}")

    @property
    def phdr_dtype(self) -> np.dtype:
        """Program header layout; ELF32 orders p_flags after p_memsz, ELF64 after p_type."""
        e = self.endian
        if self.bits == 64:
            return np.dtype({"names": list(PHDR_FIELDS),
                             "formats": [e + "u4", e + "u4"] + [e + "u8"] * 6,
                             "offsets": [0, 4, 8, 16, 24, 32, 40, 48], "itemsize": 56})
        return np.dtype({"names": list(PHDR_FIELDS), "formats": [e + "u4"] * 8,
                         "offsets": [0, 24, 4, 8, 12, 16, 20, 28], "itemsize": 32})

    @property
    def ident_class(self) -> int:
        return ELFCLASS64 if self.bits == 64 else ELFCLASS32


ELF64LE = ElfClass(64, "little")
ELF32LE = ElfClass(32, "little")


@dataclass
class ElfHeader:
    """``Elf32_Ehdr`` / ``Elf64_Ehdr``."""

    elfclass: ElfClass
    e_type: int = ET_CORE
    e_machine: int = 62
    e_version: int = 1
    e_entry: int = 0
    e_phoff: int = 0
    e_shoff: int = 0
    e_flags: int = 0
    e_ehsize: int = 0
    e_phentsize: int = 0
    e_phnum: int = 0
    e_shentsize: int = 0
    e_shnum: int = 0
    e_shstrndx: int = 0
    osabi: int = 0
    ident: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, buf: bytes, *, path: str | None = None) -> "ElfHeader":
        if len(buf) < 16 or buf[:4] != ELFMAG:
            raise DumpFormatError(path, "ELF header", 0, "no ELF signature (\\x7fELF)")
        klass, data = buf[4], buf[5]
        if klass not in (ELFCLASS32, ELFCLASS64):
            raise DumpFormatError(path, "ELF header", 4, f"EI_CLASS {klass} is not ELF32 or ELF64")
        if data not in (ELFDATA2LSB, ELFDATA2MSB):
            raise DumpFormatError(path, "ELF header", 5, f"EI_DATA {data} is not LSB or MSB")
        ec = ElfClass(64 if klass == ELFCLASS64 else 32, "little" if data == ELFDATA2LSB else "big")
        st = ec.ehdr
        if len(buf) < st.size:
            raise DumpFormatError(path, "ELF header", 0,
                                  f"file is {len(buf)} bytes, shorter than the {st.size}-byte header")
        (ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
         e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) = st.unpack_from(buf, 0)
        return cls(ec, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
                   e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx,
                   osabi=ident[7], ident=ident)

    def pack(self) -> bytes:
        ec = self.elfclass
        ident = bytearray(16)
        ident[:4] = ELFMAG
        ident[4] = ec.ident_class
        ident[5] = ELFDATA2LSB if ec.byteorder == "little" else ELFDATA2MSB
        ident[6] = 1
        ident[7] = self.osabi
        return ec.ehdr.pack(bytes(ident), self.e_type, self.e_machine, self.e_version,
                            self.e_entry, self.e_phoff, self.e_shoff, self.e_flags,
                            ec.ehdr.size, ec.phdr_dtype.itemsize, self.e_phnum,
                            ec.shdr.size if self.e_shnum else 0, self.e_shnum, self.e_shstrndx)


def new_phdrs(n: int, elfclass: ElfClass) -> np.ndarray:
    return np.zeros(n, dtype=elfclass.phdr_dtype)


def pack_elf_core_headers(header: ElfHeader, phdrs: np.ndarray) -> bytes:
    """ELF header + program headers (+ one section header when PN_XNUM is needed).

    Program headers start right after the ELF header, as in ``/proc/vmcore``; with 0xffff
    or more of them ``e_phnum`` is PN_XNUM and a ``SHT_NULL`` section header carrying the
    real count in ``sh_info`` follows the table.
    """
    ec = header.elfclass
    n = len(phdrs)
    hdr = replace(header, e_phoff=ec.ehdr.size, e_shoff=0, e_shnum=0, e_shstrndx=0, e_phnum=n)
    table = phdrs.astype(ec.phdr_dtype).tobytes()
    if n >= PN_XNUM:
        hdr.e_phnum = PN_XNUM
        hdr.e_shoff = ec.ehdr.size + len(table)
        hdr.e_shnum = 1
        sh = ec.shdr.pack(0, SHT_NULL, 0, 0, 0, 0, 0, n, 0, 0)
        return hdr.pack() + table + sh
    return hdr.pack() + table


def elf_core_headers_size(elfclass: ElfClass, n_phdrs: int) -> int:
    extra = elfclass.shdr.size if n_phdrs >= PN_XNUM else 0
    return elfclass.ehdr.size + n_phdrs * elfclass.phdr_dtype.itemsize + extra


class ElfCore:
    """Program headers and notes of an ELF core file, read from a :class:`Source`.

    ``corrections`` lists the deviations from the ELF rules that were read anyway
    (QEMU 7.2's layout, for instance), so that ``kdumpy info`` can say what it fixed.
    A file cut short (the disk filled while it was written) opens up to its last byte:
    PT_LOAD data past the end is counted in :attr:`truncated_loads` and treated as lost.
    """

    def __init__(self, src: Source | BinaryIO, *, path: str | None = None) -> None:
        source = StreamSource(cast(BinaryIO, src), path) if isinstance(src, io.IOBase) else \
            cast(Source, src)
        self.src = source
        path = self.path = source.path
        size = self.file_size = source.size
        self.corrections: list[str] = []
        self.header = h = ElfHeader.parse(source.pread(0, 64), path=path)
        ec = h.elfclass
        if h.e_type != ET_CORE:
            raise DumpFormatError(path, "ELF header", 16, f"e_type {h.e_type} is not ET_CORE (4)")
        self.phdrs = self._read_phdrs()
        self.phdr_offset = h.e_phoff
        self._check_segments()
        #: ``{phdr index: bytes of p_filesz that lie past the end of the file}``
        self.truncated_loads: dict[int, int] = {}
        for i in np.nonzero(self.phdrs["p_type"] == PT_LOAD)[0].tolist():
            ph = self.phdrs[i]
            missing = int(ph["p_offset"]) + int(ph["p_filesz"]) - size
            if missing > 0:
                self.truncated_loads[i] = min(missing, int(ph["p_filesz"]))
        self.notes: list[Note] = []
        self.note_segments: list[tuple[int, bytes]] = []
        for i in np.nonzero(self.phdrs["p_type"] == PT_NOTE)[0].tolist():
            ph = self.phdrs[i]
            off, sz = int(ph["p_offset"]), int(ph["p_filesz"])
            raw = read_exact(source, off, sz, f"program header {int(i)} (PT_NOTE) data")
            self.note_segments.append((off, raw))
            self.notes.extend(parse_notes(raw, byteorder=ec.byteorder, path=path, base_offset=off))
        self.loads = self.phdrs[self.phdrs["p_type"] == PT_LOAD]
        #: file bytes of each PT_LOAD that landed (``p_filesz`` less what lies past the end)
        self.load_filesz = [int(ph["p_filesz"]) - self.truncated_loads.get(int(i), 0)
                            for i, ph in zip(np.nonzero(self.phdrs["p_type"] == PT_LOAD)[0],
                                             self.loads)]

    def _read_phdrs(self) -> np.ndarray:
        h, path, size = self.header, self.path, self.file_size
        ec = h.elfclass
        dt = ec.phdr_dtype
        if h.e_phentsize != dt.itemsize:
            raise DumpFormatError(path, "ELF header", 0x36 if ec.bits == 64 else 0x2a,
                                  f"e_phentsize {h.e_phentsize}, expected {dt.itemsize}")
        if h.e_ehsize != ec.ehdr.size:
            self.corrections.append(f"e_ehsize is {h.e_ehsize}, expected {ec.ehdr.size} "
                                    "(as QEMU 7.2 writes); ignored")
        phnum = h.e_phnum
        if phnum == PN_XNUM:
            phnum = self._phnum_from_section0()
        if h.e_shnum and h.e_shoff and h.e_shoff < h.e_phoff:
            self.corrections.append(
                f"program headers at {h.e_phoff:#x} follow the section headers at "
                f"{h.e_shoff:#x} (QEMU 7.2 layout; makedumpfile expects them at 0x40); "
                "read from e_phoff")
        end = h.e_phoff + phnum * dt.itemsize
        if phnum == 0 or end > size:
            raise DumpFormatError(path, "ELF program headers", h.e_phoff,
                                  f"{phnum} program headers of {dt.itemsize} bytes run past "
                                  f"the end of the {size}-byte file" if phnum else
                                  "no program headers")
        raw = read_exact(self.src, h.e_phoff, end - h.e_phoff, "ELF program headers")
        return np.frombuffer(raw, dtype=dt).copy()

    def _check_segments(self) -> None:
        """Offsets and sizes as numbers, not as uint64 that wrap: a segment must start
        inside the file and p_filesz must fit in p_memsz (the file may end early)."""
        h, path, size = self.header, self.path, self.file_size
        dt = self.header.elfclass.phdr_dtype
        for i, ph in enumerate(self.phdrs):
            ptype = int(ph["p_type"])
            if ptype == PT_NULL:
                continue
            what = f"program header {i} ({'PT_LOAD' if ptype == PT_LOAD else 'type ' + str(ptype)})"
            off, fsz = int(ph["p_offset"]), int(ph["p_filesz"])
            at = h.e_phoff + i * dt.itemsize
            if off + fsz >= 1 << h.elfclass.bits:
                raise DumpFormatError(path, what, at,
                                      f"segment at file offset {off:#x} + {fsz:#x} wraps past "
                                      f"2^{h.elfclass.bits}")
            if fsz and off >= size and ptype != PT_LOAD:
                raise DumpFormatError(path, what, at,
                                      f"segment at file offset {off:#x} + {fsz:#x} runs past "
                                      f"the end of the {size}-byte file")
            if ptype == PT_LOAD:
                if fsz > int(ph["p_memsz"]):
                    raise DumpFormatError(path, what, at, "p_filesz is larger than p_memsz")
                if int(ph["p_paddr"]) + int(ph["p_memsz"]) >= 1 << 64:
                    raise DumpFormatError(path, what, at,
                                          f"physical range {int(ph['p_paddr']):#x} + "
                                          f"{int(ph['p_memsz']):#x} wraps past 2^64")

    def _phnum_from_section0(self) -> int:
        h = self.header
        ec = h.elfclass
        if not h.e_shoff or h.e_shoff + ec.shdr.size > self.file_size:
            raise DumpFormatError(self.path, "ELF header", 0,
                                  "e_phnum is PN_XNUM but there is no section header 0")
        fields = ec.shdr.unpack(read_exact(self.src, h.e_shoff, ec.shdr.size, "section header 0"))
        return int(fields[7])

    @property
    def note_bytes(self) -> bytes:
        """All PT_NOTE segments' bytes, concatenated (what a kdump sub header stores)."""
        return b"".join(raw for _, raw in self.note_segments)

    @property
    def incomplete(self) -> bool:
        """makedumpfile's mark (``e_flags`` bit 0), or PT_LOAD data missing at the end."""
        return bool(self.header.e_flags & EF_KDUMP_INCOMPLETE) or bool(self.truncated_loads)


def plan_filtered_loads(paddr: int, vaddr: int, memsz: int, keep: np.ndarray, page_size: int,
                        min_gap: int = 256) -> list[tuple[int, int, int, int]]:
    """Split one PT_LOAD where long runs of pages are excluded (makedumpfile ``-E``).

    ``keep`` holds one bool per page of the segment (page i covers
    ``paddr + i*page_size``). Runs of fewer than ``min_gap`` excluded pages stay in the
    file; a longer run ends the current segment (its excluded tail becomes ``p_memsz``
    only) and a new one starts at the next kept page. Returns
    ``(p_paddr, p_vaddr, p_filesz, p_memsz)`` tuples; a segment with nothing kept gets
    ``p_filesz`` 0.
    """
    n = len(keep)
    if n == 0:
        return [(paddr, vaddr, 0, memsz)]
    kept_idx = np.flatnonzero(keep)
    if len(kept_idx) == 0:
        return [(paddr, vaddr, 0, memsz)]
    # Gaps between consecutive kept pages that are long enough to cut at.
    gaps = np.diff(kept_idx) - 1
    cut = np.flatnonzero(gaps >= min_gap)
    starts = np.concatenate(([kept_idx[0]], kept_idx[cut + 1]))
    lasts = np.concatenate((kept_idx[cut], [kept_idx[-1]]))
    out: list[tuple[int, int, int, int]] = []
    for k, (s, last) in enumerate(zip(starts.tolist(), lasts.tolist())):
        seg_start = 0 if k == 0 else s
        if k == 0 and s >= min_gap:
            # A long excluded head: makedumpfile starts the first segment at the first kept page.
            out.append((paddr, vaddr, 0, s * page_size))
            seg_start = s
        file_end = min((last + 1) * page_size, memsz)
        next_start = starts[k + 1] if k + 1 < len(starts) else None
        mem_end = next_start * page_size if next_start is not None else memsz
        off = seg_start * page_size
        out.append((paddr + off, vaddr + off, file_end - off, mem_end - off))
    return out
