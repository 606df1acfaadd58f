"""Damaged and hostile dump files: cut short, shrinking under the reader, flipped bits in
the layout, flattened streams built to cost memory or time, split sets that do not belong
together. Each is opened (or refused with one located error) and never read as zeros."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdumpy.cli import main
from kdumpy.dump import FaultError, PageState, open_dump
from kdumpy.errors import DumpFormatError, KdumpyError
from kdumpy.formats.flattened import FLAT_END, FlattenedImage, flat_header, flat_record_header
from kdumpy.formats.kdump import KdumpFile
from kdumpy.formats.source import BytesSource, FileSource

PAGE = 4096


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdumpy", *args], capture_output=True, text=True)


def info_json(path: Path) -> dict:
    r = run_cli("info", "--json", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def kdump_file(synth_core, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("kd") / "dump"
    assert main(["save", "-q", "-d", "0", "-c", "zlib", synth_core.path, str(p)]) == 0
    return p


# -- a kdump file cut with head -c -------------------------------------------------------------

def test_truncated_kdump_reports_its_lost_pages(kdump_file, synth_core, tmp_path):
    whole = KdumpFile(kdump_file.read_bytes(), path=str(kdump_file))
    descs = whole.descs
    data_start = whole.desc_offset + 24 * whole.num_dumpable
    size = kdump_file.stat().st_size
    pfns = np.flatnonzero(np.unpackbits(whole.bitmap2, bitorder="little")[:whole.max_mapnr])
    # cut in the descriptor table, and twice in the page data
    for cut in (whole.desc_offset + 24 * (whole.num_dumpable // 2) + 5,
                data_start + (size - data_start) // 3, size - 1):
        bad = tmp_path / f"cut{cut}"
        bad.write_bytes(kdump_file.read_bytes()[:cut])
        in_file = min(whole.num_dumpable, (cut - whole.desc_offset) // 24)
        ends = descs["offset"].astype(np.int64) + descs["size"]
        lost = np.ones(whole.num_dumpable, dtype=bool)
        lost[:in_file] = ends[:in_file] > cut
        info = info_json(bad)
        assert info["incomplete"] is True
        assert info["pages_lost"] == int(lost.sum()) > 0
        with open_dump(bad) as mem:
            for rank, pfn in enumerate(pfns.tolist()):
                if lost[rank]:
                    assert mem.page_state(pfn) == PageState.LOST
                    with pytest.raises(FaultError) as exc:
                        mem.read_phys(pfn * PAGE, PAGE)
                    assert exc.value.reason == "lost" and exc.value.address == pfn * PAGE
                else:
                    assert mem.read_pfn(pfn) == synth_core.pages.get(pfn, bytes(PAGE))
        # dmesg/report see a damaged file, not a whole one; a copy keeps lost pages lost
        # and is itself marked incomplete
        out = tmp_path / f"copy{cut}"
        assert main(["convert", "-q", str(bad), str(out)]) == 0
        with open_dump(out) as copy:
            assert copy.incomplete and copy.lost_pages() == int(lost.sum())
            assert copy.count_dumpable() - copy.lost_pages() == len(pfns) - int(lost.sum())


def test_excluded_and_absent_reads_raise(kdump_file, synth_core, tmp_path):
    out = tmp_path / "d1"
    # ELF at -d 1: zero pages in runs of 256 or more leave the file (kdump keeps them
    # dumpable, pointing at its shared zero page)
    assert main(["save", "-q", "-d", "1", "-f", "elf", synth_core.path, str(out)]) == 0
    with open_dump(out) as mem:
        zero = min(p for p in synth_core.zero_pfns if mem.page_state(p) != PageState.DUMPABLE)
        assert mem.page_state(zero) == PageState.EXCLUDED
        with pytest.raises(FaultError) as exc:
            mem.read_pfn(zero)
        assert exc.value.reason == "excluded"
        with pytest.raises(FaultError) as exc:
            mem.read_phys(1 << 40, 8)
        assert exc.value.reason == "absent" and exc.value.address == 1 << 40
        assert mem.read_phys(1 << 40, 8, zero_fill=True) == bytes(8)
        hole = min(p for p in range(mem.max_pfn) if p not in synth_core.present)
        assert mem.page_state(hole) == PageState.ABSENT
        states = {st for _s, _e, st in mem.page_runs()}
        assert states == {PageState.ABSENT, PageState.EXCLUDED, PageState.DUMPABLE}
        runs = list(mem.page_runs())
        assert runs[0][0] == 0 and runs[-1][1] == mem.max_pfn
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
        assert sum(e - s for s, e, st in runs if st == PageState.DUMPABLE) == mem.count_dumpable()


# -- files that shrink after they were opened: a located error, never SIGBUS -------------------

SHRINK = r"""
import os, sys
from kdumpy.dump import open_dump
from kdumpy.errors import KdumpyError
path, cut = sys.argv[1], int(sys.argv[2])
with open_dump(path) as mem:
    os.truncate(path, cut)
    try:
        for s, e in mem.dumpable_ranges():
            for p in range(s, e, 64):
                mem.read_pfns(p, min(64, e - p))
    except KdumpyError as exc:
        print("ERROR", exc)
        sys.exit(3)
