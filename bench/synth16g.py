#!/usr/bin/env python3
"""Build a large synthetic vmcore from a real one's layout (to stand for a 16 GiB machine).

Usage: ``python bench/synth16g.py REAL_VMCORE OUT [FACTOR]`` (default FACTOR 16).

The real ELF vmcore's RAM is repeated FACTOR times at higher physical addresses (the
copies become extra PT_LOADs), and the ``mem_section`` entries of the new sections are
written so that each points at the ``struct page`` array of the real section it copies.
makedumpfile and kdumpy therefore find a consistent struct page for every PFN and filter
the copies exactly like the originals: the work per page (classification, zero test,
compression) is the real dump's, FACTOR times over. The output is a sparse file.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from kdumpy.capture.filter import MemSections
from kdumpy.dump import open_dump


def main() -> int:
    src, out = sys.argv[1], sys.argv[2]
    factor = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    mem = open_dump(src)
    ps = mem.page_size
    sections = MemSections(mem)
    per = sections.pages_per_section
    real_secs = -(-mem.max_pfn // per)
    span_pfns = real_secs * per                 # copies start at section boundaries
    size_page = sections.size_page
    vi = mem.vmcoreinfo
    # Which sections exist, and the address of each real section's struct page array.
    bases = {nr: sections.mem_map(nr) for nr in range(real_secs)}
    core = mem.core
    loads = [(pa, msz, fsz, off, va) for pa, msz, fsz, off, va in mem.segments]
    ram = [s for s in loads if s[4] < 0xFFFFFFFF80000000]
    text = [s for s in loads if s[4] >= 0xFFFFFFFF80000000]
    direct = ram[0][4] - ram[0][0]
    new_loads = list(text) + list(ram)
    for k in range(1, factor):
        shift = k * span_pfns * ps
        new_loads += [(pa + shift, msz, fsz, off, direct + pa + shift) for pa, msz, fsz, off, _va in ram]
    # Patch mem_section entries: section nr = k*real_secs + r copies section r.
    patches: dict[int, bytes] = {}   # physical address -> bytes
    for k in range(1, factor):
        for r, base in bases.items():
            if base is None:
                continue
            nr = k * real_secs + r
            entry_va = sections.section_entry(nr)
            if entry_va is None:
                raise SystemExit(f"mem_section root for section {nr} is absent; use a smaller factor")
            old = struct.unpack("<Q", sections.mem.read_virt(entry_va + sections.off_map, 8))[0] if False else None
            smm_real = struct.unpack("<Q", sections.mem.read_virt(sections.section_entry(r) + sections.off_map, 8))[0]
            flags = smm_real & ~sections.map_mask & 0xFFFFFFFFFFFFFFFF
            coded = (base - (nr << sections.pfn_shift) * size_page) & 0xFFFFFFFFFFFFFFFF
            patches[sections.mem.virt_to_phys(entry_va + sections.off_map)] = struct.pack("<Q", coded | flags)
            del old
    # Write: ELF header + phdrs + notes + segment data (copies referencing the same bytes).
    phnum = 1 + len(new_loads)
    notes = core.note_bytes
    hdr_size = 64 + 56 * phnum
    data_off = hdr_size + len(notes)
    data_off += (-data_off) % ps
    with open(src, "rb") as f_src, open(out, "wb") as f:
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        f.write(struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0))
        f.write(struct.pack("<IIQQQQQQ", 4, 0, hdr_size, 0, 0, len(notes), len(notes), 0))
        cursor = data_off
        placed = []
        for pa, msz, fsz, off, va in new_loads:
            f.write(struct.pack("<IIQQQQQQ", 1, 7, cursor, va, pa, fsz, msz, 0))
            placed.append((pa, fsz, off, cursor))
            cursor += fsz
        f.write(notes)
        chunk = 64 << 20
        for pa, fsz, off, dst in placed:
            for a in range(0, fsz, chunk):
                n = min(chunk, fsz - a)
                f_src.seek(off + a)
                buf = bytearray(f_src.read(n))
                for ppa, data in patches.items():
                    if pa + a <= ppa < pa + a + n:
                        buf[ppa - pa - a:ppa - pa - a + 8] = data
                arr = np.frombuffer(bytes(buf), dtype=np.uint8)
                # keep the file sparse: skip writing all-zero 1 MiB blocks
                f.seek(dst + a)
                step = 1 << 20
                for b in range(0, n, step):
                    blk = arr[b:b + step]
                    if blk.any():
                        f.seek(dst + a + b)
                        f.write(blk.tobytes())
        f.truncate(cursor)
    print(f"{out}: {factor} x {mem.max_pfn * ps >> 20} MiB layout, {len(new_loads)} PT_LOADs, "
          f"{len(patches)} mem_section entries written; max PFN {(factor * span_pfns):#x}; "
          f"VMCOREINFO {vi.osrelease}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
