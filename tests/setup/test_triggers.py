"""``[triggers]``: parsing and validation, ``kdumpy load`` writing /proc/sys/kernel, the
sysctl.d drop-in of ``kdumpy install``, and ``kdumpy status`` (all on a fake tree)."""

from __future__ import annotations

import json

import pytest
from fake_system import make_fake_system, system_initrd
from test_kexec_load import FakeRun, FakeSyscall

from kdumpy.cli import main
from kdumpy.setup import kexec as kexec_mod
from kdumpy.setup import triggers as trig
from kdumpy.setup.config import ConfigError, parse_config
from kdumpy.setup.paths import SystemPaths

#: The knobs a Debian amd64 kernel has under /proc/sys/kernel, with their boot values.
KERNEL_KNOBS = {"panic_on_oops": 0, "panic_on_warn": 0, "panic_on_taint": 0,
                "panic_on_taint_nousertaint": 0, "hardlockup_panic": 0, "softlockup_panic": 0,
                "unknown_nmi_panic": 0, "panic_on_unrecovered_nmi": 0, "sysrq": 438}


@pytest.fixture
def system(tmp_path):
    fs = make_fake_system(tmp_path, loaded=False)
    for name, value in KERNEL_KNOBS.items():
        fs.write(f"/proc/sys/kernel/{name}", f"{value}\n")
    return fs


@pytest.fixture
def fake_kernel(monkeypatch, system):
    fake = FakeSyscall(system.root)
    monkeypatch.setattr(kexec_mod, "libc_syscall", lambda: fake)
    monkeypatch.setattr(kexec_mod, "run_argv", FakeRun(system.root))
    return fake


def test_taint_flags_match_the_kernel():
    # include/linux/panic.h TAINT_* numbers and kernel/panic.c taint_flags[] letters
    assert [(b, c) for b, c, _n in trig.TAINT_FLAGS][:19] == list(enumerate(
        "PFSRMBUDAWCIOELKXTN"))
    assert trig.taint_bit("WARN") == 9 == trig.taint_bit("W") == trig.taint_bit("taint_warn")
    assert trig.taint_bit("TEST") == 18 and trig.taint_bit("9") == 9


@pytest.mark.parametrize("value, mask", [
    (0, 0), (512, 512), ('"0x220"', 0x220), ('["WARN", "BAD_PAGE"]', 0x220),
    ('"W,B"', 0x220), ('"MACHINE_CHECK DIE"', 0x90), ('[9, "U"]', 0x240),
])
def test_panic_on_taint_values(value, mask):
    cfg = parse_config(f"[triggers]\npanic_on_taint = {value}\n")
    assert cfg.triggers == {"panic_on_taint": mask}


def test_booleans_and_sysrq():
    cfg = parse_config("[triggers]\npanic_on_warn = true\npanic_on_oops = 1\nsysrq = 176\n"
                       "softlockup_panic = false\n")
    assert cfg.triggers == {"panic_on_warn": 1, "panic_on_oops": 1, "sysrq": 176,
                            "softlockup_panic": 0}
    assert parse_config("").triggers == {}


@pytest.mark.parametrize("text, message", [
    ("panic_on_warns = 1", ("x.toml: unknown key triggers.panic_on_warns (known in "
                            "[triggers]: panic_on_oops,")),
    ("panic_on_warn = 2", "x.toml: triggers.panic_on_warn: 2 is out of range (0-1)"),
    ("panic_on_warn = \"yes\"", ("x.toml: triggers.panic_on_warn: expected true/false or "
                                 "a number, not a string")),
    ("panic_on_taint = [\"WARNING\"]", ("x.toml: triggers.panic_on_taint: 'WARNING' is not "
                                        "a taint flag (names: PROPRIETARY_MODULE(P),")),
    ("panic_on_taint = 1048576", ("x.toml: triggers.panic_on_taint: mask 0x100000 has "
                                  "bits beyond the known taint flags")),
    ("panic_on_taint = []", "x.toml: triggers.panic_on_taint: no taint flags given"),
    ("sysrq = 512", "x.toml: triggers.sysrq: 512 is out of range (0-511)"),
])
def test_bad_values_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(f"[triggers]\n{text}\n", "x.toml")
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


def test_load_applies_triggers_after_loading(system, fake_kernel, capsys):
    cfg = system.write("/etc/kdumpy.toml", '[triggers]\npanic_on_warn = true\n'
                                           'panic_on_taint = ["USER", "W"]\n'
                                           'panic_on_taint_nousertaint = 1\nsysrq = 1\n')
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system), "--config", str(cfg),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["loaded"] is True and len(fake_kernel.calls) == 1
    assert d["triggers"] == {"panic_on_warn": {"before": 0, "after": 1},
                             "panic_on_taint": {"before": 0, "after": 0x240},
                             "panic_on_taint_nousertaint": {"before": 0, "after": 1},
                             "sysrq": {"before": 438, "after": 1}}
    assert system.read("/proc/sys/kernel/panic_on_warn") == "1\n"
    assert system.read("/proc/sys/kernel/panic_on_taint") == "576\n"
    assert system.read("/proc/sys/kernel/sysrq") == "1\n"
    assert system.read("/proc/sys/kernel/panic_on_oops") == "0\n"     # not configured


