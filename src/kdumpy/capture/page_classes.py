"""Page classes by dump level, decided from ``struct page`` as makedumpfile does.

Every rule is chosen by which VMCOREINFO keys the crashed kernel exported, never by its
version string. The scan reads the ``struct page`` array one memory section at a time
(``2^(SECTION_SIZE_BITS - PAGE_SHIFT)`` pages, 2 MiB of ``struct page`` on x86_64) and
classifies the whole section with numpy: no per-page Python loop, memory bounded by one
section whatever the machine's size.

Rules, first match wins (makedumpfile ``__exclude_unnecessary_pages``):

1. compound tail (``compound_head & 1``): decided with its head;
2. level 16, a free buddy block (``_mapcount`` = ``PAGE_BUDDY_MAPCOUNT_VALUE``, not slab):
   ``2^private`` pages (an order >= ``LENGTH(zone.free_area)`` is kept, as makedumpfile does);
3. level 16, unaccepted memory (``PAGE_UNACCEPTED_MAPCOUNT_VALUE``, 6.16+):
   ``2^(LENGTH(zone.free_area)-1)`` pages;
4. level 2, page cache (``PG_lru``, or ``PG_swapcache`` with ``PG_swapbacked``) neither private
   (``PG_private``) nor anonymous;
5. level 4, page cache, private or not, not anonymous;
6. level 8, anonymous (``mapping & PAGE_MAPPING_ANON``, not slab) or hugetlbfs;
7. always: ``PG_hwpoison``; logically offline (``PAGE_OFFLINE_MAPCOUNT_VALUE``).

A compound head excluded by any rule takes its ``2^order`` pages with it. Free blocks and
compound pages are naturally aligned, so ranges nest or are disjoint and classifying every
page at once gives what the sequential scan gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np

from kdumpy.kernel import MissingKeyError
from kdumpy.formats.vmcoreinfo import VmcoreInfo



class DumpLevel(IntFlag):
    """makedumpfile's ``-d`` bits: which pages a dump leaves out."""

    ZERO = 1          #: pages whose every byte is zero (decided from page data)
    CACHE = 2         #: page cache that is neither private nor anonymous
    CACHE_PRI = 4     #: page cache, private or not
    USER = 8          #: anonymous (user process) pages and hugetlbfs
    FREE = 16         #: free pages of the buddy allocator


#: the highest dump level: every bit
MAX_DUMP_LEVEL = int(DumpLevel.ZERO | DumpLevel.CACHE | DumpLevel.CACHE_PRI | DumpLevel.USER
                     | DumpLevel.FREE)

DL_ZERO, DL_CACHE, DL_CACHE_PRI, DL_USER, DL_FREE = (DumpLevel.ZERO, DumpLevel.CACHE,
                                                     DumpLevel.CACHE_PRI, DumpLevel.USER,
                                                     DumpLevel.FREE)

KEEP, FREE, CACHE, CACHE_PRIVATE, USER, HWPOISON, OFFLINE, UNACCEPTED = range(8)
CLASS_NAMES = {FREE: "free", CACHE: "cache", CACHE_PRIVATE: "cache_private", USER: "user",
               HWPOISON: "hwpoison", OFFLINE: "offline", UNACCEPTED: "unaccepted"}

PAGE_MAPPING_ANON = 1


def _page_type_matcher(value: int | None):
    """How ``_mapcount`` (``page_type``) is compared with an exported type value.

    Up to 6.11 a type clears one bit of an all-ones word (PAGE_BUDDY = -129): exact match.
    Since 6.12 (kernel 4ffca5a96678 "mm: support only one page_type per page") the type is the
    top byte, exported as ``PGTY_x << 24``, and the low 24 bits may carry data: compare the
    top byte. The exported value's own low 24 bits tell which scheme is in use.
    """
    if value is None:
        return None
    v = value & 0xFFFFFFFF
    if v & 0xFFFFFF == 0:
        top = v >> 24
        return lambda mc: (mc.view(np.uint32) >> 24) == top
    signed = v - (1 << 32) if v >> 31 else v
    return lambda mc: mc == signed


