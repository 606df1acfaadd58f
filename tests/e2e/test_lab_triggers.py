"""The ``[triggers]`` section in the lab: ``kdumpy load --config`` writes every knob to
/proc/sys/kernel in the guest (each read back by the guest's /init before the crash), and a
panic that is not sysrq-c -- here ``panic_on_taint`` with the USER flag written to
/proc/sys/kernel/tainted -- is captured like sysrq-c.

Facts relied on:

* add_taint() sets the flag, then panics with "panic_on_taint set ..." when the flag is in
  ``panic_on_taint`` (kernel/panic.c); proc_taint() passes a userspace write on unless
  ``panic_on_taint_nousertaint`` is set.
* panic() prints "Kernel panic - not syncing: <message>" into the printk ring buffer before
  crash_kexec(), so the dump's kernel log ends with it.

A WARN() with ``panic_on_warn`` comes from a one-line module (:mod:`lab.warn_module`):
the Debian 6.1 kernel has no module-free way to provoke a WARN from userspace (no
CONFIG_FAULT_INJECTION, CONFIG_FUNCTION_ERROR_INJECTION or CONFIG_LKDTM).
"""

from __future__ import annotations

from kdumpy.analysis import format_dmesg, read_kernel_log
from lab.run import TRIGGERS
from kdumpy.dump import open_dump
from kdumpy.setup.triggers import BOOT_ONLY


def test_every_trigger_round_tripped_config_to_proc_sys(lab_taint_crash):
    meta = lab_taint_crash.meta
    assert meta["trigger"] == "taint"
    assert lab_taint_crash.directory.name.endswith("-service-taint")
    # panic_on_taint has no sysctl on Debian 6.1: the boot parameter sets it, and
    # kdumpy load accepted the matching panic_on_taint= on /proc/cmdline
    want = {k: str(v) for k, v in TRIGGERS["taint"].config if k not in BOOT_ONLY}
    assert meta["triggers_read_back"] == want
    assert "panic_on_taint=40" in meta["first_cmdline"].split()
    assert meta["exit_status"]["triggers"] == 0
    assert meta["kexec_mode"] == "kdumpy-file"
    out = (lab_taint_crash.directory / "kdumpy-load.log").read_text()
    assert '"panic_on_warn": {' in out and '"sysrq": {' in out


def test_taint_panic_is_in_the_dump(lab_taint_crash):
    with open_dump(lab_taint_crash.raw_vmcore) as mem:
        text = format_dmesg(read_kernel_log(mem)).decode("utf-8", "replace")
    assert lab_taint_crash.marker in text
    tail = text[text.index(lab_taint_crash.marker):]
    assert TRIGGERS["taint"].panic_text in tail
    assert "sysrq triggered crash" not in tail


def test_service_captured_the_taint_panic(lab_taint_crash):
    dirs = sorted((lab_taint_crash.directory / "service").glob("*-*"))
    assert len(dirs) == 1, dirs
    names = sorted(p.name for p in dirs[0].iterdir())
    assert names == ["dmesg.txt", "report.json", "vmcore"], names
    dmesg = (dirs[0] / "dmesg.txt").read_text(errors="replace")
    assert TRIGGERS["taint"].panic_text in dmesg
    with open_dump(dirs[0] / "vmcore") as mem:
        log = format_dmesg(read_kernel_log(mem)).decode("utf-8", "replace")
    assert TRIGGERS["taint"].panic_text in log


def test_warn_with_panic_on_warn_is_captured(lab_warn_crash):
    """A WARN() (from lab.warn_module's module) with panic_on_warn=1, set through the
    [triggers] config by kdumpy load, panics the kernel and the capture service saves it."""
    from lab.warn_module import WARN_TEXT

    assert lab_warn_crash.meta["triggers_read_back"].get("panic_on_warn") == "1"
    with open_dump(lab_warn_crash.raw_vmcore) as mem:
        text = format_dmesg(read_kernel_log(mem)).decode(errors="replace")
    assert WARN_TEXT in text
    assert "WARNING: CPU:" in text
    # check_panic_on_warn(origin) prints "<origin>: panic_on_warn set ..." on 6.1,
    # "panic_on_warn set ..." on older kernels
    panic_lines = [ln for ln in text.splitlines() if "Kernel panic - not syncing:" in ln]
    assert panic_lines and "panic_on_warn set" in panic_lines[-1], panic_lines
    dumps = sorted((lab_warn_crash.directory / "service").glob("*/vmcore"))
    assert dumps, "the capture service saved no dump"
    dmesg = (dumps[0].parent / "dmesg.txt").read_text(errors="replace")
    assert "panic_on_warn set" in dmesg
