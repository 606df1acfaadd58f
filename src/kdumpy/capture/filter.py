"""Drop pages by dump level: walk memory sections, classify their ``struct page`` arrays.

Kernel facts (``include/linux/mmzone.h``, ``mm/sparse.c``):

- Physical memory is cut into sections of ``2^SECTION_SIZE_BITS`` bytes; ``mem_section``
  describes each. With SPARSEMEM_EXTREME (``LENGTH(mem_section)`` = number of roots)
  ``SYMBOL(mem_section)`` is an array of root pointers, each to a page of
  ``struct mem_section``; otherwise a flat array.
- ``section_mem_map`` holds ``mem_map - section_start_pfn`` (in ``struct page`` units, so
  ``struct page`` of PFN p is at ``coded + p * SIZE(page)``) with flags in its low bits:
  bit 0 present, bit 1 has a mem_map. The coded pointer is page-aligned minus a multiple of
  ``2^PFN_SECTION_SHIFT`` pages' worth, so masking the bits below
  ``min(PAGE_SIZE, 2^PFN_SECTION_SHIFT)`` recovers it whatever flag bits a config adds
  (makedumpfile masks only 5).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from kdumpy.errors import KdumpyError
from kdumpy.formats import bitmap as bm
from kdumpy.dump import Dump
from kdumpy.kernel import KernelView, MemSections
from kdumpy.capture.page_classes import CLASS_NAMES, KEEP, MissingKeyError, PageRules


@dataclass
class FilterResult:
    """Bitmap 2 after filtering, and what went where."""

    dumpable: np.ndarray
    level: int
    excluded: dict[str, int] = field(default_factory=dict)
    protected: int = 0
    notes: list[str] = field(default_factory=list)


def _reserved_bit_checked(mem: KernelView, sections: "MemSections", rules: PageRules) -> bool:
    """Is ``PG_reserved`` (derived, not exported) set on the page holding ``_stext``?"""
    vi = mem.vmcoreinfo
    stext = vi.symbol("_stext") if vi is not None else None
    if stext is None or rules.pg_reserved is None:
        return False
    pa = mem.kernel_image_to_phys(stext)
    if pa is None:
        return False
    pfn = pa // mem.page_size
    base = sections.mem_map(pfn // sections.pages_per_section)
    if base is None:
        return False
    off = (pfn % sections.pages_per_section) * sections.size_page + rules.off_flags
    flags = struct.unpack("<Q", mem.read_virt(base + off, 8))[0]
    return bool(flags & rules.pg_reserved)


def check_filter_keys(mem: Dump, level: int, *, allow_partial: bool = False) -> None:
    """Raise :class:`MissingKeyError` now if ``level`` cannot be honoured (before anything
    is written), unless ``allow_partial`` lets the level be skipped."""
    if not level & ~1:
        return
    if mem.vmcoreinfo is None:
        if allow_partial:
            return
        raise MissingKeyError(f"{mem.path}: no VMCOREINFO: dump level {level} needs it")
    PageRules(mem.vmcoreinfo, mem.page_size, level, allow_partial=allow_partial)
    try:
        MemSections(mem)
    except MissingKeyError:
        if not allow_partial:
            raise


def filter_pages(mem: Dump, level: int, *, allow_partial: bool = False,
                 protect_kernel_image: bool = True) -> FilterResult:
    """Bitmap 2 of ``mem`` with the page classes of ``level`` (bits 2, 4, 8, 16) removed,
    as one array (one bit per PFN); :class:`PageFilter` gives it cycle by cycle.

    Bit 1 (zero pages) is decided from page data while writing, not here.
    """
    pf = PageFilter(mem, level, allow_partial=allow_partial,
                    protect_kernel_image=protect_kernel_image)
    dumpable = pf.bitmap(0, mem.max_pfn)
    return pf.result(dumpable)


class PageFilter:
    """Bitmap 2 of ``mem``, one cycle of PFNs at a time, in ascending order.

    Memory stays bounded by the cycle (one bit per PFN of it), not by the machine's RAM:
    each call reads the cycle's ``struct page`` arrays section by section, as makedumpfile's
    cyclic mode does. A free block or compound page that runs past the cycle's end (a 1 GiB
    hugetlb page, a buddy block across sections) is remembered and cleared from the next
    cycles when they come. Cycles must be contiguous, start at PFN 0, and be multiples of
    the memory section size (:attr:`cycle_unit`).
    """

    def __init__(self, mem: Dump, level: int, *, allow_partial: bool = False,
                 protect_kernel_image: bool = True) -> None:
        self.mem = mem
        self.level = level
        self.notes: list[str] = []
        self.protected = 0
        self.counts = {name: 0 for name in CLASS_NAMES.values()}
        self.rules: PageRules | None = None
        self.sections: MemSections | None = None
        self.image: list[tuple[int, int]] = []
        self._carry: list[tuple[int, int, str]] = []   # (start, end, class) past the cycle
        self._next = 0
        if not level & ~1:
            return
        vi = mem.vmcoreinfo
        if vi is None:
            raise MissingKeyError(f"{mem.path}: no VMCOREINFO: dump level {level} needs it")
        rules = PageRules(vi, mem.page_size, level, allow_partial=allow_partial)
        self.level = rules.level | (level & 1)
        self.notes.extend(rules.skipped)
        if not rules.level & ~1:
            return
        try:
            sections = MemSections(mem)
        except MissingKeyError as exc:
            if not allow_partial:
                raise
            self.level = level & 1
            self.notes.append(f"dump levels above 1 skipped: {exc}")
            return
        self.rules, self.sections = rules, sections
        # The kernel image's range also holds memory the kernel hands back after boot
        # (freed __init sections, the unused end of .brk); only its PG_reserved pages are
        # the image itself.
        image = mem.kernel_image_ranges() if protect_kernel_image else []
        if image and not _reserved_bit_checked(sections.mem, sections, rules):
            self.notes.append("PG_reserved could not be confirmed on the kernel image; "
                              "its pages are not specially protected")
            image = []
        self.image = image

    @property
    def cycle_unit(self) -> int:
        """Cycles are multiples of this many PFNs (a memory section, and a whole byte)."""
        per = self.sections.pages_per_section if self.sections is not None else 8
        return max(8, per)

    def bitmap(self, start: int, end: int) -> np.ndarray:
        """Packed bitmap 2 of PFNs ``[start, end)`` (bit 0 = ``start``); the next call
        must start at ``end``."""
        mem = self.mem
        end = min(end, mem.max_pfn)
        if start != self._next or (start % self.cycle_unit and start != end):
            raise ValueError(f"cycle [{start}, {end}) out of order or unaligned "
                             f"(next {self._next}, unit {self.cycle_unit})")
        self._next = end
        count = end - start
        dumpable = mem.dumpable_bits(start, count)
        lost = mem.lost_bits(start, count)
        if lost is not None:
            # still candidates: written as lost again unless a rule excludes them
            dumpable |= np.packbits(lost, bitorder="little")
        present = mem.present_bits(start, count)
        dumpable &= present
        if self.sections is None or self.rules is None or count <= 0:
            return dumpable
        carry, self._carry = self._carry, []
        for lo, hi, name in carry:
            self._exclude(dumpable, start, end, lo, hi, name)
        rules, sections = self.rules, self.sections
        per = sections.pages_per_section
        read_since_trim = 0
        for nr in range(start // per, -(-end // per)):
            pfn0 = nr * per
            n = min(per, end - pfn0)
            decide = bm.bits_range(present, pfn0 - start, n)
            if not decide.any():
                continue
            base = sections.mem_map(nr)
            if base is None:
                continue
            try:
                raw = sections.mem.read_virt(base, n * sections.size_page)
            except KdumpyError as exc:
                raise KdumpyError(f"{mem.path}: struct page array of PFNs {pfn0:#x}-"
                                  f"{pfn0 + n - 1:#x} cannot be read ({exc})") from None
            protect = None
            for s_, e_ in self.image:
                if s_ < pfn0 + n and e_ > pfn0:
                    if protect is None:
                        protect = np.zeros(n, dtype=bool)
                    protect[max(s_, pfn0) - pfn0:min(e_, pfn0 + n) - pfn0] = True
            read_since_trim += len(raw)
            if read_since_trim >= 4 << 20:  # struct pages read through the mmap count as RSS
                mem.trim()
                read_since_trim = 0
            cls, nr_pages, warns, saved = rules.classify(raw, pfn0, decide, protect)
            self.protected += saved
            self.notes.extend(warns)
            starts = np.flatnonzero(cls != KEEP)
            if len(starts) == 0:
                continue
            ends = starts + nr_pages[starts]
            for klass, name in CLASS_NAMES.items():
                sel = cls[starts] == klass
                if not sel.any():
                    continue
                s, e = starts[sel], ends[sel]
                # +1 where a range starts, -1 where it ends: pages with a positive running
                # sum are inside some range (ranges may nest)
                cover = (np.bincount(s, minlength=n + 1)
                         - np.bincount(np.minimum(e, n), minlength=n + 1))
                excl = np.cumsum(cover[:n]) > 0
                cur = bm.bits_range(dumpable, pfn0 - start, n)
                self.counts[name] += int(np.count_nonzero(cur & excl))
                bm.put_bits(dumpable, pfn0 - start, cur & ~excl)
                for b in e[e > n].tolist():
                    # a range running past this section (e.g. a 1 GiB hugetlb page)
                    self._exclude(dumpable, start, end, pfn0 + n, min(pfn0 + b, mem.max_pfn),
                                  name)
        return dumpable

    def _exclude(self, dumpable: np.ndarray, start: int, end: int, lo: int, hi: int,
                 name: str) -> None:
        """Clear ``[lo, hi)`` inside this cycle (counting what was set), carry the rest."""
        if hi > end:
            self._carry.append((max(lo, end), hi, name))
        a, b = max(lo, start), min(hi, end)
        if a < b:
            self.counts[name] += bm.count_bits(dumpable, a - start, b - start)
            bm.set_range(dumpable, a - start, b - start, False)

    def result(self, dumpable: np.ndarray) -> FilterResult:
        """What was dropped so far, with ``dumpable`` as the bitmap."""
        notes = list(self.notes)
        if self.protected:
            notes.append(f"kept {self.protected} PG_reserved kernel-image pages that a rule "
                         "would have dropped (makedumpfile issue #21)")
        return FilterResult(dumpable, self.level, {k: v for k, v in self.counts.items() if v},
                            self.protected, notes)
