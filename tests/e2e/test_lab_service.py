"""The setup issue in the lab: ``kdumpy load`` (kexec_file_load through ctypes, no
kexec-tools) loads the capture kernel, and the capture kernel runs the service path,
``kdumpy capture --config``, which leaves vmcore + dmesg.txt + report.json."""

from __future__ import annotations

import json

from pages import assert_pages_equal

from kdumpy.dump import open_dump


def _crash_dir(lab_service_crash):
    dirs = sorted((lab_service_crash.directory / "service").glob("*-*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_kdumpy_load_replaced_kexec_tools(lab_service_crash):
    meta = lab_service_crash.meta
    assert meta.get("kexec_mode") == "kdumpy-file", meta.get("kexec_mode")
    out = (lab_service_crash.directory / "kdumpy-load.log").read_text()
    assert "kexec_file_load" in out
    assert meta["reserved"]["kexec_crash_loaded"] == "1"


def test_service_wrote_vmcore_dmesg_and_report(lab_service_crash):
    d = _crash_dir(lab_service_crash)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["dmesg.txt", "report.json", "vmcore"], names
    assert d.stat().st_mode & 0o777 == 0o700
    for p in d.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    text = (d / "dmesg.txt").read_text(errors="replace")
    assert lab_service_crash.marker in text
    report = json.loads((d / "report.json").read_text())
    assert "sysrq triggered crash" in json.dumps(report)
    assert lab_service_crash.release in json.dumps(report)


def test_service_dump_is_filtered_and_right(lab_service_crash):
    d = _crash_dir(lab_service_crash)
    with open_dump(d / "vmcore") as ours, open_dump(lab_service_crash.raw_vmcore) as raw:
        assert ours.sub.dump_level == 31 and not ours.incomplete
        assert ours.count_dumpable() < raw.count_dumpable() // 3
        assert assert_pages_equal(ours, raw, only_dumpable_in=ours) == ours.count_dumpable()
