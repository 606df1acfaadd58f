"""Page-by-page comparison of two dumps, in batches (shared by the real-dump tests)."""

from __future__ import annotations

import numpy as np

from kdumpy.dump import Dump

BATCH = 1024


def assert_pages_equal(a: Dump, b: Dump, *, only_dumpable_in: Dump) -> int:
    """Every page dumpable in ``only_dumpable_in`` reads the same from ``a`` and ``b``;
    returns how many pages were compared."""
    n = 0
    for s, e in only_dumpable_in.dumpable_ranges():
        for p in range(s, e, BATCH):
            k = min(BATCH, e - p)
            x, y = a.read_pfns(p, k, zero_fill=True), b.read_pfns(p, k, zero_fill=True)
            if not np.array_equal(x, y):
                bad = p + int(np.flatnonzero((x != y).any(axis=1))[0])
                raise AssertionError(f"PFN {bad:#x} differs between {a.path} and {b.path}")
            n += k
    return n
