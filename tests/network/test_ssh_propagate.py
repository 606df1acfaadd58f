"""``kdumpy propagate`` and the SSH target it prepares, against a real sshd on 127.0.0.1.

The administrator's session logs in with a bootstrap key (``--identity``; a password works
the same way through the terminal). After propagate, the capture session logs in with
kdumpy's own key and only the pinned host key (``StrictHostKeyChecking=yes``): the dump
arrives whole and reassembles to the source's pages. A server whose host key changed is
refused, and the failure action runs; a server that comes up a few seconds late is reached
through the bounded retries; ``ssh_target_findings`` (for ``kdumpy status``) reports the
key, the pin and the login without a crash.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import make_vmcore

from kdumpy.capture.targets import SshDirectory
from kdumpy.dump import open_dump
from kdumpy.service import run_capture
from kdumpy.setup.actions import RecordedActions
from kdumpy.setup.config import parse_config
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.propagate import ssh_target_findings
from lab.servers import Sshd

NOW = time.strptime("2025-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def vmcore(tmp_path_factory):
    return make_vmcore(str(tmp_path_factory.mktemp("synth") / "vmcore"),
                       ram_pages=(1500, 3000, 800))


class Site:
    """A fake root (/etc/kdumpy.toml), an sshd that knows only the admin's key, and the
    remote dump directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        (self.root / "etc").mkdir(parents=True)
        self.admin_key = tmp / "admin_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(self.admin_key)], check=True)
        self.sshd = Sshd(tmp / "sshd")
        self.sshd.authorized_keys.write_text((tmp / "admin_key.pub").read_text())
        self.remote = tmp / "remote"
        self.config = self.root / "etc/kdumpy.toml"
        self.config.write_text(
            f'[target]\nssh = "ssh://{self.sshd.user}@127.0.0.1:{self.sshd.port}'
            f'{self.remote}"\nssh_options = ["ConnectTimeout=5"]\n'
            '[dump]\nlevel = 1\ncompression = "zstd"\n'
            '[actions]\nfinal = "reboot"\nfailure = "poweroff"\n')

    def propagate(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kdumpy", "propagate", "--root", str(self.root),
             "--identity", str(self.admin_key), "--admin-known-hosts",
             str(self.tmp / "no-such-file"), "--authorized-keys",
             str(self.sshd.authorized_keys)], capture_output=True, text=True, timeout=120,
            check=False)

    def capture(self, vmcore, **kw):
        actions = RecordedActions()
        log: list[str] = []
        res = run_capture(parse_config(self.config.read_text()),
                          paths=SystemPaths(str(self.root)), vmcore=vmcore.path,
                          actions=actions, host="box", now=NOW, quiet=True, log=log.append,
                          **kw)
        return res, actions, log

    def findings(self):
        cfg = parse_config(self.config.read_text())
        return ssh_target_findings(cfg.target, key=str(self.root / "etc/kdumpy/ssh/id_ed25519"),
                                   known_hosts=str(self.root / "etc/kdumpy/ssh/known_hosts"),
                                   timeout=10)


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    s.sshd.start()
    yield s
    s.sshd.stop()


def test_propagate_then_capture_with_pinned_key(site, vmcore, tmp_path):
    assert site.findings()[0][0] == "error"           # nothing set up yet
    proc = site.propagate()
    assert proc.returncode == 0, proc.stderr
    key = site.root / "etc/kdumpy/ssh/id_ed25519"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key.parent).st_mode) == 0o700
    pub = " ".join((site.root / "etc/kdumpy/ssh/id_ed25519.pub").read_text().split()[:2])
    assert pub.startswith("ssh-ed25519 ")
    known = (site.root / "etc/kdumpy/ssh/known_hosts").read_text()
    assert f"[127.0.0.1]:{site.sshd.port} {site.sshd.host_public_key()}" in known
    assert sum(pub in ln for ln in site.sshd.authorized_keys.read_text().splitlines()) == 1
    assert "SHA256:" in proc.stderr                     # fingerprints shown to the admin
    # again: nothing duplicated
    assert site.propagate().returncode == 0
    assert sum(pub in ln for ln in site.sshd.authorized_keys.read_text().splitlines()) == 1
    assert known.count(site.sshd.host_public_key()) == 1
    assert [f[0] for f in site.findings()] == ["ok"]

    res, actions, log = site.capture(vmcore)
    assert res.status == "complete", (res, log)
    assert actions.performed == ["reboot"]
    d = site.remote / "box-2025-03-04-05:06:07"
    assert sorted(os.listdir(d)) == ["dmesg.txt", "report.json", "vmcore.flat"]
    out = tmp_path / "vmcore"
    subprocess.run([sys.executable, "-m", "kdumpy", "convert", str(d / "vmcore.flat"),
                    str(out)], check=True, capture_output=True)
    with open_dump(str(out)) as mem:
        for pfn, data in vmcore.pages.items():
            assert mem.read_pfn(pfn) == data


def test_changed_host_key_is_refused(site, vmcore):
    assert site.propagate().returncode == 0
    site.sshd.stop()
    for f in ("host_key", "host_key.pub"):
        (site.sshd.base / f).unlink()
    site.sshd.start()                                   # same port, a new host key
    res, actions, log = site.capture(vmcore)
    assert res.status == "failed", (res, log)
    assert "host key" in res.error.lower() or "verification failed" in res.error.lower(), res
    assert actions.performed == ["poweroff"]
    assert not list(site.remote.glob("box-*"))
    sev, detail, fix = site.findings()[0]
    assert sev == "error" and fix == "kdumpy propagate"


def test_server_up_late_is_reached_by_retries(site, vmcore):
    assert site.propagate().returncode == 0
    site.sshd.stop()
    restart = threading.Timer(2.5, site.sshd.start)
    restart.start()
    try:
        t0 = time.monotonic()
        res, actions, log = site.capture(vmcore)
    finally:
        restart.join()
    assert res.status == "complete", (res, log)
    assert time.monotonic() - t0 < 60


def test_status_findings_without_a_crash(site):
    assert site.propagate().returncode == 0
    key = site.root / "etc/kdumpy/ssh/id_ed25519"
    os.chmod(key, 0o644)
    assert "chmod 600" in site.findings()[0][2]
    os.chmod(key, 0o600)
    site.sshd.stop()
    t0 = time.monotonic()
    sev, detail, _ = site.findings()[0]
    assert sev == "error" and "ssh://" in detail
    assert time.monotonic() - t0 < 90                   # bounded retries


def test_retries_are_bounded():
    d = SshDirectory("127.0.0.1", "/x", port=1, options=["ConnectTimeout=2"], attempts=4,
                     retry_for=100)
    waits: list[float] = []
    d.sleep = waits.append
    with pytest.raises(OSError):
        d.check()
    assert waits == [1.0, 2.0, 4.0]
