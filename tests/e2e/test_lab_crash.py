"""End-to-end: real Debian kernels crash in QEMU and ``kdumpy save`` captures them.

Each test is parametrised by kernel release through the ``lab_*`` fixtures (tests/conftest.py).
Oracles: the raw /proc/vmcore copy read by the lab's own ELF reader, makedumpfile's
``--dump-dmesg``, and libkdumpfile (through drgn's PyPI wheel, which bundles it).

Facts relied on:

* ``kdumpy save -d 1`` excludes only zero pages, so every non-zero page of /proc/vmcore must be
  in the dump with identical bytes.
* The kernel log holds the planted marker and, right after it, the panic record
  "Kernel panic - not syncing: sysrq triggered crash" as contiguous text in the printk ring
  buffer (the two parts are separate strings in the kernel image, so only the log has them
  joined).
* libkdumpfile only trusts a kdump header's utsname when sysname, nodename, release, version
  and machine are all non-empty; otherwise the dump has no architecture and drgn refuses it
  ("KDUMP_ATTR_ARCH_NAME: Key has no value").
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys

import pytest

from lab.qemu import parse_size
from lab.run import project_src
from lab.verify import compare_dump, dmesg_with_makedumpfile
from lab.vmcore import RawVmcore

pytestmark = pytest.mark.lab

PANIC_LINE = b"Kernel panic - not syncing: sysrq triggered crash"


def kdumpy_info(path) -> dict:
    """``python -m kdumpy info PATH --json`` as the user would run it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_src()),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "kdumpy", "info", str(path), "--json"],
                          capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    assert proc.returncode == 0, f"kdumpy info failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def kdumpy_vs_raw(lab_crash, lab_raw):
    """kdumpy's dump compared with the raw copy on every page, markers searched."""
    return compare_dump(lab_crash.kdumpy_dump, lab_raw, level1=True,
                        needles=(lab_crash.marker.encode(), PANIC_LINE))


def test_crash_capture(lab_crash, lab_release):
    meta = lab_crash.meta
    assert meta["complete"] is True
    assert meta["release"] == lab_release
    assert meta["booted_release"] == lab_release, "guest ran a different kernel"
    assert meta["save_tool"] == "kdumpy", "the lab must run the real kdumpy save"
    assert meta["kexec_mode"] in ("file", "load")
    for step in ("kexec_load", "fill", "raw_copy", "makedumpfile", "kdumpy_save", "qemu"):
        assert meta["exit_status"].get(step) == 0, f"{step}: {meta['exit_status']}"
    dump = lab_crash.kdumpy_dump
    assert dump.stat().st_size > 0
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert not dump.with_name(dump.name + ".incomplete").exists()
    assert lab_crash.raw_vmcore.stat().st_size == meta["vmcore_size"] > 0
    reserved = meta["reserved"]
    assert reserved["kexec_crash_size"] == parse_size(meta["crashkernel"])
    assert any("Crash kernel" in line for line in reserved["iomem"])
    assert meta["meminfo"]["MemTotal"] > 0
    assert meta["capture_free_mib"]["total"] > 0
    assert meta["guest_clock_at_crash"]["realtime"]


def test_kdumpy_info_reads_dump(lab_crash, lab_release):
    info = kdumpy_info(lab_crash.kdumpy_dump)
    assert info["format"] == "kdump"
    assert info["compression"] == lab_crash.meta["options"]["compress"]
    assert info["kernel_release"] == lab_release
    assert info["vmcoreinfo"]["OSRELEASE"] == lab_release
    assert info["incomplete"] is False
    assert info["page_size"] == 4096
    assert 0 < info["pages_dumpable"] <= info["pages_present"]
    clock = lab_crash.meta["guest_clock_at_crash"]["realtime"]
    assert abs(int(info["crash_time"]) - clock) < 120, (info["crash_time"], clock)


def test_dump_osrelease_is_booted_kernel(lab_crash, lab_release):
    from kdumpy.dump import open_dump

    with open_dump(lab_crash.kdumpy_dump) as mem:
        assert mem.vmcoreinfo.osrelease == lab_release
        assert mem.vmcoreinfo.get("OSRELEASE") == lab_release
        assert mem.page_size == 4096
    with RawVmcore(lab_crash.raw_vmcore) as raw:
        assert raw.vmcoreinfo["OSRELEASE"] == lab_release


def test_marker_and_panic_in_dump(kdumpy_vs_raw, lab_crash):
    marker_hits = kdumpy_vs_raw.found[lab_crash.marker.encode()]
    panic_hits = kdumpy_vs_raw.found[PANIC_LINE]
    assert marker_hits, f"marker {lab_crash.marker} not found in kdumpy's dump"
    assert panic_hits, "panic record not found in kdumpy's dump"
    # the panic record follows the marker record in the log buffer
    assert any(0 < p - m < 4096 for m in marker_hits for p in panic_hits), (
        [hex(a) for a in marker_hits], [hex(a) for a in panic_hits])


