"""The capture pipeline: pages in PFN order from a memory view to a dump writer.

One page's way (kdump-compressed output): the dumpable PFNs are cut into batches; worker
threads read a batch (one copy out of the mmap), test which pages are all zero with one
vectorised ``any`` over 64-bit words, and compress the others with the chosen codec (the
codec libraries release the GIL); the calling thread takes the batches back in order and
hands descriptors and data to :class:`~kdumpy.formats.kdump.KdumpWriter`. At most
``threads + 2`` batches are in flight, so memory does not grow with the dump's size.

Dump level bit 1 (zero pages) is decided from page data, as makedumpfile does: in
kdump-compressed output a zero page keeps its bitmap-2 bit and its descriptor points at
one shared zero page; in ELF output zero pages are excluded like any other.
"""

from __future__ import annotations

import functools
import gc
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from kdumpy.capture.elf_gdb import check_elf32, check_elf32_file_size, elf_segments
from kdumpy.capture.page_classes import MAX_DUMP_LEVEL, DumpLevel, MissingKeyError
from kdumpy.errors import KdumpyError
from kdumpy.formats import bitmap as bm
from kdumpy.formats.codecs import CODECS, Codec
from kdumpy.formats.elf import (ELF32LE, ELF64LE, EF_KDUMP_INCOMPLETE, PT_LOAD, PT_NOTE, ElfClass,
                                ElfHeader, elf_core_headers_size, new_phdrs, pack_elf_core_headers,
                                plan_filtered_loads)
from kdumpy.formats.kdump import ARCHES, MACHINE_WORD, KdumpWriter, vmcoreinfo_desc_offset
from kdumpy.formats.notes import NT_PRSTATUS
from kdumpy.dump import MACHINE_TO_EM, Dump
from kdumpy.kernel import KernelView

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from kdumpy.capture.progress import ProgressReporter
    from kdumpy.capture.targets import DumpTarget

#: Dump level bits (makedumpfile ``-d``): :class:`~kdumpy.capture.page_classes.DumpLevel`.
DL_EXCLUDE_ZERO = DumpLevel.ZERO
DL_EXCLUDE_CACHE = DumpLevel.CACHE
DL_EXCLUDE_CACHE_PRI = DumpLevel.CACHE_PRI
DL_EXCLUDE_USER_DATA = DumpLevel.USER
DL_EXCLUDE_FREE = DumpLevel.FREE


#: page sizes Linux architectures use (4 KiB x86/arm64/s390 ... 64 KiB arm64/ppc64): the
#: kdump-compressed block size, and the unit of every bitmap and descriptor
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 65536


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class SaveOptions:
    dump_level: int = DL_EXCLUDE_ZERO
    compress: str = "lzo"
    format: str = "kdump"  # "kdump" or "elf"
    threads: int = field(default_factory=usable_cpus)
    batch_pages: int = 512
    #: kdump output: PFNs per cycle of bitmap 2 (rounded to whole memory sections), and the
    #: largest whole bitmap kept between the counting and the writing pass (see Cycles)
    cycle_pfns: int = 1 << 23
    bitmap_budget: int = 4 << 20
    #: keep the source's dump level in the output's sub header (convert)
    recorded_dump_level: int | None = None
    #: skip a level whose VMCOREINFO keys are missing instead of failing
    allow_partial_filter: bool = False
    #: ELF output: ELF32 headers (``kexec --elf32-core-headers``); refused above 4 GiB
    elf32: bool = False
    #: ELF output: map the CPUs' kernel stacks (and, for sources without them, the kernel
    #: image and the direct map) at their virtual addresses for gdb (:mod:`.elf_gdb`)
    gdb_segments: bool = True


@dataclass
class SaveResult:
    path: str
    pages_written: int
    zero_pages: int
    bytes_written: int
    dump_level: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_dump_level(level: int) -> None:
    if not 0 <= level <= MAX_DUMP_LEVEL:
        raise KdumpyError(f"dump level {level} is out of range (0-{MAX_DUMP_LEVEL})")


def parse_dump_levels(text: str) -> list[int]:
    """makedumpfile's ``-d`` value: a level, or a comma list tried in turn on ENOSPC."""
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        raise KdumpyError(f"dump level {text!r} is not a number or a comma list of numbers") from None
    for lv in levels:
        check_dump_level(lv)
    return levels


