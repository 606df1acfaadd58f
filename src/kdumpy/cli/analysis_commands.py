"""``kdumpy dmesg`` and ``kdumpy report``: the first look at a crash."""

from __future__ import annotations

import argparse
import json
import os
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
    register_crashes(sub)


def crash_store(args: argparse.Namespace):  # -> kdumpy.analysis.crash_index.DumpStore
    """The store ``kdumpy crashes`` browses: a local directory, ``ssh://`` or ``s3://``;
    S3 endpoint and credentials, SSH key and options default to the config's [target]."""
    from kdumpy.analysis.crash_index import LocalStore
    from kdumpy.errors import KdumpyError
    from kdumpy.setup.config import load_config, parse_ssh_url
    target = args.target
    cfg = None
    if target.startswith(("s3://", "ssh://")):
        cfg = load_config(args.config or "/etc/kdumpy.toml", must_exist=bool(args.config)).target
    if target.startswith("s3://"):
        from kdumpy.capture.s3 import (S3Directory, make_client, parse_s3_url,
                                       read_credentials)
        endpoint = args.s3_endpoint or (cfg.s3_endpoint if cfg else None)
        creds = args.s3_credentials or (cfg.s3_credentials if cfg else None)
        region = args.s3_region or (cfg.s3_region if cfg else None)
        if not endpoint or not creds:
            raise KdumpyError(f"{target}: needs --s3-endpoint and --s3-credentials (or an s3 "
                              "[target] in the config)")
        try:
            loc = parse_s3_url(target)
        except ValueError as exc:
            raise KdumpyError(str(exc)) from None
        return S3Directory(loc, make_client(endpoint, read_credentials(creds), region),
                           endpoint=endpoint)
    if target.startswith("ssh://"):
        from kdumpy.capture.targets import SshDirectory
        try:
            user, host, port, path = parse_ssh_url(target)
        except Exception as exc:  # noqa: BLE001 - config's _Bad: one line
            raise KdumpyError(f"{target}: {exc}") from None
        from kdumpy.setup.propagate import DEFAULT_KEY, DEFAULT_KNOWN_HOSTS
        mine = cfg if cfg is not None and cfg.kind == "ssh" else None
        key = args.ssh_key or (mine.ssh_key if mine else None) or \
            (DEFAULT_KEY if os.path.exists(DEFAULT_KEY) else None)
        known = (mine.ssh_known_hosts if mine else None) or \
            (DEFAULT_KNOWN_HOSTS if os.path.exists(DEFAULT_KNOWN_HOSTS) else None)
        opts = list(args.ssh_option or []) + (mine.ssh_options if mine else [])
        return SshDirectory(host, path, user=user, port=port, key=key, options=opts,
                            known_hosts=known)
    return LocalStore(target)


def cmd_crashes(args: argparse.Namespace) -> int:
    from kdumpy.analysis.crash_index import (format_groups, group_entries, groups_json,
                                             index_store)
    store = crash_store(args)
    try:
        entries = index_store(store, warn=lambda m: print(f"kdumpy: warning: {m}",
                                                          file=sys.stderr))
    except OSError as exc:
        from kdumpy.errors import KdumpyError
        raise KdumpyError(f"{store.describe()}: {exc.strerror or exc}") from None
    groups = group_entries(entries)
    if args.json:
        json.dump({"target": store.describe(), "dumps": len(entries),
                   "groups": groups_json(groups)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_groups(groups))
    return 0


def register_crashes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashes", help="the dumps under a directory, ssh:// or s3:// target, "
                                       "grouped by signature (reads report.json only)")
    p.add_argument("target", metavar="TARGET",
                   help="a directory, ssh://[user@]host[:port]/dir or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", metavar="PATH",
                   help="take S3/SSH settings from this config's [target] (default: "
                        "/etc/kdumpy.toml when it exists)")
    p.add_argument("--s3-endpoint", metavar="URL")
    p.add_argument("--s3-region", metavar="REGION")
    p.add_argument("--s3-credentials", metavar="FILE",
                   help="AWS-format credentials file (mode 0600)")
    p.add_argument("--ssh-key", metavar="FILE")
    p.add_argument("-o", "--ssh-option", action="append", metavar="OPT",
                   help="ssh -o option (repeatable)")
    p.set_defaults(func=cmd_crashes)
