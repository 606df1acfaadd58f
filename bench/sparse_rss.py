#!/usr/bin/env python3
"""Peak RSS of a save whose bitmaps are huge: a real vmcore plus RAM at a high address.

Usage: ``python bench/sparse_rss.py REAL_VMCORE [--high-tib 4] [--repeat 3]``

A dump's page bitmaps take one bit per PFN up to the highest one (``max_mapnr``), however
little of that range is RAM: a machine with memory at 4 TiB needs 128 MiB per bitmap. This
builds (in a temporary directory, no data copied) an ELF vmcore that has the real one's
PT_LOADs plus one 64 MiB PT_LOAD at ``--high-tib`` TiB, whose file bytes are the real
dump's first RAM segment again. kdumpy (bitmap cycles, :class:`kdumpy.capture.pipeline.
Cycles`) and makedumpfile (its cyclic mode) then save it at ``-d 31 -l`` side by side; the
same is done for the real vmcore alone. Peak RSS should not move with ``--high-tib``.
Nothing is asserted; the medians are printed.

makedumpfile lowers ``max_mapnr`` to the end of the last memory section that has a
``struct page`` array (for kernels booted with ``mem=``), so it drops the synthetic high RAM
(it has none) and writes the real dump's bitmaps; kdumpy keeps every page ``/proc/vmcore``
offers. Its RSS row is there for scale, not as the same work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile

from kdumpy.dump import open_dump

HIGH_BYTES = 64 << 20


def build(src: str, out: str, high: int) -> int:
    """Write ``out``; return its max_pfn."""
    with open_dump(src) as mem:
        core = mem.core
        loads = [(pa, msz, fsz, off, va) for pa, msz, fsz, off, va in mem.segments]
        notes = core.note_bytes
        ram = next(s for s in loads if s[4] < 0xFFFFFFFF80000000 and s[2] >= HIGH_BYTES)
        direct = ram[4] - ram[0]
        loads.append((high, HIGH_BYTES, HIGH_BYTES, ram[3], direct + high))
        ps = mem.page_size
    phnum = 1 + len(loads)
    hdr = 64 + 56 * phnum
    with open(src, "rb") as f_src, open(out, "wb") as f:
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        f.write(struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum,
                            0, 0, 0))
        # the notes go after the headers; the PT_LOADs keep pointing into a copy of the
        # source placed after them at the same relative offsets
        base = hdr + len(notes)
        base += (-base) % ps
        f.write(struct.pack("<IIQQQQQQ", 4, 0, hdr, 0, 0, len(notes), len(notes), 0))
        for pa, msz, fsz, off, va in loads:
            f.write(struct.pack("<IIQQQQQQ", 1, 7, base + off, va, pa, fsz, msz, 0))
        f.write(notes)
        f.seek(base)
        while True:
            chunk = f_src.read(64 << 20)
            if not chunk:
                break
            f.write(chunk)
    return (high + HIGH_BYTES) // ps


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of one command, by GNU time."""
    r = subprocess.run(["/usr/bin/time", "-f", "RSS=%M WALL=%e", *argv],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr[-500:]}")
    tail = r.stderr.rsplit("RSS=", 1)[1].split()
    return int(tail[0]) / 1024, float(tail[1].split("=")[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("vmcore")
    ap.add_argument("--high-tib", type=float, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    kdumpy = [sys.executable, "-m", "kdumpy"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        sparse = os.path.join(tmp, "sparse.vmcore")
        max_pfn = build(args.vmcore, sparse, int(args.high_tib * (1 << 40)))
        print(f"sparse input: max_pfn {max_pfn} ({max_pfn / 8 / (1 << 20):.0f} MiB per "
              f"bitmap), RAM at {args.high_tib:g} TiB")
        out = os.path.join(tmp, "out")
        rows = []
        for label, src in (("real", args.vmcore), (f"+{args.high_tib:g} TiB", sparse)):
            for tool, argv in (("kdumpy", [*kdumpy, "save", "-q", "--no-dmesg", "-d", "31",
                                           "-c", "lzo", "--threads", "1", src, out]),
                               ("makedumpfile", ["makedumpfile", "-l", "-d", "31", src, out])):
                got = []
                for _ in range(args.repeat):
                    if os.path.exists(out):
                        os.unlink(out)
                    got.append(peak_rss(argv))
                size = os.path.getsize(out)
                rows.append((label, tool, statistics.median(g[0] for g in got),
                             statistics.median(g[1] for g in got), size))
        print(f"{'input':<12} {'tool':<13} {'peak RSS MiB':>12} {'wall s':>8} {'bytes':>12}")
        for label, tool, rss, wall, size in rows:
            print(f"{label:<12} {tool:<13} {rss:>12.1f} {wall:>8.2f} {size:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
