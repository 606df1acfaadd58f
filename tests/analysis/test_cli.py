"""``kdumpy dmesg``, ``kdumpy report`` and the kernel log that ``kdumpy save`` writes first."""

from __future__ import annotations

import json
import subprocess
import sys


def kdumpy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdumpy", *args], capture_output=True)


def test_dmesg_command_equals_makedumpfile(lab_crash, tmp_path):
    ref = tmp_path / "ref.txt"
    subprocess.run(["makedumpfile", "--dump-dmesg", str(lab_crash.raw_vmcore), str(ref)],
                   check=True, capture_output=True)
    for dump in (lab_crash.raw_vmcore, lab_crash.kdumpy_dump, lab_crash.makedumpfile_flat):
        r = kdumpy("dmesg", str(dump))
        assert r.returncode == 0, r.stderr
        assert r.stdout == ref.read_bytes()
    assert lab_crash.marker.encode() in r.stdout
    assert b"sysrq triggered crash" in r.stdout


def test_report_json_names_the_panic(lab_crash):
    r = kdumpy("report", "--json", "--no-backtrace", str(lab_crash.kdumpy_dump))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    text = json.dumps(rep)
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    assert lab_crash.release in text
    clock = lab_crash.meta["guest_clock_at_crash"]["realtime"]
    crash_epochs = [v for k, v in _walk(rep) if k in ("epoch", "crash_time", "tv_sec") and isinstance(v, (int, float))]
    assert any(abs(e - clock) < 60 for e in crash_epochs), (crash_epochs, clock)


def _walk(d, key=None):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, k)
    elif isinstance(d, list):
        for v in d:
            yield from _walk(v, key)
    else:
        yield key, d


def test_save_writes_the_kernel_log_first(lab_crash, tmp_path):
    dest = tmp_path / "crash" / "vmcore"
    r = kdumpy("save", "-q", "-d", "31", str(lab_crash.raw_vmcore), str(dest))
    assert r.returncode == 0, r.stderr
    dmesg = dest.parent / "dmesg.txt"
    ref = tmp_path / "ref.txt"
    subprocess.run(["makedumpfile", "--dump-dmesg", str(lab_crash.raw_vmcore), str(ref)],
                   check=True, capture_output=True)
    assert dmesg.read_bytes() == ref.read_bytes()
    assert dmesg.stat().st_mode & 0o777 == 0o600
    assert (dest.parent.stat().st_mode & 0o777) == 0o700
    assert dmesg.stat().st_mtime_ns <= dest.stat().st_mtime_ns
    # a second dump in the same directory keeps the first one's log
    r = kdumpy("save", "-q", "-d", "31", str(lab_crash.raw_vmcore), str(dest) + "2")
    assert r.returncode == 0, r.stderr
    assert (dest.parent / "vmcore2-dmesg.txt").read_bytes() == ref.read_bytes()
