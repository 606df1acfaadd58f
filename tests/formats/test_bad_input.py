"""Bad input: one line naming file, structure and offset; exit 1; no traceback; and
property tests feeding mutated headers to every reader."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpy.cli import main
from kdumpy.errors import KdumpyError
from kdumpy.formats.kdump import KdumpFile
from kdumpy.memory import open_dump


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdumpy", *args], capture_output=True, text=True)


def assert_one_line_error(r: subprocess.CompletedProcess, path: Path, *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert str(path) in line, line
    assert "offset 0x" in line, line
    for w in words:
        assert w in line, line


@pytest.fixture(scope="module")
def kdump_file(synth_core, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("kd") / "dump"
    assert main(["save", "-q", "-d", "1", "-c", "zlib", synth_core.path, str(p)]) == 0
    return p


def _mutated(src: Path, dst: Path, edits: list[tuple[int, bytes]], truncate: int | None = None) -> Path:
    data = bytearray(src.read_bytes())
    for off, b in edits:
        data[off:off + len(b)] = b
    if truncate is not None:
        del data[truncate:]
    dst.write_bytes(bytes(data))
    return dst


def test_elf_truncated_in_program_headers(synth_core, tmp_path):
    bad = _mutated(Path(synth_core.path), tmp_path / "t", [], truncate=100)
    assert_one_line_error(run_cli("info", str(bad)), bad, "ELF program headers")


def test_wrong_signature(synth_core, tmp_path):
    bad = _mutated(Path(synth_core.path), tmp_path / "s", [(0, b"\x7fELG")])
    assert_one_line_error(run_cli("info", str(bad)), bad, "signature")


def test_pt_load_past_end_of_file(synth_core, tmp_path):
    size = Path(synth_core.path).stat().st_size
    bad = _mutated(Path(synth_core.path), tmp_path / "p", [], truncate=size // 2)
    assert_one_line_error(run_cli("info", str(bad)), bad, "PT_LOAD", "past the end")


def test_garbage_vmcoreinfo(synth_core, tmp_path):
    raw = Path(synth_core.path).read_bytes()
    at = raw.index(b"OSRELEASE=")
    bad = _mutated(Path(synth_core.path), tmp_path / "v", [(at, b"\x01\x02garbage\xff\xfe no equals sign")])
    assert_one_line_error(run_cli("info", str(bad)), bad, "VMCOREINFO")


def test_kdump_wrong_signature(kdump_file, tmp_path):
    bad = _mutated(kdump_file, tmp_path / "s", [(0, b"KDUMPX  ")])
    assert_one_line_error(run_cli("info", str(bad)), bad, "signature")


def test_kdump_truncated(kdump_file, tmp_path):
    for cut in (300, 5000, 4096 * 3 + 100):
        bad = _mutated(kdump_file, tmp_path / f"t{cut}", [], truncate=cut)
        r = run_cli("info", str(bad))
        assert_one_line_error(r, bad)


def test_kdump_page_desc_out_of_range(kdump_file, tmp_path):
    kf = KdumpFile(kdump_file.read_bytes(), path=str(kdump_file))
    # the 5th descriptor points far past the end of the file
    at = kf.desc_offset + 24 * 5
    bad = _mutated(kdump_file, tmp_path / "d", [(at, struct.pack("<q", 1 << 40))])
    r = run_cli("convert", "-q", "-c", "zlib", str(bad), str(tmp_path / "out"))
    assert_one_line_error(r, bad, "page_desc of PFN", "outside the file")
    assert not (tmp_path / "out").exists()
    # the partial output is kept under .incomplete and carries the incomplete mark
    partial = tmp_path / "out.incomplete"
    with open_dump(partial) as mem:
        assert mem.incomplete


def test_kdump_bitmap_shorter_than_max_mapnr(kdump_file, tmp_path):
    kf = KdumpFile(kdump_file.read_bytes(), path=str(kdump_file))
    huge = kf.header.bitmap_blocks // 2 * 4096 * 8 + 1
    bad = _mutated(kdump_file, tmp_path / "b", [(440, struct.pack("<I", huge)),
                                                (4096 + 96, struct.pack("<Q", huge))])
    assert_one_line_error(run_cli("info", str(bad)), bad, "bitmap", "max_mapnr")


def test_flattened_stream_cut_short(kdump_file, synth_core, tmp_path):
    flat = tmp_path / "f"
    assert main(["save", "-q", "-d", "1", "-f", "flat", synth_core.path, str(flat)]) == 0
    bad = _mutated(flat, tmp_path / "fc", [], truncate=flat.stat().st_size - 100)
    assert_one_line_error(run_cli("info", str(bad)), bad, "flattened")
    r = subprocess.run([sys.executable, "-m", "kdumpy", "convert", "-", str(tmp_path / "re")],
                       input=bad.read_bytes(), capture_output=True, text=False)
    assert r.returncode == 1
    assert not (tmp_path / "re").exists() and not (tmp_path / "re.incomplete").exists()


def _exercise(path: Path) -> None:
    """Everything a user may ask of a dump; only KdumpyError may come out."""
    try:
        with open_dump(path) as mem:
            mem.info()
            mem.prstatus()
            n = 0
            for s, e in mem.dumpable_ranges():
                for b in range(s, e, 256):
                    mem.read_pfns(b, min(256, e - b))
                    n += 1
                    if n > 64:
                        return
    except KdumpyError:
        pass


mutation = st.lists(st.tuples(st.integers(0, 8191), st.binary(min_size=1, max_size=8)),
                    min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=mutation)
def test_mutated_kdump_headers(kdump_file, tmp_path, edits):
    _exercise(_mutated(kdump_file, tmp_path / "m", edits))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 700), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=4))
def test_mutated_elf_headers(synth_core, tmp_path, edits):
    _exercise(_mutated(Path(synth_core.path), tmp_path / "m", edits))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=mutation, cut=st.integers(4096, 20000))
def test_mutated_flattened(synth_core, tmp_path_factory, edits, cut):
    d = tmp_path_factory.mktemp("fl")
    flat = d / "f"
    if not flat.exists():
        assert main(["save", "-q", "-d", "1", "-f", "flat", "-c", "zstd", synth_core.path, str(flat)]) == 0
    data = flat.read_bytes()
    edits = [(min(o + 4096, len(data) - 1), b) for o, b in edits]
    _exercise(_mutated(flat, d / "m", edits, truncate=None if cut > 19000 else cut + 4096))


def test_vmcoreinfo_numbers_both_bases():
    from kdumpy.formats.vmcoreinfo import VmcoreInfo
    vi = VmcoreInfo.parse(b"NUMBER(phys_base)=-148897792\nNUMBER(VMALLOC_START)=0xffa0000000000000\n"
                          b"SYMBOL(prb)=ffffffff8f6a1c60\nOFFSET(page.flags)=0\nCONFIG_KALLSYMS=y\n\0\0")
    assert vi.number("phys_base") == -0x8e00000
    assert vi.number("VMALLOC_START") == 0xffa0000000000000
    assert vi.symbol("prb") == 0xffffffff8f6a1c60
    assert vi.offset("page.flags") == 0
    assert vi.config("KALLSYMS") and not vi.config("X")
    bad = VmcoreInfo.parse(b"SYMBOL(prb)=zz\n", path="f", offset=0x100)
    with pytest.raises(KdumpyError, match=r"f: VMCOREINFO note at offset 0x100: SYMBOL\(prb\)"):
        bad.symbol("prb")
