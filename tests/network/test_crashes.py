"""``kdumpy crashes``: real lab crashes of three kinds, grouped into three signatures.

The crashes are the lab's service captures (``report.json`` written in the capture kernel):
sysrq-c, a WARN() with ``panic_on_warn``, and ``panic_on_taint``. They are browsed as a local
directory, over SSH (the host's sshd on 127.0.0.1) and in an S3 bucket (SeaweedFS on
127.0.0.1); browsing the bucket reads only the ``report.json`` objects. Across the two kernel
releases the lab covers, the same kind of crash gets the same signature.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdumpy.analysis.crash_index import (
    entry_from_report,
    group_entries,
    index_store,
    normalise_panic,
    trace_frames,
)
from kdumpy.capture.s3 import S3Directory, S3Location, make_client, read_credentials
from lab.servers import SeaweedS3, Sshd

KINDS = {   # fixture -> (panic line, the innermost frames of the bug)
    "lab_service_crash": ("Kernel panic - not syncing: sysrq triggered crash",
                          ["sysrq_handle_crash", "__handle_sysrq", "write_sysrq_trigger"]),
    "lab_warn_crash": ("Kernel panic - not syncing: kernel: panic_on_warn set ...",
                       ["kdumpy_warn_init [kdumpy_warn]", "do_one_initcall",
                        "do_init_module"]),
    "lab_taint_crash": ("Kernel panic - not syncing: panic_on_taint set ...",
                        ["proc_taint", "proc_sys_call_handler", "vfs_write"]),
}


def service_dump_dir(crash) -> Path:
    dirs = [p for p in (crash.directory / "service").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def fleet(tmp_path: Path, crashes: dict[str, object], *, vmcore: bool = True) -> Path:
    """A target directory holding each crash's dump directory under a distinct host name
    (report.json and dmesg.txt copied, the vmcore hard-linked or copied)."""
    root = tmp_path / "fleet"
    for i, (name, crash) in enumerate(crashes.items()):
        src = service_dump_dir(crash)
        dst = root / f"{name}-{src.name}"
        dst.mkdir(parents=True)
        for f in ("report.json", "dmesg.txt"):
            shutil.copy(src / f, dst / f)
        if vmcore:
            try:
                os.link(src / "vmcore", dst / "vmcore")
            except OSError:
                shutil.copy(src / "vmcore", dst / "vmcore")
    return root


@pytest.fixture(scope="session")
def three_kinds(lab_service_crash, lab_warn_crash, lab_taint_crash):
    return {"lab_service_crash": lab_service_crash, "lab_warn_crash": lab_warn_crash,
            "lab_taint_crash": lab_taint_crash}


def check_groups(groups: list[dict], release: str | None = None, per_group: int = 1) -> None:
    assert len(groups) == 3, [g["panic"] for g in groups]
    found = {g["panic"]: g for g in groups}
    for panic, frames in KINDS.values():
        g = found[normalise_panic(panic)]
        assert g["count"] == per_group
        assert g["frames"] == frames
        times = [d["time"] for d in g["dumps"]]
        assert times == sorted(times, reverse=True)
        for d in g["dumps"]:
            assert d["panic"] == panic and d["host"] == "vm"
            if release:
                assert d["release"] == release
    newest = [g["newest"] for g in groups]
    assert newest == sorted(newest, reverse=True)


def run_crashes(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "kdumpy", "crashes", *args, "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_crashes_local_three_kinds(three_kinds, lab_release, tmp_path):
    out = run_crashes(str(fleet(tmp_path, three_kinds)))
    assert out["dumps"] == 3
    check_groups(out["groups"], lab_release)
    text = subprocess.run([sys.executable, "-m", "kdumpy", "crashes",
                           str(tmp_path / "fleet")], capture_output=True, text=True,
                          check=True).stdout
    assert text.startswith("3 dumps, 3 signatures\n")
    assert "sysrq_handle_crash < __handle_sysrq < write_sysrq_trigger" in text


@pytest.mark.lab
def test_crashes_same_kind_same_signature_across_releases(tmp_path):
    """Both releases' crashes of each kind in one target: 6 dumps, 3 signatures of 2."""
    from lab.corpus import DEFAULT_CRASHKERNEL, crash_for, releases

    crashes = {}
    for release in releases():
        for name, (loader, trigger) in {"lab_service_crash": ("kdumpy", "sysrq"),
                                        "lab_warn_crash": ("kdumpy", "warn"),
                                        "lab_taint_crash": ("kdumpy", "taint")}.items():
            opts = {"loader": loader, "capture_steps": ("raw", "service")}
            if trigger != "sysrq":
                opts["trigger"] = trigger
            crashes[f"{name}-{release}"] = crash_for(release, DEFAULT_CRASHKERNEL, **opts)
    rels = releases()
    out = run_crashes(str(fleet(tmp_path, crashes, vmcore=False)))
    assert out["dumps"] == 3 * len(rels)
    check_groups(out["groups"], per_group=len(rels))
    for g in out["groups"]:
        assert sorted(d["release"] for d in g["dumps"]) == sorted(rels)