def _batches(mem: Dump, bitmap: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    for s, e in bm.runs(bitmap, mem.max_pfn):
        for b in range(s, e, size):
            yield b, min(size, e - b)


def _jobs(runs: Iterable[tuple[int, int]], size: int) -> Iterator[tuple[tuple[int, int], ...]]:
    """Runs of dumpable PFNs (``(start, end)``, ascending) gathered into jobs of at most
    ``size`` pages, in PFN order.

    At high dump levels most runs are a few pages long; gathering them keeps the
    per-batch costs (numpy calls, system calls, thread hand-offs) off the per-page path.
    """
    job: list[tuple[int, int]] = []
    room = size
    for s, e in runs:
        while s < e:
            k = min(e - s, room)
            job.append((s, k))
            s += k
            room -= k
            if room == 0:
                yield tuple(job)
                job = []
                room = size
    if job:
        yield tuple(job)


_or_words = np.bitwise_or.reduce


def _zero_mask(pages: np.ndarray) -> np.ndarray:
    return _or_words(pages.view(np.uint64), axis=1) == 0


class _Encoded:
    """One job's pages as stored: ``zero`` marks the pages that point at the shared zero
    page, ``lost`` those whose data the source had lost (written as lost again: descriptor
    offset 0); ``sizes``/``flags``/``parts`` describe the others, in PFN order."""

    __slots__ = ("pages", "zero", "sizes", "flags", "parts", "lost")

    def __init__(self, pages: int, zero: np.ndarray | None, sizes: np.ndarray, flags: np.ndarray,
                 parts: list, lost: np.ndarray | None = None) -> None:
        self.pages = pages
        self.zero = zero
        self.sizes = sizes
        self.flags = flags
        self.parts = parts
        self.lost = lost


LostFinder = Callable[[int, int], "np.ndarray | None"]


def lost_finder(mem: Dump) -> LostFinder | None:
    """``lost(start, count)``: which PFNs hold data the source lost (an incomplete dump:
    :meth:`Dump.lost_bits`); None when the source has no lost page. A lost page reads as
    zeros; a copy must keep it lost, never turn it into data."""
    try:
        if not mem.lost_pages():
            return None
    except Exception:  # noqa: BLE001 - a reader that cannot count offers no lost pages
        return None
    return mem.lost_bits


def _encode_job(mem: Dump, job: tuple[tuple[int, int], ...], codec: Codec,
                zero_test: bool, page_size: int, lost_fn: LostFinder | None = None) -> _Encoded:
    """Read a job's runs (one copy each), find the all-zero pages with one vectorised test
    per run, and compress the others with one C-level map over the batch."""
    ps = page_size
    words = ps // 8
    read = functools.partial(mem.read_pfns_bytes, zero_fill=True)
    pages: list[bytes] = []
    zeros: list[np.ndarray] = []
    losts: list[np.ndarray] = []
    total = 0
    any_zero = False
    any_lost = False
    for start, count in job:
        data = read(start, count)
        total += count
        gone = lost_fn(start, count) if lost_fn is not None else None
        if zero_test or gone is not None:
            if zero_test:
                # OR of each page's words (twice as fast as any(), which casts to bool first)
                zmask = _or_words(np.frombuffer(data, dtype=np.uint64).reshape(count, words),
                                  axis=1) == 0
            else:
                zmask = np.zeros(count, dtype=bool)
            if gone is not None:
                zmask &= ~gone
                any_lost = True
                losts.append(gone)
            else:
                losts.append(np.zeros(count, dtype=bool))
            zeros.append(zmask)
            skip = zmask if gone is None else (zmask | gone)
            keep = np.flatnonzero(~skip)
            if len(keep) < count:
                any_zero = any_zero or bool(zmask.any())
                offs = keep * ps
                pages.extend(map(data.__getitem__, map(slice, offs.tolist(), (offs + ps).tolist())))
                continue
        else:
            zeros.append(np.zeros(count, dtype=bool))
            losts.append(np.zeros(count, dtype=bool))
        if count == 1:
            pages.append(data)
        else:
            pages.extend(map(data.__getitem__, map(slice, range(0, count * ps, ps),
                                                   range(ps, (count + 1) * ps, ps))))
    zero = None
    if any_zero:
        zero = np.concatenate(zeros) if len(zeros) > 1 else zeros[0]
    lost = None
    if any_lost:
        lost = np.concatenate(losts) if len(losts) > 1 else losts[0]
    n = len(pages)
    flag = codec.flag
    if flag == 0:
        return _Encoded(total, zero, np.full(n, ps, dtype=np.int64), np.zeros(n, dtype=np.uint32),
                        pages, lost)
    try:
        parts = codec.compress_many(pages)
    except Exception:  # a codec error on some page: that page is stored raw
        parts = []
        for p in pages:
            try:
                parts.append(codec.compress(p))
            except Exception:
                parts.append(p)
    sizes = np.fromiter(map(len, parts), dtype=np.int64, count=n)
    flags = np.full(n, flag, dtype=np.uint32)
    raw = np.flatnonzero(sizes >= ps)
    if len(raw):  # not smaller than the page: stored as it is
        for i in raw.tolist():
            parts[i] = pages[i]
        sizes[raw] = ps
        flags[raw] = 0
    return _Encoded(total, zero, sizes, flags, parts, lost)


_Job = TypeVar("_Job", bound=tuple[Any, ...])
_R = TypeVar("_R")


def _ordered(pool: ThreadPoolExecutor | None, jobs: Iterator[_Job], fn: Callable[..., _R],
             window: int) -> Iterator[tuple[_Job, _R]]:
    """Run ``fn(start, count)`` on the pool, yielding results in submission order
    (inline, without a pool, when there is a single thread)."""
    if pool is None:
        for job in jobs:
            yield job, fn(*job)
        return
    pending: deque[tuple[_Job, Future[_R]]] = deque()
    for job in jobs:
        pending.append((job, pool.submit(fn, *job)))
        if len(pending) >= window:
            j, fut = pending.popleft()
            yield j, fut.result()
    while pending:
        j, fut = pending.popleft()
        yield j, fut.result()


def _pool(threads: int):
    """A thread pool for ``threads`` > 1; a null context (work runs inline) for one."""
    import contextlib
    if threads <= 1:
        return contextlib.nullcontext(None)
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(max_workers=threads)


def _utsname(mem: Dump) -> dict[str, str]:
    """The header's utsname: the crashed kernel's own, as makedumpfile writes it."""
    uts = KernelView(mem).read_kernel_utsname()
    if uts is None:
        uts = dict(mem.utsname)
    vi = mem.vmcoreinfo
    if vi is not None and vi.osrelease and not uts.get("release"):
        uts["release"] = vi.osrelease
    if not uts.get("sysname"):
        uts["sysname"] = "Linux"
    if not uts.get("machine"):
        uts["machine"] = mem.machine
    if not uts.get("version"):
        # libkdumpfile ignores a header utsname whose release, version or machine is empty
        uts["version"] = "unknown"
    return uts


def _notes_bytes(mem: Dump) -> bytes:
    return mem.note_bytes


class Cycles:
    """Bitmap 2 cut into cycles of PFNs, counted before anything is written (pass 1 of a
    kdump-compressed save, as in makedumpfile's cyclic mode).

    The count fixes the descriptor table's size. The cycles' bitmap parts are kept when the
    whole bitmap fits in ``opts.bitmap_budget`` bytes (one bit per PFN: 4 MiB is 128 GiB of
    RAM); otherwise the writing pass filters each cycle again (makedumpfile's cyclic mode
    also filters twice), so memory is bounded by one cycle (``opts.cycle_pfns``, 1 MiB of
    bitmap for 32 GiB) whatever the machine's size.
    """

    def __init__(self, mem: Dump, opts: SaveOptions) -> None:
        from kdumpy.capture.filter import PageFilter
        self.mem = mem
        self._filter_args = dict(level=opts.dump_level, allow_partial=opts.allow_partial_filter)
        self.filter = PageFilter(mem, **self._filter_args)  # type: ignore[arg-type]
        unit = self.filter.cycle_unit
        size = max(unit, opts.cycle_pfns // unit * unit)
        self.bounds = [(lo, min(lo + size, mem.max_pfn)) for lo in range(0, mem.max_pfn, size)]
        keep = (mem.max_pfn + 7) >> 3 <= opts.bitmap_budget
        self._parts: list[np.ndarray] | None = [] if keep else None
        self.counts: list[int] = []
        for lo, hi in self.bounds:
            part = self.filter.bitmap(lo, hi)
            self.counts.append(bm.count_bits(part, 0, hi - lo))
            if self._parts is not None:
                self._parts.append(part)
        self.total = sum(self.counts)

    @property
    def kept(self) -> bool:
        return self._parts is not None

    def whole(self) -> np.ndarray:
        """All of bitmap 2 as one array (for ELF output, and small dumps)."""
        if self._parts is not None and len(self._parts) == 1:
            return self._parts[0]
        out = bm.new_bitmap(self.mem.max_pfn)
        for (lo, hi), part in self.parts():
            bm.put_bits(out, lo, bm.bits_range(part, 0, hi - lo))
        return out

    def parts(self) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """Each cycle's bounds and bitmap-2 part, again (kept, or filtered anew and checked
        against the first count: a different answer would misplace every page after it)."""
        if self._parts is not None:
            yield from zip(self.bounds, self._parts)
            return
        from kdumpy.capture.filter import PageFilter
        try:
            again = PageFilter(self.mem, **self._filter_args)  # type: ignore[arg-type]
        except Exception as exc:
            raise FilterFailed(f"{self.mem.path}: filtering again failed: {_what(exc)}") from exc
        for (lo, hi), want in zip(self.bounds, self.counts):
            try:
                part = again.bitmap(lo, hi)
            except Exception as exc:
                raise FilterFailed(f"{self.mem.path}: filtering PFNs {lo:#x}-{hi - 1:#x} "
                                   f"again failed: {_what(exc)}") from exc
            got = bm.count_bits(part, 0, hi - lo)
            if got != want:
                raise FilterFailed(f"{self.mem.path}: PFNs {lo:#x}-{hi - 1:#x} filtered to "
                                  f"{got} pages on the second pass, {want} on the first")
            yield (lo, hi), part


def write_kdump(mem: Dump, sink, opts: SaveOptions, cycles: Cycles,
                progress=None) -> SaveResult:
    """Write ``mem`` as kdump-compressed through ``sink``, cycle by cycle: each cycle's
    bitmap parts, then its pages' descriptors and data."""
    codec = CODECS[opts.compress]
    ps = mem.page_size
    notes = _notes_bytes(mem)
    from kdumpy.formats.notes import parse_notes
    vi_off, vi_size = vmcoreinfo_desc_offset(parse_notes(notes, byteorder=mem.byteorder))  # type: ignore[arg-type]
    share_zero = bool(opts.dump_level & DL_EXCLUDE_ZERO)
    recorded = opts.dump_level if opts.recorded_dump_level is None else opts.recorded_dump_level
    arch = ARCHES[MACHINE_WORD.get(mem.machine, 64)]
    notes_out: list[str] = []
    writer = KdumpWriter(
        sink, arch=arch, page_size=ps,
        max_mapnr=mem.max_pfn, bitmap1=None, bitmap2=None, num_dumpable=cycles.total,
        notes=notes,
        vmcoreinfo_offset_in_notes=vi_off, vmcoreinfo_size=vi_size,
        utsname=_header_utsname(mem, notes_out),
        crash_time=_header_crash_time(mem, arch.word, notes_out),
        codec_flag=codec.flag, dump_level=recorded,
        phys_base=_header_phys_base(mem, arch.word, notes_out),
        nr_cpus=max(1, sum(1 for n in mem.notes if n.type == NT_PRSTATUS and n.name == "CORE")),
        share_zero_page=share_zero)
    writer.write_headers()

    def runs() -> Iterator[tuple[int, int]]:
        for (lo, hi), part in cycles.parts():
            writer.write_bitmaps(lo, mem.present_bits(lo, hi - lo), part)
            for s, e in bm.runs(part, hi - lo):
                yield lo + s, lo + e

    zero_pages = 0
    lost_pages = 0
    lost_fn = lost_finder(mem)
    source_incomplete = mem.incomplete
    trim = _Trimmer(mem)
    # The loop makes no reference cycles but allocates many tracked objects (page lists,
    # slices): without the cycle collector's passes it runs measurably faster.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with _pool(opts.threads) as pool:
            fn = lambda *job: _encode_job(mem, job, codec, share_zero, ps, lost_fn)  # noqa: E731
            for _job, enc in _ordered(pool, _jobs(runs(), opts.batch_pages), fn,
                                      opts.threads + 2):
                writer.write_stored(enc.pages, enc.zero, enc.sizes, enc.flags, enc.parts,
                                    lost=enc.lost)
                n = enc.pages
                nlost = int(enc.lost.sum()) if enc.lost is not None else 0
                lost_pages += nlost
                zero_pages += n - len(enc.parts) - nlost
                trim.pages_read(n)
                if progress is not None:
                    progress.advance(n)
        if source_incomplete or lost_pages:
            # the copy of an incomplete dump is incomplete: the mark set at the start stays
            notes_out.append(f"the source is marked incomplete ({lost_pages} pages lost); so "
                             "is this copy")
        else:
            writer.finish()
    except BaseException:
        writer.mark_incomplete()
        raise
    finally:
        if gc_was_enabled:
            gc.enable()
    return SaveResult("", writer.next_rank, zero_pages, writer.data_cursor, notes=notes_out)


def _what(exc: BaseException) -> str:
    """An exception as one line: its message, and its type where the message alone would
    not say what went wrong (an exception that is not one of kdumpy's own)."""
    if isinstance(exc, KdumpyError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _header_utsname(mem: Dump, notes: list[str]) -> dict[str, str]:
    """The header's utsname (:func:`_utsname`); read from the crashed kernel's memory, so a
    failure leaves the fields that need no reading and is noted."""
    try:
        return _utsname(mem)
    except Exception as exc:  # noqa: BLE001 - kernel memory may hold anything
        notes.append(f"utsname not read from the crashed kernel: {_what(exc)}")
        vi = mem.vmcoreinfo
        return {"sysname": "Linux", "machine": mem.machine, "version": "unknown",
                "release": (vi.osrelease or "") if vi is not None else ""}


def _header_crash_time(mem: Dump, word: int, notes: list[str]) -> int:
    """``tv_sec`` of the header: VMCOREINFO's CRASHTIME (or the source header's); a value
    the header's signed ``word``-byte field cannot hold is written as 0 and noted."""
    try:
        t = mem.crash_time
    except Exception as exc:  # noqa: BLE001 - VMCOREINFO text from a crashed kernel
        notes.append(f"CRASHTIME not read: {_what(exc)}")
        return 0
    t = t or 0
    if not isinstance(t, int) or not 0 <= t < 1 << (8 * word - 1):
        notes.append(f"CRASHTIME {t} does not fit the header's tv_sec; written as 0")
        return 0
    return t


def _header_phys_base(mem: Dump, word: int, notes: list[str]) -> int:
    """phys_base for the sub header, an unsigned long holding a two's-complement value."""
    try:
        pb = mem.phys_base or 0
    except Exception as exc:  # noqa: BLE001
        notes.append(f"phys_base not read: {_what(exc)}")
        return 0
    if not -(1 << (8 * word - 1)) <= pb < 1 << (8 * word):
        notes.append(f"phys_base {pb:#x} does not fit the sub header; written as 0")
        return 0
    return pb


def write_elf(mem: Dump, sink, opts: SaveOptions, dumpable: np.ndarray,
              progress=None) -> SaveResult:
    """Write ``mem`` as an ELF core, splitting PT_LOADs where long runs are excluded."""
    ps = mem.page_size
    keep = dumpable.copy()
    zero_pages = 0
    lost_fn = lost_finder(mem)
    source_incomplete = mem.incomplete or lost_fn is not None
    if lost_fn is not None:
        # ELF has no lost page: one whose data the source lost is left out of the PT_LOADs
        # (never written as zeros), and the copy keeps the incomplete mark
        for s, e in list(bm.runs(keep, mem.max_pfn)):
            for b in range(s, e, 1 << 20):
                gone = lost_fn(b, min(1 << 20, e - b))
                if gone is not None:
                    for a, z in _true_runs(gone):
                        bm.set_range(keep, b + a, b + z, False)
    if opts.dump_level & DL_EXCLUDE_ZERO:
        # A pre-pass over the data: ELF has no shared zero page, zero pages are excluded.
        with _pool(opts.threads) as pool:
            fn = lambda s, n: _zero_mask(mem.read_pfns(s, n, zero_fill=True))  # noqa: E731
            trim = _Trimmer(mem)
            for (s, n), zero in _ordered(pool, _batches(mem, keep.copy(), opts.batch_pages), fn,
                                         opts.threads + 2):
                trim.pages_read(n)
                if zero.any():
                    zero_pages += int(zero.sum())
                    for a, b in _true_runs(zero):
                        bm.set_range(keep, s + a, s + b, False)
    if mem.elf_header is not None and mem.load_segments is not None:
        src = mem.elf_header
        header = ElfHeader(src.elfclass, e_machine=src.e_machine,
                           e_flags=src.e_flags & ~EF_KDUMP_INCOMPLETE, osabi=src.osabi)
        segments = [(pa, mem_sz, fsz, va) for pa, mem_sz, fsz, _off, va in mem.load_segments]
    else:
        elfclass = ELF32LE if MACHINE_WORD.get(mem.machine, 64) == 32 else ELF64LE
        header = ElfHeader(elfclass, e_machine=MACHINE_TO_EM.get(mem.machine, 62))
        segments = [(s * ps, (e - s) * ps, (e - s) * ps, 0) for s, e in mem.present_ranges()]
    if opts.elf32:
        header.elfclass = ElfClass(32, header.elfclass.byteorder)
    segments = elf_segments(mem, segments, bits=header.elfclass.bits, gdb=opts.gdb_segments)
    notes = _notes_bytes(mem)
    loads: list[tuple[int, int, int, int]] = []
    for pa, memsz, filesz, va in segments:
        pfn0 = pa // ps
        npages = -(-(pa + memsz) // ps) - pfn0
        if pa % ps:
            seg_keep = np.arange(npages) < -(-filesz // ps)
        else:
            seg_keep = bm.bits_range(keep, pfn0, npages) & (np.arange(npages) < -(-filesz // ps))
        # p_vaddr 0 is "no virtual address": the pieces of a split segment keep it
        loads.extend((p, v if va else 0, f, m)
                     for p, v, f, m in plan_filtered_loads(pa, va, memsz, seg_keep, ps))
    phdrs = new_phdrs(1 + len(loads), header.elfclass)
    head_size = elf_core_headers_size(header.elfclass, len(phdrs))
    phdrs[0]["p_type"] = PT_NOTE
    phdrs[0]["p_offset"] = head_size
    phdrs[0]["p_filesz"] = len(notes)
    cursor = head_size + len(notes)
    for i, (pa, va, fsz, msz) in enumerate(loads, start=1):
        ph = phdrs[i]
        ph["p_type"] = PT_LOAD
        ph["p_flags"] = 7
        ph["p_paddr"] = pa
        ph["p_vaddr"] = va
        ph["p_filesz"] = fsz
        ph["p_memsz"] = msz
        # p_offset 0 in a PT_LOAD makes gdb's BFD read the notes again (every thread is
        # added again, renumbered): a memsz-only PT_LOAD points at the end of the data so far.
        ph["p_offset"] = cursor
        cursor += fsz
    if header.elfclass.bits == 32:
        check_elf32_file_size(cursor)
    # e_flags carries the incomplete mark from the first byte written until the last page
    # has landed (a kill or a power loss leaves a marked file)
    clean_flags = header.e_flags & ~EF_KDUMP_INCOMPLETE
    header.e_flags = clean_flags | EF_KDUMP_INCOMPLETE
    header_bytes = pack_elf_core_headers(header, phdrs)
    sink.pwrite(0, header_bytes)
    sink.pwrite(head_size, notes)
    written = 0
    chunk = opts.batch_pages * ps
    trim = _Trimmer(mem)
    try:
        for i, (pa, _va, fsz, _msz) in enumerate(loads, start=1):
            off = int(phdrs[i]["p_offset"])
            for a in range(0, fsz, chunk):
                n = min(chunk, fsz - a)
                sink.pwrite(off + a, mem.read_phys(pa + a, n, zero_fill=True))
                written += -(-n // ps)
                trim.pages_read(-(-n // ps))
                if progress is not None:
                    progress.advance(-(-n // ps))
        if not source_incomplete:
            sync = getattr(sink, "sync", None)
            if sync is not None:
                sync()
            header.e_flags = clean_flags
            sink.pwrite(0, pack_elf_core_headers(header, phdrs)[:header.elfclass.ehdr.size])
    except BaseException:
        if getattr(sink, "seekable", False):
            header.e_flags |= EF_KDUMP_INCOMPLETE
            sink.pwrite(0, pack_elf_core_headers(header, phdrs)[:header.elfclass.ehdr.size])
        raise
    return SaveResult("", written, zero_pages, cursor)


class _Trimmer:
    """Calls ``mem.trim()`` after every ``TRIM_BYTES`` read, keeping RSS flat."""

    TRIM_BYTES = 4 << 20

    def __init__(self, mem: Dump) -> None:
        self.mem = mem
        self.every = max(1, self.TRIM_BYTES // mem.page_size)
        self.count = 0

    def pages_read(self, n: int) -> None:
        self.count += n
        if self.count >= self.every:
            self.count = 0
            self.mem.trim()


def _true_runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    pad = np.zeros(1, dtype=np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate((pad, mask.astype(np.int8), pad))))
    return zip(edges[0::2].tolist(), edges[1::2].tolist())


def save(mem: Dump, make_target: Callable[[], DumpTarget], opts: SaveOptions,
         progress: ProgressReporter | None = None) -> SaveResult:
    """Filter ``mem`` by ``opts.dump_level``, then write it to the target ``make_target()``
    creates (a :mod:`kdumpy.capture.targets` object) and finish it.

    The target is only created once filtering has succeeded. On a failure while writing the
    target is abandoned (left as ``.incomplete``, marked incomplete where the format allows)
    and :class:`DumpIncomplete` is raised from the cause.
    """
    ps = mem.page_size
    if not (isinstance(ps, int) and MIN_PAGE_SIZE <= ps <= MAX_PAGE_SIZE and ps & (ps - 1) == 0):
        raise KdumpyError(f"{mem.path}: page size {ps} (VMCOREINFO PAGESIZE) is not a power of "
                          f"two from {MIN_PAGE_SIZE >> 10} to {MAX_PAGE_SIZE >> 10} KiB: no "
                          "reader accepts such a dump, so none is written")
    if opts.compress not in CODECS:
        raise KdumpyError(f"unknown compression {opts.compress!r} (zlib, lzo, snappy, zstd, none)")
    if opts.format not in ("elf", "kdump"):
        raise KdumpyError(f"unknown output format {opts.format!r}")
    if opts.elf32:
        if opts.format != "elf":
            raise KdumpyError("--elf32: ELF32 headers are for ELF output (--format elf)")
        check_elf32(mem)
    try:
        cycles = Cycles(mem, opts)
        filt = cycles.filter.result(np.zeros(0, dtype=np.uint8))
    except MissingKeyError:
        raise
    except Exception as exc:  # the crashed kernel's struct pages may hold anything
        raise FilterFailed(f"{mem.path}: filtering at dump level {opts.dump_level} failed: "
                           f"{_what(exc)}") from exc
    if opts.recorded_dump_level is None:
        opts.recorded_dump_level = filt.level
    if progress is not None:
        progress.set_total(cycles.total)
    target = make_target()
    try:
        if opts.format == "elf":
            # ELF needs every PT_LOAD piece in its header before any data: whole bitmap
            res = write_elf(mem, target.sink, opts, cycles.whole(), progress)
        else:
            res = write_kdump(mem, target.sink, opts, cycles, progress)
        res.path = target.commit()
    except BaseException as exc:
        left = target.abandon()
        if left is None or not isinstance(exc, Exception):
            raise
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _what(exc)
        raise DumpIncomplete(f"{left}: dump not finished ({why}); the partial dump is kept "
                             "under this name, marked incomplete", left) from exc
    res.dump_level = filt.level
    res.excluded = dict(filt.excluded)
    res.notes = list(filt.notes) + res.notes
    return res


class DumpIncomplete(KdumpyError):
    """The dump could not be finished; the partial file is left as ``DEST.incomplete``
    (:attr:`left` names it)."""

    def __init__(self, message: str, left: str | None = None) -> None:
        super().__init__(message)
        self.left = left


class FilterFailed(KdumpyError):
    """Page filtering failed on the crashed kernel's data (mem_section, struct page, a
    VMCOREINFO value out of range): a lower dump level may still save the dump."""
