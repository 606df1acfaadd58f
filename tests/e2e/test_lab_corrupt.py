"""Crashes of a kernel that really is corrupt (lab.corrupt_module): a module scribbles over
the printk ring's record metadata, or over memory section 1's mem_section entry, then panics.
The capture service must still save a whole vmcore that drgn opens, and record what it could
not read.

One kernel (the first lab release): the outcome depends on the ring's and mem_section's
layout, which VMCOREINFO describes the same way for every 5.10+ kernel. Each run costs one
lab boot (about 4 minutes under TCG, once; cached afterwards).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdumpy.dump import open_dump


#: real lab dumps (cached under ~/.cache/kdumpy/lab)
pytestmark = pytest.mark.lab

def _corrupt_run(trigger: str):
    from lab.corpus import DEFAULT_CRASHKERNEL, crash_for, releases
    from lab.run import LabError
    release = releases()[0]
    try:
        return crash_for(release, DEFAULT_CRASHKERNEL, loader="kdumpy",
                         capture_steps=("raw", "service"), trigger=trigger)
    except (LabError, RuntimeError, LookupError, OSError) as exc:
        pytest.fail(f"lab run {trigger} for {release} failed:\n{exc}", pytrace=False)


def _saved(crash) -> tuple[Path, dict]:
    dirs = sorted((crash.directory / "service").iterdir())
    assert len(dirs) == 1, dirs
    d = dirs[0]
    return d, json.loads((d / "report.json").read_text())


def _drgn_opens(vmcore: Path, raw: Path) -> None:
    """drgn (no debug info needed) opens the saved dump and reads the same bytes as from
    the raw /proc/vmcore copy at the dump's first dumpable page."""
    import drgn
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    with open_dump(str(vmcore)) as saved, open_dump(str(raw)) as src:
        pfn = next(iter(saved.dumpable_ranges()))[0]
        addr = pfn * saved.page_size
        assert prog.read(addr, 64, True) == src.read_phys(addr, 64)


def test_corrupt_printk_ring():
    crash = _corrupt_run("corrupt-printk")
    d, report = _saved(crash)
    cap = report["kdumpy_capture"]
    assert cap["status"] == "complete" and cap["dump_level"] == 31
    # the damaged records are named, the rest of the log (the panic) still read
    assert any(n.startswith("kernel log:") and "damaged records" in n for n in cap["notes"])
    assert report["log"]["warnings"]
    assert "KDUMPY-LAB-CORRUPT: printk scribbled over" in report["panic"]["message"]
    with open_dump(str(d / "vmcore")) as mem:
        assert not mem.incomplete and mem.sub.dump_level == 31
    _drgn_opens(d / "vmcore", crash.raw_vmcore)


def test_corrupt_mem_section():
    crash = _corrupt_run("corrupt-mem_section")
    d, report = _saved(crash)
    cap = report["kdumpy_capture"]
    # levels 31 and 17 need section 1's struct pages: the save falls back to level 1
    assert cap["status"] == "complete" and cap["dump_level"] == 1, cap
    assert "struct page array of PFNs 0x8000-0xffff cannot be read" in cap["failures"]["filter"]
    assert any("retrying at level 1" in n for n in cap["notes"])
    assert "KDUMPY-LAB-CORRUPT: mem_section scribbled over" in report["panic"]["message"]
    assert "kernel log" not in cap["failures"]
    with open_dump(str(d / "vmcore")) as mem, open_dump(str(crash.raw_vmcore)) as raw:
        assert not mem.incomplete and mem.sub.dump_level == 1
        # level 1 drops only zero pages: every non-zero page of section 1 is there
        for pfn in range(0x8000, 0x10000, 997):
            page = raw.read_pfn(pfn)
            if any(page):
                assert mem.read_pfn(pfn) == page
    _drgn_opens(d / "vmcore", crash.raw_vmcore)
