"""The public API as docs/API.md documents it: its worked example runs on a real dump."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kdumpy

ROOT = Path(__file__).resolve().parents[1]


def example_code() -> str:
    text = (ROOT / "docs" / "API.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_public_names():
    assert set(kdumpy.__all__) >= {"open_dump", "Dump", "KernelView", "FaultError", "save",
                                   "PageState", "__version__"}
    for name in kdumpy.__all__:
        assert getattr(kdumpy, name) is not None
    assert (ROOT / "src" / "kdumpy" / "py.typed").exists()


def test_import_is_cheap():
    r = subprocess.run([sys.executable, "-c", "import sys, kdumpy; print('numpy' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_worked_example_on_a_real_dump(lab_crash, tmp_path):
    out = tmp_path / "vmcore.d31"
    code = f"DUMP = {str(lab_crash.raw_vmcore)!r}\nOUT = {str(out)!r}\n" + example_code()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("elf x86_64 ")
    assert lines[1].startswith("Kernel panic - not syncing")
    assert re.fullmatch(r"panic_cpu \d+", lines[2])
    with kdumpy.open_dump(lab_crash.raw_vmcore) as dump:
        assert lines[3] == f"dumpable pages {dump.count_dumpable()}"
        assert lines[4] == f"fault {dump.max_pfn * dump.page_size:#x} absent"
    assert lines[5].startswith("saved ")
    with kdumpy.open_dump(out) as copy:
        assert copy.dump_level == 31 and copy.compression == "zstd"
        assert 0 < copy.count_dumpable() < int(lines[3].split()[-1])


def test_save_and_read_back(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from synth import make_vmcore
    core = make_vmcore(str(tmp_path / "vmcore"))
    with kdumpy.open_dump(core.path) as dump:
        res = kdumpy.save(dump, tmp_path / "out", level=1, compress="zlib")
        assert res.pages_written > 0
        with pytest.raises(kdumpy.KdumpyError):
            kdumpy.save(dump, tmp_path / "out")           # never overwrites
    with kdumpy.open_dump(tmp_path / "out") as copy:
        for pfn, data in core.pages.items():
            assert copy.read_pfn(pfn) == data            # kdump keeps zero pages (shared)


def test_wheel_holds_no_lab(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel, = tmp_path.glob("kdumpy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kdumpy/dump.py" in names and "kdumpy/py.typed" in names
    assert not [n for n in names if n.startswith(("lab/", "kdumpy/lab/", "tests/", "bench/"))]
    assert any(n.endswith("METADATA") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert f"Version: {kdumpy.__version__}" in meta
    assert "Provides-Extra: drgn" in meta


def test_struct_pages_of_the_kernel_image_are_reserved(lab_crash):
    """The kernel image's pages are PG_reserved (mm/memblock.c reserves the image before
    the buddy allocator sees it): read through KernelView.struct_pages."""
    from kdumpy.capture.page_classes import PageRules
    with kdumpy.open_dump(lab_crash.raw_vmcore) as dump:
        kv = kdumpy.KernelView(dump)
        rules = PageRules(dump.vmcoreinfo, dump.page_size, 31)
        assert rules.pg_reserved
        pfn = kv.kernel_image_to_phys(dump.vmcoreinfo.symbol("_stext")) // dump.page_size
        raw = kv.struct_pages(pfn, 4)
        size = kv.mem_sections().size_page
        assert len(raw) == 4 * size
        for i in range(4):
            flags = int.from_bytes(raw[i * size + rules.off_flags:][:8], "little")
            assert flags & rules.pg_reserved


def test_zero_pages_are_told_apart_when_asked(tmp_path):
    """page_runs(zero=True) splits dumpable runs into DUMPABLE and ZERO by content."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synth import make_vmcore
    core = make_vmcore(str(tmp_path / "vmcore"))
    want = {p for p, data in core.pages.items() if not any(data)}
    assert want and want != set(core.pages)
    with kdumpy.open_dump(core.path) as dump:
        runs = list(dump.page_runs(zero=True))
        assert runs[0][0] == 0 and runs[-1][1] == dump.max_pfn
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))        # contiguous cover
        zero = {p for s, e, st in runs if st == kdumpy.PageState.ZERO for p in range(s, e)}
        kept = {p for s, e, st in runs if st == kdumpy.PageState.DUMPABLE for p in range(s, e)}
        assert zero == want and kept == set(core.pages) - want
        p = min(want)
        assert dump.page_state(p, zero=True) == kdumpy.PageState.ZERO
        assert dump.page_state(p) == kdumpy.PageState.DUMPABLE           # not read unless asked


def test_zero_state_matches_what_level_1_drops(lab_crash, tmp_path):
    """On a real vmcore the ZERO pages are exactly those a ``-d 1`` save finds with its own
    code (in kdump-compressed output they keep their bitmap bit and share one zero page, as
    makedumpfile writes them), and the copy reports the same pages as ZERO."""
    with kdumpy.open_dump(lab_crash.raw_vmcore) as dump:
        runs = [(s, e) for s, e, st in dump.page_runs(zero=True) if st == kdumpy.PageState.ZERO]
        res = kdumpy.save(dump, tmp_path / "d1", level=1, compress="zlib")
    zero = sum(e - s for s, e in runs)
    assert zero > 0 and res.zero_pages == zero
    with kdumpy.open_dump(tmp_path / "d1") as copy:
        assert [(s, e) for s, e, st in copy.page_runs(zero=True)
                if st == kdumpy.PageState.ZERO] == runs
