"""The capture kernel's command line, built from the running kernel's.

Facts relied on:

* The kernel splits its command line at unquoted spaces; double quotes group a value with
  spaces (``lib/cmdline.c`` ``next_arg``). Parameter names treat ``-`` and ``_`` alike
  (``kernel/params.c`` ``parameq``). Everything after a lone ``--`` goes to init, not to the
  kernel (``init/main.c``), so kernel parameters must be added before it.
* Per-arch additions and removals are kdump-utils' (``gen-kdump-sysconfig.sh``): for
  x86_64 ``irqpoll nr_cpus=1 reset_devices cgroup_disable=memory mce=off numa=off
  udev.children-max=2 panic=10 acpi_no_memhotplug transparent_hugepage=never nokaslr
  hest_disable cma=0 pcie_ports=compat``, for aarch64 ``irqpoll nr_cpus=1 reset_devices
  cgroup_disable=memory udev.children-max=2 panic=10 swiotlb=noforce cma=0``; for the
  others the lines of ``Documentation/admin-guide/kdump/kdump.rst`` ("arch specific command
  line options", without the runlevel ``1``), plus ``panic=10`` so a capture kernel that
  panics reboots instead of hanging.
* Removed from the running kernel's line: kdump-utils' common list (``hugepages hugepagesz
  slub_debug quiet log_buf_len swiotlb hugetlb_cma ignition.firstboot``; ``cma``, which it
  keeps on ppc64le only, is dropped everywhere here), the reservation itself,
  ``panic_on_warn`` and ``panic_on_taint`` (kdumpy's ``[triggers]`` put the latter there; a
  WARN or a taint in the capture boot must not cost the dump), ``default_hugepagesz``, ``kmemleak``, ``splash``, hibernation ``resume`` (the initramfs
  would try to resume), ``BOOT_IMAGE``, any ``systemd.unit``; and every parameter that is
  appended, so ours are the only ones.
* kdumpy's own capture image (:mod:`kdumpy.setup.capture_image`) mounts only the dump
  target, so the root filesystem's parameters (``root``, ``rootflags``, ``rootfstype``,
  ``rd.lvm.lv``, ``rd.luks.uuid``, ...) and ``init``/``rdinit`` are dropped, as kdump-utils
  drops them for its dedicated initramfs. With the system's own initramfs instead
  (``load.initrd`` set), the root stays and ``systemd.unit=kdumpy-save.service`` makes the
  capture kernel's systemd run only the save job.
* The loader adds ``elfcorehdr=`` itself (``kexec_file_load`` at the front).
"""

from __future__ import annotations

from kdumpy import arch as arches

#: Appended per ``uname -m`` for machines without an :mod:`kdumpy.arch` module (whose
#: ``CAPTURE_APPEND`` wins): kdump-utils' list for aarch64, kernel-doc lines for the others.
ARCH_APPEND: dict[str, tuple[str, ...]] = {
    "i386": ("irqpoll", "maxcpus=1", "reset_devices", "panic=10"),
    "i686": ("irqpoll", "maxcpus=1", "reset_devices", "panic=10"),
    "aarch64": ("irqpoll", "nr_cpus=1", "reset_devices", "cgroup_disable=memory",
                "udev.children-max=2", "panic=10", "swiotlb=noforce", "cma=0"),
    "armv7l": ("maxcpus=1", "reset_devices", "panic=10"),
    "ppc64le": ("maxcpus=1", "noirqdistrib", "reset_devices", "panic=10"),
    "ppc64": ("maxcpus=1", "noirqdistrib", "reset_devices", "panic=10"),
    "s390x": ("maxcpus=1", "cgroup_disable=memory", "panic=10"),
}
#: For an architecture the kernel documentation does not list.
DEFAULT_APPEND = ("maxcpus=1", "reset_devices", "panic=10")

#: With the system's own initramfs: what makes the capture kernel's systemd run the save
#: job (the normal root filesystem boots, as Debian's kdump-tools does).
SAVE_UNIT = "kdumpy-save.service"
CAPTURE_TRIGGER = (f"systemd.unit={SAVE_UNIT}",)

ALWAYS_REMOVE = ("crashkernel", "hugepages", "hugepagesz", "default_hugepagesz",
                 "hugetlb_cma", "cma", "panic_on_warn", "panic_on_taint", "quiet", "splash", "slub_debug",
                 "log_buf_len", "swiotlb", "ignition.firstboot", "kmemleak", "resume",
                 "resume_offset", "BOOT_IMAGE", "systemd.unit", "rd.systemd.unit")
#: Dropped when the capture kernel boots kdumpy's image: it never mounts the root.
IMAGE_REMOVE = ("root", "rootflags", "rootfstype", "rootwait", "rootdelay", "init",
                "rdinit", "rd.lvm.lv", "rd.luks.uuid", "rd.dm.uuid", "rd.md.uuid",
                "netroot", "fcoe", "rd.iscsi.initiator", "iscsi_initiator")


def split_cmdline(text: str) -> list[str]:
    """Words of a kernel command line, quotes kept inside their word (``next_arg``)."""
    words: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text.strip():
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if cur:
                words.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        words.append("".join(cur))
    return words


def param_name(word: str) -> str:
    """The parameter name of a word, ``-`` and ``_`` made equal (parameq)."""
    name = word.split("=", 1)[0].strip('"')
    return name.replace("-", "_")


def arch_append(arch: str) -> tuple[str, ...]:
    """The words appended to the capture kernel's command line on ``arch``."""
    mod = arches.known(arch)
    if mod is not None:
        return tuple(mod.CAPTURE_APPEND)
    return ARCH_APPEND.get(arch, DEFAULT_APPEND)


def build_capture_cmdline(current: str, *, arch: str, remove: tuple[str, ...] | list[str] = (),
                          append: tuple[str, ...] | list[str] = (),
                          own_image: bool = True) -> str:
    """The capture kernel's command line from the running kernel's ``current`` one, for
    kdumpy's capture image (``own_image``) or the system's initramfs and root.

    ``remove`` names more parameters to drop; ``append`` adds words after the per-arch set
    and the trigger (a config's or the user's extra parameters, which win over ours: a
    parameter named in ``append`` removes ours of the same name).
    """
    words = split_cmdline(current)
    init_args: list[str] = []
    if "--" in words:
        at = words.index("--")
        words, init_args = words[:at], words[at:]
    extra = [w for a in append for w in split_cmdline(a)]
    trigger = () if own_image else CAPTURE_TRIGGER
    ours = [w for w in (*arch_append(arch), *trigger)
            if param_name(w) not in {param_name(e) for e in extra}]
    added = ours + extra
    drop = {n.replace("-", "_") for n in
            (*ALWAYS_REMOVE, *(IMAGE_REMOVE if own_image else ()), *remove)}
    drop |= {param_name(w) for w in added}
    kept = [w for w in words if param_name(w) not in drop]
    return " ".join(kept + added + init_args)
