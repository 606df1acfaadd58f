"""Early kdump: load the capture kernel from the initramfs, before the root is mounted.

A kernel that dies during boot, before ``kdumpy.service`` runs, is only dumped if the capture
kernel was loaded from the initramfs. ``kdumpy install --initramfs`` writes a hook for each
initramfs generator (initramfs-tools on Debian/Ubuntu, dracut on Fedora/RHEL/SUSE,
mkinitcpio on Arch); the hook copies ``kexec`` (kexec-tools), the kernel image, the capture
initrd (when one exists) and the capture command line into the initramfs, and its boot
script runs ``kexec -s -p`` (``-s``: kexec_file_load(2), which Secure Boot allows) when
``rd.earlykdump`` is on the kernel command line. Later, ``kdumpy load`` from kdumpy.service
replaces the early image with the configured one.

Facts relied on:

* initramfs-tools runs ``/etc/initramfs-tools/hooks/*`` at build time with ``$DESTDIR`` and
  ``$version`` set and ``copy_exec`` from ``hook-functions``. Its ``/init`` mounts /proc and
  /sys, runs ``scripts/init-top/*``, then loads the modules listed in ``/conf/modules``, then
  runs ``scripts/init-premount/*`` and mounts the root (initramfs-tools(7),
  ``/usr/share/initramfs-tools/init``). The load runs in init-top, so a driver that kills the
  kernel while the initramfs loads it is caught too (the lab's early case is exactly that).
* dracut modules are ``modules.d/NNname/module-setup.sh`` with ``check``/``depends``/
  ``install``; ``inst_hook cmdline NN script`` runs first of the hooks, with /proc and /sys
  mounted, long before the root is mounted (dracut.modules(7)); Fedora's earlykdump sits
  there too.
* mkinitcpio hooks are ``/etc/initcpio/install/NAME`` (``build()`` with ``add_binary``/
  ``add_file``/``add_runscript``) and ``/etc/initcpio/hooks/NAME`` (``run_earlyhook`` runs
  before the root is mounted) (mkinitcpio(8)).
* ``/sys/kernel/kexec_crash_size`` is 0 without a ``crashkernel=`` reservation, and
  ``/sys/kernel/kexec_crash_loaded`` reads 1 once a capture kernel is loaded
  (kernel/ksysfs.c).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kdumpy.setup.paths import SystemPaths

SWITCH = "rd.earlykdump"
#: Written by ``kdumpy install --initramfs``; every hook copies it into the initramfs.
EARLY_CONF = "/etc/kdumpy/early.conf"
#: Optional capture initrd for early kdump; without it the capture kernel boots with none.
EARLY_INITRD = "/var/lib/kdumpy/early-initrd.img"

# The boot-time script, shared by all generators (POSIX sh, busybox or klibc).
LOAD_SCRIPT = f"""# kdumpy early kdump: load the capture kernel before the root is mounted.
kdumpy_early() {{
    # shell builtins and cat only: klibc's initramfs (BUSYBOX=n) has no grep
    case " $(cat /proc/cmdline) " in *" {SWITCH} "*) ;; *) return 0 ;; esac
    size=$(cat /sys/kernel/kexec_crash_size 2>/dev/null)
    if [ "${{size:-0}}" = 0 ]; then
        echo "kdumpy: {SWITCH}: no crashkernel= reservation, early kdump off" > /dev/kmsg
        return 0
    fi
    . /etc/kdumpy/early.conf
    if [ -f /kdumpy/initrd.img ]; then
        kexec -s -p /kdumpy/vmlinuz --initrd=/kdumpy/initrd.img --append="$KDUMPY_CMDLINE"
    else
        kexec -s -p /kdumpy/vmlinuz --append="$KDUMPY_CMDLINE"
    fi
    rc=$?
    echo "kdumpy: early kdump: kexec_file_load exit $rc, loaded=$(cat \\
