"""Fake block-device trees in sysfs, /proc/self/mountinfo and /dev/disk/by-uuid, laid out
as the kernel and udev lay them out (relative symlinks, so they resolve inside the root)."""

from __future__ import annotations

import os
from pathlib import Path

LAB_CACHE = Path(os.path.expanduser("~/.cache/kdumpy/lab"))
ROOT_UUID = "3f2a6c1e-8d4b-4e0a-9b7c-5a1d2e3f4a5b"


def lab_module_tree(release: str | None = None) -> tuple[str, Path] | None:
    """(release, /lib/modules/RELEASE) of a Debian kernel the lab unpacked, if any."""
    if not LAB_CACHE.is_dir():
        return None
    for d in sorted(LAB_CACHE.iterdir()):
        if release and d.name != release:
            continue
        m = d / "kernel" / "lib" / "modules" / d.name
        if (m / "modules.dep").is_file():
            return d.name, m
    return None


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(target, path)


def _driver(root: Path, bus: str, driver: str, module: str | None) -> None:
    d = root / "sys/bus" / bus / "drivers" / driver
    d.mkdir(parents=True, exist_ok=True)
    (root / "sys/module").mkdir(parents=True, exist_ok=True)
    if module:
        (root / "sys/module" / module).mkdir(exist_ok=True)
        _link(d / "module", f"../../../../module/{module}")


def virtio_disk(root: Path, *, pci: str = "0000:00:04.0", virtio: str = "virtio1",
                disk: str = "vda", part: int | None = 1, major: int = 254,
                minor: int = 1) -> str:
    """A virtio-blk disk on virtio-pci; returns the partition's (or disk's) MAJ:MIN."""
    pdir = root / "sys/devices/pci0000:00" / pci
    vdir = pdir / virtio
    ddir = vdir / "block" / disk
    ddir.mkdir(parents=True, exist_ok=True)
    (pdir / "modalias").write_text("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n")
    (vdir / "modalias").write_text("virtio:d00000002v00001AF4\n")
    _driver(root, "pci", "virtio-pci", "virtio_pci")
    _driver(root, "virtio", "virtio_blk", "virtio_blk")
    _link(pdir / "driver", "../../../bus/pci/drivers/virtio-pci")
    _link(vdir / "driver", "../../../../bus/virtio/drivers/virtio_blk")
    (ddir / "uevent").write_text(f"MAJOR={major}\nMINOR=0\nDEVNAME={disk}\nDEVTYPE=disk\n")
    dev = ddir
    name = disk
    devno = f"{major}:0"
    if part is not None:
        name = f"{disk}{part}"
        dev = ddir / name
        dev.mkdir(exist_ok=True)
        (dev / "partition").write_text(f"{part}\n")
        devno = f"{major}:{minor}"
        (dev / "uevent").write_text(f"MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\n"
                                    "DEVTYPE=partition\n")
    rel = os.path.relpath(dev, root / "sys/dev/block")
    _link(root / "sys/dev/block" / devno, rel)
    return devno


def lvm_volume(root: Path, slave_devno: str, *, dm: str = "dm-0", major: int = 253,
               minor: int = 0, vg: str = "vg0", lv: str = "root") -> str:
    """A device-mapper LVM volume on the block device ``slave_devno``."""
    ddir = root / "sys/devices/virtual/block" / dm
    (ddir / "dm").mkdir(parents=True, exist_ok=True)
    (ddir / "dm/uuid").write_text(f"LVM-{'A' * 32}{'B' * 32}\n")
    (ddir / "dm/name").write_text(f"{vg}-{lv}\n")
    (ddir / "uevent").write_text(f"MAJOR={major}\nMINOR={minor}\nDEVNAME={dm}\n")
    slave = os.path.realpath(root / "sys/dev/block" / slave_devno)
    _link(ddir / "slaves" / os.path.basename(slave), os.path.relpath(slave, ddir / "slaves"))
    devno = f"{major}:{minor}"
    _link(root / "sys/dev/block" / devno, os.path.relpath(ddir, root / "sys/dev/block"))
    return devno


def mount(root: Path, devno: str, mountpoint: str, fstype: str = "ext4",
          source: str = "/dev/vda1", uuid: str = ROOT_UUID) -> None:
    """Add a mount to /proc/self/mountinfo and the udev by-uuid link of its device."""
    mi = root / "proc/self/mountinfo"
    mi.parent.mkdir(parents=True, exist_ok=True)
    n = len(mi.read_text().splitlines()) if mi.exists() else 0
    with mi.open("a") as f:
        f.write(f"{20 + n} 1 {devno} / {mountpoint} rw,relatime shared:1 - {fstype} {source} "
                "rw\n")
    uevent = (root / "sys/dev/block" / devno / "uevent")
    devname = next((ln.split("=", 1)[1] for ln in uevent.read_text().splitlines()
                    if ln.startswith("DEVNAME=")), None) if uevent.exists() else None
    if devname:
        _link(root / "dev/disk/by-uuid" / uuid, f"../../{devname}")


def link_modules(root: Path, release: str, tree: Path) -> None:
    _link(root / "lib/modules" / release, str(tree))


#: A small module index in depmod's format, for tests that need one but not a real kernel.
FAKE_MODULES = {
    "kernel/drivers/virtio/virtio_ring.ko": [],
    "kernel/drivers/virtio/virtio.ko": [],
    "kernel/drivers/block/virtio_blk.ko.xz": ["kernel/drivers/virtio/virtio.ko",
                                              "kernel/drivers/virtio/virtio_ring.ko"],
    "kernel/drivers/virtio/virtio_pci.ko": ["kernel/drivers/virtio/virtio.ko",
                                            "kernel/drivers/virtio/virtio_ring.ko"],
    "kernel/lib/crc16.ko": [],
    "kernel/fs/mbcache.ko": [],
    "kernel/fs/jbd2/jbd2.ko": [],
    "kernel/crypto/crc32c_generic.ko": [],
    "kernel/fs/ext4/ext4.ko": ["kernel/lib/crc16.ko", "kernel/fs/mbcache.ko",
                               "kernel/fs/jbd2/jbd2.ko"],
    "kernel/drivers/md/dm-mod.ko": [],
}


def fake_module_tree(root: Path, release: str) -> Path:
    """/lib/modules/RELEASE with FAKE_MODULES: each module file holds its own name."""
    import lzma
    d = root / "lib/modules" / release
    d.mkdir(parents=True, exist_ok=True)
    for path in FAKE_MODULES:
        p = d / path
        p.parent.mkdir(parents=True, exist_ok=True)
        data = f"module {path}\n".encode()
        p.write_bytes(lzma.compress(data) if path.endswith(".xz") else data)
    (d / "modules.dep").write_text("".join(f"{p}: {' '.join(deps)}".rstrip() + "\n"
                                           for p, deps in FAKE_MODULES.items()))
    (d / "modules.alias").write_text("alias virtio:d00000002v* virtio_blk\n"
                                     "alias crypto-crc32c crc32c_generic\n"
                                     "alias fs-ext4 ext4\n")
    (d / "modules.softdep").write_text("softdep ext4 pre: crypto-crc32c\n")
    (d / "modules.builtin").write_text("kernel/drivers/scsi/sd_mod.ko\n")
    return d


def fake_target_system(root: Path, release: str) -> str:
    """A root filesystem on vda1 (ext4, /var/crash and /var/lib/kdumpy on it) with the fake
    module index; returns the device number."""
    devno = virtio_disk(root)
    mount(root, devno, "/")
    fake_module_tree(root, release)
    return devno
