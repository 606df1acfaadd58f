#!/usr/bin/env python3
"""Time and peak RSS of page classification for a 16 GiB machine's struct page array.

Usage: ``python bench/filter16g.py VMCORE [FACTOR]``. The real dump's struct page array
(and its present ranges) is tiled FACTOR times (default 16: a 1 GiB lab dump stands for a
16 GiB machine); everything else — VMCOREINFO, page tables, the classification — is the
real code path of ``kdumpy save -d 31``. Run once per FACTOR to see whether memory grows
with RAM size. Prints ``factor pages seconds peak_rss_MiB`` and the excluded counts.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from kdumpy.capture import filter as kfilter
from kdumpy.formats import bitmap as bm
from kdumpy.kernel import KernelView
from kdumpy.dump import open_dump


def main() -> int:
    path = sys.argv[1]
    factor = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    mem = open_dump(path)
    sections = kfilter.MemSections(mem)
    per = sections.pages_per_section
    real_secs = -(-mem.max_pfn // per)
    bases = {nr: sections.mem_map(nr) for nr in range(real_secs)}
    span = real_secs * per
    present = np.asarray(mem.present_bitmap(), dtype=np.uint8)
    tiled = bm.new_bitmap(span * factor)
    for k in range(factor):
        for s, e in bm.runs(present, mem.max_pfn):
            bm.set_range(tiled, k * span + s, k * span + e)
    real_read_virt = KernelView.read_virt
    struct_size = sections.size_page

    # Sections beyond the real machine show the real sections' struct pages again.
    def mem_map(self, nr):
        return ("tile", nr)

    def read_virt(self, va, size):
        if isinstance(va, tuple):
            nr = va[1]
            base = bases.get(nr % real_secs)
            return real_read_virt(self, base, size)
        return real_read_virt(self, va, size)

    kfilter.MemSections.mem_map = mem_map
    KernelView.read_virt = read_virt
    mem.max_pfn = span * factor
    mem._present = tiled
    mem._dumpable = tiled
    mem.present_bitmap = lambda: tiled
    mem.dumpable_bitmap = lambda: tiled
    mem.kernel_image_ranges = lambda: []
    del struct_size
    t0 = time.perf_counter()
    res = kfilter.filter_pages(mem, 31)
    el = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"factor {factor} pages {mem.max_pfn} ({mem.max_pfn * 4 >> 20} GiB) "
          f"classify {el:.2f} s peak RSS {rss:.1f} MiB excluded {res.excluded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
