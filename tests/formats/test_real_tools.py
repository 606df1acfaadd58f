"""Cross-checks with the tools people already use, on real dumps from the crash lab.

Each test runs once per lab kernel (fixture ``lab_crash`` from ``tests/conftest.py``):
libkdumpfile (drgn's bundled reader) reads what kdumpy writes; makedumpfile accepts it for
``--dump-dmesg`` and refiltering; kdumpy reads makedumpfile's ``-c``, ``-l``, ``-E``, ``-F``
and ``--split`` outputs with the same pages as the raw ``/proc/vmcore`` copy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pages import BATCH, assert_pages_equal

from kdumpy.cli import main
from kdumpy.dump import open_dump

pytestmark = pytest.mark.lab


def makedumpfile(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["makedumpfile", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"makedumpfile {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def host_dumps(lab_crash, tmp_path_factory) -> dict[str, Path]:
    """kdumpy dumps of the raw vmcore written on the host, one per codec."""
    d = tmp_path_factory.mktemp(f"host-{lab_crash.release}")
    out = {}
    for codec in ("zlib", "lzo", "snappy", "zstd"):
        p = d / f"kdumpy.{codec}"
        assert main(["save", "-q", "-d", "1", "-c", codec, str(lab_crash.raw_vmcore), str(p)]) == 0
        out[codec] = p
    return out


def test_libkdumpfile_reads_kdumpy_dumps(lab_crash, host_dumps):
    """drgn (libkdumpfile) opens kdumpy's dumps; every dumpable page equals /proc/vmcore."""
    import drgn  # a test dependency (pip install -e .[test]); missing it is a failure
    with open_dump(lab_crash.raw_vmcore) as raw:
        for path in [lab_crash.kdumpy_dump, *host_dumps.values()]:
            prog = drgn.Program()
            prog.set_core_dump(str(path))
            assert prog.platform.arch == drgn.Architecture.X86_64
            n = 0
            for s, e in raw.dumpable_ranges():
                for p in range(s, e, BATCH):
                    k = min(BATCH, e - p)
                    got = prog.read(p * 4096, k * 4096, True)
                    want = raw.read_pfns(p, k).tobytes()
                    assert got == want, f"{path}: pages {p:#x}+{k} differ in libkdumpfile's view"
                    n += k
            assert n == raw.count_dumpable()


def test_makedumpfile_dmesg_accepts_kdumpy_dump(lab_crash, tmp_path):
    ref, ours = tmp_path / "ref.txt", tmp_path / "ours.txt"
    makedumpfile("--dump-dmesg", str(lab_crash.raw_vmcore), str(ref))
    makedumpfile("--dump-dmesg", str(lab_crash.kdumpy_dump), str(ours))
    text = ours.read_text(errors="replace")
    assert ours.read_bytes() == ref.read_bytes()
    assert lab_crash.marker in text
    assert "sysrq triggered crash" in text


def test_makedumpfile_refilters_kdumpy_dump(lab_crash, tmp_path):
    """``makedumpfile -l -d 31`` on kdumpy's dump keeps the same pages, with the same
    contents, as on the raw vmcore."""
    ref, ours = tmp_path / "ref.kdump", tmp_path / "ours.kdump"
    makedumpfile("-l", "-d", "31", str(lab_crash.raw_vmcore), str(ref))
    makedumpfile("-l", "-d", "31", str(lab_crash.kdumpy_dump), str(ours))
    with open_dump(ref) as a, open_dump(ours) as b:
        assert np.array_equal(a.dumpable_bitmap(), b.dumpable_bitmap())
        assert np.array_equal(a.present_bitmap(), b.present_bitmap())
        assert assert_pages_equal(a, b, only_dumpable_in=a) > 1000


@pytest.mark.parametrize("opts", [["-c"], ["-l"], ["-E"], ["-F", "-l"], ["-c", "-d", "1"]],
                         ids=["zlib-d31", "lzo-d31", "elf-d31", "flat-lzo-d31", "zlib-d1"])
