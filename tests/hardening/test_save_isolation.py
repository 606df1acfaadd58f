"""The vmcore is written whatever the crashed kernel's structures hold.

Each case rewrites one VMCOREINFO value of a real dump (``mutate.set_vmcoreinfo``), as a
corrupt kernel or a flipped bit would leave it, and saves it with ``kdumpy save``: the
vmcore must be written and whole, the failure named on stderr, and the saved pages must be
those of the source.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutate import set_vmcoreinfo  # noqa: E402
from subproc import kdumpy  # noqa: E402

from kdumpy.dump import open_dump  # noqa: E402


#: real lab dumps (cached under ~/.cache/kdumpy/lab)
pytestmark = pytest.mark.lab

def same_pages(a, b, *, sample: int = 64) -> None:
    """Every page dumpable in ``b`` (a copy) reads the same in ``a`` (its source), checked
    on an even sample of ``sample`` runs' first and last pages, and the counts agree."""
    with open_dump(str(a)) as src, open_dump(str(b)) as out:
        assert out.max_pfn == src.max_pfn and out.page_size == src.page_size
        runs = list(out.dumpable_ranges())
        assert runs
        step = max(1, len(runs) // sample)
        for s, e in runs[::step]:
            for pfn in {s, e - 1}:
                assert src.is_dumpable(pfn)
                assert out.read_pfn(pfn) == src.read_pfn(pfn), hex(pfn)


LOG_BREAKERS = {
    # ValueError ("offset -9 cannot be negative") in the log reader
    "OFFSET(printk_info.text_len)": "-9",
    "OFFSET(prb_desc_ring.infos)": "-1",
    "SIZE(printk_info)": "99999999999",
    "SYMBOL(prb)": "ffffffffffffff00",
    "OFFSET(printk_ringbuffer.text_data_ring)": "18446744073709551615",
}


@pytest.mark.parametrize("key", sorted(LOG_BREAKERS))
def test_log_failure_does_not_cost_the_vmcore(hard_base, tmp_path, key):
    src = tmp_path / "src.kdump"
    set_vmcoreinfo(str(hard_base.kdump), str(src), **{key: LOG_BREAKERS[key]})
    out = tmp_path / "out" / "vmcore"
    p = kdumpy("save", "-d", "31", src, out)
    assert p.returncode == 0, p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr
    assert "kernel log not available" in p.stderr
    assert out.exists() and not (tmp_path / "out" / "dmesg.txt").exists()
    info = kdumpy("info", "--json", out)
    assert info.returncode == 0 and '"incomplete": false' in info.stdout
    same_pages(src, out)
    # dmesg and report say the log could not be read, and exit non-zero
    for cmd in ("dmesg", "report"):
        r = kdumpy(cmd, src)
        assert r.returncode == 1, (cmd, r.stderr)
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_crashtime_out_of_range(hard_base, tmp_path):
    """CRASHTIME=99999999999999999999 does not fit the header's tv_sec: written as 0."""
    src = tmp_path / "src.kdump"
    set_vmcoreinfo(str(hard_base.kdump), str(src), CRASHTIME="99999999999999999999")
    out = tmp_path / "vmcore"
    p = kdumpy("save", "--no-dmesg", "-d", "31", src, out)
    assert p.returncode == 0, p.stderr
    assert "CRASHTIME" in p.stderr
    with open_dump(str(out)) as mem:
        assert mem.header.tv_sec == 0 and not mem.incomplete
    same_pages(src, out)


@pytest.mark.parametrize("edit", [
    {"SYMBOL(mem_section)": "ffffffffffff0000"},     # not mapped
    {"SIZE(page)": "0"},
    {"NUMBER(SECTION_SIZE_BITS)": "200"},
    {"OFFSET(page.flags)": "-8"},
], ids=["mem_section-unmapped", "page-size-0", "section-bits-200", "page-flags-negative"])
def test_filter_failure_falls_back_to_plain_levels(hard_base, tmp_path, edit):
    """Filtering needs mem_section and struct page: when they cannot be read, the save
    falls back along the list to level 1 (zero pages, from page data), and says so."""
    src = tmp_path / "src.kdump"
    set_vmcoreinfo(str(hard_base.kdump), str(src), **edit)
    out = tmp_path / "vmcore"
    p = kdumpy("save", "--no-dmesg", "-d", "31,17", src, out)
    assert p.returncode == 0, p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr
    with open_dump(str(out)) as mem:
        assert not mem.incomplete
        level = mem.sub.dump_level
    # the source is already filtered at 31; a failed filter ends at level 1 (or 17 or 31
    # where the key is not needed by that level's rules)
    assert level in (1, 17, 31)
    if level == 1:
        assert "retrying at level 1" in p.stderr or "retrying at 1" in p.stderr
    same_pages(src, out)


def test_capture_service_records_failures(hard_base, tmp_path):
    """``kdumpy capture`` shares the policy: the log failure is in report.json's
    ``kdumpy_capture.failures``, dmesg.txt says why, the vmcore is whole."""
    import json

    from kdumpy.service import run_capture
    from kdumpy.setup.config import parse_config
    src = tmp_path / "src.kdump"
    set_vmcoreinfo(str(hard_base.kdump), str(src),
                   **{"OFFSET(printk_info.text_len)": "-9", "SYMBOL(mem_section)": "0"})
    target = tmp_path / "crash"
    cfg = parse_config(f'[target]\npath = "{target}"\n[dump]\nlevel = [31]\n'
                       'compression = "lzo"\n[actions]\nfinal = "reboot"\nfailure = "reboot"\n')
    from kdumpy.setup.paths import SystemPaths
    paths = SystemPaths(root=str(tmp_path / "root"))
    from kdumpy.setup.actions import RecordedActions
    res = run_capture(cfg, paths=paths, vmcore=str(src), host="h", quiet=True,
                      log=lambda m: None, actions=RecordedActions())
    assert res.status == "complete", res
    d = Path(res.dump_dir)
    assert sorted(res.files) == ["dmesg.txt", "report.json", "vmcore"], (res, list(d.iterdir()))
    assert "kernel log not available" in (d / "dmesg.txt").read_text()
    report = json.loads((d / "report.json").read_text())
    fails = report["kdumpy_capture"]["failures"]
    assert "kernel log" in fails and "filter" in fails
    with open_dump(str(d / "vmcore")) as mem:
        assert mem.sub.dump_level == 1 and not mem.incomplete
    same_pages(src, d / "vmcore")
