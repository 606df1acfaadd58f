#!/usr/bin/env python3
"""A longer run of the fuzz suite (tests/fuzz): many seeds per mutation class.

Usage: ``python bench/fuzz_long.py RAW_VMCORE [--seeds 400] [--first-seed 48] [--workers 2]``

RAW_VMCORE is a lab crash's ``vmcore.raw`` (``~/.cache/kdumpy/lab/<release>/crash-256M/``);
the bases (``save -d 31``, kdump and flattened) are written to a temporary directory. Seeds
start after the CI selection's (48 per class) so that the two do not overlap. Prints the
counts by command and exit status, and every failure with its reproducer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

from harness import CLASSES, BaseFacts, run_many  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--first-seed", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--classes", default=",".join(CLASSES))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdumpy-fuzz-") as d:
        kd, fl = f"{d}/base31.kdump", f"{d}/base31.flat"
        for out, fmt in ((kd, "kdump"), (fl, "flat")):
            subprocess.run([sys.executable, "-m", "kdumpy", "save", "-q", "--no-dmesg", "-d",
                            "31", "-f", fmt, a.raw, out], check=True)
        facts = BaseFacts.load(kd, fl)
        work = Path(d) / "work"
        work.mkdir()
        cases = [(c, s) for c in a.classes.split(",")
                 for s in range(a.first_seed, a.first_seed + a.seeds)]
        t0 = time.monotonic()
        tally = run_many(facts, (kd, fl), cases, work, workers=a.workers)
        wall = time.monotonic() - t0
    print(f"{len(cases)} mutations, {tally.runs} command runs in {wall:.0f} s "
          f"({a.workers} workers)")
    for (cmd, rc), n in sorted(tally.outcomes.items()):
        print(f"  {cmd:8} exit {rc}: {n}")
    print(f"failures: {len(tally.failures)}")
    for f in tally.failures:
        print("  " + f.reproducer())
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
