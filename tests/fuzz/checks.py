"""What a fuzz case's command must satisfy when it exits 0: the output says what it holds.

For a copy (``convert``, ``save``), every page the copy holds as data is compared with the
unmutated dump: it must be the same unless the mutation explains the PFN (see
:mod:`mutations`). Pages the copy marks as lost (descriptor offset 0, the copy marked
incomplete) carry no data and are not compared. Where the mutation changed the layout
itself (``"all"``), the copy must equal what kdumpy reads from the mutated file.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from kdumpy.capture.pipeline import lost_finder
from kdumpy.formats.bitmap import bits_range
from kdumpy.dump import open_dump


def _explained_mask(explained: Any, pfns: np.ndarray) -> np.ndarray:
    if explained == "all":
        return np.ones(len(pfns), dtype=bool)
    if explained == "none":
        return np.zeros(len(pfns), dtype=bool)
    kind, arg = explained
    if kind == "pfns":
        return np.isin(pfns, np.asarray(arg, dtype=np.int64))
    if kind == "from":
        return pfns >= int(arg)
    raise ValueError(explained)


def compare_copy(out_path: str, base_path: str, mutated_path: str, explained: Any,
                 *, max_bytes: int) -> list[str]:
    """Problems with a copy written from a mutated dump (empty: none)."""
    import os
    problems: list[str] = []
    size = os.path.getsize(out_path)
    if size > max_bytes:
        problems.append(f"output of {size} bytes exceeds the bound {max_bytes}")
    ref_path = mutated_path if explained == "all" else base_path
    with open_dump(out_path) as out, open_dump(ref_path) as ref:
        if out.page_size != ref.page_size:
            return problems + [f"page size {out.page_size} != {ref.page_size}"]
        lost = lost_finder(out)
        if lost is not None and not out.incomplete:
            problems.append("the copy has lost pages but is not marked incomplete")
        checked = 0
        for s, e in out.dumpable_ranges():
            for b in range(s, e, 2048):
                n = min(2048, e - b)
                pfns = np.arange(b, b + n, dtype=np.int64)
                skip = _explained_mask(explained, pfns) if explained != "all" else \
                    np.zeros(n, dtype=bool)
                if lost is not None:
                    gone = lost(b, n)
                    if gone is not None:
                        skip |= gone
                if skip.all():
                    continue
                got = out.read_pfns(b, n, zero_fill=True)
                want = ref.read_pfns(b, n, zero_fill=True)
                in_ref = (bits_range(ref.dumpable_bitmap(), b, n).astype(bool)
                          if b + n <= ref.max_pfn else None)
                bad = np.flatnonzero((got != want).any(axis=1) & ~skip)
                if in_ref is not None:
                    # data where the reference has none (not dumpable there) must be zero
                    invented = ~in_ref & got.any(axis=1) & ~skip
                    bad = np.union1d(bad, np.flatnonzero(invented))
                if len(bad):
                    problems.append(f"{len(bad)} pages differ from the reference, first PFN "
                                    f"{int(pfns[bad[0]]):#x}")
                    return problems
                checked += n
    return problems


def check_stdout(cmd: str, stdout: bytes) -> list[str]:
    if cmd == "info":
        try:
            json.loads(stdout)
        except ValueError:
            return ["info --json printed no JSON"]
    if cmd == "dmesg" and not stdout.strip():
        return ["dmesg exited 0 with no output"]
    if cmd == "report":
        try:
            rep = json.loads(stdout)
        except ValueError:
            return ["report --json printed no JSON"]
        if not (rep.get("log") or {}).get("records"):
            return ["report exited 0 without a kernel log"]
    return []


def check_cut_info(stdout: bytes) -> list[str]:
    """``info`` of a file cut short: every byte of a dump is needed, so a cut one must be
    reported as damaged (incomplete, or pages lost)."""
    try:
        d = json.loads(stdout)
    except ValueError:
        return []
    if not d.get("incomplete") and not d.get("pages_lost"):
        return ["a file cut short is shown as whole (incomplete false, no page lost)"]
    return []