/sys/kernel/kexec_crash_loaded)" > /dev/kmsg
    return 0
}}
"""

INITRAMFS_TOOLS_HOOK = """#!/bin/sh
# Installed by `kdumpy install --initramfs`: early kdump (see kdumpy.setup.early).
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
copy_exec "$(command -v kexec || echo /sbin/kexec)" /sbin
mkdir -p "$DESTDIR/kdumpy" "$DESTDIR/etc/kdumpy"
cp "/boot/vmlinuz-$version" "$DESTDIR/kdumpy/vmlinuz"
[ -f %(initrd)s ] && cp %(initrd)s "$DESTDIR/kdumpy/initrd.img"
cp %(conf)s "$DESTDIR/etc/kdumpy/early.conf"
exit 0
""".replace("%(initrd)s", EARLY_INITRD).replace("%(conf)s", EARLY_CONF)

INITRAMFS_TOOLS_INIT_TOP = """#!/bin/sh
# Installed by `kdumpy install --initramfs`: runs before modules load and the root is mounted.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
""" + LOAD_SCRIPT + "kdumpy_early\nexit 0\n"

DRACUT_MODULE_SETUP = """#!/bin/bash
# Installed by `kdumpy install --initramfs`: early kdump (see kdumpy.setup.early).
check() { return 255; }
depends() { return 0; }
install() {
    inst_binary kexec
    inst_simple "/boot/vmlinuz-$kernel" /kdumpy/vmlinuz
    [ -f %(initrd)s ] && inst_simple %(initrd)s /kdumpy/initrd.img
    inst_simple %(conf)s /etc/kdumpy/early.conf
    inst_hook cmdline 00 "$moddir/kdumpy-early.sh"
}
""".replace("%(initrd)s", EARLY_INITRD).replace("%(conf)s", EARLY_CONF)

DRACUT_HOOK = "#!/bin/sh\n" + LOAD_SCRIPT + "kdumpy_early\n"

MKINITCPIO_INSTALL = """#!/bin/bash
# Installed by `kdumpy install --initramfs`: add kdumpy-early to HOOKS in mkinitcpio.conf.
build() {
    add_binary kexec
    add_file "/boot/vmlinuz-linux" /kdumpy/vmlinuz
    [[ -f %(initrd)s ]] && add_file %(initrd)s /kdumpy/initrd.img
    add_file %(conf)s /etc/kdumpy/early.conf
    add_runscript
}
help() { echo "Load the kdump capture kernel early (rd.earlykdump on the command line)."; }
""".replace("%(initrd)s", EARLY_INITRD).replace("%(conf)s", EARLY_CONF)

MKINITCPIO_HOOK = "#!/usr/bin/ash\n" + LOAD_SCRIPT + "run_earlyhook() {\n    kdumpy_early\n}\n"

#: generator -> [(path, text)]; the first path marks the generator as installed.
HOOK_FILES: dict[str, list[tuple[str, str]]] = {
    "initramfs-tools": [("/etc/initramfs-tools/hooks/kdumpy", INITRAMFS_TOOLS_HOOK),
                        ("/etc/initramfs-tools/scripts/init-top/kdumpy",
                         INITRAMFS_TOOLS_INIT_TOP)],
    "dracut": [("/usr/lib/dracut/modules.d/99kdumpy-early/module-setup.sh",
                DRACUT_MODULE_SETUP),
               ("/usr/lib/dracut/modules.d/99kdumpy-early/kdumpy-early.sh", DRACUT_HOOK)],
    "mkinitcpio": [("/etc/initcpio/install/kdumpy-early", MKINITCPIO_INSTALL),
                   ("/etc/initcpio/hooks/kdumpy-early", MKINITCPIO_HOOK)],
}
#: How to tell which generator the system uses, and how to rebuild with it.
GENERATOR_MARKERS = {"initramfs-tools": "/usr/sbin/update-initramfs",
                     "dracut": "/usr/bin/dracut", "mkinitcpio": "/usr/bin/mkinitcpio"}
REBUILD = {"initramfs-tools": "update-initramfs -u",
           "dracut": "dracut -f --add kdumpy-early",
           "mkinitcpio": "add kdumpy-early to HOOKS in /etc/mkinitcpio.conf, then mkinitcpio -P"}


def detect_generators(paths: SystemPaths) -> list[str]:
    """The initramfs generators installed under the root (by their executables)."""
    return [g for g, exe in GENERATOR_MARKERS.items() if os.path.exists(paths.path(exe))]


def early_conf(capture_cmdline: str) -> str:
    """``/etc/kdumpy/early.conf``: sourced by the boot script (POSIX sh)."""
    quoted = "'" + capture_cmdline.replace("'", "'\\''") + "'"
    return ("# Written by `kdumpy install --initramfs`; the capture kernel's command line "
            "for early kdump.\n" f"KDUMPY_CMDLINE={quoted}\n")


@dataclass
class EarlyState:
    switch_on: bool                   # rd.earlykdump on /proc/cmdline
    installed: list[str]              # generators whose hook files exist
    loaded: bool | None               # /sys/kernel/kexec_crash_loaded

    @property
    def active(self) -> bool:
        return self.switch_on and bool(self.installed)


def state(paths: SystemPaths, cmdline: str, loaded: bool | None) -> EarlyState:
    installed = [g for g, files in HOOK_FILES.items()
                 if os.path.exists(paths.path(files[0][0]))]
    return EarlyState(SWITCH in cmdline.split(), installed, loaded)


def initramfs_older_than_image(paths: SystemPaths, release: str) -> str | None:
    """Why early kdump's copy of the capture image is out of date, or None: the hooks copy
    ``capture-RELEASE.img`` when the initramfs is built, so an image rebuilt later is not
    in it."""
    from kdumpy.setup.capture_image.build import image_path
    img = image_path(paths, release)
    initrd = next((p for p in paths.boot_initrd_candidates(release) if os.path.isfile(p)), None)
    if initrd is None:
        return None
    if not os.path.isfile(img):
        return (f"{img} is missing: the initramfs holds no capture image, so early kdump "
                "does not load")
    if os.path.getmtime(img) > os.path.getmtime(initrd):
        return f"{initrd} is older than {img}: early kdump would boot the old image"
    return None
