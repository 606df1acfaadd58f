"""A real systemd Debian 12 guest for the lab, built only from apt packages.

Recipe (every step runs on the host as root; nothing is installed on the host):

1. ``mmdebstrap --variant=minbase --include=<GUEST_PACKAGES>,<both lab kernels> bookworm DIR
   <the host's Debian sources file>`` makes the root tree. The kernels are the same releases
   :mod:`lab.kernels` resolves (Debian 12's 6.1 and the 6.12 series served to bookworm); their
   postinst runs depmod and initramfs-tools' ``update-initramfs``, so ``/boot`` holds
   ``vmlinuz-R`` and ``initrd.img-R`` for each.
2. The tree gets what a lab machine needs and nothing else: an fstab naming the root by UUID,
   a host name, root without a password, and an agetty drop-in on ``serial-getty@ttyS0`` with
   ``--autologin root`` so the lab drives a root shell over the serial line (:mod:`lab.shell`).
   Timers that would start work in the middle of a test (apt-daily, e2scrub, fstrim) are masked.
3. ``mke2fs -t ext4 -d DIR -U <uuid> base.img`` writes the tree into a sparse ext4 image in
   seconds. Each kernel and initrd is copied out of ``/boot`` next to it: QEMU boots them with
   ``-kernel``/``-initrd`` and ``root=UUID=...`` (there is no boot loader in the image).

The result lives under ``<lab cache>/systemd-guest/<key>/``, where the key is a digest of
everything that went in (package list, kernel packages and versions, the customisation, the
recipe version). The base image is never written again: every boot sequence runs on a qcow2
overlay whose backing file it is (:func:`overlay`), so tests share one base and never dirty it.

Measured on the 2-core build machine: mmdebstrap with two kernels ~3 min (their initramfs
builds dominate), mke2fs ~5 s; the base is ~1.3 GB of data in a 4 GiB sparse file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, locked
from .kernels import _candidate_for_release, default_releases

Log = Callable[[str], None]

#: Bumped when the customisation or the layout of the result changes.
GUEST_FORMAT = 2

#: Debian packages of the guest besides its kernels. busybox-static and e2fsprogs go into
#: kdumpy's capture image; liblzo2-2 is python-lzo's library; kexec-tools gives ``kexec -p``
#: (kexec_load) next to kdumpy's own kexec_file_load; lvm2 for the root-on-LVM layout.
GUEST_PACKAGES = (
    "systemd-sysv", "udev", "initramfs-tools", "python3", "python3-venv", "e2fsprogs",
    "busybox-static", "kexec-tools", "kmod", "liblzo2-2", "lvm2", "procps", "util-linux",
    "zstd",
)

#: The image's size; sparse, so only written blocks cost host disk.
DISK_SIZE = "4G"
HOSTNAME = "kdumpy-guest"

AUTOLOGIN_DROPIN = """[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
"""

MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "e2scrub_reap.service", "fstrim.timer", "systemd-timesyncd.service")


def debian_sources() -> Path:
    """The host's apt source for Debian itself (the mirror this machine reaches)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.is_file() and path.read_text().strip():
            return path
    raise RuntimeError("no Debian apt source on this host (/etc/apt/sources.list.d/"
                       "debian.sources or /etc/apt/sources.list)")


@dataclass(frozen=True)
class GuestImage:
    """A built guest: the read-only base image and the kernels booted from it."""

    directory: Path
    meta: dict

    @property
    def base(self) -> Path:
        return self.directory / "base.img"

    @property
    def root_uuid(self) -> str:
        return self.meta["root_uuid"]

    @property
    def releases(self) -> list[str]:
        return list(self.meta["kernels"])

    def vmlinuz(self, release: str) -> Path:
        return self.directory / "boot" / f"vmlinuz-{release}"

    def initrd(self, release: str) -> Path:
        return self.directory / "boot" / f"initrd.img-{release}"

    def root_append(self) -> str:
        return f"root=UUID={self.root_uuid} rw console=ttyS0"


def _recipe(releases: list[str]) -> dict:
    kernels = {}
    for release in releases:
        cand = _candidate_for_release(release)
        kernels[release] = {"package": cand.package, "version": cand.version}
    return {"format": GUEST_FORMAT, "suite": "bookworm", "packages": list(GUEST_PACKAGES),
            "kernels": kernels, "disk_size": DISK_SIZE, "autologin": AUTOLOGIN_DROPIN,
            "masked": list(MASKED_UNITS)}


def _key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def guest_dir(key: str) -> Path:
    return cache_root() / "systemd-guest" / key


def load_guest(directory: Path) -> GuestImage | None:
    meta_file = directory / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    image = GuestImage(directory, meta)
    if not image.base.is_file():
        return None
    return image


def ensure_guest(releases: list[str] | None = None, log: Log = print) -> GuestImage:
    """The systemd guest with kernels ``releases`` (default: the lab's), built once."""
    releases = releases or default_releases()
    bad = [r for r in releases if r.startswith("unresolved-")]
    if bad:
        raise LookupError(f"kernel series {bad} could not be resolved via apt-cache "
                          "(run apt-get update)")
    recipe = _recipe(releases)
    key = _key(recipe)
    directory = guest_dir(key)
    image = load_guest(directory)
    if image is not None:
        return image
    with locked(directory.with_name(directory.name + ".lock")):
        image = load_guest(directory)
        if image is not None:
            return image
        return _build(directory, recipe, key, log)


def _run(argv: list[str], log_file: Path, **kw) -> None:
    with open(log_file, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n" + "\n".join(tail))


def _customise(tree: Path, root_uuid: str) -> None:
    """The lab's changes to the debootstrapped tree (see the module docstring)."""
    (tree / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    (tree / "etc/hostname").write_text(HOSTNAME + "\n")
    (tree / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    dropin = tree / "etc/systemd/system/serial-getty@ttyS0.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "autologin.conf").write_text(AUTOLOGIN_DROPIN)
    for unit in MASKED_UNITS:
        link = tree / "etc/systemd/system" / unit
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("/dev/null")
    # root logs in on the serial console without a password (lab only)
    shadow = tree / "etc/shadow"
    lines = []
    for line in shadow.read_text().splitlines():
        parts = line.split(":")
        if parts[0] == "root":
            parts[1] = ""
        lines.append(":".join(parts))
    shadow.write_text("\n".join(lines) + "\n")
    (tree / "var/crash").mkdir(mode=0o700, parents=True, exist_ok=True)
    # apt would try the network from inside the guest; there is none
    (tree / "etc/apt/apt.conf.d/99-lab-offline").write_text(
        'APT::Periodic::Enable "0";\n')


def _build(directory: Path, recipe: dict, key: str, log: Log) -> GuestImage:
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs"),
                      ("qemu-img", "qemu-utils")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run scripts/install-deps (apt {pkg})")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tree = partial / "tree"
    build_log = partial / "build.log"
    kernels = [f"{k['package']}={k['version']}" for k in recipe["kernels"].values()]
    include = ",".join([*recipe["packages"], *kernels])
    log(f"lab: mmdebstrap of the systemd guest ({', '.join(recipe['kernels'])})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["mmdebstrap", "--variant=minbase", f"--include={include}", "--mode=root",
          "--aptopt=Acquire::Retries \"3\"", "bookworm", str(tree), str(debian_sources())],
         build_log, env=env)
    root_uuid = str(uuid.uuid4())
    _customise(tree, root_uuid)
    boot = partial / "boot"
    boot.mkdir()
    for release in recipe["kernels"]:
        for name in (f"vmlinuz-{release}", f"initrd.img-{release}"):
            src = tree / "boot" / name
            if not src.is_file():
                raise RuntimeError(f"the guest tree has no /boot/{name} (see {build_log})")
            shutil.copy2(src, boot / name)
    log("lab: mke2fs -d (systemd guest base image)")
    base = partial / "base.img"
    _run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), "-U", root_uuid, "-L", "kdumpy-root",
          "-F", str(base), recipe["disk_size"]], build_log)
    shutil.rmtree(tree)
    base.chmod(0o444)
    meta = {**recipe, "key": key, "root_uuid": root_uuid}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    image = load_guest(directory)
    assert image is not None
    return image


def overlay(base: Path, path: Path, base_format: str = "raw") -> Path:
    """A new qcow2 at ``path`` backed by ``base`` (never written): writes go to ``path``."""
    if path.exists():
        path.unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F",
                    base_format, str(path)], check=True)
    return path
