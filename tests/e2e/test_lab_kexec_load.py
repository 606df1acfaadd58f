"""Captures after kexec_load (kexec-tools ``-p`` without ``-s``), as many distributions load.

Facts relied on (measured in the lab, kexec-tools 2.0.25 on Debian 12):

* kexec-tools' kexec_load path builds the ELF header itself and lists the BIOS low-memory
  range 0x1000-0x9fc00 as its own PT_LOAD; kexec_file_load's kernel-built header starts RAM at
  1 MiB. So only these vmcores have a PT_LOAD ending mid-page (PFN 0x9f is 0x400 bytes short).
* makedumpfile's first bitmap counts whole pages only: ``pfn_end = paddr_to_pfn(end)``
  rounds down, so PFN 0x9f is absent from it, and from every dump it writes.
* makedumpfile 1.7.2 filters 6.1's page layout as kdumpy does (tests/capture/
  test_filter_real.py), so there the two tools' ``-l -d 31`` files must be byte-identical.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from kdumpy.cli import main
from kdumpy.formats import bitmap as bm
from kdumpy.dump import open_dump
from lab.verify import compare_dump
from lab.vmcore import RawVmcore

pytestmark = pytest.mark.lab

BIOS_LOW_END = 0x9FC00


@pytest.fixture(scope="session")
def kexec_load_crash(lab_release):
    from lab.corpus import DEFAULT_CRASHKERNEL, crash_for
    from lab.run import LabError

    if lab_release.startswith("unresolved-"):
        pytest.fail(f"kernel series {lab_release} could not be resolved via apt-cache",
                    pytrace=False)
    try:
        return crash_for(lab_release, DEFAULT_CRASHKERNEL, kexec_mode="load")
    except (LabError, RuntimeError, LookupError, OSError,
            subprocess.CalledProcessError) as exc:
        pytest.fail(f"kexec_load lab run for {lab_release} failed:\n{exc}", pytrace=False)


def _present(path) -> tuple[np.ndarray, int]:
    with open_dump(path) as mem:
        return np.array(mem.present_bitmap(), dtype=np.uint8), mem.max_pfn


def test_kexec_load_vmcore_has_partial_bios_page(kexec_load_crash):
    assert kexec_load_crash.meta["kexec_mode"] == "load"
    with RawVmcore(kexec_load_crash.raw_vmcore) as raw:
        assert BIOS_LOW_END // raw.page_size in raw.partial_pages()
        assert raw.covered(BIOS_LOW_END // raw.page_size) == [(0, BIOS_LOW_END % raw.page_size)]
    with open_dump(kexec_load_crash.raw_vmcore) as mem:
        assert mem.is_present(0x9E)
        assert not mem.is_present(0x9F)


def test_present_pages_equal_makedumpfile(kexec_load_crash, tmp_path):
    md = tmp_path / "md31"
    r = subprocess.run(["makedumpfile", "-l", "-d", "31", str(kexec_load_crash.raw_vmcore),
                        str(md)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ours = tmp_path / "ours31"
    assert main(["save", "-q", "-d", "31", "-c", "lzo", str(kexec_load_crash.raw_vmcore),
                 str(ours)]) == 0
    theirs_bm, theirs_max = _present(md)
    ours_bm, ours_max = _present(ours)
    raw_bm, raw_max = _present(kexec_load_crash.raw_vmcore)
    assert ours_max == theirs_max == raw_max
    n = -(-raw_max // 8)
    assert bm.count_bits(ours_bm, 0, ours_max) == bm.count_bits(theirs_bm, 0, theirs_max)
    assert (ours_bm[:n] == theirs_bm[:n]).all()
    assert (raw_bm[:n] == theirs_bm[:n]).all()
    with open_dump(md) as mem:
        if mem.vmcoreinfo.offset("page.compound_order") is not None:
            # makedumpfile 1.7.2 filters this kernel's layout correctly: whole files agree
            assert ours.read_bytes() == md.read_bytes()


def test_capture_kernel_save_matches_raw(kexec_load_crash):
    """``kdumpy save -d 1`` of the real /proc/vmcore in the capture kernel: every whole page
    of the raw copy, none of the partial BIOS page."""
    result = compare_dump(kexec_load_crash.kdumpy_dump, RawVmcore(kexec_load_crash.raw_vmcore),
                          level1=True)
    assert result.pages_compared > 100_000
    assert result.ok, result.describe()
    with open_dump(kexec_load_crash.kdumpy_dump) as mem:
        assert not mem.is_present(0x9F)
