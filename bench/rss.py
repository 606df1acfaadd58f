#!/usr/bin/env python3
"""Peak RSS and wall time of kdumpy reading and converting a 1 GiB dump.

Usage: ``python bench/rss.py [VMCORE]``. Without VMCORE, a 1 GiB synthetic ELF vmcore
(a third random pages, a third text, a third zero) is built in a temporary directory;
with the lab's corpus present (``~/.cache/kdumpy/lab``), pass its raw ``/proc/vmcore``
copy. Each command runs as its own process, measured with ``wait4`` (ru_maxrss), several
times; medians are printed. Target (formats issue): under 100 MiB for reading/converting.

Peak RSS is read with GNU time (Debian package ``time``).
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

PAGE = 4096


def build_synthetic(path: str, size: int = 1 << 30) -> None:
    rng = np.random.default_rng(7)
    npages = size // PAGE
    note_name = b"VMCOREINFO\0\0"
    vi = b"OSRELEASE=6.1.0-bench\nPAGESIZE=4096\nCRASHTIME=1700000000\n"
    notes = struct.pack("<III", 11, len(vi), 0) + note_name + vi + b"\0" * (-len(vi) % 4)
    off = 64 + 56 * 2
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    data_off = off + len(notes)
    ph = struct.pack("<IIQQQQQQ", 4, 0, off, 0, 0, len(notes), len(notes), 0)
    ph += struct.pack("<IIQQQQQQ", 1, 7, data_off, 0, 0x100000, size, size, 0)
    text = (b"The quick brown fox jumps over the lazy dog. " * 100)[:PAGE]
    with open(path, "wb") as f:
        f.write(ehdr + ph + notes)
        chunk = 4096
        for base in range(0, npages, chunk):
            n = min(chunk, npages - base)
            kind = rng.integers(0, 3, n)
            pages = np.zeros((n, PAGE), dtype=np.uint8)
            rnd = kind == 0
            pages[rnd] = rng.integers(0, 256, (int(rnd.sum()), PAGE), dtype=np.uint8)
            pages[kind == 1] = np.frombuffer(text, dtype=np.uint8)
            f.write(pages.tobytes())


def measure(argv: list[str]) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one command.

    Peak RSS comes from GNU time (``%M``): its own child is exec'd from a small process,
    whereas a child forked from this Python process would be charged this process's RSS.
    """
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "KDUMPY_RSS_KB=%M", *argv],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    el = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr}")
    kb = int(r.stderr.rsplit("KDUMPY_RSS_KB=", 1)[1].split()[0])
    return el, kb / 1024.0


def main() -> int:
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(d, "vmcore")
        if len(sys.argv) <= 1:
            build_synthetic(src)
        k = [sys.executable, "-m", "kdumpy"]
        kd = os.path.join(d, "dump.kdump")
        flat = os.path.join(d, "dump.flat")
        subprocess.run(k + ["save", "-q", "-d", "1", "--no-dmesg", "-c", "lzo", src, kd], check=True)
        subprocess.run(k + ["save", "-q", "-d", "1", "--no-dmesg", "-c", "lzo", "-f", "flat", src, flat], check=True)
        cases = {
            "info ELF": k + ["info", src],
            "info kdump": k + ["info", kd],
            "save ELF->kdump lzo": k + ["save", "-q", "-d", "1", "--no-dmesg", "--force", "-c", "lzo", src, os.path.join(d, "o1")],
            "convert kdump->ELF": k + ["convert", "-q", "--force", "-f", "elf", kd, os.path.join(d, "o2")],
            "convert flat->kdump (reassemble)": k + ["convert", "-q", "--force", flat, os.path.join(d, "o3")],
            "convert flat->ELF": k + ["convert", "-q", "--force", "-f", "elf", flat, os.path.join(d, "o4")],
        }
        size = os.path.getsize(src)
        print(f"input {src}: {size / (1 << 20):.0f} MiB; {repeat} runs each, medians")
        print(f"{'command':36} {'time s':>8} {'peak RSS MiB':>13}")
        for name, argv in cases.items():
            runs = [measure(argv) for _ in range(repeat)]
            t = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            print(f"{name:36} {t:8.2f} {rss:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
