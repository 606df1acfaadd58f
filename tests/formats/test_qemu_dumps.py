"""QEMU ``dump-guest-memory`` output of a real Debian kernel, ELF and kdump-zlib (QEMU 7.2),
read with its defects corrected, and made readable for makedumpfile by ``kdumpy convert``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kdumpy.cli import main
from kdumpy.dump import open_dump

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def qemu_dumps(lab_release):
    from lab.guest_dump import ensure_guest_dumps
    return ensure_guest_dumps(lab_release)


def test_qemu_elf_and_kdump_hold_the_same_pages(qemu_dumps):
    with open_dump(qemu_dumps.elf) as elf, open_dump(qemu_dumps.kdump_flat) as kd:
        assert elf.format == "elf" and kd.format == "kdump" and kd.container == "flattened"
        assert elf.vmcoreinfo is not None and elf.vmcoreinfo.osrelease == qemu_dumps.release
        assert kd.vmcoreinfo is not None and kd.vmcoreinfo.osrelease == qemu_dumps.release
        assert kd.compression == "zlib"
        n = 0
        for s, e in kd.dumpable_ranges():
            for p in range(s, e, 2048):
                k = min(2048, e - p)
                assert np.array_equal(kd.read_pfns(p, k), elf.read_pfns(p, k)), hex(p)
                n += k
        assert n > 100_000


def test_qemu72_defects_are_reported(qemu_dumps, capsys):
    with open_dump(qemu_dumps.elf) as elf:
        text = " ".join(elf.corrections)
        assert "follow the section headers" in text and "e_ehsize" in text
    with open_dump(qemu_dumps.kdump_flat) as kd:
        text = " ".join(kd.corrections)
        assert "phys_base" in text and "QEMU" in text
        assert kd.phys_base == kd.vmcoreinfo.number("phys_base")
    assert main(["info", str(qemu_dumps.kdump_flat)]) == 0
    assert "corrected" in capsys.readouterr().out


def test_makedumpfile_reads_what_kdumpy_converts(qemu_dumps, tmp_path):
    """makedumpfile 1.7.2 rejects QEMU 7.2's ELF (phdrs not at offset 64) and mis-reads its
    kdump (hex-parsed phys_base); after kdumpy convert both work, and the logs agree."""
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(qemu_dumps.elf), str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode != 0  # the defect is real
    fixed_elf, fixed_kd = tmp_path / "fixed.elf", tmp_path / "fixed.kdump"
    assert main(["convert", "-q", "-f", "elf", str(qemu_dumps.elf), str(fixed_elf)]) == 0
    assert main(["convert", "-q", "-c", "zlib", str(qemu_dumps.kdump_flat), str(fixed_kd)]) == 0
    logs = []
    for src in (fixed_elf, fixed_kd):
        out = tmp_path / (src.name + ".dmesg")
        r = subprocess.run(["makedumpfile", "--dump-dmesg", str(src), str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        logs.append(out.read_bytes())
    assert logs[0] == logs[1] and b"Linux version" in logs[0]
    ours = subprocess.run([sys.executable, "-m", "kdumpy", "dmesg", str(qemu_dumps.kdump_flat)],
                          capture_output=True, check=True).stdout
    assert ours == logs[0]


def test_drgn_reads_the_converted_qemu_kdump(qemu_dumps, tmp_path):
    """libkdumpfile refuses QEMU's kdump (empty utsname: no arch name); kdumpy's convert
    writes the crashed kernel's utsname, and drgn reads pages from it."""
    import drgn
    fixed = tmp_path / "fixed.kdump"
    # plain `convert` of a flattened file is -R (byte for byte); -c re-encodes and corrects
    assert main(["convert", "-q", "-c", "zlib", str(qemu_dumps.kdump_flat), str(fixed)]) == 0
    prog = drgn.Program()
    prog.set_core_dump(str(fixed))
    with open_dump(qemu_dumps.elf) as elf:
        for pfn in (0x100, 0x1000, 0x10000):
            assert prog.read(pfn * 4096, 4096, True) == elf.read_pfn(pfn)
