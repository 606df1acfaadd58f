"""The QEMU command line for a lab guest, and the choice of accelerator.

Facts relied on (QEMU 7.2, Debian 12):

* ``-kernel``/``-initrd``/``-append`` boot a bzImage directly; with ``-no-reboot`` a guest
  reboot (``panic=1`` after a failed capture) ends QEMU, and ``poweroff -f`` ends it through
  ACPI, so QEMU's exit marks the end of a run.
* ``-nodefaults`` drops the default NIC, VGA, monitor and serial; we add one 16550 UART whose
  output goes to QEMU's stdout (``-chardev stdio,signal=off``).
* ``-fsdev local,...,security_model=none`` + ``-device virtio-9p-pci,mount_tag=T`` exports a
  host directory over 9p; ``readonly=on`` makes it read-only; ``multidevs=remap`` keeps inode
  numbers unique when the export spans several host file systems (``/`` includes /proc, /sys).
* A comma inside a QEMU option value is written ``,,``.
* On the build machines ``/dev/kvm`` is PVM-backed and unusable (KVM aborts or runs ~1700x
  slower than TCG); the CPU has no ``vmx``/``svm`` flag there. We use KVM only when the CPU
  advertises one of them and ``/dev/kvm`` opens read-write; otherwise TCG with one host thread
  per vCPU (``-accel tcg,thread=multi``) and ``-cpu max``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Share:
    """A host directory exported over virtio-9p under ``tag``."""

    tag: str
    path: Path
    readonly: bool


@dataclass(frozen=True)
class Disk:
    """A raw image attached as virtio-blk, found in the guest by its ``serial``."""

    path: Path
    serial: str
    readonly: bool = False
    format: str = "raw"               # or qcow2 (an overlay on a shared base image)


@dataclass(frozen=True)
class Machine:
    """Everything that goes on the QEMU command line."""

    kernel: Path
    initrd: Path
    append: str
    memory_mib: int = 1024
    smp: int = 2
    cpu: str = "max"
    accel: str = "tcg"
    shares: tuple[Share, ...] = ()
    disks: tuple[Disk, ...] = ()
    extra: tuple[str, ...] = field(default_factory=tuple)


def qemu_binary() -> str:
    """Path of qemu-system-x86_64 or a RuntimeError naming the package to install."""
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        raise RuntimeError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return path


def qemu_version() -> str:
    """First line of ``qemu-system-x86_64 --version``."""
    out = subprocess.run([qemu_binary(), "--version"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def kvm_status() -> tuple[bool, str]:
    """Whether KVM looks usable, and why (cheap: no QEMU is started)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    if not ({"vmx", "svm"} & flags):
        return False, "CPU has no vmx/svm flag (nested or para-virtual KVM is not used)"
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm missing"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm not accessible"
    return True, "vmx/svm present and /dev/kvm accessible"


def choose_accelerator(requested: str = "auto") -> tuple[str, str]:
    """("kvm" or "tcg", reason). ``requested`` is auto, kvm or tcg."""
    if requested == "tcg":
        return "tcg", "requested"
    ok, why = kvm_status()
    if requested == "kvm":
        return "kvm", "requested" + ("" if ok else f" although {why}")
    if ok:
        return "kvm", why
    return "tcg", why


def _q(value: str | Path) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (commas are doubled)."""
    return str(value).replace(",", ",,")


def build_command(machine: Machine) -> list[str]:
    """The argv for QEMU; serial console on stdout, nothing read from stdin."""
    if machine.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host" if machine.cpu == "max" else machine.cpu]
    else:
        accel = ["-accel", "tcg,thread=multi", "-cpu", machine.cpu]
    argv = [qemu_binary(), *accel,
            "-m", f"{machine.memory_mib}M", "-smp", str(machine.smp),
            "-nodefaults", "-no-reboot", "-display", "none",
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-kernel", str(machine.kernel), "-initrd", str(machine.initrd),
            "-append", machine.append]
    for i, share in enumerate(machine.shares):
        opts = [f"local,id=fs{i}", f"path={_q(share.path)}", "security_model=none",
                "multidevs=remap"]
        if share.readonly:
            opts.append("readonly=on")
        argv += ["-fsdev", ",".join(opts),
                 "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={share.tag}"]
    for i, disk in enumerate(machine.disks):
        opts = [f"file={_q(disk.path)}", f"format={disk.format}", "if=none", f"id=disk{i}",
                "cache=unsafe"]
        if disk.readonly:
            opts.append("readonly=on")
        else:
            opts += ["discard=unmap", "detect-zeroes=unmap"]
        argv += ["-drive", ",".join(opts),
                 "-device", f"virtio-blk-pci,drive=disk{i},serial={disk.serial}"]
    argv += list(machine.extra)
    return argv


def parse_size(text: str) -> int:
    """``256M`` / ``1G`` / ``4096K`` / plain bytes -> bytes (crashkernel= syntax subset)."""
    m = re.fullmatch(r"(\d+)([KMGkmg]?)", text.strip())
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]
