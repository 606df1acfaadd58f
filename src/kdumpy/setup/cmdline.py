"""The capture kernel's command line, built from the running kernel's.

Facts relied on:

* The kernel splits its command line at unquoted spaces; double quotes group a value with
  spaces (``lib/cmdline.c`` ``next_arg``). Parameter names treat ``-`` and ``_`` alike
  (``kernel/params.c`` ``parameq``). Everything after a lone ``--`` goes to init, not to the
  kernel (``init/main.c``), so kernel parameters must be added before it.
* Per-arch additions: for x86_64 the set kdump-utils ships (``gen-kdump-sysconfig.sh``)
  minus its udev/dracut-only items; for the others the lines of
  ``Documentation/admin-guide/kdump/kdump.rst`` ("arch specific command line options",
  without the runlevel ``1``, which systemd ignores), plus ``panic=10`` so a capture kernel
  that panics reboots instead of hanging.
* Removed from the running kernel's line (union of kdump-utils, Debian kdump-tools, SUSE and
  kdumpst): the reservation itself, memory-hungry or capture-hostile settings
  (``hugepages``, ``hugepagesz``, ``default_hugepagesz``, ``hugetlb_cma``, ``cma``,
  ``slub_debug``, ``log_buf_len``, ``kmemleak``), ``panic_on_warn`` and ``quiet``/``splash``
  (the save must be visible on the console), hibernation ``resume`` (the initramfs would
  try to resume), ``BOOT_IMAGE``, any ``systemd.unit``; and every parameter that is
  appended, so ours are the only ones.
* The loader adds ``elfcorehdr=`` itself (``kexec_file_load`` at the front).
"""

from __future__ import annotations

#: Appended per ``uname -m``; the issue's x86_64 list, kernel-doc lines for the others.
ARCH_APPEND: dict[str, tuple[str, ...]] = {
    "x86_64": ("irqpoll", "nr_cpus=1", "reset_devices", "cgroup_disable=memory", "mce=off",
               "numa=off", "acpi_no_memhotplug", "transparent_hugepage=never", "nokaslr",
               "panic=10"),
    "i386": ("irqpoll", "maxcpus=1", "reset_devices", "panic=10"),
    "i686": ("irqpoll", "maxcpus=1", "reset_devices", "panic=10"),
    "aarch64": ("maxcpus=1", "reset_devices", "panic=10"),
    "armv7l": ("maxcpus=1", "reset_devices", "panic=10"),
    "ppc64le": ("maxcpus=1", "noirqdistrib", "reset_devices", "panic=10"),
    "ppc64": ("maxcpus=1", "noirqdistrib", "reset_devices", "panic=10"),
    "s390x": ("maxcpus=1", "cgroup_disable=memory", "panic=10"),
}
#: For an architecture the kernel documentation does not list.
DEFAULT_APPEND = ("maxcpus=1", "reset_devices", "panic=10")

#: What makes the capture kernel's systemd run the save job (the normal root filesystem
#: boots, as Debian's kdump-tools does, and starts only this unit and its dependencies).
SAVE_UNIT = "kdumpy-save.service"
CAPTURE_TRIGGER = (f"systemd.unit={SAVE_UNIT}",)

ALWAYS_REMOVE = ("crashkernel", "hugepages", "hugepagesz", "default_hugepagesz",
                 "hugetlb_cma", "cma", "panic_on_warn", "quiet", "splash", "slub_debug",
                 "log_buf_len", "kmemleak", "resume", "resume_offset", "BOOT_IMAGE",
                 "systemd.unit", "rd.systemd.unit")


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
    return ARCH_APPEND.get(arch, DEFAULT_APPEND)


def build_capture_cmdline(current: str, *, arch: str, remove: tuple[str, ...] | list[str] = (),
                          append: tuple[str, ...] | list[str] = (),
                          trigger: tuple[str, ...] = CAPTURE_TRIGGER) -> str:
    """The capture kernel's command line from the running kernel's ``current`` one.

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
    ours = [w for w in (*arch_append(arch), *trigger)
            if param_name(w) not in {param_name(e) for e in extra}]
    added = ours + extra
    drop = {n.replace("-", "_") for n in (*ALWAYS_REMOVE, *remove)}
    drop |= {param_name(w) for w in added}
    kept = [w for w in words if param_name(w) not in drop]
    return " ".join(kept + added + init_args)
