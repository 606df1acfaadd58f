"""Early kdump in the lab: a kernel that dies inside its initramfs, before any root file
system is mounted, is captured because kdumpy's initramfs hook loaded the capture kernel.

The first kernel boots the image Debian's initramfs-tools builds from the hook files
``kdumpy install --initramfs`` writes (:mod:`kdumpy.lab.early`), with ``rd.earlykdump
panic_on_warn=1``. initramfs-tools' /init runs kdumpy's init-top script (``kexec -s -p``),
then loads ``/conf/modules``, whose module WARN()s; the kernel panics in that modprobe.

Facts relied on:

* The kernel logs "Run /init as init process" when it starts the initramfs' /init
  (init/main.c run_init_process), and nothing mounts a root before init-premount.
* kexec_file_load(2) puts ``elfcorehdr=`` in front of the command line it was given
  (arch/x86/kernel/kexec-bzimage64.c), so the capture kernel's /proc/cmdline is that word
  followed by early.conf's ``KDUMPY_CMDLINE``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pages import assert_pages_equal

from kdumpy.analysis import format_dmesg, read_kernel_log
from kdumpy.lab.early import EXPECTED, LOADED_LINE
from kdumpy.lab.warn_module import WARN_TEXT
from kdumpy.memory import open_dump
from kdumpy.setup import early


def _log(path: Path) -> str:
    with open_dump(path) as mem:
        return format_dmesg(read_kernel_log(mem)).decode("utf-8", "replace")


def test_image_is_initramfs_tools_output_with_the_hook(lab_early_crash):
    meta = lab_early_crash.meta
    image = Path(meta["early"]["initramfs"])
    info = json.loads((image.parent / "early.json").read_text())
    assert info["generator"].startswith("initramfs-tools ")
    files = set(info["files"])
    for name in EXPECTED:
        assert name in files, name
    assert any(f.endswith("bin/kexec") for f in files)
    # initramfs-tools' own /init and scripts, not the lab's busybox /init
    assert {"init", "scripts/functions", "scripts/local"} <= files
    assert "lab/modules.list" not in files
    assert meta["first_cmdline"].split()[-2:] == ["rd.earlykdump", "panic_on_warn=1"]
    assert meta["kexec_mode"] == "early-initramfs"


def test_the_hook_loaded_the_capture_kernel_with_early_conf(lab_early_crash):
    meta = lab_early_crash.meta
    assert meta["early"]["loaded_line"] == f"{LOADED_LINE} 0, loaded=1"
    words = meta["capture_cmdline"].split()
    assert words[0].startswith("elfcorehdr=")
    # the rest is early.conf's KDUMPY_CMDLINE, as kdumpy install --initramfs computed it
    conf = meta["early"]["early_conf"]
    value = conf.split("KDUMPY_CMDLINE=", 1)[1].strip()
    assert words[1:] == shlex.split(value)[0].split()
    assert "reset_devices" in words and "irqpoll" in words
    assert early.SWITCH not in words and not any(w.startswith("crashkernel=") for w in words)
    assert not any(w.startswith("panic_on_warn") for w in words)


def test_first_kernel_died_in_the_initramfs_before_any_root(lab_early_crash):
    text = _log(lab_early_crash.raw_vmcore)
    lines = text.splitlines()
    run_init = [i for i, ln in enumerate(lines) if "Run /init as init process" in ln]
    loaded = [i for i, ln in enumerate(lines) if LOADED_LINE in ln]
    warn = [i for i, ln in enumerate(lines) if WARN_TEXT in ln]
    panic = [i for i, ln in enumerate(lines) if "Kernel panic - not syncing:" in ln]
    assert run_init and loaded and warn and panic, (run_init, loaded, warn, panic)
    assert run_init[0] < loaded[0] < warn[0] < panic[-1]
    assert lines[loaded[0]].endswith("exit 0, loaded=1")
    assert "panic_on_warn set" in lines[panic[-1]]
    # still in the initramfs: no root mounted, no switch to a real init
    tail = "\n".join(lines[run_init[0]:])
    for later in ("Run /sbin/init", "EXT4-fs (", "systemd[1]", "VFS: Mounted root"):
        assert later not in tail, later
    # the dying task is the initramfs' modprobe (initramfs-tools' load_modules)
    crash_line = next(ln for ln in lines if "WARNING: CPU:" in ln)
    pid = int(crash_line.split(" PID: ")[1].split()[0])
    comm = next(ln for ln in lines[warn[0]:] if f"PID: {pid} Comm:" in ln)
    assert "Comm: modprobe" in comm, comm


def test_service_saved_the_early_crash(lab_early_crash):
    dirs = sorted((lab_early_crash.directory / "service").glob("*-*"))
    assert len(dirs) == 1, dirs
    names = sorted(p.name for p in dirs[0].iterdir())
    assert names == ["dmesg.txt", "report.json", "vmcore"], names
    dmesg = (dirs[0] / "dmesg.txt").read_text(errors="replace")
    assert f"{LOADED_LINE} 0, loaded=1" in dmesg and WARN_TEXT in dmesg
    report = json.loads((dirs[0] / "report.json").read_text())
    assert "panic_on_warn set" in json.dumps(report)
    with open_dump(dirs[0] / "vmcore") as ours, open_dump(lab_early_crash.raw_vmcore) as raw:
        assert ours.sub.dump_level == 31 and not ours.incomplete
        assert assert_pages_equal(ours, raw, only_dumpable_in=ours) == ours.count_dumpable()