def test_pages_match_raw_vmcore(kdumpy_vs_raw):
    assert kdumpy_vs_raw.pages_compared > 100_000
    assert kdumpy_vs_raw.ok, kdumpy_vs_raw.describe()


def test_raw_vmcore_kernel_log(lab_crash):
    """The lab itself: makedumpfile finds the marker and the panic in the crashed kernel's log."""
    log = dmesg_with_makedumpfile(lab_crash.raw_vmcore)
    assert lab_crash.marker in log
    assert "sysrq triggered crash" in log


def test_makedumpfile_dump_agrees_with_raw(lab_crash, lab_raw):
    """kdumpy reads makedumpfile's flattened -d 31 dump; its pages equal the raw copy."""
    result = compare_dump(lab_crash.makedumpfile_flat, lab_raw, level1=False,
                          needles=(lab_crash.marker.encode(),))
    assert result.pages_compared > 1000
    assert result.ok, result.describe()
    assert result.found[lab_crash.marker.encode()]


def test_libkdumpfile_reads_kdumpy_dump(lab_crash, lab_raw, lab_release):
    try:
        import drgn
    except ImportError:
        pytest.fail("drgn is not installed (pip install drgn; the test extra lists it)",
                    pytrace=False)
    prog = drgn.Program()
    prog.set_core_dump(str(lab_crash.kdumpy_dump))
    assert prog.platform.arch == drgn.Architecture.X86_64
    ps = lab_raw.page_size
    rng = random.Random(lab_release)
    pfns: set[int] = set()
    for lo, hi in lab_raw.full_page_ranges():
        pfns.update((lo, hi - 1))
        pfns.update(rng.randrange(lo, hi) for _ in range(1000))
    marker_addrs = lab_raw.find(lab_crash.marker.encode())
    pfns.update(addr // ps for addr in marker_addrs)
    bad = []
    for pfn in sorted(pfns):
        if prog.read(pfn * ps, ps, True) != lab_raw.read_phys(pfn * ps, ps):
            bad.append(hex(pfn))
    assert not bad, f"libkdumpfile reads differ from the raw copy at pfns {bad[:10]}"
    # virtual read through the page tables (no debug info needed): init_uts_ns
    uts = int(lab_raw.vmcoreinfo["SYMBOL(init_uts_ns)"], 16)
    assert lab_release.encode() in prog.read(uts, 1024)


def test_small_crashkernel_captures(lab_crash_small, lab_release):
    meta = lab_crash_small.meta
    assert meta["complete"] is True
    assert meta["reserved"]["kexec_crash_size"] == parse_size(meta["crashkernel"])
    assert parse_size(meta["crashkernel"]) < parse_size("256M")
    assert meta["exit_status"]["kdumpy_save"] == 0
    info = kdumpy_info(lab_crash_small.kdumpy_dump)
    assert info["vmcoreinfo"]["OSRELEASE"] == lab_release
    with RawVmcore(lab_crash_small.raw_vmcore) as raw:
        result = compare_dump(lab_crash_small.kdumpy_dump, raw, level1=True,
                              needles=(lab_crash_small.marker.encode(),))
    assert result.ok, result.describe()
    assert result.found[lab_crash_small.marker.encode()]


def test_lab_covers_6_1_and_6_12():
    """Unless pinned, the lab resolves one Debian 12 6.1 and one 6.12 kernel."""
    if os.environ.get("KDUMPY_LAB_KERNELS"):
        pytest.skip("kernels pinned by KDUMPY_LAB_KERNELS")
    from lab.kernels import SERIES, default_releases

    releases = default_releases()
    assert [r for r in releases if SERIES["6.1"].release_re.fullmatch(r)], releases
    assert [r for r in releases if SERIES["6.12"].release_re.fullmatch(r)], releases


def test_capture_kernel_saved_the_kernel_log_first(lab_crash):
    """``kdumpy save`` in the capture kernel wrote dmesg.txt beside the dump, before it, and
    it is the crashed kernel's log: the planted marker and the sysrq panic are in it."""
    dmesg = lab_crash.kdumpy_dump.parent / "dmesg.txt"
    assert dmesg.is_file(), "kdumpy save did not write dmesg.txt in the capture kernel"
    text = dmesg.read_text(errors="replace")
    assert lab_crash.marker in text
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    assert dmesg.stat().st_mode & 0o777 == 0o600
    assert dmesg.stat().st_mtime_ns <= lab_crash.kdumpy_dump.stat().st_mtime_ns
