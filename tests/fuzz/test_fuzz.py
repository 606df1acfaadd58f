"""Fuzzing kdumpy's commands with mutated copies of a real lab dump.

Mutation classes (:mod:`mutations`): the disk_dump_header, the sub header, the notes,
VMCOREINFO values, page descriptors, bitmaps, truncation, flattened records. Each case
runs ``info``, ``dmesg`` and (one in three) ``report``, and one in twelve a ``convert``
or a ``save``, each in a forked child under RLIMIT_AS, RLIMIT_FSIZE and a timeout
(:mod:`harness`). Required: no internal error, no death by signal, no hang, bounded output,
and every exit 0 checked: JSON that parses, a non-empty log, a copy whose pages are those of
the unmutated dump unless the mutation explains them (:mod:`checks`).

Seeds are fixed (``KDUMPY_FUZZ_SEEDS`` seeds per class, default 100); ``bench/fuzz_long.py``
runs many more.
"""

from __future__ import annotations

import pytest

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CLASSES, BaseFacts, run_many  # noqa: E402
from mutations import mutate  # noqa: E402

#: real lab dumps (cached under ~/.cache/kdumpy/lab)
pytestmark = pytest.mark.lab

SEEDS = int(os.environ.get("KDUMPY_FUZZ_SEEDS", "100"))

#: cases left out of the CI selection, each rule naming the reader bug it waits for (none
#: now: every mutation must pass). bench/fuzz_long.py runs them all.
KNOWN_READER_FAILURES: dict = {}


def _known(m) -> str | None:
    for name, (match, _why) in KNOWN_READER_FAILURES.items():
        if match(m):
            return name
    return None


def test_fuzz(hard_base, tmp_path):
    paths = (str(hard_base.kdump), str(hard_base.flat))
    facts = BaseFacts.load(*paths)
    work = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else tmp_path
    work = work / f"kdumpy-fuzz-{os.getpid()}"
    work.mkdir()
    try:
        cases = [(c, s) for c in CLASSES for s in range(SEEDS)
                 if _known(mutate(c, s, facts)) is None]
        tally = run_many(facts, paths, cases, work, workers=2)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    summary = ", ".join(f"{cmd} exit {rc}: {n}" for (cmd, rc), n in sorted(tally.outcomes.items()))
    print(f"fuzz: {len(cases)} mutations, {tally.runs} runs ({summary})")
    assert not tally.failures, "\n".join(f.reproducer() for f in tally.failures)
    # every command ran, and both outcomes occur (the mutations reach the readers)
    for cmd in ("info", "dmesg", "report", "convert", "save"):
        assert tally.outcomes[(cmd, 0)] > 0, cmd
    assert tally.outcomes[("info", 1)] > 0 and tally.outcomes[("dmesg", 1)] > 0