def test_load_text_output_and_dry_run(system, fake_kernel, capsys):
    cfg = system.write("/etc/kdumpy.toml", '[triggers]\npanic_on_taint = "D"\n')
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system), "--config", str(cfg),
                 "--dry-run"]) == 0
    assert "trigger  panic_on_taint = 0x80 (DIE)" in capsys.readouterr().out
    assert system.read("/proc/sys/kernel/panic_on_taint") == "0\n"
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system), "--config",
                 str(cfg)]) == 0
    assert "/proc/sys/kernel/panic_on_taint = 0x80 (DIE) (was 0x0)" in capsys.readouterr().out


def test_load_refuses_a_knob_the_kernel_lacks(system, fake_kernel, capsys):
    (system.root / "proc/sys/kernel/hardlockup_panic").unlink()
    cfg = system.write("/etc/kdumpy.toml", '[triggers]\nhardlockup_panic = 1\n'
                                           'panic_on_warn = 1\n')
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system), "--config",
                 str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "the running kernel has no /proc/sys/kernel/hardlockup_panic" in err
    assert err.count("\n") == 1
    assert fake_kernel.calls == []                   # refused before loading anything
    assert system.read("/proc/sys/kernel/panic_on_warn") == "0\n"


def test_apply_verifies_the_read_back(system, monkeypatch):
    paths = SystemPaths(str(system.root))
    real = trig.read_knob
    monkeypatch.setattr(trig, "read_knob", lambda p, n: 0 if n == "panic_on_warn"
                        else real(p, n))
    with pytest.raises(trig.TriggerError, match="wrote 1 to /proc/sys/kernel/panic_on_warn "
                                                "but it reads 0"):
        trig.apply(paths, {"panic_on_warn": 1})


def test_install_writes_and_removes_the_sysctl_dropin(tmp_path, capsys):
    cfg = tmp_path / "etc/kdumpy.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[triggers]\npanic_on_oops = 1\npanic_on_taint = ["W", "MACHINE_CHECK"]\n')
    assert main(["install", "--root", str(tmp_path), "--kdumpy", "/usr/bin/kdumpy"]) == 0
    dropin = tmp_path / "etc/sysctl.d/90-kdumpy.conf"
    text = dropin.read_text()
    assert "kernel.panic_on_oops = 1\n" in text and "kernel.panic_on_taint = 528\n" in text
    assert "# panic_on_taint: MACHINE_CHECK, WARN\n" in text
    assert f"wrote {dropin}" in capsys.readouterr().out
    cfg.write_text("[dump]\nkeep = 2\n")
    assert main(["install", "--root", str(tmp_path), "--kdumpy", "/usr/bin/kdumpy"]) == 0
    assert not dropin.exists()
    assert f"removed {dropin}" in capsys.readouterr().out


