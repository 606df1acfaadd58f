"""A minimal, independent reader of raw ``/proc/vmcore`` copies (ELF64 little-endian cores).

It exists so the lab's tests have an oracle that shares no code with kdumpy's own readers.

Facts relied on (``fs/proc/vmcore.c``, ``kernel/crash_core.c``, ELF gABI):

* ``/proc/vmcore`` is an ELF64 ``ET_CORE`` file: one ``PT_NOTE`` (NT_PRSTATUS notes named
  ``CORE`` plus the ``VMCOREINFO`` note) and ``PT_LOAD`` segments whose ``p_paddr`` is the
  physical address and ``p_offset`` the file offset of that memory; ``p_filesz == p_memsz``.
* On x86_64 one ``PT_LOAD`` maps the kernel text (virtual address in the
  ``0xffffffff8...`` range) and overlaps a RAM segment physically; both hold the same bytes.
* Note entries are ``namesz, descsz, type`` (u32 each) then the name and descriptor, each
  padded to 4 bytes.
* The crash kernel's reservation is not in any ``PT_LOAD`` (it is a hole in the dump).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PT_LOAD = 1
PT_NOTE = 4


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD: physical start, file offset, size in bytes, virtual address."""

    paddr: int
    offset: int
    size: int
    vaddr: int


class RawVmcore:
    """Memory-mapped ELF vmcore with physical-address reads."""

    def __init__(self, path: Path | str, page_size: int = 4096) -> None:
        self.path = Path(path)
        self.page_size = page_size
        self._file = open(self.path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        ident = self._map[:16]
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise ValueError(f"{path}: not a little-endian ELF64 file")
        (e_type, _machine, _version, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
         e_phnum) = struct.unpack_from("<HHIQQQIHHH", self._map, 16)
        if e_type != 4:
            raise ValueError(f"{path}: ELF type {e_type}, not ET_CORE")
        self.segments: list[Segment] = []
        self.notes: list[tuple[bytes, int, bytes]] = []
        for i in range(e_phnum):
            (p_type, _pflags, p_offset, p_vaddr, p_paddr, p_filesz, _memsz,
             _align) = struct.unpack_from("<IIQQQQQQ", self._map, e_phoff + i * e_phentsize)
            if p_type == PT_LOAD:
                self.segments.append(Segment(p_paddr, p_offset, p_filesz, p_vaddr))
            elif p_type == PT_NOTE:
                self.notes.extend(self._parse_notes(p_offset, p_filesz))
        # RAM segments first so a page is served from its RAM segment; text segment last.
        self.segments.sort(key=lambda s: (s.vaddr >= 0xFFFFFFFF80000000, s.paddr))

    def _parse_notes(self, offset: int, size: int) -> Iterator[tuple[bytes, int, bytes]]:
        pos, end = offset, offset + size
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", self._map, pos)
            pos += 12
            name = bytes(self._map[pos:pos + namesz]).rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = bytes(self._map[pos:pos + descsz])
            pos += (descsz + 3) & ~3
            if namesz == 0 and descsz == 0:
                break
            yield name, ntype, desc

    def close(self) -> None:
        self._map.close()
        self._file.close()

    def __enter__(self) -> RawVmcore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def vmcoreinfo(self) -> dict[str, str]:
        """The VMCOREINFO note as key -> raw value."""
        for name, _type, desc in self.notes:
            if name == b"VMCOREINFO":
                out = {}
                for line in desc.rstrip(b"\0").decode(errors="replace").splitlines():
                    key, sep, value = line.partition("=")
                    if sep:
                        out[key] = value
                return out
        return {}

    def ram_segments(self) -> list[Segment]:
        """PT_LOADs of the direct-mapped RAM (the kernel-text alias excluded)."""
        return [s for s in self.segments if s.vaddr < 0xFFFFFFFF80000000]

    def full_page_ranges(self) -> list[tuple[int, int]]:
        """Half-open PFN ranges of pages lying wholly inside one RAM segment."""
        ps = self.page_size
        out = [(-(-s.paddr // ps), (s.paddr + s.size) // ps) for s in self.ram_segments()]
        return [(lo, hi) for lo, hi in out if lo < hi]

    def page_ranges(self) -> list[tuple[int, int]]:
        """Half-open, merged PFN ranges of pages with at least one byte in a RAM segment.

        With kexec_load (not kexec_file_load) the first segment ends mid-page
        (e.g. 0x1000-0x9fc00), so its last page is only partly in the dump.
        """
        ps = self.page_size
        spans = sorted((s.paddr // ps, -(-(s.paddr + s.size) // ps)) for s in self.ram_segments())
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def partial_pages(self) -> list[int]:
        """PFNs in :meth:`page_ranges` that are not wholly inside one RAM segment."""
        ps = self.page_size
        full = self.full_page_ranges()
        out: list[int] = []
        for seg in self.ram_segments():
            for pfn in (seg.paddr // ps, (seg.paddr + seg.size - 1) // ps):
                if not any(a <= pfn < b for a, b in full) and pfn not in out:
                    out.append(pfn)
        return sorted(out)

    def covered(self, pfn: int) -> list[tuple[int, int]]:
        """Byte intervals (offsets within the page) of ``pfn`` that RAM segments hold."""
        ps = self.page_size
        start, end = pfn * ps, (pfn + 1) * ps
        out = []
        for seg in self.ram_segments():
            lo, hi = max(start, seg.paddr), min(end, seg.paddr + seg.size)
            if lo < hi:
                out.append((lo - start, hi - start))
        return sorted(out)

    def offset_of(self, paddr: int) -> int | None:
        """File offset of physical address ``paddr``, or None if it is not in the dump."""
        for seg in self.segments:
            if seg.paddr <= paddr < seg.paddr + seg.size:
                return seg.offset + (paddr - seg.paddr)
        return None

    def read_phys(self, paddr: int, size: int) -> bytes:
        """``size`` bytes at ``paddr``; raises KeyError if any part is outside the dump."""
        out = bytearray()
        while size > 0:
            off = self.offset_of(paddr)
            if off is None:
                raise KeyError(f"physical address {paddr:#x} not in {self.path.name}")
            seg = next(s for s in self.segments if s.paddr <= paddr < s.paddr + s.size)
            chunk = min(size, seg.paddr + seg.size - paddr)
            out += self._map[off:off + chunk]
            paddr += chunk
            size -= chunk
        return bytes(out)

    def read_pages(self, start_pfn: int, count: int) -> memoryview:
        """``count`` consecutive pages from one RAM segment, without copying."""
        ps = self.page_size
        paddr = start_pfn * ps
        for seg in self.ram_segments():
            if seg.paddr <= paddr and paddr + count * ps <= seg.paddr + seg.size:
                off = seg.offset + paddr - seg.paddr
                return memoryview(self._map)[off:off + count * ps]
        raise KeyError(f"pfns {start_pfn}..{start_pfn + count} not within one RAM segment")

    def find(self, needle: bytes) -> list[int]:
        """Physical addresses of every occurrence of ``needle`` in RAM segments."""
        hits = []
        for seg in self.ram_segments():
            pos = self._map.find(needle, seg.offset, seg.offset + seg.size)
            while pos >= 0:
                hits.append(seg.paddr + pos - seg.offset)
                pos = self._map.find(needle, pos + 1, seg.offset + seg.size)
        return hits
