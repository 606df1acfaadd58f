"""One physical address space over any dump kdumpy reads.

:func:`open_dump` recognises an ELF core (``/proc/vmcore``, ``makedumpfile -E``, QEMU
``dump-guest-memory``), a kdump-compressed file or split set, and either of those inside a
flattened stream, and returns a :class:`Dump`: page frames by PFN, each in one
:class:`PageState` (absent: no RAM there; excluded: RAM the dump left out; lost: its data
never landed in the file; dumpable: its data is in the file), plus what the file records
about the crash (notes, registers per CPU, VMCOREINFO, utsname, crash time, dump level).

Reads are strict: :meth:`Dump.read_phys` raises :class:`FaultError` for any byte that is
not dumpable; ``zero_fill=True`` (what the capture pipeline asks for, since the dump
formats write excluded pages of a kept range as zeros) reads those bytes as zeros.
Files are read with ``pread`` (:mod:`kdumpy.formats.source`); nothing holds a whole dump.
"""

from __future__ import annotations

import bisect
import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from kdumpy import arch as arches
from kdumpy.errors import DumpFormatError, KdumpyError
from kdumpy.formats import bitmap as bm
from kdumpy.formats.elf import ELFMAG, ElfCore, ElfHeader
from kdumpy.formats.flattened import FlattenedImage, is_flattened
from kdumpy.formats.kdump import (DISKDUMP_SIGNATURE, KDUMP_SIGNATURE, KdumpFile,
                                  order_split_files)
from kdumpy.formats.notes import NT_PRSTATUS, VMCOREINFO_NOTE_NAME, Note, Prstatus
from kdumpy.formats.source import FileSource, Source
from kdumpy.formats.vmcoreinfo import VmcoreInfo

__all__ = ["Dump", "ElfDump", "KdumpDump", "FaultError", "PageState", "open_dump",
           "MACHINE_TO_EM", "EM_TO_MACHINE"]

#: ``e_machine`` for a kdump file's utsname machine.
MACHINE_TO_EM = {"x86_64": 62, "i386": 3, "i686": 3, "aarch64": 183, "ppc64le": 21,
                 "ppc64": 21, "s390x": 22, "riscv64": 243, "arm": 40}
EM_TO_MACHINE = {62: "x86_64", 3: "i386", 183: "aarch64", 21: "ppc64", 22: "s390x",
                 243: "riscv64", 40: "arm"}


class PageState(enum.IntEnum):
    """What a dump holds for one page frame."""

    #: outside every physical range of the dump (no RAM, or a hole such as crashkernel=)
    ABSENT = 0
    #: RAM the dump left out (filtered by dump level, or past ``p_filesz``)
    EXCLUDED = 1
    #: meant to be in the dump, but its data never landed (a file cut short)
    LOST = 2
    #: its contents are in the dump
    DUMPABLE = 3
    #: its contents are in the dump and every byte is zero (a DUMPABLE page, told apart
    #: only when asked: ``page_state(pfn, zero=True)``, ``page_runs(zero=True)``)
    ZERO = 4


class FaultError(KdumpyError):
    """A read touched memory the dump does not hold.

    ``address`` is the first physical (or, from :class:`kdumpy.KernelView`, virtual)
    address at fault; ``reason`` is ``"absent"``, ``"excluded"``, ``"lost"`` or
    ``"not mapped"``.
    """

    def __init__(self, address: int, reason: str, path: str | None = None,
                 space: str = "physical") -> None:
        self.address = address
        self.reason = reason
        self.path = path
        self.space = space
        super().__init__(f"{path or '<dump>'}: {space} address {address:#x} is {reason} "
                         "in this dump")


def _slice_bits(bitmap: np.ndarray, start: int, count: int) -> np.ndarray:
    """A copy of the bytes of ``bitmap`` covering bits ``[start, start+count)`` (``start`` a
    multiple of 8), zero-padded past the bitmap's end; bits past ``count`` cleared."""
    if start & 7:
        raise ValueError(f"bitmap slice must start on a byte: {start}")
    nbytes = (count + 7) >> 3
    out = np.zeros(nbytes, dtype=np.uint8)
    part = np.asarray(bitmap[start >> 3:(start >> 3) + nbytes], dtype=np.uint8)
    out[:len(part)] = part
    if count & 7:
        out[-1] &= (1 << (count & 7)) - 1
    return out


