"""kdumpy's command line: argument parsing, progress and exit codes; no logic of its own.

Each module registers one group of subcommands: :mod:`.dump_commands` (save, info, convert),
:mod:`.analysis_commands` (dmesg, report), :mod:`.setup_commands` (status, load, ...).

Exit status: 0 success, 1 a reported error (one line on stderr, no traceback), 2 bad usage
(argparse); commands may define others (``status``: 3 when kdump is not operational).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# kdumpy does no linear algebra: numpy's OpenBLAS need not start a thread per CPU at import
# (measurable at startup, and a capture kernel may have one CPU anyway).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from kdumpy import __version__  # noqa: E402
from kdumpy.errors import KdumpyError  # noqa: E402

COMMAND_MODULES = ("dump_commands", "analysis_commands", "setup_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdumpy", description="The Linux kdump userspace: save, convert and read crash dumps.")
    parser.add_argument("--version", action="version", version=f"kdumpy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"kdumpy.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kdumpy.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KdumpyError as exc:
        print(f"kdumpy: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        print("kdumpy: output closed early (broken pipe)", file=sys.stderr)
        return 1
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"kdumpy: {name}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kdumpy: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("KDUMPY_DEBUG"):
            raise
        print(f"kdumpy: internal error: {type(exc).__name__}: {exc} "
              "(KDUMPY_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
