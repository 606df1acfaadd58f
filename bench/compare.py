#!/usr/bin/env python3
"""kdumpy and makedumpfile side by side, in one run, on the same inputs.

Usage: ``python bench/compare.py VMCORE [VMCORE...] [--repeat N] [--levels 31]``

For each input and codec (zlib, lzo), at 1 thread and at all usable threads, both tools
write the same dump level; each command runs ``--repeat`` times (alternating the tools, so
machine noise hits both alike) and the medians are reported with the ratios
kdumpy/makedumpfile for wall time, output size and peak RSS (GNU time ``%M``). Debian's
makedumpfile has no snappy/zstd: those rows are kdumpy only, compared with kdumpy's zlib.
``kdumpy dmesg`` time is reported too. Inputs: the lab's raw vmcores
(``~/.cache/kdumpy/lab/*/crash-256M/vmcore.raw``) and ``bench/synth16g.py``'s large one.
Nothing here is asserted: it prints a table (and ``--json FILE`` writes the numbers).

kdumpy runs from the checkout this script lives in (``PYTHONPATH``), byte-compiled once up
front; every input is read once before timing (warm page cache), and before each timed run
the previous output is removed and dirty pages are synced, untimed, so one tool's writeback
does not land in the other's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


#: this checkout's sources: the kdumpy measured is the one beside this script, whatever
#: ``kdumpy`` is installed
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def kdumpy_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run(argv: list[str], out: str | None, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS MiB, output bytes of one command.

    The previous output is removed and everything dirty is written back first (untimed),
    so one run's writeback (makedumpfile does not fsync; kdumpy does) never lands in the
    next run's time.
    """
    if out and os.path.exists(out):
        os.unlink(out)
    os.sync()
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "KDUMPY_RSS_KB=%M", *argv],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    el = time.perf_counter() - t0
    if r.returncode != 0:
        last = [ln for ln in r.stderr.splitlines() if ln.strip() and "KDUMPY_RSS_KB" not in ln]
        raise ToolFailed(f"{' '.join(argv[:3])}... failed: {last[-1] if last else r.returncode}")
    kb = int(r.stderr.rsplit("KDUMPY_RSS_KB=", 1)[1].split()[0])
    size = os.path.getsize(out) if out else 0
    return el, kb / 1024, size


class ToolFailed(Exception):
    """One tool's run failed (e.g. Debian's makedumpfile --num-threads aborts on large input)."""


def med(rows: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
            int(statistics.median(r[2] for r in rows)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("vmcores", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--levels", default="31")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    kd = [sys.executable, "-m", "kdumpy"]
    env = kdumpy_env()
    # Byte-compile this checkout once (an installed kdumpy is; with PYTHONDONTWRITEBYTECODE
    # set, every run would otherwise compile its modules again).
    subprocess.run([sys.executable, "-m", "compileall", "-q", SRC], check=False,
                   stdout=subprocess.DEVNULL)
    print(f"kdumpy from {SRC}")
    results = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        o_k, o_m = os.path.join(d, "k"), os.path.join(d, "m")
        for vm in args.vmcores:
            size_in = os.path.getsize(vm)
            with open(vm, "rb") as f:  # into the page cache first: every run reads it warm
                while f.read(64 << 20):
                    pass
            dm = [run(kd + ["dmesg", vm], None, env) for _ in range(args.repeat)]
            print(f"\n{vm} ({size_in >> 20} MiB): kdumpy dmesg median "
                  f"{med(dm)[0]:.2f} s, {med(dm)[1]:.0f} MiB")
            print(f"{'level':>5} {'codec':6} {'thr':>3} | {'kdumpy s':>8} {'mdf s':>7} {'ratio':>5} |"
                  f" {'kdumpy MB':>9} {'mdf MB':>7} {'ratio':>5} | {'kd RSS':>6} {'mdf RSS':>7} {'ratio':>5}")
            for level in args.levels.split(","):
                for codec, flag in (("zlib", "-c"), ("lzo", "-l")):
                    for thr in sorted({1, args.threads}):
                        ks, ms = [], []
                        failed = ""
                        for _ in range(args.repeat):
                            ks.append(run(kd + ["save", "-q", "--no-dmesg", "--threads", str(thr),
                                                "-d", level, "-c", codec, vm, o_k], o_k, env))
                            mt = [] if thr == 1 else ["--num-threads", str(thr)]
                            try:
                                ms.append(run(["makedumpfile", flag, *mt, "-d", level, vm, o_m], o_m))
                            except ToolFailed as exc:
                                failed = str(exc)
                        k = med(ks)
                        if not ms:
                            results.append({"input": vm, "level": int(level), "codec": codec,
                                            "threads": thr, "kdumpy": k, "makedumpfile": failed})
                            print(f"{level:>5} {codec:6} {thr:>3} | {k[0]:8.2f}  makedumpfile: {failed}")
                            continue
                        m = med(ms)
                        row = {"input": vm, "level": int(level), "codec": codec, "threads": thr,
                               "kdumpy": k, "makedumpfile": m,
                               "ratio_time": k[0] / m[0], "ratio_size": k[2] / m[2],
                               "ratio_rss": k[1] / m[1]}
                        results.append(row)
                        print(f"{level:>5} {codec:6} {thr:>3} | {k[0]:8.2f} {m[0]:7.2f} {row['ratio_time']:5.2f} |"
                              f" {k[2] / 1e6:9.1f} {m[2] / 1e6:7.1f} {row['ratio_size']:5.3f} |"
                              f" {k[1]:6.0f} {m[1]:7.0f} {row['ratio_rss']:5.2f}")
                zl = next(r for r in results if r["input"] == vm and r["codec"] == "zlib"
                          and r["threads"] == 1 and r["level"] == int(level))
                for codec in ("snappy", "zstd"):
                    ks = [run(kd + ["save", "-q", "--no-dmesg", "--threads", "1", "-d", level,
                                    "-c", codec, vm, o_k], o_k, env) for _ in range(args.repeat)]
                    k = med(ks)
                    results.append({"input": vm, "level": int(level), "codec": codec, "threads": 1,
                                    "kdumpy": k, "vs_kdumpy_zlib_time": k[0] / zl["kdumpy"][0],
                                    "vs_kdumpy_zlib_size": k[2] / zl["kdumpy"][2]})
                    print(f"{level:>5} {codec:6} {1:>3} | {k[0]:8.2f}  (kdumpy only: time {k[0] / zl['kdumpy'][0]:.2f}x, "
                          f"size {k[2] / zl['kdumpy'][2]:.2f}x of kdumpy zlib; RSS {k[1]:.0f} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
