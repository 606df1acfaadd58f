"""status, install, estimate and test against fake system trees."""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_system import RELEASE, bzimage, make_fake_system, with_capture_image

from kdumpy.cli import main
from kdumpy.setup.estimate import estimate, initramfs_unpacked_size, kernel_runtime_size
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.status import collect
from kdumpy.setup.units import exec_line, systemd_quote

M, G = 1 << 20, 1 << 30


def status(root, capsys, *extra):
    rc = main(["status", "--root", str(root), "--arch", "x86_64", *extra])
    return rc, capsys.readouterr().out


# -- status -----------------------------------------------------------------------------------

def test_operational(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    rc, out = status(fs.root, capsys)
    assert rc == 0, out
    assert out.startswith("kdump is operational")
    assert "256 MiB reserved (0x2b000000-0x3affffff)" in out
    rc, out = status(fs.root, capsys, "--json")
    d = json.loads(out)
    assert d["operational"] is True
    assert d["facts"]["crash_size"] == 256 * M
    assert d["facts"]["kernel_config"]["CONFIG_KEXEC_FILE"] == "y"
    assert d["facts"]["ram"]["source"] == "/proc/iomem System RAM"


def test_not_reserved_explains_why(tmp_path, capsys):
    fs = make_fake_system(tmp_path, reserved=0,
                          cmdline="root=/dev/vda crashkernel=1G-2G:128M")   # RAM is 16G
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "[ERROR] reservation: no memory reserved" in out
    assert "no range covers RAM 16.0 GiB" in out
    assert "fix: kdumpy estimate --apply" in out
    fs.write("/proc/cmdline", "root=/dev/vda crashkernel=256Mx\n")
    rc, out = status(fs.root, capsys)
    assert 'crashkernel: unrecognized char: x' in out
    fs.write("/proc/cmdline", "root=/dev/vda\n")
    rc, out = status(fs.root, capsys)
    assert "no crashkernel= on the kernel command line" in out


def test_not_loaded(tmp_path, capsys):
    fs = make_fake_system(tmp_path, loaded=False)
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "[ERROR] loaded: no capture kernel is loaded" in out
    assert "fix: kdumpy load" in out


def test_kernel_config_problems(tmp_path, capsys):
    fs = make_fake_system(tmp_path, config={"CONFIG_KEXEC": "y", "CONFIG_RELOCATABLE": "y"})
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "[ERROR] CONFIG_CRASH_DUMP" in out and "[ERROR] CONFIG_PROC_VMCORE" in out
    assert "[warning] CONFIG_KEXEC_FILE: no kexec_file_load" in out


def test_kernel_config_from_boot(tmp_path, capsys):
    fs = make_fake_system(tmp_path, config=None)
    with_capture_image(fs)
    rc, out = status(fs.root, capsys)
    assert "kernel support not checked" in out and rc == 0
    from fake_system import GOOD_CONFIG
    fs.set_config(GOOD_CONFIG, where="boot")
    st = collect(SystemPaths(str(fs.root)), arch="x86_64")
    assert st.facts["kernel_config_source"] == f"/boot/config-{RELEASE}"


def test_secure_boot_and_lockdown(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    fs.set_secure_boot(True)
    fs.set_lockdown("integrity")
    fs.write("/run/kdumpy/loaded.json", json.dumps({"method": "kexec_load"}))
    rc, out = status(fs.root, capsys)
    assert "Secure Boot on, lockdown integrity" in out
    assert "[warning] secure boot" in out
    d = collect(SystemPaths(str(fs.root)), arch="x86_64").facts
    assert (d["secure_boot"], d["lockdown"]) == (True, "integrity")
    fs.set_config({"CONFIG_KEXEC": "y", "CONFIG_CRASH_DUMP": "y", "CONFIG_PROC_VMCORE": "y"})
    rc, out = status(fs.root, capsys)
    assert rc == 3 and "[ERROR] secure boot" in out


def test_hotplug(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    _, out = status(fs.root, capsys)
    assert "the kdumpy udev rule does it" in out
    fs.set_hotplug(1)
    _rc, out = status(fs.root, capsys)
    assert "crash_hotplug=1): no reload needed" in out


def test_bad_config_is_an_error(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    fs.write("/etc/kdumpy.toml", "[dump]\nlevel = 99\n")
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "dump.level: 99 is out of range" in out


def test_small_reservation_warns(tmp_path, capsys):
    fs = make_fake_system(tmp_path, reserved=64 * M)
    with_capture_image(fs)
    rc, out = status(fs.root, capsys)
    assert rc == 0
    assert "[warning] reservation size: 64 MiB reserved" in out


# -- kdumpy test, then status after the "reboot" ----------------------------------------------

def test_test_then_status(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    assert main(["test", "--yes", "--root", str(fs.root)]) == 1    # the fake kernel survives
    err = capsys.readouterr()
    assert "the kernel did not crash" in err.out
    assert fs.read("/proc/sysrq-trigger") == "c"
    test_id = fs.read("/var/lib/kdumpy/test-id").strip()
    assert stat.S_IMODE(os.stat(fs.root / "var/lib/kdumpy/test-id").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(fs.root / "var/lib/kdumpy").st_mode) == 0o700
    _, out = status(fs.root, capsys)
    assert f"[ok] test: {test_id}: written, no crash since" in out
    # the machine rebooted (btime later than the id) without a capture
    fs.write("/proc/stat", f"btime {int(os.stat(fs.root / 'var/lib/kdumpy/test-id').st_mtime) + 60}\n")
    _, out = status(fs.root, capsys)
    assert f"[warning] test: {test_id}: no dump arrived" in out
    # the capture session recorded it
    fs.write("/var/lib/kdumpy/last-capture.json",
             json.dumps({"status": "complete", "test_id": test_id, "dump_dir": "/var/crash/x"}))
    _rc, out = status(fs.root, capsys)
    assert f"[ok] test: {test_id}: the dump arrived in /var/crash/x" in out


def test_test_refuses_when_not_loaded_or_not_confirmed(tmp_path, capsys, monkeypatch):
    fs = make_fake_system(tmp_path, loaded=False)
    assert main(["test", "--yes", "--root", str(fs.root)]) == 1
    assert "no capture kernel is loaded" in capsys.readouterr().err
    assert not fs.exists("/proc/sysrq-trigger")
    fs.set_loaded(True)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["test", "--root", str(fs.root)]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert not fs.exists("/proc/sysrq-trigger") and not fs.exists("/var/lib/kdumpy/test-id")


# -- install ----------------------------------------------------------------------------------

def test_install_writes_units(tmp_path, capsys):
    assert main(["install", "--root", str(tmp_path), "--kdumpy", "'/opt/my kdumpy/bin/kdumpy'"]) == 0
    load = (tmp_path / "etc/systemd/system/kdumpy.service").read_text()
    save = (tmp_path / "etc/systemd/system/kdumpy-save.service").read_text()
    rule = (tmp_path / "etc/udev/rules.d/98-kdumpy.rules").read_text()
    assert 'ExecStart="/opt/my kdumpy/bin/kdumpy" load\n' in load
    assert 'ExecStop="/opt/my kdumpy/bin/kdumpy" unload' in load
    assert "After=local-fs.target" in load and "ConditionPathExists=!/proc/vmcore" in load
    assert "WantedBy=multi-user.target" in load
    assert 'ExecStart="/opt/my kdumpy/bin/kdumpy" capture\n' in save
    assert "ConditionPathExists=/proc/vmcore" in save and "FailureAction=reboot-force" in save
    assert "SuccessExitStatus=4" in save
    assert 'ATTRS{crash_hotplug}=="1", GOTO="kdumpy_end"' in rule
    assert "try-reload-or-restart kdumpy.service" in rule
    for p in ("etc/systemd/system/kdumpy.service", "etc/udev/rules.d/98-kdumpy.rules"):
        assert stat.S_IMODE(os.stat(tmp_path / p).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "etc/kdumpy.toml").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "etc/kdumpy/pre.d").st_mode) == 0o700
    out = capsys.readouterr().out
    assert "wrote" in out and "systemctl daemon-reload" in out
    # the kernel hooks build a new kernel's capture image, through the same command
    post = (tmp_path / "etc/kernel/postinst.d/50-kdumpy").read_text()
    assert "'/opt/my kdumpy/bin/kdumpy' rebuild --kernel \"$1\" || \\\n" in post
    plugin = (tmp_path / "etc/kernel/install.d/50-kdumpy.install").read_text()
    assert "add)" in plugin and "remove)" in plugin and "rebuild --kernel" in plugin
    assert 'rm -f "/var/lib/kdumpy/capture-$1.img"' in (
        tmp_path / "etc/kernel/postrm.d/50-kdumpy").read_text()
    import subprocess
    for p in ("etc/kernel/postinst.d/50-kdumpy", "etc/kernel/postrm.d/50-kdumpy",
              "etc/kernel/install.d/50-kdumpy.install"):
        assert stat.S_IMODE(os.stat(tmp_path / p).st_mode) == 0o755
        assert subprocess.run(["sh", "-n", str(tmp_path / p)]).returncode == 0
    # a second install keeps the admin's config
    (tmp_path / "etc/kdumpy.toml").write_text("[dump]\nkeep = 2\n")
    assert main(["install", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "etc/kdumpy.toml").read_text() == "[dump]\nkeep = 2\n"
    assert "kept  " + str(tmp_path / "etc/kdumpy.toml") in capsys.readouterr().out
    # by default the units run this interpreter by absolute path, not a PATH lookup
    load = (tmp_path / "etc/systemd/system/kdumpy.service").read_text()
    assert f"ExecStart={os.path.abspath(sys.executable)} -m kdumpy load\n" in load
    assert "TimeoutStartSec=" in load


def test_systemd_quoting():
    assert systemd_quote("/usr/bin/kdumpy") == "/usr/bin/kdumpy"
    assert systemd_quote("a b") == '"a b"'
    assert systemd_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert systemd_quote("100%") == "100%%"
    assert systemd_quote("$HOME") == "$$HOME"
    assert exec_line(["/usr/bin/python3", "-m", "kdumpy"]) == "/usr/bin/python3 -m kdumpy"


# -- estimate ---------------------------------------------------------------------------------

def newc(entries: list[tuple[str, bytes]]) -> bytes:
    out = bytearray()
    for i, (name, data) in enumerate([*entries, ("TRAILER!!!", b"")]):
        nm = name.encode() + b"\0"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + nm
        out += hdr + b"\0" * (-len(hdr) % 4) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def test_initramfs_unpacked_size(tmp_path):
    early = newc([("kernel/x86/microcode/GenuineIntel.bin", b"u" * 1000)])
    main_cpio = newc([("init", b"#!/bin/sh\n"), ("big", os.urandom(300_000) + bytes(700_000))])
    p = tmp_path / "initrd"
    p.write_bytes(early + b"\0" * 512 + gzip.compress(main_cpio))
    size, how = initramfs_unpacked_size(str(p))
    assert how == "unpacked cpio size"
    assert size == len(early) + len(main_cpio)
    import zstandard
    p.write_bytes(zstandard.ZstdCompressor().compress(main_cpio))
    assert initramfs_unpacked_size(str(p))[0] == len(main_cpio)
    p.write_bytes(b"\x04\x22\x4d\x18" + b"?" * 100)           # lz4: not decoded, 4x its size
    assert initramfs_unpacked_size(str(p)) == (104 * 4, "cpio size + 4 x compressed remainder")


def test_kernel_runtime_size(tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(bzimage(init_size=50 * M, size=1 * M))
    assert kernel_runtime_size(str(k)) == (50 * M, "bzImage init_size")
    k.write_bytes(b"\x7fELF" + bytes(1000))
    assert kernel_runtime_size(str(k)) == (4 * 1004, "4 x image size")


def test_estimate_recommends_default_or_more(tmp_path):
    k = tmp_path / "vmlinuz"
    k.write_bytes(bzimage(init_size=40 * M, size=1 * M))
    e = estimate(16 * G, kernel=str(k), initrd=None, arch="x86_64")
    assert e.recommended == "2G-64G:256M,64G-:512M" and e.recommended_size == 256 * M
    assert e.needed <= 256 * M and e.needed % (32 * M) == 0
    e = estimate(1 * G, kernel=str(k), initrd=None, arch="x86_64")   # the default gives 0
    assert e.recommended == f"{e.needed >> 20}M"
    assert "reserves nothing" in e.notes[0]
    big = tmp_path / "initrd"
    with open(big, "wb") as f:
        f.truncate(80 * M)                                       # sparse; quick reads its size
    e = estimate(16 * G, kernel=str(k), initrd=str(big), arch="x86_64", quick=True)
    assert e.recommended_size == e.needed > 256 * M


def test_estimate_apply_writes_grub_dropin(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    assert main(["estimate", "--root", str(fs.root), "--arch", "x86_64", "--apply"]) == 1
    assert "no GRUB found" in capsys.readouterr().err
    fs.write("/etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    assert main(["estimate", "--root", str(fs.root), "--arch", "x86_64", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "recommended: crashkernel=2G-64G:256M,64G-:512M" in out
    assert "current: crashkernel=2G-64G:256M,64G-:512M reserves 256 MiB" in out
    drop = fs.read("/etc/default/grub.d/kdumpy.cfg")
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=2G-64G:256M,' \
           '64G-:512M"' in drop
    assert main(["estimate", "--root", str(fs.root), "--arch", "x86_64", "--json",
                 "--ram", "1G"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ram"] == G and d["recommended"].endswith("M") and ":" not in d["recommended"]
