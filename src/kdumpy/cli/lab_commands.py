"""``kdumpy lab``: the QEMU crash lab (see :mod:`kdumpy.lab`)."""

from __future__ import annotations

import argparse


def cmd_lab(args: argparse.Namespace) -> int:
    from kdumpy import lab
    return lab.main(list(args.args))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="the QEMU crash lab: boot real Debian kernels, crash, capture",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)
