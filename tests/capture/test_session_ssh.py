"""SSH targets against a real OpenSSH server that the test starts on 127.0.0.1.

The server gets its own host key, authorized_keys and config in a temporary directory and
an unprivileged port; the client runs with ``StrictHostKeyChecking=no`` and
``UserKnownHostsFile=/dev/null``. A save streams the flattened format, which reassembles to
the source's pages; a connection killed mid-stream (the server's session processes, or the
local ssh client) leaves only ``vmcore.flat.incomplete`` on the server, which does not
reassemble, and the failure action runs.

Running sshd as root needs its privilege-separation directory ``/run/sshd`` (created here
when missing, as the openssh-server service does).
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import make_vmcore

from kdumpy.service import run_capture
from kdumpy.capture.targets import SshDirectory
from kdumpy.errors import DumpFormatError
from kdumpy.formats.flattened import reassemble
from kdumpy.dump import open_dump
from kdumpy.setup.actions import RecordedActions
from kdumpy.setup.config import parse_config
from kdumpy.setup.paths import SystemPaths

SSHD = "/usr/sbin/sshd"
NOW = time.strptime("2025-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")
CLIENT_OPTS = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.user = getpass.getuser()
        self.port = _free_port()
        self.key = base / "client_key"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        b = self.base
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(b / "host_key")],
                       check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)
        (b / "authorized_keys").write_text((b / "client_key.pub").read_text())
        os.chmod(b / "authorized_keys", 0o600)
        (b / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {b / 'host_key'}\n"
            f"AuthorizedKeysFile {b / 'authorized_keys'}\nPidFile {b / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nAllowUsers " + self.user + "\n"
            "LogLevel ERROR\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log = open(b / "sshd.log", "wb")  # noqa: SIM115 - open while sshd runs
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(b / "sshd_config")],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(b / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start listening")

    def descendants(self) -> list[int]:
        """Every process below the listening sshd: its per-connection sessions."""
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.proc.pid]
        while todo:
            for c in children.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} missing: install openssh-server (scripts/install-deps)",
                    pytrace=False)
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vmcore(tmp_path_factory):
    return make_vmcore(str(tmp_path_factory.mktemp("synth") / "vmcore"),
                       ram_pages=(1500, 3000, 800))


def config(sshd: Sshd, remote_dir: Path, extra: str = "") -> str:
    opts = ", ".join(json.dumps(o) for o in CLIENT_OPTS)
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{remote_dir}".replace(" ", "%20")
    return (f'[target]\nssh = "{url}"\nssh_key = "{sshd.key}"\nssh_options = [{opts}]\n'
            '[dump]\nlevel = 1\ncompression = "zstd"\n'
            '[actions]\nfinal = "reboot"\nfailure = "poweroff"\n' + extra)


def capture(cfg: str, vmcore, **kw):
    actions = RecordedActions()
    log: list[str] = []
    res = run_capture(parse_config(cfg), paths=SystemPaths("/"), vmcore=vmcore.path,
                      actions=actions, host="box", now=NOW, quiet=True, log=log.append, **kw)
    return res, actions, log


def test_ssh_save_streams_and_reassembles(sshd, vmcore, tmp_path):
    remote = tmp_path / "remote dir; touch pwned"      # a literal name, not shell syntax
    res, actions, log = capture(config(sshd, remote), vmcore)
    assert res.status == "complete", (res, log, (sshd.base / "sshd.log").read_text())
    assert actions.performed == ["reboot"]
    d = remote / "box-2025-03-04-05:06:07"
    assert sorted(os.listdir(d)) == ["dmesg.txt", "report.json", "vmcore.flat"]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert res.vmcore == (f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{d}/vmcore.flat")
    for p in (remote, d):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    for name in os.listdir(d):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600
    assert json.loads((d / "report.json").read_text())["kdumpy_capture"]["status"] == "complete"
    out = tmp_path / "vmcore"
    proc = subprocess.run([sys.executable, "-m", "kdumpy", "convert", str(d / "vmcore.flat"),
                           str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with open_dump(str(out)) as mem:
        assert not mem.incomplete
        for pfn, data in vmcore.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data


class KillAfterFirstBatch:
    """A progress object that cuts the connection once the first pages are on their way
    and the server has started writing the file."""

    def __init__(self, kill, remote_file_glob) -> None:
        self.kill = kill
        self.glob = remote_file_glob
        self.done = False

    def set_total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        if self.done:
            return
        self.done = True
        deadline = time.monotonic() + 20
        while not self.glob() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.glob(), "the stream never reached the server"
        self.kill()
        time.sleep(0.5)

    def close(self) -> None:
        pass


def _kill_server_sessions(sshd: Sshd) -> None:
    for pid in sshd.descendants():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_local_ssh_clients() -> None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(st.rsplit(")", 1)[1].split()[1]) == me and argv[0] == b"ssh" and \
                any(a.startswith(b"umask 077 && cat > ") for a in argv):
            os.kill(int(entry), signal.SIGKILL)


@pytest.mark.parametrize("who", ["server-session", "local-client"])
def test_ssh_connection_killed_mid_stream(sshd, vmcore, tmp_path, who):
    remote = tmp_path / "remote"
    kill = (lambda: _kill_server_sessions(sshd)) if who == "server-session" \
        else _kill_local_ssh_clients
    started = lambda: list(remote.glob("box-*/vmcore.flat.incomplete"))
    res, actions, _log = capture(config(sshd, remote), vmcore,
                                progress=KillAfterFirstBatch(kill, started))
    assert res.status in ("incomplete", "failed"), res
    assert actions.performed == ["poweroff"]                # the failure action ran
    d = remote / "box-2025-03-04-05:06:07"
    names = sorted(os.listdir(d))
    assert "vmcore.flat" not in names                       # nothing looks complete
    assert "vmcore.flat.incomplete" in names
    with open(d / "vmcore.flat.incomplete", "rb") as f, \
            open(tmp_path / "out", "wb") as out, pytest.raises(DumpFormatError):
        reassemble(f, out.fileno(), path="vmcore.flat.incomplete")
    assert res.to_json()["action"] == "poweroff"


def test_ssh_unreachable_runs_failure_action(vmcore, tmp_path):
    port = _free_port()                                     # nobody listens there
    cfg = (f'[target]\nssh = "ssh://nobody@127.0.0.1:{port}/x"\n'
           f'ssh_options = ["ConnectTimeout=3", "StrictHostKeyChecking=no", '
           f'"UserKnownHostsFile=/dev/null"]\n[actions]\nfailure = "halt"\n')
    res, actions, _ = capture(cfg, vmcore)
    assert res.status == "failed" and "not usable" in res.error
    assert actions.performed == ["halt"]


def test_ssh_directory_argv_quotes_remote_paths(tmp_path):
    d = SshDirectory("host.example", "/srv/crash $(reboot)", user="kdump", port=2222,
                     key="/root/.ssh/id", options=["StrictHostKeyChecking=yes"])
    argv = d.argv("true")
    assert argv[:1] == ["ssh"] and argv[-3:] == ["--", "host.example", "true"]
    assert ["-i", "/root/.ssh/id"] == argv[argv.index("-i"):argv.index("-i") + 2]
    assert "-l" in argv and argv[argv.index("-l") + 1] == "kdump"
    assert d.remote_path("a b") == "/srv/crash $(reboot)/a b"
    import shlex
    assert shlex.quote(d.remote_path("x")) == "'/srv/crash $(reboot)/x'"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_ssh_enospc_retries_at_the_next_level(sshd, tmp_path):
    """The server's disk fills: cat's "No space left on device" comes back as ENOSPC, the
    remote .incomplete is removed and the next level of the list is streamed."""
    core = make_vmcore(str(tmp_path / "vmcore"), ram_pages=(200, 1000, 200))
    remote = tmp_path / "remote"
    remote.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M,mode=0700", "tmpfs", str(remote)],
                   check=True)
    try:
        cfg = config(sshd, remote).replace('level = 1\ncompression = "zstd"',
                                           'level = [0, 1]\ncompression = "none"')
        res, actions, log = capture(cfg, core)
        assert res.status == "complete", (res, log)
        assert res.dump_level == 1 and actions.performed == ["reboot"]
        assert any("no space left at dump level 0" in n for n in res.notes)
        d = remote / "box-2025-03-04-05:06:07"
        assert sorted(os.listdir(d)) == ["dmesg.txt", "report.json", "vmcore.flat"]
        out = tmp_path / "vmcore.out"
        with open(d / "vmcore.flat", "rb") as f, open(out, "wb") as o:
            reassemble(f, o.fileno())
        with open_dump(str(out)) as mem:
            for pfn, data in core.pages.items():
                assert mem.read_pfn(pfn, zero_fill=True) == data
    finally:
        subprocess.run(["umount", "-l", str(remote)], check=False)
