"""``kdumpy dmesg`` and ``kdumpy report``: the first look at a crash."""

from __future__ import annotations

import argparse
import json
import sys

from kdumpy.errors import KdumpyError


#: exit status of ``dmesg`` and ``report`` when the kernel log could not be read (the rest
#: of the report, if any, is still printed)
EXIT_NO_LOG = 1


def _unreadable(what: str, exc: BaseException) -> KdumpyError:
    """A failure of any type while reading the crashed kernel's structures, as one line (its
    memory may hold anything: the failure is the dump's, not kdumpy's)."""
    if isinstance(exc, KdumpyError):
        return exc
    return KdumpyError(f"{what} could not be read: {type(exc).__name__}: {exc}")


def cmd_dmesg(args: argparse.Namespace) -> int:
    from kdumpy.analysis import format_dmesg, read_kernel_log
    from kdumpy.cli.dump_commands import check_random_access
    from kdumpy.dump import open_dump
    check_random_access(args.dumps)
    with open_dump(args.dumps) as mem:
        try:
            log = read_kernel_log(mem, since_clear=args.since_clear)
        except Exception as exc:  # noqa: BLE001
            raise _unreadable(f"{mem.path}: the kernel log", exc) from None
        incomplete = mem.incomplete
        path = mem.path
    for w in log.warnings:
        print(f"kdumpy: warning: {w}", file=sys.stderr)
    sys.stdout.buffer.write(format_dmesg(log, caller=args.caller))
    sys.stdout.flush()
    if not log.records and not log.raw and not args.since_clear:
        why = " (the dump is marked incomplete)" if incomplete else ""
        print(f"kdumpy: {path}: no kernel log record could be read{why}", file=sys.stderr)
        return EXIT_NO_LOG
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdumpy.analysis import build_report, format_report
    from kdumpy.cli.dump_commands import check_random_access
    from kdumpy.dump import open_dump
    check_random_access(args.dumps)
    with open_dump(args.dumps) as mem:
        try:
            report = build_report(mem, log_lines=args.lines, vmlinux=args.vmlinux,
                                  backtrace=not args.no_backtrace)
        except Exception as exc:  # noqa: BLE001
            raise _unreadable(f"{mem.path}: the crash report", exc) from None
        path = mem.path
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        text = format_report(report)
        sys.stdout.write(text)
        if not text.endswith("\n"):
            sys.stdout.write("\n")
    sys.stdout.flush()
    log = report.get("log") or {}
    if not log.get("source") or not log.get("records"):
        print(f"kdumpy: {path}: the kernel log could not be read; the report lacks the panic "
              "message and the log tail", file=sys.stderr)
        return EXIT_NO_LOG
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