def test_kdumpy_reads_makedumpfile_outputs(lab_crash, tmp_path, opts):
    out = tmp_path / "md"
    level = [] if "-d" in opts else ["-d", "31"]
    args = [*opts, *level, str(lab_crash.raw_vmcore)]
    if "-F" in opts:
        with open(out, "wb") as f:
            r = subprocess.run(["makedumpfile", *args], stdout=f, stderr=subprocess.PIPE)
        assert r.returncode == 0, r.stderr
    else:
        makedumpfile(*args, str(out))
    with open_dump(out) as md, open_dump(lab_crash.raw_vmcore) as raw:
        assert md.vmcoreinfo is not None and md.vmcoreinfo.osrelease == lab_crash.release
        assert md.count_dumpable() > 1000
        assert md.count_dumpable() <= raw.count_dumpable()
        n = assert_pages_equal(md, raw, only_dumpable_in=md)
        assert n == md.count_dumpable()


def test_kdumpy_reads_the_guest_makedumpfile_stream(lab_crash):
    with open_dump(lab_crash.makedumpfile_flat) as md, open_dump(lab_crash.raw_vmcore) as raw:
        assert md.container == "flattened" and md.compression == "lzo"
        assert assert_pages_equal(md, raw, only_dumpable_in=md) == md.count_dumpable()


def test_split_set_read_and_joined(lab_crash, tmp_path):
    parts = [tmp_path / f"part{i}" for i in range(3)]
    whole = tmp_path / "whole"
    makedumpfile("-l", "-d", "31", str(lab_crash.raw_vmcore), str(whole))
    makedumpfile("-l", "-d", "31", "--split", str(lab_crash.raw_vmcore), *map(str, parts))
    with open_dump([str(p) for p in reversed(parts)]) as split, open_dump(whole) as w:
        assert split.container == "split"
        assert split.count_dumpable() == w.count_dumpable()
        assert assert_pages_equal(split, w, only_dumpable_in=w) == w.count_dumpable()
    joined = tmp_path / "joined"
    assert main(["convert", "-q", *map(str, parts), str(joined)]) == 0
    with open_dump(joined) as j, open_dump(whole) as w:
        assert j.container == "file" and j.compression == "lzo"
        assert np.array_equal(j.dumpable_bitmap(), w.dumpable_bitmap())
        assert assert_pages_equal(j, w, only_dumpable_in=w) == w.count_dumpable()
    # makedumpfile itself accepts the joined file
    makedumpfile("--dump-dmesg", str(joined), str(tmp_path / "dmesg"))


def test_kdumpy_level1_agrees_with_raw_vmcore(lab_crash):
    with open_dump(lab_crash.kdumpy_dump) as ours, open_dump(lab_crash.raw_vmcore) as raw:
        assert ours.count_dumpable() == raw.count_dumpable()
        assert np.array_equal(ours.present_bitmap()[: (raw.max_pfn + 7) // 8],
                              raw.present_bitmap()[: (raw.max_pfn + 7) // 8])
        assert assert_pages_equal(ours, raw, only_dumpable_in=raw) == raw.count_dumpable()


@pytest.mark.parametrize("fmt", ["elf", "flat"])
def test_other_outputs_of_a_real_dump(lab_crash, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    assert main(["save", "-q", "-d", "1", "-f", fmt, str(lab_crash.raw_vmcore), str(out)]) == 0
    with open_dump(out) as ours, open_dump(lab_crash.raw_vmcore) as raw:
        n = assert_pages_equal(ours, raw, only_dumpable_in=raw)
        assert n == raw.count_dumpable()
    # makedumpfile reads both (ELF input, and flattened after -R by kdumpy convert)
    src = out
    if fmt == "flat":
        src = tmp_path / "reassembled"
        assert main(["convert", str(out), str(src)]) == 0
    makedumpfile("--dump-dmesg", str(src), str(tmp_path / "dmesg"))