@dataclass
class PageRules:
    """The classification rules this kernel's VMCOREINFO makes possible."""

    vi: VmcoreInfo
    page_size: int
    level: int
    allow_partial: bool = False
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        vi = self.vi
        self.size_page = self._need("SIZE(page)", vi.size("page"), always=True)
        self.off_flags = self._need("OFFSET(page.flags)", vi.offset("page.flags"), always=True)
        self.off_head = vi.offset("page.compound_head")
        if self.off_head is None:
            self.off_head = vi.offset("page.compound_info")  # 7.1+ name (makedumpfile f50c015)
        self.off_mapping = vi.offset("page.mapping")
        self.off_private = vi.offset("page.private")
        self.off_mapcount = vi.offset("page._mapcount")
        self.head_mask = vi.number("PG_head_mask")
        bit = lambda name: (1 << n) if (n := vi.number(name)) is not None else None  # noqa: E731
        self.pg_lru, self.pg_private = bit("PG_lru"), bit("PG_private")
        self.pg_swapcache, self.pg_swapbacked = bit("PG_swapcache"), bit("PG_swapbacked")
        self.pg_slab, self.pg_hwpoison, self.pg_hugetlb = bit("PG_slab"), bit("PG_hwpoison"), bit("PG_hugetlb")
        self.is_slab_type = _page_type_matcher(vi.number("PAGE_SLAB_MAPCOUNT_VALUE"))
        self.is_buddy = _page_type_matcher(vi.number("PAGE_BUDDY_MAPCOUNT_VALUE"))
        self.is_offline = _page_type_matcher(vi.number("PAGE_OFFLINE_MAPCOUNT_VALUE"))
        self.is_hugetlb_type = _page_type_matcher(vi.number("PAGE_HUGETLB_MAPCOUNT_VALUE"))
        self.is_unaccepted = _page_type_matcher(vi.number("PAGE_UNACCEPTED_MAPCOUNT_VALUE"))
        self.max_order = vi.length("zone.free_area")
        # Where a compound page's order and hugetlb mark live (first tail page):
        #  6.6+   order in the low byte of the tail's flags (folio._flags_1);
        #  6.3-5  u8 at tail + OFFSET(folio._folio_order) - SIZE(page), dtor likewise;
        #  4.16-6.2 u8 at tail + OFFSET(page.compound_order), dtor at OFFSET(page.compound_dtor).
        self.order_in_tail_flags = (self.is_hugetlb_type is not None or self.pg_hugetlb is not None)
        self.off_order = vi.offset("page.compound_order")
        self.off_dtor = vi.offset("page.compound_dtor")
        if self.off_order is None and (fo := vi.offset("folio._folio_order")) is not None:
            self.off_order = fo - self.size_page
        if self.off_dtor is None and (fd := vi.offset("folio._folio_dtor")) is not None:
            self.off_dtor = fd - self.size_page
        self.hugetlb_dtor = vi.number("HUGETLB_PAGE_DTOR")

        level = self.level
        if level & DL_FREE:
            self._require(DL_FREE, "free pages", [
                ("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", self.is_buddy),
                ("OFFSET(page._mapcount)", self.off_mapcount),
                ("OFFSET(page.private)", self.off_private)])
        if level & (DL_CACHE | DL_CACHE_PRI):
            for bitv, what in ((DL_CACHE, "page cache"), (DL_CACHE_PRI, "private page cache")):
                if self.level & bitv:
                    self._require(bitv, what, [
                        ("NUMBER(PG_lru)", self.pg_lru), ("NUMBER(PG_private)", self.pg_private),
                        ("NUMBER(PG_swapcache)", self.pg_swapcache),
                        ("OFFSET(page.mapping)", self.off_mapping)])
        if level & DL_USER:
            self._require(DL_USER, "user pages", [("OFFSET(page.mapping)", self.off_mapping)])
        if self.level & (DL_CACHE | DL_CACHE_PRI | DL_USER) and self.pg_slab is None and self.is_slab_type is None:
            self._require(self.level & (DL_CACHE | DL_CACHE_PRI | DL_USER), "slab detection",
                          [("NUMBER(PG_slab) or NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)", None)])

    def _need(self, key: str, value: int | None, *, always: bool = False) -> int:
        if value is None:
            raise MissingKeyError(f"VMCOREINFO lacks {key}: cannot read struct page")
        return value

    def _require(self, bit: int, what: str, keys: list[tuple[str, object]]) -> None:
        missing = [k for k, v in keys if v is None]
        if not missing:
            return
        if self.allow_partial:
            self.level &= ~bit
            self.skipped.append(f"dump level {bit} ({what}) skipped: VMCOREINFO lacks "
                                + ", ".join(missing))
            return
        raise MissingKeyError(f"dump level {bit} ({what}) needs VMCOREINFO {', '.join(missing)} "
                              "(use --allow-partial-filter to skip that level)")

    @property
    def dtype(self) -> np.dtype:
        names, formats, offsets = ["flags"], ["<u8"], [self.off_flags]
        for name, fmt, off in (("head", "<u8", self.off_head), ("mapping", "<u8", self.off_mapping),
                               ("private", "<u8", self.off_private),
                               ("mapcount", "<i4", self.off_mapcount)):
            if off is not None:
                names.append(name)
                formats.append(fmt)
                offsets.append(off)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": self.size_page})

    @property
    def pg_reserved(self) -> int | None:
        """``PG_reserved``, which VMCOREINFO does not export: in every ``enum pageflags``
        since 2.6 it directly precedes ``PG_private`` (6.1: 12/13, 6.12: 13/14). Callers
        check it against the kernel image's own pages before trusting it."""
        n = self.vi.number("PG_private")
        return None if n is None else 1 << (n - 1)

    def classify(self, raw: bytes | np.ndarray, pfn0: int, decide: np.ndarray,
                 protect: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str], int]:
        """Class and page count of every page of one section.

        ``raw`` is the section's ``struct page`` array as bytes (``n * SIZE(page)``),
        ``decide`` marks the pages that exist (inside the dump's physical ranges).
        ``protect`` marks pages that must stay if they are ``PG_reserved`` (the kernel image).
        Returns ``(cls, nr_pages, warnings, protected)``: for each page that starts an
        exclusion, its class and how many pages from it go (0 elsewhere), and how many
        protected pages a rule would otherwise have dropped.
        """
        n = len(decide)
        pg = np.frombuffer(raw, dtype=self.dtype, count=n)
        flags = pg["flags"]
        names = pg.dtype.names or ()
        zero64 = np.zeros(n, dtype=np.uint64)
        mapping = pg["mapping"] if "mapping" in names else zero64
        private = pg["private"] if "private" in names else zero64
        mapcount = pg["mapcount"] if "mapcount" in names else np.full(n, -1, dtype=np.int32)
        has = lambda mask: (flags & np.uint64(mask)) != 0 if mask is not None else np.zeros(n, bool)  # noqa: E731

        tail = ((pg["head"] & np.uint64(1)) != 0) if "head" in names else np.zeros(n, bool)
        head = has(self.head_mask) & ~tail
        head[-1] = False  # a head at a section's last page can only be order 0 (alignment)
        pfns = np.arange(pfn0, pfn0 + n, dtype=np.int64)

        order = np.zeros(n, dtype=np.int64)
        hugetlb = np.zeros(n, dtype=bool)
        hidx = np.flatnonzero(head)
        if len(hidx):
            tails = np.frombuffer(raw, dtype=np.uint8).reshape(n, self.size_page)[hidx + 1]
            tail_flags = tails[:, self.off_flags:self.off_flags + 8].copy().view("<u8")[:, 0]
            if self.order_in_tail_flags:
                order[hidx] = (tail_flags & np.uint64(0xFF)).astype(np.int64)
                if self.is_hugetlb_type is not None:
                    hugetlb[hidx] = self.is_hugetlb_type(mapcount[hidx])
                elif self.pg_hugetlb is not None:
                    hugetlb[hidx] = (tail_flags & np.uint64(self.pg_hugetlb)) != 0
            else:
                if self.off_order is not None:
                    order[hidx] = tails[:, self.off_order]
                if self.off_dtor is not None and self.hugetlb_dtor is not None:
                    hugetlb[hidx] = tails[:, self.off_dtor] == self.hugetlb_dtor
            bad = (order >= 64) | ((pfns & ((np.int64(1) << np.minimum(order, 62)) - 1)) != 0)
            order[bad] = 0

        slab = np.zeros(n, bool)
        if self.is_slab_type is not None:
            slab |= self.is_slab_type(mapcount)
        slab |= has(self.pg_slab)
        anon = ((mapping & np.uint64(PAGE_MAPPING_ANON)) != 0) & ~slab
        swapcache_ok = has(self.pg_swapbacked) if self.pg_swapbacked is not None else np.ones(n, bool)
        cache = has(self.pg_lru) | (has(self.pg_swapcache) & swapcache_ok)
        priv = has(self.pg_private)

        cls = np.zeros(n, dtype=np.int8)
        nr = np.left_shift(np.int64(1), order)
        open_ = decide & ~tail  # pages still to be decided
        warnings: list[str] = []
        level = self.level

        def take(mask: np.ndarray, klass: int) -> None:
            nonlocal open_
            hit = open_ & mask
            cls[hit] = klass
            open_ = open_ & ~hit

        if level & DL_FREE and self.is_buddy is not None:
            buddy = open_ & self.is_buddy(mapcount) & ~slab
            if self.max_order is not None:
                badorder = buddy & (private >= np.uint64(self.max_order))
                if badorder.any():
                    i = int(np.flatnonzero(badorder)[0])
                    warnings.append(f"invalid free page order {int(private[i])} at PFN "
                                    f"{pfn0 + i:#x} (max {self.max_order - 1}); kept")
                    open_ = open_ & ~badorder  # makedumpfile keeps it and stops there
                    buddy &= ~badorder
            nr[buddy] = np.left_shift(np.int64(1), private[buddy].astype(np.int64))
            take(buddy, FREE)
        if level & DL_FREE and self.is_unaccepted is not None and self.max_order is not None:
            una = open_ & self.is_unaccepted(mapcount)
            nr[una] = 1 << (self.max_order - 1)
            take(una, UNACCEPTED)
        if level & DL_CACHE:
            take(cache & ~priv & ~anon, CACHE)
        if level & DL_CACHE_PRI:
            m = cache & ~anon
            hit = open_ & m
            cls[hit & priv] = CACHE_PRIVATE
            cls[hit & ~priv] = CACHE
            open_ = open_ & ~hit
        if level & DL_USER:
            take(anon | (head & hugetlb), USER)
        take(has(self.pg_hwpoison), HWPOISON)
        if self.is_offline is not None:
            take(self.is_offline(mapcount) & ~slab, OFFLINE)
        protected = 0
        if protect is not None and self.pg_reserved is not None:
            saved = protect & has(self.pg_reserved) & (cls != KEEP)
            protected = int(np.count_nonzero(saved))
            cls[saved] = KEEP
        nr[cls == KEEP] = 0
        return cls, nr, warnings, protected