def test_crashes_in_a_bucket_read_only_reports(three_kinds, lab_release, tmp_path):
    server = SeaweedS3(tmp_path / "seaweed")
    try:
        server.start()
        server.make_bucket("crash")
        client = server.client()
        root = fleet(tmp_path, three_kinds)
        for p in sorted(root.rglob("*")):
            if p.is_file():
                name = "vmcore.flat" if p.name == "vmcore" else p.name
                client.fput_object("crash", f"fleet/{p.parent.name}/{name}", str(p))
        creds = server.credentials_file(tmp_path / "creds")
        store = S3Directory(S3Location("crash", "fleet"),
                            make_client(server.endpoint, read_credentials(str(creds))),
                            endpoint=server.endpoint)
        reads: list[str] = []
        real_get = store.get
        store.get = lambda rel: (reads.append(rel), real_get(rel))[1]   # type: ignore
        groups = [g.__dict__ | {"dumps": [d.__dict__ for d in g.dumps]}
                  for g in group_entries(index_store(store))]
        check_groups(groups, lab_release)
        assert len(reads) == 3 and all(r.endswith("/report.json") for r in reads), reads
        # the same through the command line
        out = run_crashes("s3://crash/fleet", "--s3-endpoint", server.endpoint,
                          "--s3-credentials", str(creds))
        check_groups(out["groups"], lab_release)
        assert all(d["location"].startswith("s3://crash/fleet/")
                   for g in out["groups"] for d in g["dumps"])
    finally:
        server.stop()


def test_crashes_over_ssh(three_kinds, lab_release, tmp_path):
    sshd = Sshd(tmp_path / "sshd")
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshd.authorized_keys.parent.mkdir(parents=True, exist_ok=True)
    sshd.authorized_keys.write_text((tmp_path / "id.pub").read_text())
    try:
        sshd.start()
        root = fleet(tmp_path, three_kinds, vmcore=False)
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_public_key()}\n")
        out = run_crashes(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{root}",
                          "--ssh-key", str(key), "-o", f"UserKnownHostsFile={known}",
                          "-o", "StrictHostKeyChecking=yes")
        check_groups(out["groups"], lab_release)
    finally:
        sshd.stop()


def test_signature_parts():
    lines = ["[ 1.0] Call Trace:", "[ 1.0]  <TASK>", "[ 1.0]  dump_stack_lvl+0x44/0x5c",
             "[ 1.0]  panic+0x118/0x2f4", "[ 1.0]  ? _printk+0x68/0x83",
             "[ 1.0]  sysrq_handle_crash+0x16/0x20", "[ 1.0]  __handle_sysrq.cold+0x44/0x11c",
             "[ 1.0]  write_sysrq_trigger+0x24/0x40", "[ 1.0]  </TASK>",
             "[ 1.0]  not_a_frame+0x1/0x2"]
    assert trace_frames(lines) == ["sysrq_handle_crash", "__handle_sysrq",
                                   "write_sysrq_trigger"]
    assert normalise_panic("Kernel panic - not syncing: Attempted to kill init! "
                           "exitcode=0x00000100 pid 42 at ffffffff81234567") == \
        "Kernel panic - not syncing: Attempted to kill init! exitcode=0x? pid N at ADDR"
    a = entry_from_report("a", {"panic": {"message": "Oops pid 1"}})
    b = entry_from_report("b", {"panic": {"message": "Oops pid 2"}})
    assert a.signature == b.signature and a.frames == []
