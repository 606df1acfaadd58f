"""The capture session (``kdumpy capture``) into local and (faked) NFS targets, on synthetic
vmcores: layout, modes, literal paths, hooks, retention, actions, the test id."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import make_vmcore

from kdumpy.service import CaptureSession, run_capture
from kdumpy.cli import main
from kdumpy.dump import open_dump
from kdumpy.setup.actions import RecordedActions, action_argv
from kdumpy.setup.config import parse_config
from kdumpy.setup.paths import SystemPaths

NOW = time.strptime("2025-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")
STAMP = "2025-03-04-05:06:07"


@pytest.fixture(scope="module")
def vmcore(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return make_vmcore(str(d / "vmcore"))


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def session(root: Path, config: str, vmcore, **kw):
    actions = RecordedActions()
    res = run_capture(parse_config(config), paths=SystemPaths(str(root)), vmcore=vmcore.path,
                      actions=actions, host="box", now=NOW, quiet=True,
                      log=kw.pop("log", lambda s: None), **kw)
    return res, actions


def test_layout_modes_and_literal_path(tmp_path, vmcore):
    """A target path with spaces and ';' is created literally; files 0600, dirs 0700."""
    target = "/var/crash/a b;touch pwned;c"
    res, actions = session(tmp_path, f'[target]\npath = "{target}"\n'
                                     '[dump]\nlevel = 1\ncompression = "zstd"\n'
                                     '[actions]\nfinal = "poweroff"\n', vmcore)
    assert res.status == "complete", res
    assert actions.performed == ["poweroff"]
    top = tmp_path / target.lstrip("/")
    assert top.is_dir() and not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    d = top / f"box-{STAMP}"
    assert res.dump_dir == str(d)
    assert sorted(os.listdir(d)) == ["dmesg.txt", "report.json", "vmcore"]
    assert res.files == ["dmesg.txt", "vmcore", "report.json"]          # dmesg first
    for p in (tmp_path / "var", tmp_path / "var/crash", top, d):
        assert mode(p) == 0o700, p
    for name in ("dmesg.txt", "report.json", "vmcore"):
        assert mode(d / name) == 0o600
    with open_dump(str(d / "vmcore")) as mem:
        assert not mem.incomplete
        for pfn, data in vmcore.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data
    report = json.loads((d / "report.json").read_text())
    assert report["kdumpy_capture"]["status"] == "complete"
    assert report["kernel"]["release"] == "6.1.0-synthetic-amd64"
    assert "kernel log not available" in (d / "dmesg.txt").read_text()
    last = json.loads((tmp_path / "var/lib/kdumpy/last-capture.json").read_text())
    assert last["status"] == "complete" and last["action"] == "poweroff"
    assert mode(tmp_path / "var/lib/kdumpy/last-capture.json") == 0o600


def test_elf_format(tmp_path, vmcore):
    res, _ = session(tmp_path, '[target]\npath = "/crash"\n[dump]\nlevel = 1\nformat = "elf"\n',
                     vmcore)
    assert res.status == "complete"
    with open_dump(res.vmcore) as mem:
        assert mem.format == "elf"


def test_test_id_is_recorded(tmp_path, vmcore, capsys):
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    assert main(["test", "--yes", "--root", str(tmp_path)]) == 1     # fake: no crash
    test_id = (tmp_path / "var/lib/kdumpy/test-id").read_text().strip()
    res, _ = session(tmp_path, '[target]\npath = "/var/crash"\n[dump]\nlevel = 1\n', vmcore)
    assert res.test_id == test_id
    report = json.loads(Path(res.dump_dir, "report.json").read_text())
    assert report["kdumpy_capture"]["test_id"] == test_id
    # consumed: a later real crash is not taken for this test
    assert not (tmp_path / "var/lib/kdumpy/test-id").exists()
    from kdumpy.setup.status import test_outcome
    out = test_outcome(SystemPaths(str(tmp_path)))
    assert out["test_id"] == test_id
    assert out["arrived"] and out["dump_dir"] == res.dump_dir
    again, _ = session(tmp_path, '[target]\npath = "/var/crash"\n[dump]\nlevel = 1\n', vmcore)
    assert again.test_id is None and test_outcome(SystemPaths(str(tmp_path))) is None


def test_hooks_argv_env_and_order(tmp_path, vmcore):
    log = tmp_path / "hooks.log"
    pre = tmp_path / "etc/kdumpy/pre.d"
    post = tmp_path / "etc/kdumpy/post.d"
    pre.mkdir(parents=True)
    post.mkdir(parents=True)
    for d, name in ((pre, "20-second"), (pre, "10-first"), (post, "50-post")):
        p = d / name
        p.write_text("#!/bin/sh\n"
                     f'printf "%s|%s|%s|%s\\n" "$(basename "$0")" "$1" "$2" '
                     f'"$KDUMPY_STATUS" >> "{log}"\n')
        p.chmod(0o700)
    (pre / "30-not-executable").write_text("#!/bin/sh\nexit 1\n")
    (pre / "40-editor-backup~").write_text("#!/bin/sh\nexit 1\n")
    (pre / "40-editor-backup~").chmod(0o700)
    res, _ = session(tmp_path, '[target]\npath = "/crash"\n[dump]\nlevel = 1\n', vmcore)
    assert res.status == "complete"
    lines = log.read_text().splitlines()
    assert lines[0] == f"10-first|{vmcore.path}||"
    assert lines[1] == f"20-second|{vmcore.path}||"
    assert lines[2] == f"50-post|complete|{res.dump_dir}|complete"


def test_failing_pre_hook_means_failure_action(tmp_path, vmcore):
    pre = tmp_path / "etc/kdumpy/pre.d"
    pre.mkdir(parents=True)
    (pre / "10-fail").write_text("#!/bin/sh\nexit 3\n")
    (pre / "10-fail").chmod(0o755)
    res, actions = session(tmp_path, '[target]\npath = "/crash"\n'
                                     '[actions]\nfailure = "halt"\n', vmcore)
    assert res.status == "failed"
    assert "pre hook" in res.error and "exit status 3" in res.error
    assert actions.performed == ["halt"]
    assert not (tmp_path / "crash").exists()


def test_retention_keeps_newest_of_this_host(tmp_path, vmcore):
    top = tmp_path / "crash"
    top.mkdir(mode=0o700)
    old = ["box-2024-01-01-00:00:00", "box-2024-06-01-00:00:00", "box-2025-01-01-00:00:00"]
    for name in [*old, "otherhost-2020-01-01-00:00:00", "notes"]:
        (top / name).mkdir()
        (top / name / "vmcore").write_text("x")
    res, _ = session(tmp_path, '[target]\npath = "/crash"\n[dump]\nlevel = 1\nkeep = 2\n',
                     vmcore)
    assert res.status == "complete"
    assert sorted(os.listdir(top)) == ["box-2025-01-01-00:00:00", f"box-{STAMP}", "notes",
                                       "otherhost-2020-01-01-00:00:00"]


def test_same_second_gets_a_new_directory(tmp_path, vmcore):
    cfg = '[target]\npath = "/crash"\n[dump]\nlevel = 1\n'
    a, _ = session(tmp_path, cfg, vmcore)
    b, _ = session(tmp_path, cfg, vmcore)
    assert a.dump_dir != b.dump_dir and b.dump_dir.endswith(f"box-{STAMP}-2")


def test_min_free_refuses_to_start(tmp_path, vmcore):
    res, actions = session(tmp_path, '[target]\npath = "/crash"\n'
                                     '[dump]\nmin_free = "1E"\n', vmcore)
    assert res.status == "failed" and "below the minimum of 1 EiB (dump.min_free)" in res.error
    assert actions.performed == ["reboot"]
    assert os.listdir(tmp_path / "crash") == []


def test_unreadable_vmcore_fails(tmp_path):
    from types import SimpleNamespace
    res, actions = session(tmp_path, '[target]\npath = "/crash"\n',
                           SimpleNamespace(path=str(tmp_path / "missing")))
    assert res.status == "failed" and actions.performed == ["reboot"]


def test_nfs_target_mounts_with_argv(tmp_path, vmcore):
    calls = []

    def fake_run(argv):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    res, _actions = session(tmp_path, '[target]\nnfs = "nfs://filer/export/crash dir"\n'
                                     'nfs_options = "vers=4.2,timeo=600"\n[dump]\nlevel = 1\n',
                           vmcore, run=fake_run)
    mnt = str(tmp_path / "run/kdumpy/nfs")
    assert calls[0] == ["mount", "-t", "nfs", "-o",
                        "nolock,tcp,soft,timeo=600,retrans=3,vers=4.2,timeo=600", "--",
                        "filer:/export/crash dir", mnt]
    assert calls[-1] == ["umount", "--", mnt]
    assert res.status == "complete" and res.dump_dir.startswith(mnt + "/box-")


def test_nfs_mount_failure_runs_failure_action(tmp_path, vmcore):
    def fake_run(argv):
        return subprocess.CompletedProcess(argv, 32, "", "mount.nfs: Connection refused\n")

    res, actions = session(tmp_path, '[target]\nnfs = "nfs://filer/export"\n'
                                     '[actions]\nfailure = "shell"\n', vmcore, run=fake_run)
    assert res.status == "failed"
    assert "mount filer:/export" in res.error and "Connection refused" in res.error
    assert actions.performed == ["shell"]


def test_cli_capture(tmp_path, vmcore, capsys):
    cfg = tmp_path / "kdumpy.toml"
    cfg.write_text('[target]\npath = "/crash"\n[dump]\nlevel = [31, 1]\n')
    rc = main(["capture", "--root", str(tmp_path), "--config", str(cfg), "--vmcore",
               vmcore.path, "--no-action", "--json", "-q"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["status"] == "complete" and d["action"] == "reboot"
    cfg.write_text("[dump]\nlevel = 77\n")
    rc = main(["capture", "--root", str(tmp_path), "--config", str(cfg), "--vmcore",
               vmcore.path, "--no-action"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "dump.level: 77 is out of range" in err and "would reboot now" in err
    cfg.write_text('[target]\npath = "/crash"\n[dump]\nmin_free = "1E"\n')
    rc = main(["capture", "--root", str(tmp_path), "--config", str(cfg), "--vmcore",
               vmcore.path, "--no-action"])
    assert rc == 4


def test_action_argv():
    assert action_argv("reboot", True) == ["systemctl", "--force", "reboot"]
    assert action_argv("poweroff", False) == ["poweroff", "-f", "-f"]
    assert action_argv("shell", True) == ["systemctl", "--no-block", "isolate",
                                          "emergency.target"]


def test_progress_and_log_lines(tmp_path, vmcore):
    lines = []
    sess = CaptureSession(parse_config('[target]\npath = "/c"\n[dump]\nlevel = 1\n'),
                          paths=SystemPaths(str(tmp_path)), vmcore=vmcore.path,
                          actions=RecordedActions(), log=lines.append, host="box", now=NOW,
                          quiet=True)
    sess.run_all()
    text = "\n".join(lines)
    assert "free; the dump needs about" in text
    assert "final action: reboot" in text


def test_session_on_a_real_dump(tmp_path, lab_crash):
    """The lab's real /proc/vmcore copy through the whole session: dmesg.txt holds the
    planted marker and the panic, report.json the panic, the vmcore reads back."""
    from types import SimpleNamespace
    res, _actions = session(tmp_path, '[target]\npath = "/var/crash"\n[dump]\nlevel = 31\n',
                           SimpleNamespace(path=str(lab_crash.raw_vmcore)))
    assert res.status == "complete", res
    d = Path(res.dump_dir)
    dmesg = (d / "dmesg.txt").read_bytes()
    assert lab_crash.marker.encode() in dmesg
    assert b"Kernel panic - not syncing: sysrq triggered crash" in dmesg
    report = json.loads((d / "report.json").read_text())
    assert "sysrq triggered crash" in (report.get("panic") or {}).get("message", "")
    with open_dump(str(d / "vmcore")) as mem:
        assert not mem.incomplete and mem.vmcoreinfo is not None
