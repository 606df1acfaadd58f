"""Synthetic ELF vmcores for unit tests, built with plain ``struct`` (independent of kdumpy's
own writers): a PT_NOTE with NT_PRSTATUS and VMCOREINFO, RAM PT_LOADs with random,
repetitive and zero pages, an unaligned range end, a hole, a memsz-only tail, and a
kernel-text PT_LOAD that overlaps RAM physically (as in /proc/vmcore on x86_64).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

PAGE = 4096


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def prstatus(pid: int, rip: int) -> bytes:
    d = bytearray(336)
    struct.pack_into("<h", d, 12, 11)        # pr_cursig
    struct.pack_into("<i", d, 32, pid)       # pr_pid
    regs = list(range(1, 28))
    regs[16] = rip                           # rip
    struct.pack_into("<27Q", d, 112, *regs)
    return bytes(d)


VMCOREINFO = (b"OSRELEASE=6.1.0-synthetic-amd64\nBUILD-ID=0123456789abcdef\nPAGESIZE=4096\n"
              b"SYMBOL(init_uts_ns)=ffffffff8f812340\nSYMBOL(_stext)=ffffffff8e800000\n"
              b"OFFSET(page.flags)=0\nSIZE(page)=64\nLENGTH(zone.free_area)=11\n"
              b"NUMBER(phys_base)=-148897792\nNUMBER(VMALLOC_START)=0xffa0000000000000\n"
              b"KERNELOFFSET=d800000\nCONFIG_X86_5LEVEL=y\nCRASHTIME=1763881234\n")


@dataclass
class SynthCore:
    path: str
    pages: dict[int, bytes]          # pfn -> contents of every dumpable page
    present: set[int]
    zero_pfns: set[int]


def make_vmcore(path: str, *, seed: int = 0, ram_pages: tuple[int, ...] = (150, 700, 90),
                vmcoreinfo: bytes = VMCOREINFO) -> SynthCore:
    rng = np.random.default_rng(seed)
    # RAM ranges: [1, 1+150) pages with an unaligned end; a hole; 700; a memsz-only tail.
    ranges = []
    start = 1
    for i, n in enumerate(ram_pages):
        ranges.append((start, n))
        start += n + 37  # hole between ranges
    pages: dict[int, bytes] = {}
    zero: set[int] = set()
    present: set[int] = set()
    for rs, n in ranges:
        for pfn in range(rs, rs + n):
            present.add(pfn)
            kind = rng.integers(0, 4)
            if kind == 0:
                data = bytes(PAGE)
                zero.add(pfn)
            elif kind == 1:
                data = rng.integers(0, 256, PAGE, dtype=np.uint8).tobytes()
            elif kind == 2:
                data = (b"kdumpy %d " % pfn) * (PAGE // 10) + b"\0" * (PAGE % 10)
                data = data[:PAGE].ljust(PAGE, b"\0")
            else:
                data = bytes(PAGE - 8) + struct.pack("<Q", pfn)
            pages[pfn] = data
    # A run of >= 256 zero pages inside the big range to exercise ELF segment splitting.
    big_start = ranges[1][0] + 100
    for pfn in range(big_start, big_start + 300):
        pages[pfn] = bytes(PAGE)
        zero.add(pfn)
    notes = note(b"CORE", 1, prstatus(1234, 0xffffffff8e9abcde)) + note(b"VMCOREINFO", 0, vmcoreinfo)
    # PT_LOADs: kernel text overlapping RAM range 1's first 20 pages, then RAM ranges.
    loads = []  # (paddr, vaddr, filesz, memsz, data)
    ts, tn = ranges[1][0], 20
    loads.append((ts * PAGE, 0xffffffff8e800000, tn * PAGE, tn * PAGE,
                  b"".join(pages[p] for p in range(ts, ts + tn))))
    for i, (rs, n) in enumerate(ranges):
        memsz = n * PAGE
        filesz = memsz
        if i == 0:
            memsz -= 1024          # unaligned end, as /proc/iomem ranges can be
            filesz = memsz
        if i == 2:
            filesz = (n - 10) * PAGE  # a memsz-only tail: the last 10 pages are not in the file
        data = b"".join(pages[p] for p in range(rs, rs + n))[:filesz]
        loads.append((rs * PAGE, 0xff11000000000000 + rs * PAGE, filesz, memsz, data))
    last = ranges[2]
    for pfn in range(last[0] + last[1] - 10, last[0] + last[1]):
        del pages[pfn]
    first = ranges[0]
    # The unaligned tail page is not a whole page of RAM: like makedumpfile (whose first bitmap
    # ends at paddr_to_pfn(end), rounded down), kdumpy leaves it out of the present pages.
    tail = first[0] + first[1] - 1
    del pages[tail]
    present.discard(tail)
    zero.discard(tail)
    phnum = 1 + len(loads)
    off = 64 + 56 * phnum
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, off, 0, 0, len(notes), len(notes), 0)
    off += len(notes)
    body = [notes]
    for pa, va, fsz, msz, data in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, va, pa, fsz, msz, 0)
        body.append(data)
        off += fsz
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(ehdr + phdrs + b"".join(body))
    return SynthCore(path, pages, present, zero & set(pages))
