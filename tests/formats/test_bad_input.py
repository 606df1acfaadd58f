"""Bad input: one line naming file, structure and offset; exit 1; no traceback; and
property tests feeding mutated headers to every reader."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpy.cli import main
from kdumpy.errors import KdumpyError
from kdumpy.formats.kdump import KdumpFile
from kdumpy.dump import FaultError, PageState, open_dump


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


def test_pt_load_past_end_of_file_opens_up_to_the_data_that_landed(synth_core, tmp_path):
    """An ELF dump cut short (a full disk) opens: what landed reads back, what did not is
    lost (FaultError, never zeros), and info says so."""
    size = Path(synth_core.path).stat().st_size
    bad = _mutated(Path(synth_core.path), tmp_path / "p", [], truncate=size // 2)
    r = run_cli("info", "--json", str(bad))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["incomplete"] is True and info["pages_lost"] > 0
    with open_dump(bad) as mem:
        lost = [p for p in sorted(synth_core.pages) if mem.page_state(p) == PageState.LOST]
        kept = [p for p in sorted(synth_core.pages) if mem.page_state(p) == PageState.DUMPABLE]
        assert lost and kept and len(lost) == info["pages_lost"]
        for p in kept:
            assert mem.read_pfn(p) == synth_core.pages[p]
        with pytest.raises(FaultError) as exc:
            mem.read_phys(lost[0] * 4096 + 8, 16)
        assert exc.value.reason == "lost" and exc.value.address == lost[0] * 4096 + 8
        assert all(p not in set(lost) for s, e in mem.dumpable_ranges() for p in range(s, e))


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


def test_kdump_page_desc_out_of_range_is_a_lost_page(kdump_file, tmp_path):
    """A descriptor pointing past the end of the file: that page is lost (reported by
    info, FaultError on reading), and a copy keeps it lost (and itself marked incomplete)
    rather than writing zeros."""
    kf = KdumpFile(kdump_file.read_bytes(), path=str(kdump_file))
    # the 5th descriptor points far past the end of the file
    at = kf.desc_offset + 24 * 5
    bad = _mutated(kdump_file, tmp_path / "d", [(at, struct.pack("<q", 1 << 40))])
    pfn = int(np.flatnonzero(np.unpackbits(kf.bitmap2, bitorder="little"))[5])
    r = run_cli("info", "--json", str(bad))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["pages_lost"] == 1 and info["incomplete"] is True
    with open_dump(bad) as mem:
        assert mem.page_state(pfn) == PageState.LOST
        with pytest.raises(FaultError, match="lost"):
            mem.read_pfn(pfn)
        assert mem.read_pfn(pfn, zero_fill=True) == bytes(4096)
    r = run_cli("convert", "-q", "-c", "zlib", str(bad), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    with open_dump(tmp_path / "out") as out, open_dump(kdump_file) as whole:
        assert out.incomplete and out.page_state(pfn) == PageState.LOST
        with pytest.raises(FaultError, match="lost"):
            out.read_pfn(pfn)
        for s_, e_ in whole.dumpable_ranges():
            for p in range(s_, e_):
                if p != pfn:
                    assert out.read_pfn(p) == whole.read_pfn(p)


def test_kdump_bitmap_shorter_than_max_mapnr(kdump_file, tmp_path):
    kf = KdumpFile(kdump_file.read_bytes(), path=str(kdump_file))
    huge = kf.header.bitmap_blocks // 2 * 4096 * 8 + 1
    bad = _mutated(kdump_file, tmp_path / "b", [(440, struct.pack("<I", huge)),
                                                (4096 + 96, struct.pack("<Q", huge))])
    assert_one_line_error(run_cli("info", str(bad)), bad, "bitmap", "max_mapnr")


def test_flattened_stream_cut_short(kdump_file, synth_core, tmp_path):
    """A flattened stream cut short opens up to its last record (the data that landed);
    reassembling it from a pipe still refuses (a stream cannot be marked afterwards)."""
    flat = tmp_path / "f"
    assert main(["save", "-q", "-d", "1", "-f", "flat", synth_core.path, str(flat)]) == 0
    # cut inside the page data (the stream ends with the header rewritten whole and the end
    # marker, so a cut of the last bytes alone loses no page)
    bad = _mutated(flat, tmp_path / "fc", [], truncate=flat.stat().st_size * 2 // 3)
    r = run_cli("info", "--json", str(bad))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["incomplete"] is True and info["pages_lost"] >= 1
    with open_dump(bad) as mem:
        for p, data in synth_core.pages.items():
            if mem.page_state(p) == PageState.DUMPABLE:
                assert mem.read_pfn(p) == data
            else:
                assert mem.page_state(p) == PageState.LOST
                with pytest.raises(FaultError):
                    mem.read_pfn(p)
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
