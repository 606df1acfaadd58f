#!/usr/bin/env python3
"""kdumpy's capture against Debian's kdump-tools 1:1.8.1 + makedumpfile 1:1.7.2, same guest,
same crash, same dump level and codec.

Usage (from the checkout; the global python's editable kdumpy may point elsewhere)::

    PYTHONPATH=$PWD/src:$PWD python3 bench/capture_vs_kdump_tools.py \
        [--memory 1024,4096] [--tools kdumpy,kdump-tools] [--main 384M] [--search] \
        [--ladder 96M,128M,...] [--floor kdumpy=256M] [--stop-at HH:MM] [--table-only]

Method
------
Guest: the lab's systemd Debian 12 image (:func:`lab.systemd_guest.ensure_guest`), kernel
6.1.0-57-amd64 (``lab.corpus.releases()[0]``), 2 vCPUs, QEMU under TCG on this machine (no
KVM), user networking only, ``-no-reboot`` so every guest reboot ends one QEMU process. One
QEMU guest at a time. Crash: SysRq ``c`` (kdumpy: ``kdumpy test --yes``, which writes ``c``
to /proc/sysrq-trigger; kdump-tools: ``sync; echo c > /proc/sysrq-trigger``).

kdumpy: :class:`lab.systemd_life._Life` from the installed disk of the plain life run
(``from_life``: kdumpy installed by ``scripts/install-kdumpy`` into /opt/kdumpy/venv), with
``/etc/kdumpy.toml`` = ``[dump] level = 31, compression = "zlib"``, the lab's raw
/proc/vmcore copy hook removed (``raw_copy=False`` and the inherited hook file deleted) and the
bench's MemAvailable sampler as ``/etc/kdumpy/pre.d/20-bench-memavail``; boot 2 restarts
kdumpy.service (rebuilds the capture image, loads it) and crashes. Runs live under
``<lab cache>/6.1.0-57-amd64/bench-kdump-tools/kdumpy-*`` (never the lab's own run names).

kdump-tools: :mod:`lab.kdump_tools_guest`: the debs from ``apt-get download`` on the host,
``dpkg -i`` in the guest, ``/etc/default/kdump-tools`` with ``MAKEDUMP_ARGS="-c -d 31"``
(kdump-config appends ``-F``; ``-c`` is zlib) and ``KDUMP_CMDLINE_APPEND`` = the package
default plus ``panic=10`` (kdumpy's capture command line has ``panic=10`` too; without it a
capture kernel that panics for lack of memory would hang until the bench's deadline), the
kdump initrd built by the package's own kernel hook (``kdump-config symlinks``), and the same
sampler as an ``ExecStartPre=`` drop-in on kdump-tools-dump.service.

Numbers:

* dump s: host seconds from the console's ``Kernel panic`` line to the line that says the dump
  is complete (kdumpy: ``kdumpy-init: capture exit 0``; kdump-tools: ``kdump-tools: saved vmcore
  in``). Both include the capture kernel's boot.
* panic->login s: seconds from the panic line to QEMU's exit (the capture's reboot) plus the
  next boot's seconds from QEMU start to the serial autologin (the QEMU restart between them,
  a lab artefact, is not counted).
* image: the compressed capture image file (kdumpy: /var/lib/kdumpy/capture-R.img; kdump-tools:
  /var/lib/kdump/initrd.img-R). kdump-tools' capture also mounts and boots the real root file
  system, which the initrd size does not show.
* MemAvailable min: the sampler (POSIX sh, builtins + sleep 0.25) reads /proc/meminfo's
  MemAvailable every 0.25 s from just before the save and prints it to /dev/console whenever it
  is >= 256 KiB below the last printed value; the table shows the last (lowest) one printed
  before the capture ended (so within 256 KiB and 0.25 s of the true minimum).
* min crashkernel: bisection over the ladder (sorted), taking the main run's crashkernel as a
  known success; a trial captures when the completion line above appears (and, for
  kdump-tools, makedumpfile did not fail: its fallback ``cp`` of /proc/vmcore does not count).
  Search trials skip the boot after the crash. ``--floor TOOL=SIZE`` starts a tool's
  bisection at SIZE (smaller values assumed to fail, e.g. its minimum on a smaller guest); the
  table says so. ``--stop-at`` starts no search trial after that UTC time (the table then gives
  the bracket reached).

Single runs per configuration (no medians): the machine is shared and TCG timings are noisy.
Results (one JSON per trial) are cached in ``<lab cache>/6.1.0-57-amd64/bench-kdump-tools/``
and reused when the bench is run again; delete that directory to measure again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from lab.corpus import releases  # noqa: E402
from lab.kdump_tools_guest import KdumpToolsGuest, bench_dir  # noqa: E402
from lab.qemu import choose_accelerator  # noqa: E402
from lab.run import kdumpy_digest  # noqa: E402
from lab.systemd_guest import ensure_guest  # noqa: E402
from lab.systemd_life import RAW_HOOK, LifeOptions, _Life, ensure_life  # noqa: E402

LADDER = ("96M", "128M", "160M", "192M", "224M", "256M", "320M", "384M", "448M", "512M")
KDUMPY_CONFIG = '[dump]\nlevel = 31\ncompression = "zlib"\n'
MAKEDUMP_ARGS = "-c -d 31"
KT_APPEND = ("reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll "
             "usbcore.nousb panic=10")
SAMPLER_HOOK = "/etc/kdumpy/pre.d/20-bench-memavail"
SAMPLER = """#!/bin/sh
# bench only: the lowest MemAvailable while the dump is saved, on the console
meminfo() {
    while read -r key value unit; do
        case $key in "$1:") echo "$value"; return;; esac
    done < /proc/meminfo
}
echo "BENCH-MEMAVAIL total $(meminfo MemTotal)" > /dev/console
echo "BENCH-MEMAVAIL start $(meminfo MemAvailable)" > /dev/console
(
    last=
    while :; do
        cur=$(meminfo MemAvailable)
        if [ -z "$last" ] || [ "$cur" -le $((last - 256)) ]; then
            last=$cur
            echo "BENCH-MEMAVAIL min $cur" > /dev/console
        fi
        sleep 0.25
    done
) </dev/null >/dev/null 2>&1 &
exit 0
"""


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def mib(size: str) -> int:
    return int(size.rstrip("M"))


# -- kdumpy ---------------------------------------------------------------------------------

class _BenchLife(_Life):
    """kdumpy's life from the installed disk; search trials skip the boot after the crash."""

    after_boot = True

    def _boot3(self) -> None:
        if self.after_boot:
            super()._boot3()