def _interval_bits(intervals: Sequence[tuple[int, int]], start: int, count: int) -> np.ndarray:
    """Packed bits of ``[start, start+count)`` set where the sorted ``intervals`` cover."""
    out = bm.new_bitmap(count)
    end = start + count
    i = max(0, bisect.bisect_right(intervals, (start, start)) - 1)
    for s, e in intervals[i:]:
        if e <= start:
            continue
        if s >= end:
            break
        bm.set_range(out, max(s, start) - start, min(e, end) - start)
    return out


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _in(intervals: list[tuple[int, int]], pfn: int) -> bool:
    i = bisect.bisect_right(intervals, (pfn, float("inf"))) - 1
    return i >= 0 and intervals[i][0] <= pfn < intervals[i][1]


def _covers(intervals: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether one interval holds all of ``[start, end)`` (intervals are merged)."""
    i = bisect.bisect_right(intervals, (start, float("inf"))) - 1
    return i >= 0 and intervals[i][0] <= start and end <= intervals[i][1]


class Dump(ABC):
    """The physical memory of a crashed machine as one dump file (or split set) holds it.

    Attributes common to every format: ``path``, ``format`` ("elf" or "kdump"),
    ``container`` ("file", "flattened" or "split"), ``page_size``, ``max_pfn`` (one past
    the highest PFN), ``notes``, ``vmcoreinfo`` (None when the dump has none),
    ``compression``, ``machine`` (``uname -m``), ``byteorder``, ``corrections`` (format
    deviations read anyway), and the properties below.
    """

    path: str
    format: str
    container: str
    page_size: int
    max_pfn: int
    notes: list[Note]
    vmcoreinfo: VmcoreInfo | None
    compression: str
    corrections: list[str]
    machine: str
    byteorder: str
    #: the ELF header of an ELF dump (None for kdump-compressed)
    elf_header: ElfHeader | None = None
    #: ``(p_paddr, p_memsz, p_filesz, p_offset, p_vaddr)`` of an ELF dump's PT_LOADs
    #: (p_filesz as much as landed), None for kdump-compressed
    load_segments: list[tuple[int, int, int, int, int]] | None = None
    #: a flattened stream that ends without its end marker (its writer never finished)
    stream_cut: bool = False

    def __init__(self, sources: Sequence[Source]) -> None:
        self._sources = list(sources)

    # -- facts recorded in the file ---------------------------------------------------------
    @property
    @abstractmethod
    def incomplete(self) -> bool:
        """The dump is known not to be whole: marked incomplete by its writer, or cut short."""

    @abstractmethod
    def lost_pages(self) -> int:
        """Pages whose data should be in the file but is not (see :attr:`PageState.LOST`)."""

    @property
    def note_bytes(self) -> bytes:
        """The PT_NOTE bytes as the file holds them (what a kdump sub header stores)."""
        from kdumpy.formats.notes import build_notes
        return build_notes(self.notes, byteorder=self.byteorder)  # type: ignore[arg-type]

    @property
    def utsname(self) -> dict[str, str]:
        """``struct new_utsname`` as the file's header records it ({} if it has none; the
        kernel's own copy is :meth:`kdumpy.KernelView.read_kernel_utsname`)."""
        return {}

    @property
    def crash_time(self) -> int | None:
        """Seconds since the epoch at the crash: VMCOREINFO ``CRASHTIME``, else the header's."""
        return self.vmcoreinfo.crash_time if self.vmcoreinfo is not None else None

    @property
    def dump_level(self) -> int | None:
        """The dump level the file was written with (kdump-compressed), None if unknown."""
        return None

    @property
    def phys_base(self) -> int | None:
        """VMCOREINFO ``NUMBER(phys_base)`` (signed), None if absent."""
        if self.vmcoreinfo is not None:
            try:
                return self.vmcoreinfo.number("phys_base")
            except DumpFormatError:
                return None
        return None

    def kernel_image_ranges(self) -> list[tuple[int, int]]:
        """PFN ranges ``[start, end)`` the file says map the kernel image (the PT_LOADs at
        ``__START_KERNEL_map`` of ``/proc/vmcore``); [] when the file does not say."""
        return []

    def prstatus(self) -> list[Prstatus]:
        """NT_PRSTATUS of every CPU, in note order (the crashing CPU saved its own)."""
        em = MACHINE_TO_EM.get(self.machine, 62)
        return [Prstatus.parse(n.desc, em, byteorder=self.byteorder, path=self.path)  # type: ignore[arg-type]
                for n in self.notes if n.type == NT_PRSTATUS and n.name == "CORE"]

    def registers(self) -> list[dict[str, int]]:
        """The registers each CPU saved at the crash (``pr_reg`` by name), in note order."""
        return [p.registers for p in self.prstatus()]

    # -- what exists --------------------------------------------------------------------
    @abstractmethod
    def present_bitmap(self) -> np.ndarray:
        """Packed bitmap (LSB first) of PFNs inside the dumped physical ranges."""

    @abstractmethod
    def dumpable_bitmap(self) -> np.ndarray:
        """Packed bitmap of PFNs whose contents the dump means to hold."""

    def is_present(self, pfn: int) -> bool:
        return bm.test_bit(self.present_bitmap(), pfn)

    def is_dumpable(self, pfn: int) -> bool:
        return bm.test_bit(self.dumpable_bitmap(), pfn)

    def page_state(self, pfn: int, *, zero: bool = False) -> PageState:
        """:class:`PageState` of one page frame; with ``zero``, a dumpable page whose
        bytes are all zero is :attr:`PageState.ZERO` (this reads the page)."""
        if not 0 <= pfn < self.max_pfn or not self.is_present(pfn):
            return PageState.ABSENT
        if not self.is_dumpable(pfn):
            return PageState.EXCLUDED
        if not self._stored(pfn, 1).all():
            return PageState.LOST
        if zero and not self.read_pfns(pfn, 1).any():
            return PageState.ZERO
        return PageState.DUMPABLE

    def zero_bits(self, start: int, count: int) -> np.ndarray:
        """Bool per PFN of ``[start, start+count)``: dumpable, its data in the dump, and
        all zero (makedumpfile's zero-page class, ``-d 1``). Reads the pages, so callers
        walk a large range in pieces."""
        pages, have = self._read_pages(start, count)
        lo = start & ~7
        dumpable = bm.bits_range(self.dumpable_bits(lo, start - lo + count), start - lo, count)
        return dumpable & have & ~pages.any(axis=1)

    def _stored(self, start: int, count: int) -> np.ndarray:
        """Bool per dumpable PFN of ``[start, start+count)``: its data is in the file."""
        return np.ones(count, dtype=bool)

    def present_bits(self, start: int, count: int) -> np.ndarray:
        """Packed bitmap (bit 0 = PFN ``start``, a multiple of 8) of the present PFNs in
        ``[start, start+count)``: one cycle's part, without the whole bitmap."""
        return _slice_bits(self.present_bitmap(), start, count)

    def dumpable_bits(self, start: int, count: int) -> np.ndarray:
        """Like :meth:`present_bits`, for the PFNs whose data is in the file (lost pages
        are left out: a copy never turns them into data)."""
        return _slice_bits(self.dumpable_bitmap(), start, count)

    def lost_bits(self, start: int, count: int) -> np.ndarray | None:
        """Bool per PFN of ``[start, start+count)``: pages the dump was meant to hold whose
        data never landed (:attr:`PageState.LOST`); None when there is none there. A copy
        of the dump keeps them lost rather than turning them into data."""
        return None

    def present_ranges(self) -> Iterator[tuple[int, int]]:
        return bm.runs(self.present_bitmap(), self.max_pfn)

    def dumpable_ranges(self) -> Iterator[tuple[int, int]]:
        return bm.runs(self.dumpable_bitmap(), self.max_pfn)

    def page_runs(self, *, zero: bool = False) -> Iterator[tuple[int, int, PageState]]:
        """``(start, end, state)`` runs of PFNs covering ``[0, max_pfn)`` in order, with
        ABSENT, EXCLUDED and DUMPABLE states (lost pages count as DUMPABLE here; see
        :meth:`page_state`). With ``zero``, DUMPABLE runs are split into DUMPABLE and ZERO
        by reading their pages (:meth:`zero_bits`, a few MiB at a time)."""
        for start, end, state in self._state_runs():
            if not zero or state != PageState.DUMPABLE:
                yield start, end, state
                continue
            step = max(1, (4 << 20) // self.page_size)
            for s in range(start, end, step):
                z = self.zero_bits(s, min(step, end - s)).astype(np.int8)
                edges = np.flatnonzero(np.diff(z)) + 1
                bounds = [0, *edges.tolist(), len(z)]
                for a, b in zip(bounds, bounds[1:]):
                    yield s + a, s + b, PageState.ZERO if z[a] else PageState.DUMPABLE

    def _state_runs(self) -> Iterator[tuple[int, int, PageState]]:
        pos = 0
        dumpable = iter(self.dumpable_ranges())
        nxt = next(dumpable, None)
        for ps, pe in self.present_ranges():
            if ps > pos:
                yield pos, ps, PageState.ABSENT
            pos = ps
            while nxt is not None and nxt[0] < pe:
                ds, de = max(nxt[0], ps), min(nxt[1], pe)
                if ds > pos:
                    yield pos, ds, PageState.EXCLUDED
                if de > ds:
                    yield ds, de, PageState.DUMPABLE
                    pos = de
                if nxt[1] <= pe:
                    nxt = next(dumpable, None)
                else:
                    break
            if pe > pos:
                yield pos, pe, PageState.EXCLUDED
            pos = pe
        if self.max_pfn > pos:
            yield pos, self.max_pfn, PageState.ABSENT

    def count_present(self) -> int:
        return bm.count_bits(self.present_bitmap(), 0, self.max_pfn)

    def count_dumpable(self) -> int:
        return bm.count_bits(self.dumpable_bitmap(), 0, self.max_pfn)

    # -- contents -----------------------------------------------------------------------
    @abstractmethod
    def _read_pages(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Pages ``[start, start+count)`` as a ``(count, page_size)`` uint8 array (zeros
        where no data) and the bool mask of pages whose data was read."""

    def read_pfns(self, start: int, count: int, *, zero_fill: bool = False) -> np.ndarray:
        """Pages ``[start, start+count)`` as a ``(count, page_size)`` uint8 array.

        A page that is not dumpable raises :class:`FaultError` (with ``zero_fill``: reads
        as zeros).
        """
        out, have = self._read_pages(start, count)
        if not zero_fill and not have.all():
            self._fault(start + int(np.flatnonzero(~have)[0]))
        return out

    def _fault(self, pfn: int, offset: int = 0) -> None:
        state = self.page_state(pfn)
        reason = {PageState.ABSENT: "absent", PageState.EXCLUDED: "excluded",
                  PageState.LOST: "lost"}.get(state, "lost")
        raise FaultError(pfn * self.page_size + offset, reason, self.path)

    def read_pfn(self, pfn: int, *, zero_fill: bool = False) -> bytes:
        return self.read_pfns(pfn, 1, zero_fill=zero_fill).tobytes()

    def read_pfns_bytes(self, start: int, count: int, *, zero_fill: bool = False) -> bytes:
        """:meth:`read_pfns` as one ``bytes`` object (the capture pipeline slices pages
        out of it for the codecs)."""
        return self.read_pfns(start, count, zero_fill=zero_fill).tobytes()

    def read_phys(self, addr: int, size: int, *, zero_fill: bool = False) -> bytes:
        """``size`` bytes at physical address ``addr``.

        Raises :class:`FaultError` (address and reason: absent, excluded or lost) at the
        first byte the dump does not hold, unless ``zero_fill`` asks for zeros there.
        """
        if size <= 0:
            return b""
        ps = self.page_size
        if addr < 0 or addr + size > self.max_pfn * ps:
            if not zero_fill:
                raise FaultError(max(addr, self.max_pfn * ps) if addr >= 0 else addr,
                                 "absent", self.path)
        first = addr // ps
        last = (addr + size + ps - 1) // ps
        out, have = self._read_pages(first, last - first)
        if not zero_fill and not have.all():
            k = int(np.flatnonzero(~have)[0])
            self._fault(first + k, max(0, addr - (first + k) * ps))
        data = out.tobytes()
        off = addr - first * ps
        if off == 0 and size == len(data):
            return data
        return data[off:off + size]

    # -- description --------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        vi = self.vmcoreinfo
        return {
            "path": self.path,
            "format": self.format,
            "container": self.container,
            "compression": self.compression,
            "machine": self.machine,
            "kernel_release": vi.osrelease if vi else None,
            "crash_time": vi.crash_time if vi else None,
            "page_size": self.page_size,
            "max_pfn": self.max_pfn,
            "pages_present": self.count_present(),
            "pages_dumpable": self.count_dumpable(),
            "incomplete": self.incomplete,
            "pages_lost": self.lost_pages(),
            "phys_base": self.phys_base,
            "nr_cpus": sum(1 for n in self.notes if n.type == NT_PRSTATUS and n.name == "CORE"),
            "notes": [{"name": n.name, "type": n.type, "size": len(n.desc)} for n in self.notes],
            "corrections": list(self.corrections),
            "vmcoreinfo": dict(vi) if vi else {},
        }

    # -- lifetime -------------------------------------------------------------------------
    def trim(self) -> None:
        """Drop this process's mappings of pages already read (``/proc/vmcore``'s map);
        long sequential passes call this now and then to keep RSS flat."""
        for src in self._sources:
            trim = getattr(src, "trim", None)
            if trim is not None:
                trim()

    def close(self) -> None:
        for src in reversed(self._sources):
            close = getattr(src, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vmcoreinfo_from_notes(notes: list[Note], path: str) -> VmcoreInfo | None:
    for n in notes:
        if n.name == VMCOREINFO_NOTE_NAME:
            return VmcoreInfo.parse(n.desc, path=path, offset=n.desc_offset)
    return None


def _check_phys_limit(dump: Dump, ranges: Iterable[tuple[int, int, int]], structure: str) -> None:
    """Every range ``(index, start, end)`` lies below ``2^MAX_PHYSMEM_BITS`` (VMCOREINFO's,
    else the architecture's): a flipped bit in an address or size is refused before
    anything is written, rather than read as terabytes of absent memory."""
    try:
        bits = arches.arch_for(dump.machine).max_physmem_bits(dump.vmcoreinfo)
    except KdumpyError:
        bits = arches.MAX_PHYSMEM_BITS
    limit = 1 << bits
    for i, start, end in ranges:
        if end > limit:
            raise DumpFormatError(dump.path, structure.format(i=i), None,
                                  f"physical range {start:#x}-{end:#x} is beyond the {bits}-bit "
                                  "physical address space (MAX_PHYSMEM_BITS)")


class ElfDump(Dump):
    """An ELF core: PT_LOAD ``p_paddr`` ranges, file-backed up to ``p_filesz``."""

    format = "elf"

    def __init__(self, src: Source, *, container: str) -> None:
        super().__init__([src])
        self.src = src
        self.path = src.path or "<dump>"
        self.container = container
        self.core = core = ElfCore(src)
        self.elf_header = core.header
        self.notes = core.notes
        self.corrections = list(core.corrections)
        self.vmcoreinfo = _vmcoreinfo_from_notes(self.notes, self.path)
        self.page_size = self._page_size()
        self.machine = EM_TO_MACHINE.get(core.header.e_machine, str(core.header.e_machine))
        self.byteorder = core.header.elfclass.byteorder
        self.compression = "none"
        ps = self.page_size
        self.load_segments = [(int(p["p_paddr"]), int(p["p_memsz"]), landed, int(p["p_offset"]),
                               int(p["p_vaddr"])) for p, landed in zip(core.loads, core.load_filesz)]
        first_phdr = core.phdr_offset
        _check_phys_limit(self, ((i, pa, pa + mem) for i, (pa, mem, *_r)
                                 in enumerate(self.load_segments)),
                          f"PT_LOAD {{i}} (program headers at {first_phdr:#x})")
        end = max((pa + mem for pa, mem, *_ in self.load_segments), default=0)
        self.max_pfn = -(-end // ps)
        # Whole pages only: a PT_LOAD ending mid-page (kexec_load's BIOS range 0x1000-0x9fc00)
        # does not make its last page present, as makedumpfile's paddr_to_pfn(end) rounds down.
        self._present_iv = _merge((pa // ps, (pa + mem) // ps)
                                  for pa, mem, *_ in self.load_segments)
        cut = {self._load_index(i) for i in core.truncated_loads}
        # a segment cut short keeps only its whole pages; its other pages are lost
        self._dumpable_iv = _merge(
            (pa // ps, (pa + fsz) // ps if k in cut else min(-(-(pa + fsz) // ps), (pa + m) // ps))
            for k, (pa, m, fsz, *_r) in enumerate(self.load_segments) if fsz)
        self._lost_iv = _merge(((pa + fsz) // ps, -(-(pa + int(p["p_filesz"])) // ps))
                               for k, ((pa, _m, fsz, *_r), p) in
                               enumerate(zip(self.load_segments, core.loads)) if k in cut)
        self._present: np.ndarray | None = None
        self._dumpable: np.ndarray | None = None

    def _page_size(self) -> int:
        vi = self.vmcoreinfo
        ps = vi.page_size if vi is not None and vi.page_size else 4096
        if ps < 4096 or ps > 65536 or ps & (ps - 1):
            raise DumpFormatError(self.path, "VMCOREINFO PAGESIZE", None,
                                  f"{ps} is not a power of two from 4096 to 65536")
        return ps

    def _load_index(self, phdr_index: int) -> int:
        """Position among the PT_LOADs of program header ``phdr_index``."""
        from kdumpy.formats.elf import PT_LOAD
        return int(np.count_nonzero(self.core.phdrs["p_type"][:phdr_index] == PT_LOAD))

    @property
    def segments(self) -> list[tuple[int, int, int, int, int]]:
        """:attr:`load_segments` (the name callers used first)."""
        return self.load_segments or []

    @property
    def incomplete(self) -> bool:
        return self.core.incomplete or self.stream_cut

    def lost_pages(self) -> int:
        """Pages of PT_LOAD data past the end of a file cut short (whole pages that are
        not also held by another PT_LOAD)."""
        return sum(e - s for s, e in self._lost_iv) - sum(
            max(0, min(e, de) - max(s, ds)) for s, e in self._lost_iv for ds, de in self._dumpable_iv)

    @property
    def note_bytes(self) -> bytes:
        return self.core.note_bytes

    def kernel_image_ranges(self) -> list[tuple[int, int]]:
        ps = self.page_size
        try:
            start_map = arches.arch_for(self.machine).START_KERNEL_MAP
        except KdumpyError:
            return []
        return [(pa // ps, -(-(pa + msz) // ps)) for pa, msz, _f, _o, va in self.load_segments or ()
                if va >= start_map]

    def _bitmap(self, iv: list[tuple[int, int]]) -> np.ndarray:
        b = bm.new_bitmap(self.max_pfn)
        for s, e in iv:
            bm.set_range(b, s, e)
        return b

    def present_bitmap(self) -> np.ndarray:
        if self._present is None:
            self._present = self._bitmap(self._present_iv)
        return self._present

    def dumpable_bitmap(self) -> np.ndarray:
        if self._dumpable is None:
            self._dumpable = self._bitmap(self._dumpable_iv)
        return self._dumpable

    def present_bits(self, start: int, count: int) -> np.ndarray:
        return _interval_bits(self._present_iv, start, count)

    def dumpable_bits(self, start: int, count: int) -> np.ndarray:
        return _interval_bits(self._dumpable_iv, start, count)

    def lost_bits(self, start: int, count: int) -> np.ndarray | None:
        if not self._lost_iv:
            return None
        lost = bm.bits_range(_interval_bits(self._lost_iv, start, count), 0, count)
        lost &= ~bm.bits_range(_interval_bits(self._dumpable_iv, start, count), 0, count)
        return lost if lost.any() else None

    def present_ranges(self) -> Iterator[tuple[int, int]]:
        return iter(self._present_iv)

    def dumpable_ranges(self) -> Iterator[tuple[int, int]]:
        return iter(self._dumpable_iv)

    def count_present(self) -> int:
        return sum(e - s for s, e in self._present_iv)

    def count_dumpable(self) -> int:
        return sum(e - s for s, e in self._dumpable_iv)

    def is_present(self, pfn: int) -> bool:
        return _in(self._present_iv, pfn)

    def is_dumpable(self, pfn: int) -> bool:
        return _in(self._dumpable_iv, pfn) or _in(self._lost_iv, pfn)

    def _stored(self, start: int, count: int) -> np.ndarray:
        return bm.bits_range(_interval_bits(self._dumpable_iv, start, count), 0, count)

    def _read_pages(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        ps = self.page_size
        out = np.zeros(count * ps, dtype=np.uint8)
        lo, hi = start * ps, (start + count) * ps
        view = out.data
        for pa, _mem, fsz, off, _va in self.load_segments or ():
            a, b = max(lo, pa), min(hi, pa + fsz)
            if a >= b:
                continue
            src = off + (a - pa)
            got = self.src.preadv([view[a - lo:b - lo]], src)  # type: ignore[attr-defined]
            if got != b - a:
                raise DumpFormatError(self.path, "PT_LOAD data", src,
                                      f"file ends {got} bytes into a {b - a}-byte read "
                                      "(it shrank after it was opened)")
        if _covers(self._dumpable_iv, start, start + count):
            have = np.ones(count, dtype=bool)
        else:
            have = self._stored(start, count)
        return out.reshape(count, ps), have

    def read_pfns_bytes(self, start: int, count: int, *, zero_fill: bool = False) -> bytes:
        """One copy out of the file when the range lies inside one segment's file data
        (the common case: the pipeline reads runs of dumpable pages), else
        :meth:`read_pfns`."""
        ps = self.page_size
        lo, size = start * ps, count * ps
        for pa, _mem, fsz, off, _va in self.load_segments or ():
            if pa <= lo and lo + size <= pa + fsz:
                src = off + (lo - pa)
                data = self.src.pread(src, size)
                if len(data) != size:
                    raise DumpFormatError(self.path, "PT_LOAD data", src,
                                          f"file ends {len(data)} bytes into a {size}-byte read "
                                          "(it shrank after it was opened)")
                return data
        return self.read_pfns(start, count, zero_fill=zero_fill).tobytes()

    def file_runs(self, start: int, count: int) -> list[tuple[int, int, int]]:
        """``(pfn, npages, file_offset)`` of whole pages in ``[start, start+count)`` that sit
        contiguously in the file (for zero-copy reads by the capture pipeline)."""
        ps = self.page_size
        runs: list[tuple[int, int, int]] = []
        for pa, _mem, fsz, off, _va in self.load_segments or ():
            s = max(start, -(-pa // ps))
            e = min(start + count, (pa + fsz) // ps)
            if s < e:
                runs.append((s, e - s, off + s * ps - pa))
        return runs


class KdumpDump(Dump):
    """A kdump-compressed file or split set."""

    format = "kdump"

    def __init__(self, files: Sequence[KdumpFile], *, path: str, container: str,
                 sources: Sequence[Source]) -> None:
        super().__init__(sources)
        self.path = path
        self.container = container
        self.files = order_split_files(files) if len(files) > 1 else list(files)
        first = self.files[0]
        self.header = first.header
        self.sub = first.sub
        self.page_size = first.header.block_size
        self.max_pfn = first.max_mapnr
        self.notes = first.notes
        self.vmcoreinfo = first.vmcoreinfo
        self.compression = first.codec_name
        self.machine = first.header.utsname.get("machine") or "x86_64"
        self.byteorder = first.arch.byteorder
        self.corrections = []
        _check_phys_limit(self, [(0, 0, self.max_pfn * self.page_size)],
                          "kdump_sub_header max_mapnr")
        self._note_corrections()
        if len(self.files) > 1:
            self.container = "split"

    def _note_corrections(self) -> None:
        first, vi = self.files[0], self.vmcoreinfo
        if first.header.block_size != (vi.page_size if vi and vi.page_size else first.header.block_size):
            self.corrections.append("block_size differs from VMCOREINFO PAGESIZE")
        vi_base = None
        if vi is not None:
            try:
                vi_base = vi.number("phys_base")
            except DumpFormatError:
                vi_base = None
        if vi_base is not None and vi_base != first.sub.phys_base:
            self.corrections.append(
                f"sub header phys_base {first.sub.phys_base:#x} disagrees with VMCOREINFO "
                f"NUMBER(phys_base)={vi_base} ({vi_base:#x}); QEMU 7.2 parses that decimal "
                "value as hex: using VMCOREINFO's")
        if not first.header.utsname.get("release") and vi and vi.osrelease:
            self.corrections.append("utsname is empty (as QEMU writes it); kernel release taken "
                                    "from VMCOREINFO OSRELEASE")

    @property
    def incomplete(self) -> bool:
        return any(f.incomplete for f in self.files) or self.stream_cut

    @property
    def truncated(self) -> bool:
        """A file of the set ends before its last page's descriptor or data."""
        return any(f.truncated for f in self.files)

    @property
    def utsname(self) -> dict[str, str]:
        return dict(self.header.utsname)

    @property
    def crash_time(self) -> int | None:
        return super().crash_time or self.header.tv_sec or None

    @property
    def dump_level(self) -> int | None:
        return self.sub.dump_level

    @property
    def note_bytes(self) -> bytes:
        return self.files[0].note_bytes

    def present_bitmap(self) -> np.ndarray:
        return self.files[0].bitmap1

    def dumpable_bitmap(self) -> np.ndarray:
        return self.files[0].bitmap2

    def dumpable_bits(self, start: int, count: int) -> np.ndarray:
        bits = super().dumpable_bits(start, count)
        if not self.incomplete:
            return bits
        return np.packbits(self._stored(start, count) & bm.bits_range(bits, 0, count),
                           bitorder="little")

    def lost_bits(self, start: int, count: int) -> np.ndarray | None:
        if not self.incomplete:
            return None
        lost = bm.bits_range(self.dumpable_bitmap(), start, count)
        lost &= ~self._stored(start, count)
        return lost if lost.any() else None

    def _stored(self, start: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=bool)
        end = start + count
        for f in self.files:
            s, e = max(start, f.start_pfn), min(end, f.end_pfn)
            if s < e:
                out[s - start:e - start] = f.stored_bits(s, e - s)
        return out

    @property
    def phys_base(self) -> int | None:
        base = super().phys_base
        return base if base is not None else self.sub.phys_base

    def _read_pages(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        ps = self.page_size
        out = np.zeros((count, ps), dtype=np.uint8)
        have = np.zeros(count, dtype=bool)
        end = start + count
        for f in self.files:
            s, e = max(start, f.start_pfn), min(end, f.end_pfn)
            if s < e:
                have[s - start:e - start] = f.read_pages(s, e - s, out[s - start:e - start])
        return out, have

    def lost_pages(self) -> int:
        return sum(f.lost_pages() for f in self.files)

    def info(self) -> dict[str, Any]:
        d = super().info()
        h = self.header
        d["header_version"] = h.header_version
        d["dump_level"] = self.sub.dump_level
        d["utsname"] = dict(h.utsname)
        if not d["kernel_release"]:
            d["kernel_release"] = h.utsname.get("release") or None
        if not d["crash_time"]:
            d["crash_time"] = h.tv_sec or None
        d["split_files"] = [f.path for f in self.files] if len(self.files) > 1 else []
        return d


def _open_source(path: str) -> tuple[Source, str]:
    """The file as a :class:`Source`, unwrapped from a flattened stream if it is one."""
    fsrc = FileSource(path)
    try:
        if is_flattened(fsrc.pread(0, 16)):
            return _FlattenedSource(fsrc), "flattened"
    except BaseException:
        fsrc.close()
        raise
    return fsrc, "file"


class _FlattenedSource(FlattenedImage):
    """A flattened stream over its file, closed with it."""

    def __init__(self, fsrc: FileSource) -> None:
        self._file = fsrc
        try:
            super().__init__(fsrc)
        except BaseException:
            fsrc.close()
            raise

    def preadv(self, buffers: list[memoryview], offset: int) -> int:
        n = 0
        for b in buffers:
            part = self.pread(offset + n, len(b))
            b[:len(part)] = part
            n += len(part)
        return n

    def close(self) -> None:
        self._file.close()


def open_dump(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Dump:
    """Open a dump: one file of any supported format, or the files of a split set."""
    if isinstance(paths, (str, os.PathLike)):
        plist = [os.fspath(paths)]
    else:
        plist = [os.fspath(p) for p in paths]
    if not plist:
        raise ValueError("no dump file given")
    opened: list[tuple[str, Source, str]] = []
    try:
        for p in plist:
            src, container = _open_source(p)
            opened.append((p, src, container))
        kinds = []
        for p, src, _container in opened:
            head = src.pread(0, 8)
            if head[:4] == ELFMAG:
                kinds.append("elf")
            elif head in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
                kinds.append("kdump")
            else:
                raise DumpFormatError(p, "file header", 0,
                                      f"signature {head!r} is not ELF, KDUMP, DISKDUMP or a "
                                      "flattened makedumpfile stream")
        if kinds[0] == "elf":
            if len(opened) > 1:
                raise DumpFormatError(opened[1][0], "file header", 0,
                                      "only kdump-compressed files form split sets")
            _p, src, container = opened[0]
            dump: Dump = ElfDump(src, container=container)
        else:
            if any(k != "kdump" for k in kinds):
                raise DumpFormatError(plist[kinds.index("elf")], "file header", 0,
                                      "a split set must be all kdump-compressed files")
            files = [KdumpFile(src, path=p) for p, src, _ in opened]
            dump = KdumpDump(files, path=plist[0], container=opened[0][2],
                             sources=[s for _p, s, _c in opened])
        dump.stream_cut = any(isinstance(s, FlattenedImage) and s.truncated
                              for _p, s, _c in opened)
        return dump
    except BaseException:
        for _p, src, _c in reversed(opened):
            close = getattr(src, "close", None)
            if close is not None:
                close()
        raise
