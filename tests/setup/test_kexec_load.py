"""load/unload against a fake /sys and /proc, with kexec_file_load and kexec-tools faked."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_block import fake_target_system
from fake_system import RELEASE, make_fake_system, system_initrd

from kdumpy.cli import main
from kdumpy.setup import kexec as kexec_mod
from kdumpy.setup.kexec import (
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
    Kexec,
    KexecError,
)
from kdumpy.setup.paths import SystemPaths


class FakeSyscall:
    """Records kexec_file_load calls; optionally fails with an errno; on success flips the
    fake /sys/kernel/kexec_crash_loaded as the kernel would."""

    def __init__(self, root: Path, fail: int | None = None, fail_unload: int | None = None):
        self.root = root
        self.fail = fail
        self.fail_unload = fail_unload
        self.calls: list[dict] = []

    def __call__(self, nr, kernel_fd, initrd_fd, cmdline_len, cmdline, flags):
        call = {"nr": nr, "flags": flags, "cmdline_len": cmdline_len, "cmdline": cmdline,
                "kernel": os.readlink(f"/proc/self/fd/{kernel_fd}") if kernel_fd >= 0 else None,
                "initrd": os.readlink(f"/proc/self/fd/{initrd_fd}") if initrd_fd >= 0 else None}
        self.calls.append(call)
        unload = bool(flags & KEXEC_FILE_UNLOAD)
        err = self.fail_unload if unload else self.fail
        if err:
            raise OSError(err, os.strerror(err))
        (self.root / "sys/kernel/kexec_crash_loaded").write_text("0\n" if unload else "1\n")


class FakeRun:
    def __init__(self, root: Path, rc: int = 0, stderr: str = ""):
        self.root, self.rc, self.stderr = root, rc, stderr
        self.argvs: list[list[str]] = []

    def __call__(self, argv):
        self.argvs.append(list(argv))
        if self.rc == 0:
            loaded = "0\n" if "-u" in argv else "1\n"
            (self.root / "sys/kernel/kexec_crash_loaded").write_text(loaded)
        return subprocess.CompletedProcess(argv, self.rc, "", self.stderr)


@pytest.fixture
def system(tmp_path):
    return make_fake_system(tmp_path, loaded=False)


def test_file_load_arguments(system):
    fake = FakeSyscall(system.root)
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64", syscall=fake,
               run=FakeRun(system.root))
    kernel = str(system.root / f"boot/vmlinuz-{RELEASE}")
    initrd = str(system.root / f"boot/initrd.img-{RELEASE}")
    res = kx.load(kernel, initrd, "root=/dev/vda irqpoll")
    assert res.method == "kexec_file_load"
    (c,) = fake.calls
    assert c["nr"] == 320
    assert c["flags"] == KEXEC_FILE_ON_CRASH
    assert c["cmdline"] == b"root=/dev/vda irqpoll\0"
    assert c["cmdline_len"] == len(b"root=/dev/vda irqpoll") + 1      # the NUL counts
    assert (c["kernel"], c["initrd"]) == (kernel, initrd)
    rec = json.loads((system.root / "run/kdumpy/loaded.json").read_text())
    assert rec["method"] == "kexec_file_load"
    assert oct((system.root / "run/kdumpy/loaded.json").stat().st_mode & 0o777) == "0o600"


def test_no_initramfs_flag(system):
    fake = FakeSyscall(system.root)
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64", syscall=fake)
    kx.load(str(system.root / f"boot/vmlinuz-{RELEASE}"), None, "x")
    assert fake.calls[0]["flags"] == KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS
    assert fake.calls[0]["initrd"] is None


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.ENOEXEC, errno.EKEYREJECTED, errno.EPERM])
def test_fallback_to_kexec_tools(system, err):
    fake = FakeSyscall(system.root, fail=err)
    run = FakeRun(system.root)
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64", syscall=fake, run=run)
    kernel = str(system.root / f"boot/vmlinuz-{RELEASE}")
    initrd = str(system.root / f"boot/initrd.img-{RELEASE}")
    res = kx.load(kernel, initrd, "root=/dev/vda; rm -rf /", lockdown="none")
    assert res.method == "kexec_load"
    assert run.argvs == [["kexec", "-p", "--kexec-syscall", f"--initrd={initrd}",
                          "--append=root=/dev/vda; rm -rf /", kernel]]
    assert "falling back to kexec-tools" in res.notes[0]
    # unload the same way: kexec-tools, not the syscall
    assert kx.unload() == "kexec_load"
    assert run.argvs[-1] == ["kexec", "-p", "-u", "--kexec-syscall"]
    assert len(fake.calls) == 1
    assert not (system.root / "run/kdumpy/loaded.json").exists()


def test_no_fallback_under_lockdown(system):
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64",
               syscall=FakeSyscall(system.root, fail=errno.EPERM), run=FakeRun(system.root))
    with pytest.raises(KexecError, match="no fallback under lockdown \\(integrity\\)"):
        kx.load(str(system.root / f"boot/vmlinuz-{RELEASE}"), None, "x", lockdown="integrity")


def test_no_fallback_for_other_errors_or_file_only(system):
    paths = SystemPaths(str(system.root))
    kernel = str(system.root / f"boot/vmlinuz-{RELEASE}")
    kx = Kexec(paths, arch="x86_64", syscall=FakeSyscall(system.root, fail=errno.ENOMEM))
    with pytest.raises(KexecError, match="do not fit in the crashkernel= reservation"):
        kx.load(kernel, None, "x")
    kx = Kexec(paths, arch="x86_64", syscall=FakeSyscall(system.root, fail=errno.ENOSYS))
    with pytest.raises(KexecError, match="CONFIG_KEXEC_FILE is off"):
        kx.load(kernel, None, "x", method="kexec_file_load")


def test_kexec_tools_failure_message(system):
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64",
               syscall=FakeSyscall(system.root, fail=errno.ENOSYS),
               run=FakeRun(system.root, rc=1, stderr="Could not find a free area\n"))
    with pytest.raises(KexecError, match="exit 1\\): Could not find a free area"):
        kx.load(str(system.root / f"boot/vmlinuz-{RELEASE}"), None, "x")


def test_unload_file_load(system):
    fake = FakeSyscall(system.root)
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64", syscall=fake)
    kx.load(str(system.root / f"boot/vmlinuz-{RELEASE}"), None, "x")
    assert kx.unload() == "kexec_file_load"
    c = fake.calls[-1]
    assert c["flags"] == KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH
    assert (c["kernel"], c["initrd"], c["cmdline"], c["cmdline_len"]) == (None, None, None, 0)


def test_missing_image(system):
    kx = Kexec(SystemPaths(str(system.root)), arch="x86_64", syscall=FakeSyscall(system.root))
    with pytest.raises(KexecError, match="kernel image not found"):
        kx.load(str(system.root / "boot/nope"), None, "x")


# -- the commands -----------------------------------------------------------------------------

@pytest.fixture
def fake_kernel(monkeypatch, system):
    fake = FakeSyscall(system.root)
    run = FakeRun(system.root)
    monkeypatch.setattr(kexec_mod, "libc_syscall", lambda: fake)
    monkeypatch.setattr(kexec_mod, "run_argv", run)
    return fake, run


def test_cli_load_and_unload(system, fake_kernel, capsys):
    fake, _ = fake_kernel
    root = str(system.root)
    fake_target_system(system.root, RELEASE)
    assert main(["load", "--root", root, "--arch", "x86_64"]) == 0
    out = capsys.readouterr().out
    assert "with kexec_file_load" in out
    # the capture image did not exist: load built it, and boots the capture kernel with it
    image = system.root / f"var/lib/kdumpy/capture-{RELEASE}.img"
    assert f"rebuilt the capture image {image}" in out
    assert fake.calls[0]["initrd"] == str(image)
    cmd = fake.calls[0]["cmdline"].decode().rstrip("\0")
    assert "crashkernel" not in cmd and "quiet" not in cmd and "hugepages" not in cmd
    assert "BOOT_IMAGE" not in cmd and "root=" not in cmd and "systemd.unit" not in cmd
    assert cmd.startswith("ro irqpoll nr_cpus=1")
    assert fake.calls[0]["kernel"] == str(system.root / f"boot/vmlinuz-{RELEASE}")
    assert main(["status", "--root", root, "--arch", "x86_64"]) == 0
    assert "capture kernel loaded with kexec_file_load" in capsys.readouterr().out
    # a second load finds the image current
    assert main(["load", "--root", root, "--arch", "x86_64"]) == 0
    assert "rebuilt" not in capsys.readouterr().out
    assert main(["unload", "--root", root, "--arch", "x86_64"]) == 0
    assert fake.calls[-1]["flags"] == KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH
    assert main(["status", "--root", root, "--arch", "x86_64"]) == 3


def test_cli_load_lab_style_flags(system, fake_kernel, tmp_path, capsys):
    """What the QEMU lab runs: explicit kernel, initrd and exact command line."""
    fake, _ = fake_kernel
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"k")
    i = tmp_path / "initrd"
    i.write_bytes(b"i")
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--kernel", str(k),
                 "--initrd", str(i), "--cmdline", "console=ttyS0 nr_cpus=1",
                 "--append", "kdumpy.lab=1", "--method", "file", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "kexec_file_load" and d["loaded"] is True
    assert fake.calls[0]["cmdline"] == b"console=ttyS0 nr_cpus=1 kdumpy.lab=1\0"
    assert (fake.calls[0]["kernel"], fake.calls[0]["initrd"]) == (str(k), str(i))


def test_cli_load_dry_run(system, fake_kernel, capsys):
    fake, _ = fake_kernel
    cfg = system.write("/etc/kdumpy.toml", '[load]\ncmdline_append = "console=ttyS1"\n'
                                           'method = "kexec_load"\n')
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--dry-run",
                 "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "console=ttyS1" in out and "kexec_load" in out
    assert fake.calls == []


def test_cli_load_refuses_without_reservation(system, fake_kernel, capsys):
    system.set_reserved(0)
    assert main(["load", "--root", str(system.root), "--arch", "x86_64"]) == 1
    assert "no memory is reserved" in capsys.readouterr().err


def test_cli_load_error_is_one_line(system, monkeypatch, capsys):
    monkeypatch.setattr(kexec_mod, "libc_syscall",
                        lambda: FakeSyscall(system.root, fail=errno.EKEYREJECTED))
    monkeypatch.setattr(kexec_mod, "run_argv", FakeRun(system.root, rc=255,
                                                       stderr="kexec_load failed: Operation "
                                                              "not permitted\n"))
    system.set_lockdown("none")
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kexec-tools load failed (exit 255)" in err
