"""The NFS target: a real nfs-ganesha (userspace NFSv4 server, VFS backend) on 127.0.0.1,
and kdumpy's mount path against the host's real ``mount``.

This machine's kernel has neither an NFS client nor nfsd (``/proc/filesystems`` lists no
``nfs``, and there are no modules to load), so the host cannot mount the export; the
capture kernel in the QEMU lab can (10.0.2.2 is this loopback). Here:

* the server side is proven with a userspace NFS client (libnfs' ``nfs-cat``/``nfs-cp``
  speaking NFSv4 over TCP): a real kdumpy dump in the export reads back byte for byte and
  opens whole, a file written through the server lands in the export; the server listens
  on 127.0.0.1 only;
* the capture session's NFS target runs the host's real ``mount -t nfs`` with kdump-tools'
  options; it fails on this kernel, is retried a bounded number of times, and the capture
  falls back to the local root filesystem (or runs the failure action) within a deadline.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import make_vmcore

from kdumpy.capture.targets import NFS_DEFAULT_OPTIONS, NFS_MOUNT_ATTEMPTS, NfsMount
from kdumpy.errors import KdumpyError
from kdumpy.dump import open_dump
from kdumpy.service import run_capture
from kdumpy.setup.actions import RecordedActions
from kdumpy.setup.config import parse_config
from kdumpy.setup.paths import SystemPaths
from lab.servers import Ganesha

NOW = time.strptime("2025-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def ganesha(tmp_path_factory):
    server = Ganesha(tmp_path_factory.mktemp("ganesha"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vmcore(tmp_path_factory):
    return make_vmcore(str(tmp_path_factory.mktemp("synth") / "vmcore"),
                       ram_pages=(1500, 3000, 800))


def nfs_url(server: Ganesha, name: str = "") -> str:
    return f"nfs://127.0.0.1{server.pseudo}/{name}?version=4&nfsport={server.port}"


def listening_addresses(port: int) -> set[str]:
    """Local addresses of TCP sockets listening on ``port`` (/proc/net/tcp{,6}, state 0A)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, _remote, st = line.split()[1:4]
                addr, p = local.rsplit(":", 1)
                if st == "0A" and int(p, 16) == port:
                    out.add(addr)
    return out


def test_ganesha_serves_a_kdumpy_dump_over_nfsv4(ganesha, vmcore, tmp_path):
    """A kdumpy dump in the export reads back whole through NFSv4; a file written through
    NFSv4 lands in the export. (Debian 12's libnfs 4.0 ``nfs-cp`` fails NFSv4 writes of
    4 KiB and more against ganesha 4.3 with "Failed to write to dest file", so the write
    direction is proven with a small file; the capture kernel's in-kernel client is the
    real writer.)"""
    # IPv4 127.0.0.1 (0100007F), or the same as an IPv4-mapped IPv6 address
    assert listening_addresses(ganesha.port)
    assert listening_addresses(ganesha.port) <= {"0100007F",
                                                 "0000000000000000FFFF00000100007F"}
    dump = ganesha.export / "vmcore"
    subprocess.run([sys.executable, "-m", "kdumpy", "save", "-d", "1", "-c", "zstd",
                    vmcore.path, str(dump)], check=True, capture_output=True)
    back = tmp_path / "back"
    with open(back, "wb") as out:
        proc = subprocess.run(["nfs-cat", nfs_url(ganesha, "vmcore")], stdout=out,
                              stderr=subprocess.PIPE, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert filecmp.cmp(dump, back, shallow=False)
    with open_dump(str(back)) as mem:
        assert not mem.incomplete
        for pfn, data in list(vmcore.pages.items())[::7]:
            assert mem.read_pfn(pfn) == data
    note = tmp_path / "note.txt"
    note.write_bytes(b"kdumpy over nfsv4\n" * 50)
    proc = subprocess.run(["nfs-cp", str(note), nfs_url(ganesha, "note.txt")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (ganesha.export / "note.txt").read_bytes() == note.read_bytes()
    ls = subprocess.run(["nfs-ls", nfs_url(ganesha)], capture_output=True, text=True,
                        timeout=30, check=True).stdout
    assert "vmcore" in ls and "note.txt" in ls


def test_mount_uses_kdump_tools_options_and_bounded_retries(tmp_path, ganesha):
    waits: list[float] = []
    m = NfsMount(f"127.0.0.1:{ganesha.pseudo}", str(tmp_path / "mnt"), f"port={ganesha.port}")
    m.sleep = waits.append
    assert m.argv()[:5] == ["mount", "-t", "nfs", "-o",
                            f"{NFS_DEFAULT_OPTIONS},port={ganesha.port}"]
    nfs_in_kernel = "\tnfs\n" in Path("/proc/filesystems").read_text()
    if nfs_in_kernel:   # a kernel with an NFS client mounts the export for real
        m.mount()
        try:
            assert os.path.ismount(tmp_path / "mnt")
        finally:
            m.umount()
        return
    with pytest.raises(KdumpyError, match=f"failed {NFS_MOUNT_ATTEMPTS} times"):
        m.mount()
    assert waits == [3.0] * (NFS_MOUNT_ATTEMPTS - 1)
    assert not m.mounted_here


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "failure-action"])
def test_nfs_target_unmountable_falls_back(ganesha, vmcore, tmp_path, fallback):
    root = tmp_path / "root"
    root.mkdir()
    cfg = (f'[target]\nnfs = "nfs://127.0.0.1{ganesha.pseudo}"\n'
           f'nfs_options = "port={ganesha.port}"\n'
           + ('fallback_path = "/var/crash"\n' if fallback else "")
           + '[dump]\nlevel = 1\ncompression = "zstd"\n[actions]\nfailure = "halt"\n')
    actions = RecordedActions()
    t0 = time.monotonic()
    res = run_capture(parse_config(cfg), paths=SystemPaths(str(root)), vmcore=vmcore.path,
                      actions=actions, host="box", now=NOW, quiet=True, log=lambda m: None)
    assert time.monotonic() - t0 < 60
    if "\tnfs\n" in Path("/proc/filesystems").read_text():   # a kernel that mounts NFS
        assert res.status == "complete" and res.fallback is None
        assert list(ganesha.export.glob("box-*/vmcore"))
        return
    if fallback:
        assert res.status == "complete" and res.fallback is not None
        assert res.fallback["from"] == "nfs://127.0.0.1:/crash"
        assert "failed 4 times" in res.fallback["error"]
        assert res.vmcore == str(root / "var/crash/box-2025-03-04-05:06:07/vmcore")
        assert actions.performed == ["reboot"]
    else:
        assert res.status == "failed" and "failed 4 times" in res.error
        assert actions.performed == ["halt"]
    assert not any(ganesha.export.glob("box-*"))
