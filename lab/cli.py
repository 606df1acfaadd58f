"""Command line of the lab: ``python -m lab {run,kernels,show,verify,clean}``.

``run`` is the demo: it needs no installation beyond the Debian packages (qemu-system-x86,
busybox-static, kexec-tools, makedumpfile, kmod) and prints each phase's timing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .cache import cache_root
from .kernels import SERIES, apt_candidates, cached_releases, requested_specs, resolve
from .run import (DEFAULT_CRASHKERNEL, SMALL_CRASHKERNEL, CrashRun, LabError, RunOptions,
                  ensure_run, load_complete)

PHASE_LABELS = [
    ("qemu_start_to_linux_version", "QEMU start -> 'Linux version'"),
    ("qemu_start_to_init", "QEMU start -> /init"),
    ("first_insmod", "first: insmod virtio/9p"),
    ("first_mount_shares", "first: mount 9p shares"),
    ("first_kexec_load", "first: kexec -p load"),
    ("first_fill", "first: memory fill"),
    ("crash_to_capture_linux_version", "crash -> capture 'Linux version'"),
    ("crash_to_capture_init", "crash -> capture /init"),
    ("capture_insmod", "capture: insmod"),
    ("capture_mount_shares", "capture: mount 9p shares"),
    ("capture_raw_copy", "capture: dd /proc/vmcore -> disk"),
    ("capture_makedumpfile", "capture: makedumpfile -F -l -d 31"),
    ("capture_kdumpy_save", "capture: kdumpy save"),
    ("crash_to_qemu_exit", "crash -> QEMU exit"),
    ("total", "total (QEMU start -> exit)"),
]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(path: str | None) -> str:
    if not path or not Path(path).exists():
        return "-"
    stat = Path(path).stat()
    return f"{stat.st_size:,} B ({stat.st_blocks * 512 / 1e6:.1f} MB on disk)"


def summary(run: CrashRun) -> str:
    """Human-readable report of one run."""
    meta = run.meta
    lines = [f"== {meta['release']}  crashkernel={meta['crashkernel']}  "
             f"accelerator={meta['accelerator']} ({meta['accelerator_reason']})",
             f"   {meta['qemu_version']}; kexec mode: {meta.get('kexec_mode')}; "
             f"save: {meta['save_tool']} ({' '.join(meta['save_command'][-7:])})",
             f"   run directory: {run.directory}"]
    for key, label in PHASE_LABELS:
        if key in meta["phases"]:
            lines.append(f"   {label:<38} {meta['phases'][key]:8.2f} s")
    reserved = meta["reserved"]
    free = meta.get("capture_free_mib") or {}
    lines.append(f"   reserved: {', '.join(reserved['iomem'])}; "
                 f"kexec_crash_size={reserved['kexec_crash_size']:,}")
    lines.append(f"   capture kernel free -m: total {free.get('total')} used {free.get('used')} "
                 f"free {free.get('free')}; min MemAvailable during save: "
                 f"{meta.get('save_min_mem_available_kb')} kB")
    mi = meta.get("meminfo", {})
    lines.append(f"   first kernel at crash: MemTotal {mi.get('MemTotal')} kB, MemFree "
                 f"{mi.get('MemFree')} kB, Shmem {mi.get('Shmem')} kB, "
                 f"Cached {mi.get('Cached')} kB")
    lines.append(f"   marker: {meta['marker']}; vmcore {meta['vmcore_size']:,} B")
    art = meta["artifacts"]
    for name in ("raw_vmcore", "kdumpy_dump", "makedumpfile_flat"):
        lines.append(f"   {name:<18} {_size(art.get(name))}  {art.get(name, '')}")
    lines.extend(_crash_report(art.get("kdumpy_dump")))
    return "\n".join(lines)


def _crash_report(dump: str | None) -> list[str]:
    """The head of ``kdumpy report`` on the dump the capture kernel saved."""
    if not dump or not Path(dump).is_file():
        return []
    from kdumpy.analysis import build_report, format_report
    from kdumpy.errors import KdumpyError
    from kdumpy.dump import open_dump
    try:
        with open_dump(dump) as mem:
            text = format_report(build_report(mem, log_lines=0, backtrace=False))
    except KdumpyError as exc:
        return [f"   kdumpy report: {exc}"]
    head = [ln for ln in text.splitlines() if ln.strip()][:11]
    return ["   -- kdumpy report (from the dump the capture kernel saved) --"] + [
        "   " + ln for ln in head]


def cmd_run(args: argparse.Namespace) -> int:
    specs = args.kernel or requested_specs()
    sizes = args.crashkernel or [DEFAULT_CRASHKERNEL, SMALL_CRASHKERNEL]
    failures = 0
    reports = []
    for spec in specs:
        for size in sizes:
            options = RunOptions(crashkernel=size, accel=args.accel, cpu=args.cpu,
                                 smp=args.smp, memory_mib=args.memory,
                                 kexec_mode=args.kexec_mode, save_with=args.save_with,
                                 compress=args.compress)
            try:
                run = ensure_run(spec, options, fresh=args.fresh, log=_log)
            except (LabError, RuntimeError, LookupError) as exc:
                failures += 1
                print(f"== {spec} crashkernel={size}: FAILED\n{exc}", flush=True)
                continue
            reports.append(run.meta)
            print(summary(run), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    return 1 if failures else 0


def cmd_kernels(args: argparse.Namespace) -> int:
    for name, series in SERIES.items():
        cands = apt_candidates(series)
        newest = cands[0] if cands else None
        print(f"series {name}: newest in apt: "
              + (f"{newest.release} ({newest.package} {newest.version})" if newest else "none"))
    print("requested: " + ", ".join(f"{s} -> {_try_resolve(s)}" for s in requested_specs()))
    cached = cached_releases()
    print(f"cache: {cache_root()}")
    for release in cached:
        runs = sorted(p.name for p in (cache_root() / release).glob("crash-*")
                      if p.is_dir() and load_complete(p))
        print(f"  {release}: complete runs: {', '.join(runs) or 'none'}")
    return 0


def _try_resolve(spec: str) -> str:
    try:
        return resolve(spec)
    except LookupError as exc:
        return f"unresolved ({exc})"


def cmd_show(args: argparse.Namespace) -> int:
    status = 0
    for release in args.release or cached_releases():
        for directory in sorted((cache_root() / release).glob("crash-*")):
            if not directory.is_dir():
                continue
            run = load_complete(directory)
            if run is None:
                print(f"== {release} {directory.name}: incomplete")
                status = 1
            else:
                print(summary(run))
    return status


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import compare_dump, dmesg_with_makedumpfile
    from .vmcore import RawVmcore

    status = 0
    panic = b"Kernel panic - not syncing: sysrq triggered crash"
    for release in args.release or cached_releases():
        for directory in sorted((cache_root() / release).glob("crash-*")):
            run = load_complete(directory) if directory.is_dir() else None
            if run is None:
                continue
            meta = run.meta
            marker = meta["marker"].encode()
            with RawVmcore(meta["artifacts"]["raw_vmcore"]) as raw:
                for name, level1 in (("kdumpy_dump", True), ("makedumpfile_flat", False)):
                    result = compare_dump(meta["artifacts"][name], raw, level1=level1,
                                          needles=(marker, panic))
                    hits = all(result.found[n] for n in (marker, panic))
                    good = result.ok and hits
                    status |= 0 if good else 1
                    print(f"{release} {directory.name} {name}: {'OK' if good else 'FAILED'}: "
                          f"{result.describe()}; marker+panic found: {hits}")
            log = dmesg_with_makedumpfile(meta["artifacts"]["raw_vmcore"])
            good = meta["marker"] in log and "sysrq triggered crash" in log
            status |= 0 if good else 1
            print(f"{release} {directory.name} raw kernel log (makedumpfile --dump-dmesg): "
                  f"{'OK' if good else 'FAILED'}")
    return status


def cmd_clean(args: argparse.Namespace) -> int:
    root = cache_root()
    if args.runs:
        targets = [p for p in root.glob("*/crash-*") if p.is_dir()]
    else:
        targets = [root] if root.exists() else []
    for target in targets:
        print(f"removing {target}")
        shutil.rmtree(target)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="boot, crash, capture (cached) and print a summary")
    run.add_argument("--kernel", action="append",
                     help="series (6.1, 6.12) or full release; repeatable (default: 6.1 and 6.12)")
    run.add_argument("--crashkernel", action="append",
                     help=f"crashkernel= size; repeatable (default: {DEFAULT_CRASHKERNEL} "
                          f"and {SMALL_CRASHKERNEL})")
    run.add_argument("--fresh", action="store_true", help="ignore cached runs")
    run.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto")
    run.add_argument("--cpu", default="max", help="QEMU -cpu model (e.g. max,la57=off)")
    run.add_argument("--smp", type=int, default=2)
    run.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB")
    run.add_argument("--kexec-mode", choices=["auto", "file", "load"], default="auto",
                     help="kexec_file_load (-s), kexec_load, or -s with fallback")
    run.add_argument("--save-with", choices=["kdumpy", "makedumpfile"], default="kdumpy",
                     help="tool writing the dump under test (makedumpfile: development stand-in)")
    run.add_argument("--compress", default="lzo", help="kdumpy save --compress codec")
    run.add_argument("--json", help="also write the runs' metadata to this file")
    run.set_defaults(func=cmd_run)
    kernels = sub.add_parser("kernels", help="show resolved and cached kernels")
    kernels.set_defaults(func=cmd_kernels)
    show = sub.add_parser("show", help="print the summary of cached runs")
    show.add_argument("release", nargs="*")
    show.set_defaults(func=cmd_show)
    verify = sub.add_parser("verify", help="compare cached runs' dumps with the raw vmcore")
    verify.add_argument("release", nargs="*")
    verify.set_defaults(func=cmd_verify)
    clean = sub.add_parser("clean", help="delete the lab cache")
    clean.add_argument("--runs", action="store_true", help="only crash runs, keep kernels")
    clean.set_defaults(func=cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (without the program name) and run the subcommand; returns exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args))