def test_install_rejects_a_bad_trigger(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text("[triggers]\nsysrq = -1\n")
    assert main(["install", "--root", str(tmp_path), "--config", str(cfg)]) == 1
    assert "triggers.sysrq: -1 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "etc/sysctl.d/90-kdumpy.conf").exists()


def test_status_shows_triggers(system, capsys):
    system.set_loaded(True)
    system.write("/proc/sys/kernel/panic_on_oops", "1\n")
    cfg = system.write("/etc/kdumpy.toml", '[triggers]\npanic_on_oops = 1\n'
                                           'panic_on_warn = 1\n')
    main(["status", "--root", str(system.root), "--config", str(cfg)])
    out = capsys.readouterr().out
    assert "[ok] triggers: panics on: panic_on_oops=1; sysrq=438" in out
    assert "[warning] triggers: not in force: panic_on_warn is 0, configured 1" in out
    main(["status", "--root", str(system.root), "--config", str(cfg), "--json"])
    facts = json.loads(capsys.readouterr().out)["facts"]["triggers"]
    assert facts["panic_on_warn"] == {"current": 0, "configured": 1}
    assert facts["panic_on_taint"] == {"current": 0, "configured": None}


def test_status_error_for_a_missing_knob(system, capsys):
    system.set_loaded(True)
    (system.root / "proc/sys/kernel/unknown_nmi_panic").unlink()
    cfg = system.write("/etc/kdumpy.toml", '[triggers]\nunknown_nmi_panic = 1\n')
    rc = main(["status", "--root", str(system.root), "--config", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 3
    assert ("[ERROR] triggers: configured but missing from this kernel: "
            "/proc/sys/kernel/unknown_nmi_panic") in out


# -- panic_on_taint without a sysctl (Debian 6.1): the boot parameter ---------------------------

def test_panic_on_taint_is_boot_only_when_the_sysctl_is_missing(system, fake_kernel, capsys):
    for n in trig.BOOT_ONLY:
        (system.root / f"proc/sys/kernel/{n}").unlink()
    cfg = system.write("/etc/kdumpy.toml", '[triggers]\npanic_on_taint = "U"\n'
                                           'panic_on_warn = 1\n')
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system), "--config",
                 str(cfg)]) == 1
    err = capsys.readouterr().err
    assert ("the running kernel has no /proc/sys/kernel/panic_on_taint: it is set at boot "
            "only; add panic_on_taint=40 to the kernel command line and reboot") in err
    assert fake_kernel.calls == []
    system.write("/proc/cmdline", system.read("/proc/cmdline").strip()
                 + " panic_on_taint=40\n")
    assert main(["load", "--root", str(system.root), "--arch", "x86_64", "--initrd",
                 system_initrd(system), "--config",
                 str(cfg), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["triggers"] == {"panic_on_warn": {"before": 0, "after": 1}}
    assert trig.status(SystemPaths(str(system.root)), {"panic_on_taint": 64})[
        "panic_on_taint"] == {"current": 64, "configured": 64}


def test_cmdline_taint_parsing(system):
    paths = SystemPaths(str(system.root))
    system.write("/proc/cmdline", "ro panic_on_taint=1 panic_on_taint=0x240,nousertaint\n")
    assert trig.cmdline_taint(paths) == (0x240, 1)
    assert trig.boot_param({"panic_on_taint": 0x240, "panic_on_taint_nousertaint": 1}) == \
        "panic_on_taint=240,nousertaint"


# -- early kdump --------------------------------------------------------------------------------

def test_install_initramfs_writes_hooks_and_status_reports_them(system, capsys):
    system.write("/usr/sbin/update-initramfs", "#!/bin/sh\n", 0o755)
    assert main(["install", "--root", str(system.root), "--kdumpy", "/usr/bin/kdumpy",
                 "--initramfs", "--arch", "x86_64"]) == 0
    out = capsys.readouterr().out
    assert "early kdump (initramfs-tools): update-initramfs -u" in out
    hook = system.read("/etc/initramfs-tools/hooks/kdumpy")
    assert "copy_exec \"$(command -v kexec" in hook and '"/boot/vmlinuz-$version"' in hook
    init_top = system.read("/etc/initramfs-tools/scripts/init-top/kdumpy")
    assert '*" rd.earlykdump "*)' in init_top and "kexec -s -p" in init_top
    conf = system.read("/etc/kdumpy/early.conf")
    assert "KDUMPY_CMDLINE='" in conf and "crashkernel" not in conf
    assert "rd.earlykdump" not in conf
    for p in ("/usr/lib/dracut/modules.d/99kdumpy-early/module-setup.sh",
              "/etc/initcpio/hooks/kdumpy-early"):
        assert system.exists(p)
    system.set_loaded(True)
    main(["status", "--root", str(system.root)])
    assert "early kdump: hook installed (initramfs-tools, dracut, mkinitcpio) but off" in \
        capsys.readouterr().out
    system.write("/proc/cmdline", system.read("/proc/cmdline").strip() + " rd.earlykdump\n")
    main(["status", "--root", str(system.root), "--json"])
    facts = json.loads(capsys.readouterr().out)["facts"]["early_kdump"]
    assert facts["active"] is True and facts["switch"] is True


def test_early_conf_survives_the_initramfs_shell(tmp_path):
    """early.conf is sourced by the initramfs' sh: any command line comes back unchanged."""
    import subprocess

    from kdumpy.setup import early
    line = "console=ttyS0 irqpoll it's \"quoted\" $HOME `x` \\ end"
    conf = tmp_path / "early.conf"
    conf.write_text(early.early_conf(line))
    out = subprocess.run(["/bin/sh", "-c", '. "$1"; printf %s "$KDUMPY_CMDLINE"', "sh",
                          str(conf)], capture_output=True, text=True, check=True).stdout
    assert out == line



def test_every_hook_file_parses_in_its_shell(tmp_path):
    """Each generator's hook is valid for the shell that runs it: POSIX sh (dash) for
    initramfs-tools and the dracut hook, bash for dracut's module-setup.sh and mkinitcpio's
    install file, ash-compatible sh for mkinitcpio's run hook."""
    import shutil
    import subprocess

    from kdumpy.setup import early
    for files in early.hook_files(["/opt/kdumpy/venv/bin/python", "-m", "kdumpy"]).values():
        for path, text in files:
            shell = "bash" if text.startswith("#!/bin/bash") else "sh"
            script = tmp_path / path.rsplit("/", 1)[1]
            script.write_text(text)
            r = subprocess.run([shutil.which(shell) or f"/bin/{shell}", "-n", str(script)],
                               capture_output=True, text=True)
            assert r.returncode == 0, (path, r.stderr)