print("read everything")
"""


@pytest.mark.parametrize("fmt", ["kdump", "elf", "flat"])
def test_file_shrinking_after_open_is_a_located_error(synth_core, tmp_path, fmt):
    p = tmp_path / "dump"
    assert main(["save", "-q", "-d", "0", "-f", fmt, synth_core.path, str(p)]) == 0
    cut = p.stat().st_size // 2
    r = subprocess.run([sys.executable, "-c", SHRINK, str(p), str(cut)], capture_output=True,
                       text=True)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)     # not -SIGBUS
    assert str(p) in r.stdout and "offset 0x" in r.stdout and "shrank" in r.stdout


def test_file_source_never_maps_a_regular_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10000)
    src = FileSource(p)
    os.truncate(p, 100)
    assert src.pread(50, 100) == b"x" * 50       # short, not a fault
    src.close()


# -- the layout is validated before anything is written ----------------------------------------

def _phdr(data: bytearray, i: int) -> int:
    phoff, = struct.unpack_from("<Q", data, 32)
    return phoff + 56 * i


def _first_load(data: bytearray) -> int:
    phnum, = struct.unpack_from("<H", data, 56)
    for i in range(phnum):
        if struct.unpack_from("<I", data, _phdr(data, i))[0] == 1:
            return i
    raise AssertionError("no PT_LOAD")


@pytest.mark.parametrize("field,value,words", [
    ("p_paddr", 1 << 60, ("PT_LOAD", "MAX_PHYSMEM_BITS")),
    ("p_memsz", 1 << 56, ("PT_LOAD", "MAX_PHYSMEM_BITS")),
    ("p_offset", (1 << 64) - 4096, ("program header", "wraps past 2^64")),
])
def test_flipped_pt_load_is_refused_before_writing(synth_core, tmp_path, field, value, words):
    data = bytearray(Path(synth_core.path).read_bytes())
    at = _phdr(data, _first_load(data)) + {"p_offset": 8, "p_paddr": 24, "p_memsz": 40}[field]
    struct.pack_into("<Q", data, at, value)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    for args in (["info"], ["save", "-q", "--no-dmesg", "-d", "1"]):
        dest = [str(tmp_path / "out")] if args[0] == "save" else []
        r = run_cli(*args, str(bad), *dest)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr
        for w in words:
            assert w in r.stderr, r.stderr
    assert not list(tmp_path.glob("out*"))


def test_high_pt_load_within_the_limit_writes_no_gigabytes_of_zeros(synth_core, tmp_path):
    """A flipped bit that stays within MAX_PHYSMEM_BITS (here bit 42: 4 TiB) makes the
    bitmaps huge; the absent pages between stay absent and cost no disk space."""
    data = bytearray(Path(synth_core.path).read_bytes())
    at = _phdr(data, _first_load(data)) + 24
    pa, = struct.unpack_from("<Q", data, at)
    struct.pack_into("<Q", data, at, pa | 1 << 42)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = run_cli("save", "-q", "--no-dmesg", "-d", "1", str(bad), str(out))
    assert r.returncode == 0, r.stderr
    st = out.stat()
    assert st.st_size > 2 * ((1 << 30) // 8)          # bitmaps cover PFNs up to 4 TiB
    assert st.st_blocks * 512 < 16 << 20, st.st_blocks  # but are holes on disk
    with open_dump(out) as mem:
        assert mem.max_pfn > (1 << 42) >> 12
        assert mem.page_state((pa | 1 << 42) >> 12) == PageState.DUMPABLE
        assert mem.page_state(1 << 29) == PageState.ABSENT
    assert time.monotonic() - t0 < 600


@pytest.mark.parametrize("pagesize", [1, 3, 2048, 131072, 2147483648])
def test_pagesize_outside_4k_to_64k_is_refused(synth_core, tmp_path, pagesize):
    raw = Path(synth_core.path).read_bytes()
    old = b"PAGESIZE=4096\n"
    new = f"PAGESIZE={pagesize}\n".encode()
    at = raw.index(old)
    # keep the note's size: overwrite following bytes of the same line budget
    bad = tmp_path / "bad"
    body = raw[:at] + new + raw[at + len(old):]
    nl = body.index(b"\n", at + len(new))            # drop as many bytes from the next line
    diff = len(new) - len(old)
    body = body[:nl - diff] + body[nl:] if diff > 0 else body[:nl] + b"x" * -diff + body[nl:]
    assert len(body) == len(raw)
    bad.write_bytes(body)
    r = run_cli("info", str(bad))
    assert r.returncode == 1 and "PAGESIZE" in r.stderr and str(bad) in r.stderr, r.stderr


def test_kdump_block_size_outside_4k_to_64k_is_refused(kdump_file, tmp_path):
    for bs in (2048, 1 << 17):
        data = bytearray(kdump_file.read_bytes())
        struct.pack_into("<i", data, 428, bs)
        bad = tmp_path / f"bs{bs}"
        bad.write_bytes(bytes(data))
        r = run_cli("info", str(bad))
        assert r.returncode == 1 and "block_size" in r.stderr and "offset 0x1ac" in r.stderr


# -- flattened streams: index costs follow the records present ---------------------------------

def _maxrss_kib(code: str, *args: str) -> tuple[int, str]:
    """Peak RSS of ``code`` run in a new interpreter. ``VmHWM`` (the high-water mark of
    the process's own address space): ``getrusage``'s ``ru_maxrss`` also counts the RSS
    the parent had when it forked (the child's copy of the parent's mm starts its
    high-water mark there, and exec carries it over), so under a long pytest run it
    measured pytest."""
    r = subprocess.run([sys.executable, "-c", code + "\nimport re\n"
                        "print('RSS', re.search(r'VmHWM:\\s+(\\d+)', "
                        "open('/proc/self/status').read()).group(1))", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split("RSS")[-1]), r.stdout


def test_flattened_sparse_bitmap_records_cost_no_memory(kdump_file, tmp_path):
    """A small stream whose kdump header claims bitmaps of 2^33 PFNs (1 GiB each), with
    only a few records inside them: opening it maps no memory for the holes."""
    whole = kdump_file.read_bytes()
    kf = KdumpFile(whole)
    max_mapnr = 1 << 33
    one = max_mapnr // 8 // PAGE
    head = bytearray(whole[:PAGE])
    struct.pack_into("<I", head, 436, 2 * one)                 # bitmap_blocks
    struct.pack_into("<I", head, 440, 0xFFFFFFFF)
    sub = bytearray(whole[PAGE:PAGE * (1 + kf.header.sub_hdr_size)])
    struct.pack_into("<Q", sub, 96, max_mapnr)                 # max_mapnr_64
    desc_at = PAGE * (1 + kf.header.sub_hdr_size) + 2 * one * PAGE
    rec = [flat_header(), flat_record_header(0, len(head)), bytes(head),
           flat_record_header(PAGE, len(sub)), bytes(sub)]
    for k in range(200):                                       # sparse bitmap pieces
        off = PAGE * (1 + kf.header.sub_hdr_size) + k * (one * PAGE // 100)
        rec += [flat_record_header(off, 8), b"\xff" * 8]
    rec += [flat_record_header(desc_at, 24), bytes(24), FLAT_END]
    p = tmp_path / "sparse.flat"
    p.write_bytes(b"".join(rec))
    assert p.stat().st_size < 1 << 20
    code = ("import sys\nfrom kdumpy.dump import open_dump\n"
            "from kdumpy.errors import KdumpyError\n"
            "try:\n    m = open_dump(sys.argv[1]); print('pages', m.count_dumpable())\n"
            "except KdumpyError as e:\n    print('refused', e)\n")
    rss, out = _maxrss_kib(code, str(p))
    assert rss < 400 * 1024, (rss, out)                        # not 2 GiB of bitmaps


def test_flattened_overlapping_records_index_in_n_log_n():
    """400k overlapping tiny records (later ones win, as in makedumpfile -R)."""
    n = 400_000
    rng = np.random.default_rng(1)
    offs = rng.integers(0, 1 << 20, n)
    parts = [flat_header()]
    for k, o in enumerate(offs.tolist()):
        parts.append(flat_record_header(o, 16))
        parts.append(struct.pack("<QQ", k, k))
    parts.append(FLAT_END)
    blob = b"".join(parts)
    t0 = time.process_time()
    img = FlattenedImage(BytesSource(blob, "overlap"))
    took = time.process_time() - t0
    # reference: apply the records in order
    ref = bytearray(img.size)
    for k, o in enumerate(offs.tolist()):
        ref[o:o + 16] = struct.pack("<QQ", k, k)
    assert img.pread(0, img.size) == bytes(ref)
    assert len(img._dst) <= 2 * n + 1
    assert took < 15, took       # the old index took 17 s; recorded, not a benchmark


# -- split sets --------------------------------------------------------------------------------

def test_split_files_from_different_crashes_are_refused(tmp_path):
    from synth import VMCOREINFO, make_vmcore
    a = make_vmcore(str(tmp_path / "a"), seed=1)
    b = make_vmcore(str(tmp_path / "b"), seed=2,
                    vmcoreinfo=VMCOREINFO.replace(b"CRASHTIME=1763881234", b"CRASHTIME=1700000000"))
    halves = []
    for src, name in ((a, "a"), (b, "b")):
        out = tmp_path / f"{name}.kd"
        assert main(["save", "-q", "-d", "0", src.path, str(out)]) == 0
        halves.append(out)
    # make two files that look like halves of one set: split=1, [0, m/2) and [m/2, m)
    parts = []
    for k, src in enumerate(halves):
        data = bytearray(src.read_bytes())
        m = KdumpFile(bytes(data)).max_mapnr
        struct.pack_into("<i", data, PAGE + 12, 1)
        lo, hi = (0, m // 2) if k == 0 else (m // 2, m)
        struct.pack_into("<QQ", data, PAGE + 80, lo, hi)
        out = tmp_path / f"part{k}"
        out.write_bytes(bytes(data))
        parts.append(str(out))
    with pytest.raises(DumpFormatError, match="another dump"):
        open_dump(parts)
    r = run_cli("info", *parts)
    assert r.returncode == 1 and "another dump" in r.stderr


# -- VMCOREINFO without SYMBOL(kallsyms_relative_base) -----------------------------------------

def test_kallsyms_without_relative_base_is_not_available():
    from kdumpy.kallsyms import read_kallsyms

    class Mem:
        byteorder, machine, path = "little", "x86_64", "<m>"

        def __init__(self) -> None:
            from kdumpy.formats.vmcoreinfo import VmcoreInfo
            self.vmcoreinfo = VmcoreInfo.parse(
                b"SYMBOL(kallsyms_names)=ffffffff81000000\nSYMBOL(kallsyms_num_syms)=ffffffff81100000\n"
                b"SYMBOL(kallsyms_token_table)=ffffffff81200000\n"
                b"SYMBOL(kallsyms_token_index)=ffffffff81300000\n"
                b"SYMBOL(kallsyms_offsets)=ffffffff81400000\n")

        def read_virt(self, va: int, size: int) -> bytes:
            raise AssertionError("nothing is read")

    with pytest.raises(KdumpyError, match="kallsyms_relative_base"):
        read_kallsyms(Mem())


def test_flattened_stream_without_its_end_marker_is_incomplete(synth_core, tmp_path):
    flat = tmp_path / "f"
    assert main(["save", "-q", "-d", "0", "-f", "flat", synth_core.path, str(flat)]) == 0
    data = flat.read_bytes()
    assert data.endswith(FLAT_END)
    cut = tmp_path / "cut"
    cut.write_bytes(data[:-len(FLAT_END)])         # every record landed, the marker did not
    info = info_json(cut)
    assert info["incomplete"] is True and info["pages_lost"] == 0
    with open_dump(cut) as mem:
        for pfn, page in synth_core.pages.items():
            assert mem.read_pfn(pfn) == page


def test_report_without_kallsyms_relative_base_says_not_available(tmp_path):
    from synth import VMCOREINFO, make_vmcore
    core = make_vmcore(str(tmp_path / "vmcore"), vmcoreinfo=VMCOREINFO + (
        b"SYMBOL(kallsyms_names)=ffffffff81000000\nSYMBOL(kallsyms_num_syms)=ffffffff81100000\n"
        b"SYMBOL(kallsyms_token_table)=ffffffff81200000\n"
        b"SYMBOL(kallsyms_token_index)=ffffffff81300000\n"
        b"SYMBOL(kallsyms_offsets)=ffffffff81400000\n"))
    r = run_cli("info", core.path)
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
    # this synthetic kernel has no log ring: report says so with exit 1, still no traceback
    r = run_cli("report", core.path)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert "the kernel log could not be read" in r.stderr
    assert "kallsyms_relative_base: symbol addresses are not available" in run_cli(
        "report", core.path).stdout
