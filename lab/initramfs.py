"""Build the lab guest's initramfs: busybox, device nodes, kernel modules and ``/init``.

Facts relied on:

* busybox-static (Debian ``busybox-static``, ``/bin/busybox``) is one statically linked binary
  that runs the applet named by ``argv[0]``; ``busybox --list-full`` prints each applet's
  install path (``sbin/insmod``), so symlinks to ``/bin/busybox`` make a complete userland.
* The kernel needs ``/dev/console`` (char 5:1) inside the archive to give ``/init`` its stdio
  before devtmpfs is mounted; ``/dev/null`` is 1:3 (Documentation/admin-guide/devices.txt).
* Compressed initramfs images are accepted in gzip form by every Debian kernel
  (``CONFIG_RD_GZIP=y``).

The same image serves the first and the capture kernel of one release; everything that varies
per run comes from the run directory's ``lab-config.sh`` (see :mod:`lab.guest_init`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .cpio import CpioWriter
from .guest_init import INIT_SCRIPT
from .kernels import Kernel
from .modules import collect_modules

#: Modules the guest loads, closure resolved through modules.dep (builtins skipped):
#: virtio transport, virtio-blk for the raw vmcore disk, the 9p client for the shares, and
#: qemu_fw_cfg (which publishes VMCOREINFO to QEMU, as a distribution's kdump setup would).
WANTED_MODULES = ["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "qemu_fw_cfg"]

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
DIRECTORIES = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
               "etc", "lab/modules", "out", "host", "fill")


def find_busybox() -> Path:
    """The host's busybox binary; it must be statically linked (package busybox-static)."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.exists():
            with open(path, "rb") as handle:
                head = handle.read(4096)
            if head[:4] != b"\x7fELF":
                continue
            if _is_static(path):
                return path
            raise RuntimeError(f"{path} is dynamically linked: apt-get install busybox-static")
    raise RuntimeError("busybox not found: apt-get install busybox-static")


def _is_static(path: Path) -> bool:
    """True if the ELF at ``path`` has no PT_INTERP program header (i.e. is static)."""
    data = path.read_bytes()
    if data[4] != 2:  # ELFCLASS64 only; Debian amd64 busybox is 64-bit
        return False
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_applets(busybox: Path) -> list[str]:
    """Applet install paths (``bin/sh``, ``sbin/insmod``, ...) as busybox itself lists them."""
    out = subprocess.run([str(busybox), "--list-full"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return [line.strip().lstrip("/") for line in out.splitlines() if line.strip()]


def build_archive(kernel: Kernel, busybox: Path | None = None) -> tuple[bytes, dict]:
    """The uncompressed newc archive for ``kernel`` and a description of its contents."""
    busybox = busybox or find_busybox()
    modules = collect_modules(kernel.root, kernel.release, WANTED_MODULES)
    cpio = CpioWriter()
    for directory in DIRECTORIES:
        cpio.mkdir(directory)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, mode=0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in busybox_applets(busybox):
        if applet == "bin/busybox" or applet in cpio:
            continue
        parent = applet.rsplit("/", 1)[0] if "/" in applet else ""
        if parent:
            cpio.mkdir(parent)
        cpio.symlink(applet, "/bin/busybox")
    for name, data in modules.modules:
        cpio.file(f"lab/modules/{name}.ko", data)
    cpio.file("lab/modules.list", "".join(f"{n}\n" for n in modules.names).encode())
    cpio.file("init", INIT_SCRIPT.encode(), mode=0o755)
    archive = cpio.finish()
    info = {
        "release": kernel.release,
        "modules": modules.names,
        "busybox": str(busybox),
        "sha256": hashlib.sha256(archive).hexdigest(),
        "uncompressed_bytes": len(archive),
    }
    return archive, info


@dataclass(frozen=True)
class Initramfs:
    """A built image in the cache."""

    path: Path
    sha256: str
    modules: tuple[str, ...]


def ensure_initramfs(kernel: Kernel, directory: Path) -> Initramfs:
    """Build ``directory/initramfs.cpio.gz`` unless the cached one has the same contents.

    The archive is deterministic (fixed mtimes and inode numbers, gzip mtime 0), so its digest
    identifies the recipe; an unchanged digest leaves the file (and run caches keyed on it)
    alone.
    """
    archive, info = build_archive(kernel)
    target = directory / "initramfs.cpio.gz"
    info_file = directory / "initramfs.json"
    if target.exists() and info_file.exists():
        old = json.loads(info_file.read_text())
        if old.get("sha256") == info["sha256"]:
            return Initramfs(target, info["sha256"], tuple(info["modules"]))
    compressed = gzip.compress(archive, compresslevel=6, mtime=0)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.write_bytes(compressed)
    tmp.replace(target)
    info["compressed_bytes"] = len(compressed)
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return Initramfs(target, info["sha256"], tuple(info["modules"]))


def which_or_fail(name: str, package: str) -> str:
    """Absolute path of a host tool, or a RuntimeError naming the Debian package to install."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()),
        None)
    if path is None:
        raise RuntimeError(f"{name} not found: apt-get install {package}")
    return path
