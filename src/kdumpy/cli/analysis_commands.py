"""``kdumpy dmesg`` and ``kdumpy report``: the first look at a crash."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_dmesg(args: argparse.Namespace) -> int:
    from kdumpy.analysis import format_dmesg, read_kernel_log
    from kdumpy.dump import open_dump
    with open_dump(args.dumps) as mem:
        log = read_kernel_log(mem, since_clear=args.since_clear)
    for w in log.warnings:
        print(f"kdumpy: warning: {w}", file=sys.stderr)
    sys.stdout.buffer.write(format_dmesg(log, caller=args.caller))
    sys.stdout.flush()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdumpy.analysis import build_report, format_report
    from kdumpy.dump import open_dump
    with open_dump(args.dumps) as mem:
        report = build_report(mem, log_lines=args.lines, vmlinux=args.vmlinux,
                              backtrace=not args.no_backtrace)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(report))
        if not format_report(report).endswith("\n"):
            sys.stdout.write("\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dmesg", help="the crashed kernel's log (like makedumpfile --dump-dmesg)")
    p.add_argument("dumps", nargs="+", metavar="DUMP")
    p.add_argument("--caller", action="store_true",
                   help="print the caller field ([T123] / [C0]) as makedumpfile >= 1.7.5 does")
    p.add_argument("--since-clear", action="store_true",
                   help="only records since the last 'dmesg -c' (makedumpfile --partial-dmesg)")
    p.set_defaults(func=cmd_dmesg)

    p = sub.add_parser("report", help="crash report: release, panic message, taint, registers, "
                                      "log tail, backtrace (through drgn with debug info)")
    p.add_argument("dumps", nargs="+", metavar="DUMP")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--vmlinux", metavar="PATH", help="debug vmlinux for a symbolised backtrace")
    p.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                   help="log lines to include (default: %(default)s)")
    p.add_argument("--no-backtrace", action="store_true", help="skip the drgn backtrace")
    p.set_defaults(func=cmd_report)
