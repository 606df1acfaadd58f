"""A full target: the session retries at the next dump level, or leaves a dump marked
incomplete that ``kdumpy info`` still opens. The small filesystems are a size-limited tmpfs
and a loop-mounted ext2 image, mounted by the test (root only) and unmounted afterwards.

(The incomplete case uses ext2: on a *full* tmpfs, reading a file's holes through mmap
raises SIGBUS, because tmpfs must allocate a page even to map a hole for reading.)"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import make_vmcore

from kdumpy.service import run_capture
from kdumpy.setup.actions import RecordedActions
from kdumpy.setup.config import parse_config
from kdumpy.setup.paths import SystemPaths

NOW = time.strptime("2025-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_target(tmp_path):
    """``mount(size, fstype)`` -> a filesystem of that size at ROOT/crash (ROOT is
    ``tmp_path/root``): a tmpfs, or an ext2 image on a loop device."""
    mounted: list[Path] = []

    def mount(size: str, fstype: str = "tmpfs") -> Path:
        d = tmp_path / "root" / "crash"
        d.mkdir(parents=True, mode=0o700)
        if fstype == "tmpfs":
            argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)]
        else:
            img = tmp_path / "fs.img"
            with open(img, "wb") as f:
                f.truncate(int(size.rstrip("M")) << 20)
            subprocess.run(["mkfs.ext2", "-q", "-F", "-m", "0", str(img)], check=True)
            argv = ["mount", "-o", "loop", str(img), str(d)]
        subprocess.run(argv, check=True)
        mounted.append(d)
        return d

    yield mount
    gc.collect()                      # drop any dump mapping still referenced
    for d in mounted:
        if subprocess.run(["umount", str(d)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], check=False)


def capture(root: Path, config: str, vmcore: str):
    actions = RecordedActions()
    notes: list[str] = []
    res = run_capture(parse_config(config), paths=SystemPaths(str(root)), vmcore=vmcore,
                      actions=actions, host="box", now=NOW, quiet=True, log=notes.append)
    return res, actions, notes


def test_retry_at_the_next_level(tmp_path, small_target):
    core = make_vmcore(str(tmp_path / "vmcore"), ram_pages=(200, 1000, 200))
    nonzero = len(core.pages) - len(core.zero_pfns)
    assert len(core.present) * 4096 > 4 << 20 > (nonzero + 64) * 4096   # level 0 can't fit
    top = small_target("4M")
    res, actions, log = capture(tmp_path / "root",
                                '[target]\npath = "/crash"\n'
                                '[dump]\nlevel = [0, 1]\ncompression = "none"\n'
                                '[actions]\nfinal = "poweroff"\nfailure = "halt"\n',
                                core.path)
    assert res.status == "complete", (res, log)
    assert res.dump_level == 1
    assert any("no space left at dump level 0; retrying at 1" in n for n in res.notes)
    d = Path(res.dump_dir)
    assert sorted(os.listdir(d)) == ["dmesg.txt", "report.json", "vmcore"]
    assert actions.performed == ["poweroff"]
    from kdumpy.dump import open_dump
    with open_dump(str(d / "vmcore")) as mem:
        assert not mem.incomplete
        for pfn, data in core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data
    assert top.is_mount()


def test_incomplete_dump_still_opens(tmp_path, small_target):
    core = make_vmcore(str(tmp_path / "vmcore"), ram_pages=(2000, 4000, 1000))
    small_target("3M", "ext2")
    res, actions, log = capture(tmp_path / "root",
                                '[target]\npath = "/crash"\n'
                                '[dump]\nlevel = [1, 31]\ncompression = "lzo"\n'
                                '[actions]\nfailure = "halt"\n', core.path)
    assert res.status == "incomplete", (res, log)
    assert actions.performed == ["halt"]
    d = Path(res.dump_dir)
    names = sorted(os.listdir(d))
    assert "vmcore.incomplete" in names and "vmcore" not in names
    assert names[0] == "dmesg.txt"                      # written first, it made it
    assert res.vmcore == str(d / "vmcore.incomplete")
    info = subprocess.run([sys.executable, "-m", "kdumpy", "info", "--json",
                           str(d / "vmcore.incomplete")], capture_output=True, text=True,
                          check=False)
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert meta["incomplete"] is True and meta["format"] == "kdump"
    assert meta["pages_lost"] > 0          # descriptors of data that never landed are zero
    last = json.loads((tmp_path / "root/var/lib/kdumpy/last-capture.json").read_text())
    assert last["status"] == "incomplete" and last["action"] == "halt"


def test_incomplete_real_dump_opens_in_libkdumpfile(tmp_path, small_target, lab_crash):
    """A real crash saved into a filesystem too small for it: the dump left behind is marked
    incomplete, its lost pages have zero descriptors (as makedumpfile writes them), and
    libkdumpfile (drgn) opens it and reads the pages that landed."""
    import drgn

    from kdumpy.dump import open_dump

    small_target("40M", "ext2")
    res, actions, log = capture(tmp_path / "root",
                                '[target]\npath = "/crash"\n'
                                '[dump]\nlevel = [1]\ncompression = "lzo"\n'
                                '[actions]\nfailure = "halt"\n', str(lab_crash.raw_vmcore))
    assert res.status == "incomplete", (res, log)
    dump = Path(res.vmcore)
    with open_dump(dump) as mem, open_dump(lab_crash.raw_vmcore) as raw:
        assert mem.incomplete and mem.lost_pages() > 0
        landed = [p for s_, e_ in mem.dumpable_ranges() for p in range(s_, min(e_, s_ + 64))][:200]
        prog = drgn.Program()
        prog.set_core_dump(str(dump))
        ok = 0
        for pfn in landed:
            try:
                got = prog.read(pfn * 4096, 4096, True)
            except drgn.FaultError:
                continue               # a lost page
            assert got == raw.read_pfn(pfn)
            ok += 1
        assert ok > 50
