"""Reading the kernel's kdump state from /sys, /proc and /boot (under a :class:`SystemPaths`).

Facts relied on:

* ``/sys/kernel/kexec_crash_size``: bytes reserved by ``crashkernel=`` (0: none;
  kernel/ksysfs.c). ``/sys/kernel/kexec_crash_loaded``: ``1`` when a capture kernel is loaded.
* ``/proc/iomem`` lists the reservation as ``Crash kernel`` (twice when a ``,low`` part
  exists); addresses read as zeros for readers without CAP_SYS_ADMIN.
* ``crash_hotplug`` in ``/sys/devices/system/cpu`` and ``/sys/devices/system/memory``
  (Linux 6.5+, drivers/base/cpu.c and memory.c): ``1`` when the kernel itself updates the
  loaded capture kernel's ELF header on CPU/memory hotplug, so no reload is needed. (There
  is no ``/sys/kernel/crash_hotplug``.)
* Kernel config: ``/proc/config.gz`` (CONFIG_IKCONFIG_PROC) or ``/boot/config-<release>``.
* Secure Boot: the efivarfs file ``SecureBoot-8be4df61-93ca-11d2-aa0d-e98b14ee5c1e`` is 4
  bytes of attributes then the 1-byte value (1 = enabled).
* Lockdown: ``/sys/kernel/security/lockdown`` reads e.g. ``none [integrity] confidentiality``,
  the active mode in brackets (security/lockdown/lockdown.c). Any mode other than none
  refuses ``kexec_load`` and unsigned ``kexec_file_load`` images.
* The RAM size ``crashkernel=`` ranges are compared against is ``memblock_phys_mem_size()``;
  the sum of the top-level ``System RAM`` ranges of /proc/iomem is its closest userspace
  view, /proc/meminfo ``MemTotal`` (smaller: it leaves out kernel-reserved memory) the
  fallback when the addresses are hidden.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field

from kdumpy.setup.paths import SystemPaths

KEXEC_CONFIG_KEYS = ("CONFIG_KEXEC", "CONFIG_KEXEC_FILE", "CONFIG_KEXEC_SIG",
                     "CONFIG_KEXEC_SIG_FORCE", "CONFIG_CRASH_DUMP", "CONFIG_PROC_VMCORE",
                     "CONFIG_RELOCATABLE", "CONFIG_CRASH_HOTPLUG", "CONFIG_IKCONFIG_PROC")


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def kernel_release(paths: SystemPaths) -> str:
    """The running kernel's release (``/proc/sys/kernel/osrelease``, else ``uname -r``)."""
    text = read_text(paths.proc_osrelease)
    return text.strip() if text and text.strip() else os.uname().release


@dataclass
class IomemRange:
    start: int
    end: int                          # inclusive, as /proc/iomem prints it
    name: str
    depth: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def read_iomem(paths: SystemPaths) -> list[IomemRange]:
    text = read_text(paths.proc_iomem) or ""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$", line)
        if m:
            out.append(IomemRange(int(m.group(2), 16), int(m.group(3), 16), m.group(4).strip(),
                                  len(m.group(1)) // 2))
    return out


def ram_size(paths: SystemPaths) -> tuple[int, str]:
    """(bytes, source) of the RAM size the kernel evaluates ``crashkernel=`` ranges with."""
    ranges = [r for r in read_iomem(paths) if r.depth == 0 and r.name == "System RAM"]
    if ranges and any(r.end for r in ranges):
        return sum(r.size for r in ranges), "/proc/iomem System RAM"
    text = read_text(paths.proc_meminfo) or ""
    m = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    if m:
        return int(m.group(1)) * 1024, "/proc/meminfo MemTotal"
    return 0, "unknown"


@dataclass
class CrashReservation:
    size: int | None                  # /sys/kernel/kexec_crash_size (None: not readable)
    regions: list[tuple[int, int]] = field(default_factory=list)  # iomem "Crash kernel"
    addresses_hidden: bool = False

    @property
    def total_iomem(self) -> int:
        return sum(e - s + 1 for s, e in self.regions)


def crash_reservation(paths: SystemPaths) -> CrashReservation:
    regions = [(r.start, r.end) for r in read_iomem(paths) if r.name == "Crash kernel"]
    hidden = bool(regions) and all(s == 0 and e == 0 for s, e in regions)
    return CrashReservation(read_int(paths.kexec_crash_size), [] if hidden else regions, hidden)


def crash_loaded(paths: SystemPaths) -> bool | None:
    v = read_int(paths.kexec_crash_loaded)
    return None if v is None else v == 1


def crash_hotplug(paths: SystemPaths) -> dict[str, bool | None]:
    """``{"cpu": ..., "memory": ...}``: True when the kernel updates the capture kernel's
    header itself on hotplug, None when the file does not exist (kernel before 6.5, or no
    hotplug support built in)."""
    cpu, mem = paths.crash_hotplug_files
    out: dict[str, bool | None] = {}
    for name, path in (("cpu", cpu), ("memory", mem)):
        v = read_int(path)
        out[name] = None if v is None else v == 1
    return out


@dataclass
class KernelConfig:
    source: str | None
    values: dict[str, str]

    def get(self, key: str) -> str | None:
        """``"y"``/``"m"``/a value, or None when unset or the config is unknown."""
        return self.values.get(key)

    def enabled(self, key: str) -> bool | None:
        """True/False, or None when no config could be read."""
        if self.source is None:
            return None
        return self.values.get(key) in ("y", "m")


def parse_config(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2).strip().strip('"')
    return values


def kernel_config(paths: SystemPaths, release: str | None = None) -> KernelConfig:
    try:
        with gzip.open(paths.proc_config_gz, "rt", errors="replace") as f:
            return KernelConfig("/proc/config.gz", parse_config(f.read()))
    except (OSError, EOFError):
        pass
    release = release or kernel_release(paths)
    path = paths.boot_config(release)
    text = read_text(path)
    if text is not None:
        return KernelConfig(f"/boot/config-{release}", parse_config(text))
    return KernelConfig(None, {})


def secure_boot(paths: SystemPaths) -> bool | None:
    """True/False from efivarfs; None on a machine without EFI variables (BIOS boot)."""
    try:
        with open(paths.secure_boot_var, "rb") as f:
            data = f.read()
    except OSError:
        return None if not os.path.isdir(paths.efivars) else False
    return len(data) >= 5 and data[4] == 1


def lockdown(paths: SystemPaths) -> str | None:
    """The active lockdown mode (``none``, ``integrity``, ``confidentiality``), or None when
    the kernel has no lockdown LSM (or securityfs is not mounted)."""
    text = read_text(paths.lockdown)
    if text is None:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


def cmdline(paths: SystemPaths) -> str:
    return (read_text(paths.proc_cmdline) or "").strip("\n\0 ")


def crashkernel_words(cmdline_text: str) -> list[str]:
    """The ``crashkernel=`` words of a command line, in order."""
    return [w for w in cmdline_text.split(" ") if "crashkernel=" in w]
