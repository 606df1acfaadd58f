"""Bitmap cycles: a kdump-compressed save in bounded memory gives the same file.

``Cycles`` counts bitmap 2 cycle by cycle, then the writing pass writes each cycle's bitmap
parts and pages; with ``bitmap_budget`` 0 (``--cyclic-buffer``) the second pass filters
every cycle again. Whatever the cycle size, the bytes must equal a one-cycle save.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from synth import make_vmcore

from kdumpy.capture import filter as kfilter
from kdumpy.capture import pipeline as P
from kdumpy.capture.page_classes import PageRules
from kdumpy.capture.targets import LocalTarget
from kdumpy.cli import main
from kdumpy.formats import bitmap as bm
from kdumpy.dump import open_dump


def _save(src, dest, flat: bool = False, **kw) -> bytes:
    with open_dump(src) as mem:
        P.save(mem, lambda: LocalTarget(str(dest), flattened=flat), P.SaveOptions(**kw))
    data = open(dest, "rb").read()
    os.unlink(dest)
    return data


@pytest.mark.parametrize("level,codec", [(1, "lzo"), (0, "zlib"), (1, "none")])
def test_cycles_do_not_change_the_file(tmp_path, level, codec):
    core = make_vmcore(str(tmp_path / "vmcore"), seed=3)
    ref = _save(core.path, tmp_path / "ref", dump_level=level, compress=codec, threads=1)
    for cycle, budget, threads in ((64, 0, 1), (8, 0, 2), (520, 1 << 20, 1), (1 << 20, 0, 2)):
        got = _save(core.path, tmp_path / "c", dump_level=level, compress=codec,
                    threads=threads, cycle_pfns=cycle, bitmap_budget=budget)
        assert got == ref, (cycle, budget, threads)
    flat = _save(core.path, tmp_path / "f", dump_level=level, compress=codec, threads=1,
                 cycle_pfns=64, bitmap_budget=0, flat=True)
    (tmp_path / "f.flat").write_bytes(flat)
    assert main(["convert", "-q", str(tmp_path / "f.flat"), str(tmp_path / "r")]) == 0
    assert (tmp_path / "r").read_bytes() == ref


def test_cycles_count_every_page_and_read_back(tmp_path):
    """Many small cycles, none kept between the passes: the count is every dumpable page,
    the parts joined are the bitmap, and every page reads back from the file."""
    core = make_vmcore(str(tmp_path / "vmcore"), seed=5)
    with open_dump(core.path) as mem:
        cycles = P.Cycles(mem, P.SaveOptions(dump_level=1, cycle_pfns=16, bitmap_budget=0))
        assert len(cycles.bounds) > 5 and not cycles.kept
        assert cycles.total == len(core.pages)
        whole = cycles.whole()
        assert [p for s, e in bm.runs(whole, mem.max_pfn) for p in range(s, e)] == \
            sorted(core.pages)
    out = tmp_path / "out"
    assert main(["save", "-q", "--no-dmesg", "-d", "1", "--cyclic-buffer", "1", core.path,
                 str(out)]) == 0
    with open_dump(out) as mem:
        for pfn, data in core.pages.items():
            assert mem.read_pfns(pfn, 1, zero_fill=True).tobytes() == data


def test_cyclic_buffer_must_be_positive(tmp_path, capsys):
    core = make_vmcore(str(tmp_path / "vmcore"))
    assert main(["save", "-q", "-d", "1", "--cyclic-buffer", "0", core.path,
                 str(tmp_path / "x")]) == 1
    assert "--cyclic-buffer 0" in capsys.readouterr().err


def test_cycles_must_come_in_order(lab_crash):
    with open_dump(lab_crash.raw_vmcore) as mem:
        pf = kfilter.PageFilter(mem, 31)
        unit = pf.cycle_unit
        with pytest.raises(ValueError):
            pf.bitmap(unit, 2 * unit)        # skips the first cycle
        pf.bitmap(0, unit)
        with pytest.raises(ValueError):
            pf.bitmap(unit + 8, 3 * unit)   # not on a section boundary


def test_real_dump_saved_in_one_section_cycles_is_identical(lab_crash, tmp_path):
    """``--cyclic-buffer 4`` (32768 PFNs: one 128 MiB memory section per cycle, filtered
    twice) writes the very bytes of the one-cycle save, kdump and flattened."""
    src = str(lab_crash.raw_vmcore)
    ref, cyc, flat = tmp_path / "ref", tmp_path / "cyc", tmp_path / "cyc.flat"
    assert main(["save", "-q", "--no-dmesg", "-d", "31", "-c", "lzo", src, str(ref)]) == 0
    assert main(["save", "-q", "--no-dmesg", "-d", "31", "-c", "lzo", "--cyclic-buffer", "4",
                 src, str(cyc)]) == 0
    assert ref.read_bytes() == cyc.read_bytes()
    assert main(["save", "-q", "--no-dmesg", "-d", "31", "-c", "lzo", "--cyclic-buffer", "4",
                 "-f", "flat", src, str(flat)]) == 0
    assert main(["convert", "-q", str(flat), str(tmp_path / "re")]) == 0
    assert (tmp_path / "re").read_bytes() == ref.read_bytes()


def test_exclusion_running_past_a_cycle_is_carried(lab_crash, monkeypatch):
    """A range that runs past its section (a 1 GiB hugetlb page would) clears the next
    cycles too, and is counted once, whether the sections are one cycle or several."""
    real = PageRules.classify
    with open_dump(lab_crash.raw_vmcore) as mem:
        per = kfilter.PageFilter(mem, 31).cycle_unit
    sections_with_pages: list[int] = []

    def classify(self, raw, pfn0, decide, protect):
        cls, nr_pages, warns, saved = real(self, raw, pfn0, decide, protect)
        if pfn0 == sections_with_pages[0]:
            # the section's last page heads a "free" block of 1.5 sections
            free = next(k for k, v in kfilter.CLASS_NAMES.items() if v == "free")
            cls = cls.copy()
            nr_pages = nr_pages.copy()
            cls[-1] = free
            nr_pages[-1] = per + per // 2
        return cls, nr_pages, warns, saved

    with open_dump(lab_crash.raw_vmcore) as mem:
        present = mem.present_bitmap()
        # the first section whose next one and a half sections hold present pages
        sections_with_pages.append(next(
            s for s in range(0, mem.max_pfn - 3 * per, per)
            if bm.count_bits(present, s + per, s + 2 * per + per // 2) > per))
        monkeypatch.setattr(PageRules, "classify", classify)
        whole = kfilter.PageFilter(mem, 31)
        one = whole.bitmap(0, mem.max_pfn)
        cyc = kfilter.PageFilter(mem, 31)
        parts = [bm.bits_range(cyc.bitmap(lo, min(lo + per, mem.max_pfn)), 0,
                               min(per, mem.max_pfn - lo))
                 for lo in range(0, mem.max_pfn, per)]
    joined = np.concatenate(parts)
    assert np.array_equal(bm.bits_range(one, 0, mem.max_pfn), joined)
    first = sections_with_pages[0]
    assert not joined[first + per:first + 2 * per + per // 2 - 1].any()
    assert whole.counts == cyc.counts
