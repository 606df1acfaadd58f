"""Every file the setup commands and the capture session read or write, under one root.

``SystemPaths(root="/")`` names the real system; ``SystemPaths(root=tmp)`` names a fake
tree, so tests (and a chroot such as the crash lab's) never touch the running machine. Paths
are always built as ``root + absolute path``; nothing here reads or writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: EFI global variable GUID (UEFI spec, "Globally Defined Variables"); the kernel's efivarfs
#: names each variable ``<Name>-<GUID>`` (Documentation/filesystems/efivarfs.rst).
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-e98b14ee5c1e"

DEFAULT_CONFIG = "/etc/kdumpy.toml"


@dataclass(frozen=True)
class SystemPaths:
    """Absolute system paths re-rooted at ``root`` (``/`` for the running system)."""

    root: str = "/"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.path.abspath(self.root))

    def path(self, absolute: str) -> str:
        """``absolute`` (a path starting with ``/``) inside this root."""
        if not absolute.startswith("/"):
            raise ValueError(f"{absolute!r} is not an absolute path")
        if self.root == "/":
            return absolute
        return self.root + absolute

    @property
    def is_real_root(self) -> bool:
        return self.root == "/"

    # -- /proc ----------------------------------------------------------------------------
    @property
    def proc_cmdline(self) -> str:
        return self.path("/proc/cmdline")

    @property
    def proc_iomem(self) -> str:
        return self.path("/proc/iomem")

    @property
    def proc_meminfo(self) -> str:
        return self.path("/proc/meminfo")

    @property
    def proc_config_gz(self) -> str:
        return self.path("/proc/config.gz")

    @property
    def proc_osrelease(self) -> str:
        return self.path("/proc/sys/kernel/osrelease")

    @property
    def proc_vmcore(self) -> str:
        return self.path("/proc/vmcore")

    @property
    def sysrq_trigger(self) -> str:
        return self.path("/proc/sysrq-trigger")

    # -- /sys -----------------------------------------------------------------------------
    @property
    def kexec_crash_size(self) -> str:
        return self.path("/sys/kernel/kexec_crash_size")

    @property
    def kexec_crash_loaded(self) -> str:
        return self.path("/sys/kernel/kexec_crash_loaded")

    @property
    def crash_hotplug_files(self) -> tuple[str, str]:
        """``crash_hotplug`` of the cpu and memory subsystems (drivers/base/cpu.c and
        drivers/base/memory.c, Linux 6.5+)."""
        return (self.path("/sys/devices/system/cpu/crash_hotplug"),
                self.path("/sys/devices/system/memory/crash_hotplug"))

    @property
    def efivars(self) -> str:
        return self.path("/sys/firmware/efi/efivars")

    @property
    def secure_boot_var(self) -> str:
        return os.path.join(self.efivars, f"SecureBoot-{EFI_GLOBAL_GUID}")

    @property
    def lockdown(self) -> str:
        return self.path("/sys/kernel/security/lockdown")

    # -- /boot, /etc ----------------------------------------------------------------------
    def boot_config(self, release: str) -> str:
        return self.path(f"/boot/config-{release}")

    def pkgbase(self, release: str) -> str | None:
        """Arch's package base of a kernel release (``/usr/lib/modules/R/pkgbase``:
        ``linux``, ``linux-lts``), which names its files in /boot."""
        try:
            with open(self.path(f"/usr/lib/modules/{release}/pkgbase"), encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            return None

    def boot_kernel_candidates(self, release: str) -> list[str]:
        """Debian/Fedora/SUSE ``vmlinuz-RELEASE``, Arch's ``vmlinuz-PKGBASE``, the image
        Arch and Fedora keep beside the modules, Debian's ``/boot/vmlinuz`` link."""
        base = self.pkgbase(release)
        return [self.path(f"/boot/vmlinuz-{release}"),
                *([self.path(f"/boot/vmlinuz-{base}")] if base else []),
                self.path(f"/usr/lib/modules/{release}/vmlinuz"),
                self.path("/boot/vmlinuz")]

    def boot_initrd_candidates(self, release: str) -> list[str]:
        """Debian/Ubuntu (initramfs-tools), then Fedora/SUSE (dracut) and Arch
        (mkinitcpio's ``initramfs-PKGBASE.img``) names."""
        base = self.pkgbase(release)
        return [self.path(f"/boot/initrd.img-{release}"),
                self.path(f"/boot/initramfs-{release}.img"),
                *([self.path(f"/boot/initramfs-{base}.img")] if base else []),
                self.path(f"/boot/initrd-{release}")]

    @property
    def config(self) -> str:
        return self.path(DEFAULT_CONFIG)

    @property
    def etc_hostname(self) -> str:
        return self.path("/etc/hostname")

    @property
    def grub_default(self) -> str:
        return self.path("/etc/default/grub")

    @property
    def grub_dropin(self) -> str:
        """Debian's GRUB reads ``/etc/default/grub.d/*.cfg`` after ``/etc/default/grub``."""
        return self.path("/etc/default/grub.d/kdumpy.cfg")

    @property
    def systemd_unit_dir(self) -> str:
        return self.path("/etc/systemd/system")

    @property
    def udev_rules_dir(self) -> str:
        return self.path("/etc/udev/rules.d")

    @property
    def run_systemd_system(self) -> str:
        """Exists exactly when systemd is the running init (sd_booted(3))."""
        return self.path("/run/systemd/system")

    # -- kdumpy's own state ---------------------------------------------------------------
    @property
    def state_dir(self) -> str:
        """Survives reboots: the test id and the last capture's outcome."""
        return self.path("/var/lib/kdumpy")

    @property
    def run_dir(self) -> str:
        """Forgotten at reboot, like the kernel's loaded image: how it was loaded."""
        return self.path("/run/kdumpy")

    @property
    def test_id(self) -> str:
        return os.path.join(self.state_dir, "test-id")

    @property
    def last_capture(self) -> str:
        return os.path.join(self.state_dir, "last-capture.json")

    @property
    def load_record(self) -> str:
        return os.path.join(self.run_dir, "loaded.json")

    @property
    def nfs_mountpoint(self) -> str:
        return os.path.join(self.run_dir, "nfs")
