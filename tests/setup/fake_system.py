"""A fake system tree (/proc, /sys, /boot, /etc) for the setup commands' tests.

Everything is plain files under a temporary root: ``SystemPaths(root)`` points kdumpy at
it, so no test reads or writes the real /proc, /sys or /etc.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from kdumpy.setup.paths import EFI_GLOBAL_GUID

RELEASE = "6.1.0-99-amd64"
GOOD_CONFIG = {"CONFIG_KEXEC": "y", "CONFIG_KEXEC_FILE": "y", "CONFIG_CRASH_DUMP": "y",
               "CONFIG_PROC_VMCORE": "y", "CONFIG_RELOCATABLE": "y"}
CMDLINE = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-99-amd64 root=UUID=1234 ro quiet "
           "crashkernel=2G-64G:256M,64G-:512M hugepages=16")


def bzimage(init_size: int = 48 << 20, size: int = 8 << 20) -> bytes:
    """A file with an x86 boot-protocol 2.15 setup header carrying ``init_size``."""
    img = bytearray(size)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)
    struct.pack_into("<I", img, 0x260, init_size)
    return bytes(img)


@dataclass
class FakeSystem:
    root: Path

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> Path:
        p = self.root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(p, mode)
        return p

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()

    def set_reserved(self, size: int) -> None:
        self.write("/sys/kernel/kexec_crash_size", f"{size}\n")
        iomem = ("00001000-0009fbff : System RAM\n"
                 "00100000-bfffffff : System RAM\n")
        if size:
            iomem += f"  {0x2b000000:08x}-{0x2b000000 + size - 1:08x} : Crash kernel\n"
        iomem += "100000000-43fffffff : System RAM\n"
        self.write("/proc/iomem", iomem)

    def set_loaded(self, loaded: bool) -> None:
        self.write("/sys/kernel/kexec_crash_loaded", "1\n" if loaded else "0\n")

    def set_config(self, values: dict[str, str] | None, *, where: str = "proc") -> None:
        text = "".join(f"{k}={v}\n" for k, v in (values or {}).items())
        text += "# CONFIG_KEXEC_SIG is not set\n"
        if where == "proc":
            self.write("/proc/config.gz", gzip.compress(text.encode()))
        else:
            self.write(f"/boot/config-{RELEASE}", text)

    def set_secure_boot(self, on: bool) -> None:
        self.write(f"/sys/firmware/efi/efivars/SecureBoot-{EFI_GLOBAL_GUID}",
                   b"\x06\x00\x00\x00" + (b"\x01" if on else b"\x00"))

    def set_lockdown(self, mode: str) -> None:
        modes = ["none", "integrity", "confidentiality"]
        self.write("/sys/kernel/security/lockdown",
                   " ".join(f"[{m}]" if m == mode else m for m in modes) + "\n")

    def set_hotplug(self, value: int) -> None:
        self.write("/sys/devices/system/cpu/crash_hotplug", f"{value}\n")
        self.write("/sys/devices/system/memory/crash_hotplug", f"{value}\n")


def make_fake_system(root: Path, *, reserved: int = 256 << 20, loaded: bool = True,
                     config: dict[str, str] | None = GOOD_CONFIG,
                     cmdline: str = CMDLINE) -> FakeSystem:
    fs = FakeSystem(root)
    fs.write("/proc/sys/kernel/osrelease", RELEASE + "\n")
    fs.write("/proc/cmdline", cmdline + "\n")
    fs.write("/proc/meminfo", "MemTotal:       16318480 kB\n")
    fs.write("/proc/stat", "cpu  1 2 3 4\nbtime 1700000000\n")
    fs.set_reserved(reserved)
    fs.set_loaded(loaded)
    if config is not None:
        fs.set_config(config)
    fs.write(f"/boot/vmlinuz-{RELEASE}", bzimage())
    fs.write(f"/boot/initrd.img-{RELEASE}", gzip.compress(b"070701" + b"0" * 200))
    fs.write("/etc/hostname", "testhost\n")
    return fs


def system_initrd(fs: FakeSystem) -> str:
    """The distribution's initramfs of the fake system (loads that do not need kdumpy's
    capture image pass it with --initrd)."""
    return str(fs.root / f"boot/initrd.img-{RELEASE}")


_IMAGE_TEMPLATE: list[Path] = []


def _image_template() -> Path:
    """One fake system with a built capture image per test process (building takes
    seconds: the Python part is the real interpreter's)."""
    if not _IMAGE_TEMPLATE:
        import tempfile

        from fake_block import fake_target_system

        from kdumpy.setup.capture_image.build import build
        from kdumpy.setup.config import Config
        from kdumpy.setup.paths import SystemPaths
        root = Path(tempfile.mkdtemp(prefix="kdumpy-image-template-"))
        make_fake_system(root)
        fake_target_system(root, RELEASE)
        paths = SystemPaths(str(root))
        build(paths, Config(), RELEASE, paths.config)
        _IMAGE_TEMPLATE.append(root)
    return _IMAGE_TEMPLATE[0]


def with_capture_image(fs: FakeSystem) -> FakeSystem:
    """Give ``fs`` a root filesystem on a virtio disk (the default /var/crash target), a
    module index, and a current capture image for it."""
    import shutil

    from fake_block import fake_target_system
    fake_target_system(fs.root, RELEASE)
    tpl = _image_template()
    dest = fs.root / "var/lib/kdumpy"
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    for name in (f"capture-{RELEASE}.img", f"capture-{RELEASE}.json"):
        shutil.copy2(tpl / "var/lib/kdumpy" / name, dest / name)
    return fs
