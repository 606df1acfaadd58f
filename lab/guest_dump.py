"""QEMU ``dump-guest-memory`` of a running lab kernel: the ELF and kdump-zlib outputs.

QEMU writes VMCOREINFO into these dumps only when it runs with ``-device vmcoreinfo`` and the
guest has loaded its ``qemu_fw_cfg`` driver; the lab initramfs loads
it. The guest boots the lab's ``/init`` with ``LAB_IDLE=1``: it loads its modules, mounts
its shares, records the clock and announces ``KDUMPY-LAB idle``, then waits. The host asks
QEMU's human monitor (a unix socket) for ``dump-guest-memory FILE`` (ELF) and
``dump-guest-memory -z FILE`` (kdump-zlib, written in the flattened format), each of which
returns only when the file is complete, then ``quit``. The guest is stopped first, so both
dumps hold the same memory.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import locked, release_dir
from .guest_init import render_config
from .initramfs import ensure_initramfs
from .kernels import ensure_kernel
from .qemu import Machine, Share, build_command, choose_accelerator, qemu_version
from .run import FIRST_APPEND, LabError, Log, _Watch, stop_qemu, timeout
from .serial import SerialCapture

GUEST_DUMP_FORMAT = 1


@dataclass(frozen=True)
class GuestDumps:
    """QEMU's own dumps of one idle lab guest."""

    release: str
    directory: Path
    elf: Path
    kdump_flat: Path
    meta: dict[str, Any]


def _monitor(sock_path: Path, command: str, limit: float) -> str:
    """Send one HMP command and return its output (up to the next ``(qemu)`` prompt)."""
    deadline = time.monotonic() + limit
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(str(sock_path))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise LabError(f"QEMU monitor {sock_path} did not accept a connection") from None
            time.sleep(0.2)
    s.settimeout(1.0)
    buf = b""

    def until_prompt() -> bytes:
        nonlocal buf
        while b"(qemu)" not in buf:
            if time.monotonic() > deadline:
                raise LabError(f"QEMU monitor: no prompt after {command!r} within {limit:.0f} s")
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            buf += chunk
        out, _, buf = buf.partition(b"(qemu)")
        return out

    try:
        until_prompt()  # banner
        s.sendall(command.encode() + b"\n")
        return until_prompt().decode(errors="replace")
    finally:
        s.close()


def ensure_guest_dumps(spec: str, *, fresh: bool = False, log: Log = print) -> GuestDumps:
    """QEMU ELF and kdump-zlib dumps of an idle guest running kernel ``spec`` (cached)."""
    kernel = ensure_kernel(spec, log=log)
    rdir = release_dir(kernel.release)
    initramfs = ensure_initramfs(kernel, rdir)
    directory = rdir / "qemu-dump"
    meta_file = directory / "meta.json"
    with locked(directory.with_name(directory.name + ".lock")):
        if not fresh and meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if (meta.get("complete") and meta.get("format") == GUEST_DUMP_FORMAT
                    and meta.get("initramfs_sha256") == initramfs.sha256):
                return GuestDumps(kernel.release, directory, Path(meta["elf"]),
                                  Path(meta["kdump_flat"]), meta)
        directory.mkdir(parents=True, exist_ok=True)
        for child in directory.iterdir():
            if child.is_file() or child.is_socket():
                child.unlink()
        elf, flat = directory / "qemu.elf", directory / "qemu-kdump-zlib.flat"
        sock = directory / "monitor.sock"
        (directory / "lab-config.sh").write_text(render_config(
            {"LAB_RUNDIR": str(directory), "LAB_IDLE": 1, "LAB_MARKER": "idle"}))
        accel, reason = choose_accelerator("tcg")
        machine = Machine(kernel=kernel.vmlinuz, initrd=initramfs.path, append=FIRST_APPEND,
                          memory_mib=1024, smp=2, cpu="max", accel=accel,
                          shares=(Share("hostroot", Path("/"), True),
                                  Share("labout", directory, False)),
                          extra=("-device", "vmcoreinfo",
                                 "-monitor", f"unix:{sock},server,nowait"))
        argv = build_command(machine)
        log(f"lab: booting {kernel.release} for QEMU dump-guest-memory ({accel}: {reason})")
        started = time.monotonic()
        with open(directory / "qemu.stderr", "wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, cwd=directory)
        assert proc.stdout is not None
        capture = SerialCapture(proc.stdout, directory / "serial.log", started)
        watch = _Watch(proc, capture, started, log)
        try:
            watch.event("idle", None, timeout("boot") + timeout("step"), "idle guest")
            _monitor(sock, "stop", 10)  # both dumps then see the same memory
            t0 = time.monotonic()
            out_elf = _monitor(sock, f"dump-guest-memory {elf}", timeout("raw_copy"))
            t1 = time.monotonic()
            out_z = _monitor(sock, f"dump-guest-memory -z {flat}", timeout("raw_copy"))
            t2 = time.monotonic()
            for out in (out_elf, out_z):
                if "rror" in out:
                    raise LabError(f"dump-guest-memory failed: {out.strip()}")
            try:
                _monitor(sock, "quit", 10)
            except LabError:
                pass
            proc.wait(timeout=30)
        except BaseException:
            stop_qemu(proc, capture)
            raise
        capture.join(5)
        if not (elf.is_file() and flat.is_file()):
            raise LabError(f"dump-guest-memory left no output in {directory}")
        meta = {"complete": True, "format": GUEST_DUMP_FORMAT, "release": kernel.release,
                "initramfs_sha256": initramfs.sha256, "qemu_version": qemu_version(),
                "accelerator": accel, "elf": str(elf), "kdump_flat": str(flat),
                "seconds": {"elf": round(t1 - t0, 2), "kdump_zlib": round(t2 - t1, 2)}}
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
        return GuestDumps(kernel.release, directory, elf, flat, meta)
