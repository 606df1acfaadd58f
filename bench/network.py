#!/usr/bin/env python3
"""Network targets side by side: kdumpy -> SSH and S3 against kdump-tools' way
(``makedumpfile -F | ssh host 'cat > FILE'``), on the same real lab vmcore.

Usage: ``python bench/network.py [VMCORE] [--repeat N] [--level 31] [--json FILE]``

The servers are the test suite's (:mod:`lab.servers`): an sshd and SeaweedFS's S3 gateway on
127.0.0.1, so the "network" is loopback (no NIC limit: the numbers compare the tools'
producing and streaming, and the servers' cost of taking the stream). Rows, each the
median of ``--repeat`` runs (tools alternating):

* ``makedumpfile | ssh``: ``makedumpfile -F -l -d LEVEL VMCORE | ssh ... 'cat > F'``;
* ``kdumpy save | ssh``: ``kdumpy save -f flat -c lzo -d LEVEL VMCORE - | ssh ...``, the same
  pipe with kdumpy producing;
* ``kdumpy capture -> ssh``: the capture service to an ssh target (dmesg.txt, the streamed
  vmcore.flat with the remote rename, report.json);
* ``kdumpy capture -> s3``: the capture service to ``s3://`` (multipart upload);
* ``kdumpy save (local)``: a local kdump-compressed file, for reference.

Ratios are makedumpfile|ssh time / row time (above 1: faster than kdump-tools' way). Default
input: the lab's 256M crash of the first cached release. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
SRC = str(HERE / "src")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def timed(argv: list[str], cleanup) -> float:
    cleanup()
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    took = time.perf_counter() - t0
    if proc.returncode not in (0,):
        raise RuntimeError(f"{argv[:3]}... exit {proc.returncode}: {proc.stderr[-500:]}")
    return took


def main() -> int:
    from lab.servers import SeaweedS3, Sshd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmcore", nargs="?")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--level", type=int, default=31)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    vmcore = args.vmcore or sorted(glob.glob(os.path.expanduser(
        "~/.cache/kdumpy/lab/*/crash-256M/vmcore.raw")))[0]
    work = Path(tempfile.mkdtemp(prefix="kdumpy-bench-net-"))
    sshd, s3 = Sshd(work / "sshd"), SeaweedS3(work / "s3")
    try:
        key = work / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        (work / "sshd").mkdir(exist_ok=True)
        sshd.authorized_keys.write_text((work / "id.pub").read_text())
        sshd.start()
        s3.start()
        s3.make_bucket("bench")
        remote = work / "remote"
        remote.mkdir()
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", str(key),
               "-p", str(sshd.port), f"{sshd.user}@127.0.0.1"]
        sink = shlex.join(ssh + [f"cat > {remote}/stream.flat"])
        root = work / "root"
        (root / "etc/kdumpy").mkdir(parents=True)
        s3.credentials_file(root / "etc/kdumpy/s3")
        (root / "etc/kdumpy/ssh").mkdir(mode=0o700)
        shutil.copy(key, root / "etc/kdumpy/ssh/id_ed25519")   # kdumpy's default key
        common = (f'[dump]\nlevel = {args.level}\ncompression = "lzo"\n'
                  '[actions]\nfinal = "reboot"\nfailure = "reboot"\n')
        opts = ", ".join(json.dumps(o) for o in ("StrictHostKeyChecking=no",
                                                 "UserKnownHostsFile=/dev/null",
                                                 "LogLevel=ERROR"))
        ssh_cfg = root / "ssh.toml"
        ssh_cfg.write_text(f'[target]\nssh = "ssh://{sshd.user}@127.0.0.1:{sshd.port}'
                           f'{remote}/svc"\nssh_options = [{opts}]\n'
                           + common)
        s3_cfg = root / "s3.toml"
        s3_cfg.write_text(f'[target]\ns3 = "s3://bench/fleet"\ns3_endpoint = "{s3.endpoint}"\n'
                          's3_credentials = "/etc/kdumpy/s3"\n' + common)
        py = sys.executable

        def clean_remote() -> None:
            shutil.rmtree(remote, ignore_errors=True)
            remote.mkdir()
            shutil.rmtree(root / "var", ignore_errors=True)

        def clean_s3() -> None:
            c = s3.client()
            for o in c.list_objects("bench", prefix="fleet/", recursive=True):
                c.remove_object("bench", o.object_name)
            shutil.rmtree(root / "var", ignore_errors=True)

        def clean_local() -> None:
            for p in work.glob("local.kdump*"):
                p.unlink()

        capture = [py, "-m", "kdumpy", "capture", "--root", str(root), "--vmcore", vmcore,
                   "--no-action", "-q", "--config"]
        rows = {
            "makedumpfile | ssh": (["sh", "-c", f"makedumpfile -F -l -d {args.level} "
                                                f"{shlex.quote(vmcore)} | {sink}"], clean_remote),
            "kdumpy save | ssh": (["sh", "-c", f"{shlex.quote(py)} -m kdumpy save -q -f flat "
                                               f"-c lzo -d {args.level} {shlex.quote(vmcore)} - "
                                               f"| {sink}"], clean_remote),
            "kdumpy capture -> ssh": (capture + [str(ssh_cfg)], clean_remote),
            "kdumpy capture -> s3": (capture + [str(s3_cfg)], clean_s3),
            "kdumpy save (local)": ([py, "-m", "kdumpy", "save", "-q", "-c", "lzo", "-d",
                                     str(args.level), vmcore, str(work / "local.kdump")],
                                    clean_local),
        }
        subprocess.run(["cat", vmcore], stdout=subprocess.DEVNULL, check=True)  # warm cache
        times: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(args.repeat):
            for name, (argv, cleanup) in rows.items():
                times[name].append(timed(argv, cleanup))
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["makedumpfile | ssh"]
        print(f"input {vmcore} ({os.path.getsize(vmcore) >> 20} MiB), dump level {args.level}, "
              f"lzo, median of {args.repeat}, servers on 127.0.0.1")
        print(f"{'row':26} {'seconds':>8} {'makedumpfile|ssh / row':>24}")
        for k, v in med.items():
            print(f"{k:26} {v:8.2f} {base / v:24.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"input": vmcore, "level": args.level,
                                                   "runs": times, "median": med}, indent=2))
    finally:
        sshd.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