def kdumpy_trial(release: str, memory: int, crashkernel: str, *, after_boot: bool,
                 deadline: float) -> dict[str, Any]:
    name = f"kdumpy-{memory}M-{crashkernel}{'' if after_boot else '-search'}"
    directory = bench_dir(release) / name
    options = LifeOptions(
        name=f"bench-kt-{memory}M-{crashkernel}", memory_mib=memory, crashkernel=crashkernel,
        raw_copy=False, config=KDUMPY_CONFIG, from_life=True, capture_deadline=deadline,
        setup=(f"rm -f {RAW_HOOK}",
               f"mkdir -p /etc/kdumpy/pre.d && printf '%s' {shlex.quote(SAMPLER)} > "
               f"{SAMPLER_HOOK} && chmod 755 {SAMPLER_HOOK} && ls -l /etc/kdumpy/pre.d"))
    image = ensure_guest(log=log)
    parent = ensure_life(release, LifeOptions(), log=log)   # cached: the installed disk
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    life = _BenchLife(image, release, options, choose_accelerator("auto")[0], directory, log,
                      parent)
    life.after_boot = after_boot
    res: dict[str, Any] = {"tool": "kdumpy", "memory_mib": memory, "crashkernel": crashkernel,
                           "name": name}
    try:
        life.run("bench", kdumpy_digest(whole=True))
    except Exception as exc:  # noqa: BLE001 - recorded, the bench goes on
        res["error"] = f"{type(exc).__name__}: {str(exc)[-3000:]}"
    finally:
        (directory / "disk.qcow2").unlink(missing_ok=True)
    meta = life.meta
    b2 = meta["boots"].get("boot2", {})
    events = b2.get("capture_events", [])
    exits = [e for e in events if e["kind"] == "capture_exit"]
    res["events"] = events
    res["kexec_crash_loaded"] = b2.get("crash_kernel_loaded")
    res["service_seconds"] = b2.get("service_seconds")
    panic_t = b2.get("panic_t")
    res["captured"] = bool(exits) and exits[0]["value"] == "0"
    if not res["captured"] and "failure" not in res:
        res["failure"] = (res.get("error", "").splitlines() or [""])[0] or \
            f"no 'capture exit 0' (events {[e['kind'] for e in events]})"
    if exits and panic_t is not None:
        res["dump_seconds"] = round(exits[0]["t"] - panic_t, 1)
    if res["captured"] and panic_t is not None and b2.get("exit_seconds"):
        res["panic_to_exit_seconds"] = round(b2["exit_seconds"] - panic_t, 1)
    b3 = meta["boots"].get("boot3", {})
    if b3.get("login_seconds") and "panic_to_exit_seconds" in res:
        res["after_login_seconds"] = round(b3["login_seconds"], 1)
        res["panic_to_login_seconds"] = round(res["panic_to_exit_seconds"] +
                                              b3["login_seconds"], 1)
    lines = b2.get("capture_image", [])
    try:
        text = "\n".join(lines)
        res["image_bytes"] = json.loads(text[text.index("{"):])["compressed_size"]
    except (ValueError, KeyError):
        pass
    for line in b2.get("capture_lines", []):
        for kind, key in (("min", "memavail_min_kb"), ("start", "memavail_start_kb"),
                          ("total", "memtotal_kb")):
            tag = f"BENCH-MEMAVAIL {kind} "
            if tag in line:
                value = int(line.split(tag, 1)[1].split()[0])
                res[key] = min(value, res.get(key, value)) if kind == "min" else value
    dumps = [p for p in (directory / "crash").glob("*/vmcore*") if p.is_file()
             and not p.name.endswith((".json", ".txt"))]
    if dumps:
        res["dump_bytes"] = dumps[0].stat().st_size
    (directory / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


# -- both -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, release: str, tools: list[str]) -> None:
        self.release, self.tools = release, tools
        self.dir = bench_dir(release)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._kt: KdumpToolsGuest | None = None

    def kt(self) -> KdumpToolsGuest:
        if self._kt is None:
            self._kt = KdumpToolsGuest(self.release, makedump_args=MAKEDUMP_ARGS,
                                       cmdline_append=KT_APPEND, sampler=SAMPLER, log=log)
        return self._kt

    def cached(self, tool: str, memory: int, ck: str, main: bool) -> dict[str, Any] | None:
        names = [f"{tool}-{memory}M-{ck}"] + ([] if main else [f"{tool}-{memory}M-{ck}-search"])
        for name in names:
            f = self.dir / name / "result.json"
            if f.is_file():
                return json.loads(f.read_text())
        return None

    def trial(self, tool: str, memory: int, ck: str, main: bool) -> dict[str, Any]:
        done = self.cached(tool, memory, ck, main)
        if done is not None:
            return done
        deadline = 600 if memory <= 1024 else 1200
        log(f"bench: {tool} {memory} MiB crashkernel={ck} ({'main' if main else 'search'})")
        t0 = time.monotonic()
        if tool == "kdumpy":
            res = kdumpy_trial(self.release, memory, ck, after_boot=main, deadline=deadline)
        else:
            res = self.kt().crash(f"kdump-tools-{memory}M-{ck}{'' if main else '-search'}",
                                  memory, ck, after_boot=main, deadline=deadline)
            (self.dir / res["name"] / "result.json").write_text(json.dumps(res, indent=2))
        log(f"bench: -> captured={res.get('captured')} dump={res.get('dump_seconds')} s "
            f"memavail_min={res.get('memavail_min_kb')} kB {res.get('failure', '')[:200]} "
            f"({time.monotonic() - t0:.0f} s wall)")
        return res

    def search(self, tool: str, memory: int, ladder: list[str], known_ok: str | None,
               stop_at: float, floor: str | None = None) -> dict[str, Any]:
        """Smallest ladder value that captures (monotone assumed), by bisection. ``floor``:
        values below it are assumed to fail without a trial (e.g. the smallest value that
        captured a smaller guest with the same tool)."""
        lo, hi = 0, len(ladder) - 1
        if floor in ladder:
            lo = ladder.index(floor)
        if known_ok in ladder:
            hi = ladder.index(known_ok)
        tried: dict[str, bool] = {}
        if known_ok not in ladder:
            tried[ladder[hi]] = bool(self.trial(tool, memory, ladder[hi], False)["captured"])
            if not tried[ladder[hi]]:
                return {"min": None, "tried": tried, "note": f"> {ladder[hi]}"}
        while lo < hi:
            if time.time() > stop_at:
                return {"min": None, "tried": tried,
                        "note": f"stopped (time box): between {ladder[lo]} and {ladder[hi]}",
                        "bounds": [ladder[lo], ladder[hi]]}
            mid = (lo + hi) // 2
            ok = bool(self.trial(tool, memory, ladder[mid], False)["captured"])
            tried[ladder[mid]] = ok
            if ok:
                hi = mid
            else:
                lo = mid + 1
        out: dict[str, Any] = {"min": ladder[hi], "tried": tried}
        if floor in ladder:
            out["assumed_fail_below"] = floor
        return out


def kib_mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def table(bench: Bench, memories: list[int], main_ck: str, ladder: list[str]) -> str:
    rows = ["| tool | guest RAM | crashkernel | dump on disk (s after panic) | panic -> next "
            "login (s) | capture image (compressed) | MemTotal / MemAvailable at save start / "
            "lowest during save (MiB) | dump file | smallest crashkernel= that captures |",
            "|---|---|---|---|---|---|---|---|---|"]
    for memory in memories:
        for tool in bench.tools:
            r = bench.cached(tool, memory, main_ck, True) or {}
            search = bench.dir / f"search-{tool}-{memory}M.json"
            smin = "-"
            if search.is_file():
                s = json.loads(search.read_text())
                tried = ", ".join(f"{k}:{'ok' if v else 'fail'}" for k, v in
                                  sorted(s["tried"].items(), key=lambda kv: mib(kv[0])))
                smin = (s["min"] or s.get("note", "?")) + (f" (tried {tried})" if tried else "")
                if s.get("assumed_fail_below"):
                    smin += f"; below {s['assumed_fail_below']} assumed to fail (not tried)"
            image = r.get("image_bytes")
            dump = r.get("dump_bytes")
            rows.append(
                f"| {tool} | {memory} MiB | {main_ck} | "
                f"{r.get('dump_seconds', r.get('failure', '-'))} | "
                f"{r.get('panic_to_login_seconds', '-')} | "
                f"{'-' if not image else f'{image / 2**20:.1f} MiB'} | "
                f"{kib_mib(r.get('memtotal_kb'))} / {kib_mib(r.get('memavail_start_kb'))} / "
                f"{kib_mib(r.get('memavail_min_kb'))} | "
                f"{'-' if not dump else f'{dump / 2**20:.1f} MiB'} | {smin} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", default="1024", help="guest RAM sizes in MiB, comma list")
    ap.add_argument("--tools", default="kdump-tools,kdumpy")
    ap.add_argument("--main", default="384M", help="crashkernel= of the timed runs")
    ap.add_argument("--ladder", default=",".join(LADDER))
    ap.add_argument("--search", action="store_true", help="also search the smallest crashkernel")
    ap.add_argument("--stop-at", default="", help="UTC HH:MM: start no search trial after it")
    ap.add_argument("--floor", default="", help="TOOL=SIZE,...: assume smaller values fail "
                    "for TOOL (e.g. its minimum on a smaller guest) and search from SIZE")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    release = releases()[0]
    memories = [int(m) for m in args.memory.split(",")]
    ladder = sorted(args.ladder.split(","), key=mib)
    bench = Bench(release, args.tools.split(","))
    stop_at = float("inf")
    if args.stop_at:
        hh, mm = map(int, args.stop_at.split(":"))
        now = time.gmtime()
        stop_at = time.mktime(time.struct_time((now.tm_year, now.tm_mon, now.tm_mday, hh, mm,
                                                0, 0, 0, 0))) - time.timezone
    if not args.table_only:
        for memory in memories:
            for tool in bench.tools:
                bench.trial(tool, memory, args.main, True)
            if args.search:
                for tool in bench.tools:
                    main_ok = (bench.cached(tool, memory, args.main, True) or {}).get("captured")
                    floors = dict(f.split("=") for f in args.floor.split(",") if f)
                    s = bench.search(tool, memory, ladder, args.main if main_ok else None,
                                     stop_at, floors.get(tool))
                    (bench.dir / f"search-{tool}-{memory}M.json").write_text(
                        json.dumps(s, indent=2) + "\n")
    print(table(bench, memories, args.main, ladder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
