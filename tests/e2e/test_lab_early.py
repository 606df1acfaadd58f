"""Early kdump in the lab: a kernel that dies inside its initramfs, before any root file
system is mounted, is captured because kdumpy's initramfs hook loaded the capture kernel.

The first kernel boots the image a real generator builds from the hook files ``kdumpy
install --initramfs`` writes (:mod:`lab.early`), with ``rd.earlykdump``:

* initramfs-tools (``lab_early_crash``): its /init runs kdumpy's init-top script
  (``kexec -s -p``), then loads ``/conf/modules``, whose module WARN()s; with
  ``panic_on_warn=1`` the kernel panics in that modprobe.
* dracut (``lab_early_dracut_crash``): kdumpy's cmdline hook loads the capture kernel; with
  no ``root=`` and ``rd.shell=0`` dracut's /init gives up and exits: "Attempted to kill init!".

Facts relied on:

* The kernel logs "Run /init as init process" when it starts the initramfs' /init
  (init/main.c run_init_process); a mounted root would log its file system and a switch to
  the real init "Run /sbin/init" or systemd's lines.
* kexec_file_load(2) puts ``elfcorehdr=`` in front of the command line it was given
  (arch/x86/kernel/kexec-bzimage64.c), so the capture kernel's /proc/cmdline is that word
  followed by early.conf's ``KDUMPY_CMDLINE``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from pages import assert_pages_equal

from kdumpy.analysis import format_dmesg, read_kernel_log
from lab.early import GENERATORS, LOADED_LINE
from lab.warn_module import WARN_TEXT
from kdumpy.dump import open_dump
from kdumpy.setup import early

LOADED_OK = f"{LOADED_LINE} 0, loaded=1"


@pytest.fixture(params=["initramfs-tools", "dracut"])
def early_crash(request, lab_release):
    name = "lab_early_crash" if request.param == "initramfs-tools" else "lab_early_dracut_crash"
    return request.param, request.getfixturevalue(name)


def _log(path: Path) -> str:
    with open_dump(path) as mem:
        return format_dmesg(read_kernel_log(mem)).decode("utf-8", "replace")


def test_image_is_the_generators_output_with_the_hook(early_crash):
    generator, crash = early_crash
    meta = crash.meta
    image = Path(meta["early"]["initramfs"])
    info = json.loads((image.parent / "early.json").read_text())
    assert info["generator"].startswith(("initramfs-tools ", "dracut-core "))
    files = set(info["files"])
    for name in GENERATORS[generator].expected:
        assert name in files, name
    assert any(f.endswith("bin/kexec") for f in files)
    assert "lab/modules.list" not in files          # not the lab's busybox image
    if generator == "initramfs-tools":
        assert {"init", "scripts/functions", "scripts/local"} <= files
    else:
        assert "usr/lib/dracut/hooks/cmdline/10-parse-root-opts.sh" in files
    assert meta["first_cmdline"].endswith(" " + GENERATORS[generator].append)
    assert meta["kexec_mode"] == "early-initramfs"


def test_the_hook_loaded_the_capture_kernel_with_early_conf(early_crash):
    _, crash = early_crash
    meta = crash.meta
    assert meta["early"]["loaded_line"] == LOADED_OK
    words = meta["capture_cmdline"].split()
    assert words[0].startswith("elfcorehdr=")
    # the rest is early.conf's KDUMPY_CMDLINE, as kdumpy install --initramfs computed it
    value = meta["early"]["early_conf"].split("KDUMPY_CMDLINE=", 1)[1].strip()
    assert words[1:] == shlex.split(value)[0].split()
    assert "reset_devices" in words and "irqpoll" in words
    assert early.SWITCH not in words and not any(w.startswith("crashkernel=") for w in words)


def test_first_kernel_died_in_the_initramfs_before_any_root(early_crash):
    generator, crash = early_crash
    lines = _log(crash.raw_vmcore).splitlines()

    def where(text: str) -> list[int]:
        return [i for i, ln in enumerate(lines) if text in ln]

    run_init, loaded = where("Run /init as init process"), where(LOADED_LINE)
    panic = where("Kernel panic - not syncing:")
    assert run_init and loaded and panic, (run_init, loaded, panic)
    assert run_init[0] < loaded[0] < panic[-1]
    assert lines[loaded[0]].endswith(LOADED_OK)
    assert GENERATORS[generator].panic_text in lines[panic[-1]]
    tail = "\n".join(lines[run_init[0]:])
    for later in ("Run /sbin/init", "EXT4-fs (", "systemd[1]", "VFS: Mounted root"):
        assert later not in tail, later
    if generator == "initramfs-tools":
        # the WARN came from the initramfs' modprobe (initramfs-tools' load_modules)
        warn = where(WARN_TEXT)
        assert warn and loaded[0] < warn[0] < panic[-1]
        crash_line = next(ln for ln in lines if "WARNING: CPU:" in ln)
        pid = int(crash_line.split(" PID: ")[1].split()[0])
        comm = next(ln for ln in lines[warn[0]:] if f"PID: {pid} Comm:" in ln)
        assert "Comm: modprobe" in comm, comm
    else:
        fatal = where("dracut: FATAL: No or empty root= argument")
        assert fatal and loaded[0] < fatal[0] < panic[-1]
        # PID 1 itself died: dracut's /init exited (do_exit -> panic on the init task)
        after = "\n".join(lines[panic[-1]:panic[-1] + 4])
        assert "PID: 1 Comm: init" in after, after


def test_service_saved_the_early_crash(early_crash):
    generator, crash = early_crash
    dirs = sorted((crash.directory / "service").glob("*-*"))
    assert len(dirs) == 1, dirs
    names = sorted(p.name for p in dirs[0].iterdir())
    assert names == ["dmesg.txt", "report.json", "vmcore"], names
    dmesg = (dirs[0] / "dmesg.txt").read_text(errors="replace")
    assert LOADED_OK in dmesg
    report = json.loads((dirs[0] / "report.json").read_text())
    assert GENERATORS[generator].panic_text in json.dumps(report)
    with open_dump(dirs[0] / "vmcore") as ours, open_dump(crash.raw_vmcore) as raw:
        assert ours.sub.dump_level == 31 and not ours.incomplete
        assert assert_pages_equal(ours, raw, only_dumpable_in=ours) == ours.count_dumpable()
