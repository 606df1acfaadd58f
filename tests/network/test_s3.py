"""The S3 target against a real SeaweedFS (``weed server -s3``) on 127.0.0.1.

A capture streams the flattened dump as a multipart upload (16 MiB parts, so the synthetic
~60 MiB dump takes several) next to ``dmesg.txt`` and ``report.json``; the object read back
reassembles to the source's pages. Failures end in the failure action, or in the local
fallback when ``fallback_path`` is set, within a deadline, and never leave a ``vmcore.flat``
object: the server down, credentials refused, and the server killed (SIGKILL of its whole
process group) halfway through the upload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import make_vmcore

from kdumpy.capture.s3 import PART_SIZE, parse_s3_url, read_credentials
from kdumpy.errors import KdumpyError
from kdumpy.dump import open_dump
from kdumpy.service import run_capture
from kdumpy.setup import state
from kdumpy.setup.actions import RecordedActions
from kdumpy.setup.config import ConfigError, parse_config
from kdumpy.setup.paths import SystemPaths
from lab.servers import SeaweedS3, free_port

NOW = time.strptime("2025-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")
DUMP_DIR = "box-2025-03-04-05:06:07"
#: a failed capture reaches its action within this (retries and timeouts are bounded)
DEADLINE = 90.0


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        server.make_bucket("crash")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vmcore(tmp_path_factory):
    # ~57 MiB of pages stored raw at dump level 0: more than three 16 MiB parts
    return make_vmcore(str(tmp_path_factory.mktemp("synth") / "vmcore"),
                       ram_pages=(6000, 6000, 2000))


def root_with_credentials(tmp_path: Path, server: SeaweedS3, secret: str | None = None) -> Path:
    root = tmp_path / "root"
    (root / "etc/kdumpy").mkdir(parents=True)
    server.credentials_file(root / "etc/kdumpy/s3-credentials", secret_key=secret)
    return root


def config(endpoint: str, *, prefix: str = "fleet/a", extra: str = "") -> str:
    return (f'[target]\ns3 = "s3://crash/{prefix}"\ns3_endpoint = "{endpoint}"\n'
            's3_region = "us-east-1"\ns3_credentials = "/etc/kdumpy/s3-credentials"\n'
            + extra +
            '[dump]\nlevel = 0\ncompression = "none"\n'
            '[actions]\nfinal = "reboot"\nfailure = "poweroff"\n')


def capture(cfg: str, root: Path, vmcore, **kw):
    actions = RecordedActions()
    log: list[str] = []
    t0 = time.monotonic()
    res = run_capture(parse_config(cfg), paths=SystemPaths(str(root)), vmcore=vmcore.path,
                      actions=actions, host="box", now=NOW, quiet=True, log=log.append, **kw)
    return res, actions, log, time.monotonic() - t0


def keys(server: SeaweedS3, prefix: str) -> dict[str, int]:
    return {o.object_name: o.size for o in
            server.client().list_objects("crash", prefix=prefix, recursive=True)}


def test_s3_save_multipart_pages_match(seaweed, vmcore, tmp_path):
    root = root_with_credentials(tmp_path, seaweed)
    res, actions, log, _ = capture(config(seaweed.endpoint), root, vmcore)
    assert res.status == "complete", (res, log)
    assert actions.performed == ["reboot"]
    base = f"fleet/a/{DUMP_DIR}"
    assert res.vmcore == f"s3://crash/{base}/vmcore.flat"
    objs = keys(seaweed, "fleet/a/")
    assert sorted(objs) == [f"{base}/dmesg.txt", f"{base}/report.json", f"{base}/vmcore.flat"]
    assert objs[f"{base}/vmcore.flat"] > 3 * PART_SIZE
    # a multipart object's ETag is the MD5 of the parts' MD5s, suffixed with the part count
    st = seaweed.client().stat_object("crash", f"{base}/vmcore.flat")
    assert st.etag.rsplit("-", 1)[-1] == str(-(-objs[f"{base}/vmcore.flat"] // PART_SIZE))
    report = json.loads(seaweed.client().get_object("crash", f"{base}/report.json").read())
    assert report["kdumpy_capture"]["status"] == "complete"
    flat = tmp_path / "vmcore.flat"
    seaweed.client().fget_object("crash", f"{base}/vmcore.flat", str(flat))
    out = tmp_path / "vmcore"
    proc = subprocess.run([sys.executable, "-m", "kdumpy", "convert", str(flat), str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with open_dump(str(out)) as mem:
        assert not mem.incomplete
        for pfn, data in vmcore.pages.items():
            assert mem.read_pfn(pfn) == data
    assert state.read_last_capture(SystemPaths(str(root)))["status"] == "complete"


def test_s3_server_down_falls_back_to_local(seaweed, vmcore, tmp_path):
    root = root_with_credentials(tmp_path, seaweed)
    down = f"http://127.0.0.1:{free_port()}"                 # nobody listens there
    res, actions, log, took = capture(
        config(down, extra='fallback_path = "/var/crash"\n'), root, vmcore)
    assert took < DEADLINE
    assert res.status == "complete", (res, log)
    assert res.fallback is not None and res.fallback["from"].startswith("s3://crash/fleet/a")
    assert "unreachable" in res.fallback["error"]
    assert res.vmcore == str(root / "var/crash" / DUMP_DIR / "vmcore")
    with open_dump(res.vmcore) as mem:
        assert all(mem.read_pfn(p) == d for p, d in list(vmcore.pages.items())[:500])
    recorded = state.read_last_capture(SystemPaths(str(root)))
    assert recorded["fallback"]["from"] == res.fallback["from"]
    assert any("saving to /var/crash instead" in n for n in recorded["notes"])
    assert actions.performed == ["reboot"]


def test_s3_server_down_without_fallback_runs_failure_action(vmcore, tmp_path, seaweed):
    root = root_with_credentials(tmp_path, seaweed)
    res, actions, _log, took = capture(config(f"http://127.0.0.1:{free_port()}"), root, vmcore)
    assert took < DEADLINE
    assert res.status == "failed" and "unreachable" in res.error and res.fallback is None
    assert actions.performed == ["poweroff"]


def test_s3_wrong_credentials(seaweed, vmcore, tmp_path):
    root = root_with_credentials(tmp_path, seaweed, secret="not-the-secret")
    res, actions, _log, took = capture(config(seaweed.endpoint, prefix="wrong"), root, vmcore)
    assert took < DEADLINE
    assert res.status == "failed" and "refused the credentials" in res.error, res
    assert actions.performed == ["poweroff"]
    assert keys(seaweed, "wrong/") == {}


class KillWhenHalfway:
    """A progress object that SIGKILLs the server once ~70 % of the pages were produced: the
    bounded queue (8 MiB) means the uploader has by then sent at least one whole part."""

    def __init__(self, server: SeaweedS3, total_pages: int) -> None:
        self.server = server
        self.total = total_pages
        self.seen = 0
        self.killed_at: float | None = None

    def set_total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        self.seen += n
        if self.killed_at is None and self.seen >= 0.7 * self.total:
            self.server.kill()
            self.killed_at = time.monotonic()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fallback", [False, True], ids=["failure-action", "fallback"])
def test_s3_server_killed_mid_stream(vmcore, tmp_path, fallback):
    server = SeaweedS3(tmp_path / "seaweed")
    try:
        server.start()
        server.make_bucket("crash")
        root = root_with_credentials(tmp_path, server)
        kill = KillWhenHalfway(server, len(vmcore.pages))
        extra = 'fallback_path = "/var/crash"\n' if fallback else ""
        res, actions, log, _ = capture(config(server.endpoint, extra=extra), root, vmcore,
                                       progress=kill)
        assert kill.killed_at is not None, "the dump finished before the kill"
        assert time.monotonic() - kill.killed_at < DEADLINE
        if fallback:
            assert res.status == "complete" and res.fallback is not None, (res, log)
            assert res.fallback["status"] in ("incomplete", "failed")
            assert os.path.exists(root / "var/crash" / DUMP_DIR / "vmcore")
            assert actions.performed == ["reboot"]
        else:
            assert res.status in ("incomplete", "failed"), (res, log)
            assert actions.performed == ["poweroff"]
        # the same server back on its data: no dump object, whole or partial
        server.stop()
        server.start()
        objs = keys(server, "fleet/a/")
        assert f"fleet/a/{DUMP_DIR}/dmesg.txt" in objs     # written before the vmcore
        assert not any("vmcore" in k for k in objs), objs
    finally:
        server.stop()


def test_credentials_file_must_be_private(tmp_path):
    p = tmp_path / "creds"
    p.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    os.chmod(p, 0o644)
    with pytest.raises(KdumpyError, match="chmod 600"):
        read_credentials(str(p))
    os.chmod(p, 0o600)
    assert read_credentials(str(p)).secret_key == "b"
    p.write_text("[other]\naws_access_key_id = a\n")
    with pytest.raises(KdumpyError, match=r"no \[default\] section"):
        read_credentials(str(p))


def test_s3_url_and_config_validation():
    assert parse_s3_url("s3://crash/a//b/").prefix == "a/b"
    assert parse_s3_url("s3://crash").key("x/y") == "x/y"
    for bad in ("s3://UPPER/x", "s3://a/x", "http://crash/x", "s3://crash/../x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)
    with pytest.raises(ConfigError, match="needs target.s3_credentials"):
        parse_config('[target]\ns3 = "s3://crash/x"\ns3_endpoint = "http://h:1"\n')
    with pytest.raises(ConfigError, match="s3_endpoint"):
        parse_config('[target]\ns3 = "s3://crash/x"\ns3_endpoint = "ftp://h"\n'
                     's3_credentials = "/c"\n')
    with pytest.raises(ConfigError, match="fallback_path: only applies"):
        parse_config('[target]\npath = "/var/crash"\nfallback_path = "/x"\n')


def test_status_findings_for_s3_and_the_fallback(seaweed, vmcore, tmp_path):
    from kdumpy.setup.target_status import network_target_findings
    root = root_with_credentials(tmp_path, seaweed)
    paths = SystemPaths(str(root))
    good = parse_config(config(seaweed.endpoint))
    assert [f[0] for f in network_target_findings(good, paths)] == ["ok"]
    down = parse_config(config(f"http://127.0.0.1:{free_port()}",
                               extra='fallback_path = "/var/crash"\n'))
    t0 = time.monotonic()
    sev, what, detail, _fix = network_target_findings(down, paths)[0]
    assert (sev, what) == ("error", "s3 target") and "unreachable" in detail
    assert time.monotonic() - t0 < 60
    # a capture that fell back: status says so after the reboot
    res, _actions, _log, _ = capture(config(f"http://127.0.0.1:{free_port()}",
                                            extra='fallback_path = "/var/crash"\n'), root, vmcore)
    assert res.fallback is not None
    last = network_target_findings(good, paths)[-1]
    assert last[0] == "warning" and last[1] == "last capture"
    assert "went to the local fallback" in last[2] and str(root / "var/crash") in last[2]
    bad = root_with_credentials(tmp_path / "bad", seaweed, secret="nope")
    sev, _what, detail, _ = network_target_findings(good, SystemPaths(str(bad)))[0]
    assert sev == "error" and "refused the credentials" in detail
