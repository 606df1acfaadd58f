"""Page filtering on the lab's real crashes of 6.1 and 6.12, checked against makedumpfile
and against what ``/proc/meminfo`` said just before the crash."""

from __future__ import annotations

import subprocess
from collections import Counter

import numpy as np
import pytest
from pages import assert_pages_equal

from kdumpy.capture.filter import MemSections, filter_pages
from kdumpy.capture.page_classes import PageRules
from kdumpy.cli import main
from kdumpy.formats import bitmap as bm
from kdumpy.dump import open_dump

LEVELS = (31, 2, 4, 8, 16)


def makedumpfile_understands(vi) -> bool:
    """Debian's makedumpfile 1.7.2 reads compound order/dtor from page.compound_order/dtor,
    which kernels export up to 6.2; later layouts (6.3 folio fields, 6.6 order in the tail's
    flags, 6.10 slab page type, 6.12 PGTY << 24) came after it."""
    return vi.offset("page.compound_order") is not None and vi.number("PG_slab") is not None


@pytest.fixture(scope="module")
def md_outputs(lab_crash, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"md-{lab_crash.release}")
    out = {}
    for level in LEVELS:
        p = d / f"md{level}"
        r = subprocess.run(["makedumpfile", "-l", "-d", str(level), str(lab_crash.raw_vmcore),
                            str(p)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        out[level] = p
    return out


def _struct_pages(mem, rules, sections, pfns):
    rows = []
    for p in pfns:
        base = sections.mem_map(p // sections.pages_per_section)
        off = (p % sections.pages_per_section) * rules.size_page
        rows.append(sections.mem.read_virt(base + off, rules.size_page * 2))
    return [np.frombuffer(r, dtype=rules.dtype, count=2) for r in rows]


def explain(mem, pfns, level) -> Counter:
    """Why each page is classified differently from makedumpfile 1.7.2, by struct page."""
    vi = mem.vmcoreinfo
    rules = PageRules(vi, mem.page_size, level)
    sections = MemSections(mem)
    slab = vi.number("PAGE_SLAB_MAPCOUNT_VALUE")
    why: Counter = Counter()
    for pfn, pg in zip(pfns, _struct_pages(mem, rules, sections, pfns)):
        mapcount = int(pg["mapcount"][0]) & 0xFFFFFFFF
        if slab is not None and mapcount >> 24 == (slab & 0xFFFFFFFF) >> 24:
            why["slab page (page type), whose mapping word has bit 0 set"] += 1
        elif int(pg["head"][0]) & 1:
            why["tail of a compound page whose head is excluded"] += 1
        else:
            why[f"unexplained: flags {int(pg['flags'][0]):#x} mapcount {mapcount:#x}"] += 1
    return why


def test_filter_against_makedumpfile(lab_crash, md_outputs):
    with open_dump(lab_crash.raw_vmcore) as raw:
        vi = raw.vmcoreinfo
        for level in LEVELS:
            ours = filter_pages(raw, level).dumpable
            with open_dump(md_outputs[level]) as md:
                theirs = np.asarray(md.dumpable_bitmap()[: len(ours)], dtype=np.uint8)
            only_ours = [p for s, e in bm.runs(ours & ~theirs, raw.max_pfn) for p in range(s, e)]
            only_theirs = [p for s, e in bm.runs(theirs & ~ours, raw.max_pfn) for p in range(s, e)]
            if makedumpfile_understands(vi):
                assert only_ours == [] and only_theirs == [], (level, only_ours[:5], only_theirs[:5])
                continue
            # Newer layouts: every difference must be one makedumpfile 1.7.2 gets wrong.
            kept = explain(raw, only_ours, level)
            dropped = explain(raw, only_theirs, level)
            assert not [k for k in kept if k.startswith("unexplained")], (level, kept)
            assert not [k for k in dropped if k.startswith("unexplained")], (level, dropped)
            assert set(kept) <= {"slab page (page type), whose mapping word has bit 0 set"}
            assert set(dropped) <= {"tail of a compound page whose head is excluded"}
            if level & 8:
                assert kept, "6.12 has slab pages that makedumpfile 1.7.2 takes for user pages"
                assert sum(dropped.values()) > 1000, "anonymous THP tails must go at -d 8"


def test_byte_identical_to_makedumpfile_where_it_is_right(lab_crash, md_outputs, tmp_path):
    with open_dump(lab_crash.raw_vmcore) as raw:
        if not makedumpfile_understands(raw.vmcoreinfo):
            # nothing to compare byte for byte: makedumpfile 1.7.2 mis-filters this layout
            assert lab_crash.release.startswith("6.12")
            return
    out = tmp_path / "ours"
    assert main(["save", "-q", "-d", "31", "-c", "lzo", str(lab_crash.raw_vmcore), str(out)]) == 0
    assert out.read_bytes() == md_outputs[31].read_bytes()


def test_kept_pages_match_meminfo(lab_crash):
    """-d 31 keeps what the kernel itself used: MemTotal - MemFree - Cached - AnonPages
    (slab, page tables, stacks, ...) plus the memory it reserved for itself (RAM it never
    gave the page allocator: present RAM - MemTotal)."""
    mi = lab_crash.meta["meminfo"]
    with open_dump(lab_crash.raw_vmcore) as raw:
        res = filter_pages(raw, 31)
        kept_kib = bm.count_bits(res.dumpable, 0, raw.max_pfn) * raw.page_size // 1024
        reserved_kib = raw.count_present() * raw.page_size // 1024 - mi["MemTotal"]
    expected = mi["MemTotal"] - mi["MemFree"] - mi["Cached"] - mi["AnonPages"] + reserved_kib
    assert abs(kept_kib - expected) < 6 * 1024, (kept_kib, expected, res.excluded)
    assert res.excluded["free"] * 4 > mi["MemFree"] * 0.9
    assert res.excluded["user"] * 4 >= mi["AnonPages"] * 0.9   # anonymous THP included


def test_filtered_save_reads_back(lab_crash, tmp_path):
    out = tmp_path / "d31"
    assert main(["save", "-q", "-d", "31", "-c", "zstd", str(lab_crash.raw_vmcore), str(out)]) == 0
    with open_dump(out) as ours, open_dump(lab_crash.raw_vmcore) as raw:
        assert ours.sub.dump_level == 31
        assert assert_pages_equal(ours, raw, only_dumpable_in=ours) == ours.count_dumpable()


def test_every_slab_page_is_kept(lab_crash):
    """Slab pages are kernel data (the page cache's xarray nodes, dentries, task structs...):
    at -d 31 every one stays, whether the kernel marks slab with PG_slab (6.1) or with a
    page type (6.10+; makedumpfile 1.7.2 drops some of them on 6.12)."""
    with open_dump(lab_crash.raw_vmcore) as raw:
        vi = raw.vmcoreinfo
        rules = PageRules(vi, raw.page_size, 31)
        sections = MemSections(raw)
        kept = filter_pages(raw, 31).dumpable
        per = sections.pages_per_section
        slab_pages = dropped = 0
        for nr in range(-(-raw.max_pfn // per)):
            pfn0 = nr * per
            n = min(per, raw.max_pfn - pfn0)
            present = bm.bits_range(raw.present_bitmap(), pfn0, n)
            base = sections.mem_map(nr)
            if base is None or not present.any():
                continue
            pg = np.frombuffer(sections.mem.read_virt(base, n * rules.size_page), dtype=rules.dtype, count=n)
            slab = np.zeros(n, bool)
            if rules.is_slab_type is not None:
                slab |= rules.is_slab_type(pg["mapcount"])
            if rules.pg_slab is not None:
                slab |= (pg["flags"] & np.uint64(rules.pg_slab)) != 0
            slab &= present
            slab_pages += int(slab.sum())
            dropped += int((slab & ~bm.bits_range(kept, pfn0, n)).sum())
        assert slab_pages > 1000
        assert dropped == 0
