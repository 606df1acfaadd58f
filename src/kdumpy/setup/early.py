"""Early kdump: load the capture kernel from the initramfs, before the root is mounted.

A kernel that dies during boot, before ``kdumpy.service`` runs, is only dumped if the capture
kernel was loaded from the initramfs. ``kdumpy install --initramfs`` writes a hook for each
initramfs generator (initramfs-tools on Debian/Ubuntu, dracut on Fedora/RHEL/SUSE,
mkinitcpio on Arch); the hook copies ``kexec`` (kexec-tools), the kernel image, kdumpy's
capture image for that kernel (:mod:`kdumpy.setup.capture_image`, built by the hook when
missing) and the capture command line into the initramfs, and its boot script runs
``kexec -s -p`` (``-s``: kexec_file_load(2), which Secure Boot allows) when
``rd.earlykdump`` is on the kernel command line. Without a capture image it loads nothing:
a capture kernel without one could not mount the dump target. Later, ``kdumpy load`` from kdumpy.service
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
#: An admin's own capture initrd for early kdump; when absent the hooks copy kdumpy's
#: capture image of the kernel being packed (``/var/lib/kdumpy/capture-VERSION.img``),
#: building it first if needed.
EARLY_INITRD = "/var/lib/kdumpy/early-initrd.img"
IMAGE_PATTERN = "/var/lib/kdumpy/capture-%s.img"

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
    if [ ! -f /kdumpy/initrd.img ]; then
        # a capture kernel without its image could not mount the dump target
        echo "kdumpy: {SWITCH}: no capture image in the initramfs, early kdump off" \\
            > /dev/kmsg
        return 0
    fi
    . /etc/kdumpy/early.conf
    kexec -s -p /kdumpy/vmlinuz --initrd=/kdumpy/initrd.img --append="$KDUMPY_CMDLINE"
    rc=$?
    echo "kdumpy: early kdump: kexec_file_load exit $rc, loaded=$(cat \\
/sys/kernel/kexec_crash_loaded)" > /dev/kmsg
    return 0
}}
"""


def _pick_image(version: str, rebuild: str) -> str:
    """sh that sets $img to the capture initrd for kernel ``version`` (an sh word):
    the admin's early-initrd.img, else kdumpy's capture image, built when missing."""
    return (f'img={EARLY_INITRD}\n'
            f'if [ ! -f "$img" ]; then\n'
            f'    img={IMAGE_PATTERN % ("${v}")}\n'.replace("${v}", version) +
            f'    [ -f "$img" ] || {rebuild} rebuild --kernel {version} >&2 || true\n'
            f'fi\n'
            f'[ -f "$img" ] || echo "kdumpy: no capture image for {version}: early kdump '
            f'stays off (kdumpy rebuild --kernel {version})" >&2\n')


def _sh_words(cmd: list[str]) -> str:
    import shlex
    return " ".join(shlex.quote(w) for w in cmd)


def initramfs_tools_hook(cmd: list[str]) -> str:
    return ("""#!/bin/sh
# Installed by `kdumpy install --initramfs`: early kdump (see kdumpy.setup.early).
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
copy_exec "$(command -v kexec || echo /sbin/kexec)" /sbin
mkdir -p "$DESTDIR/kdumpy" "$DESTDIR/etc/kdumpy"
cp "/boot/vmlinuz-$version" "$DESTDIR/kdumpy/vmlinuz"
""" + _pick_image('"$version"', _sh_words(cmd)) + f"""[ -f "$img" ] && cp "$img" "$DESTDIR/kdumpy/initrd.img"
cp {EARLY_CONF} "$DESTDIR/etc/kdumpy/early.conf"
exit 0
""")


INITRAMFS_TOOLS_INIT_TOP = """#!/bin/sh
# Installed by `kdumpy install --initramfs`: runs before modules load and the root is mounted.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
""" + LOAD_SCRIPT + "kdumpy_early\nexit 0\n"


def dracut_module_setup(cmd: list[str]) -> str:
    # dracut: $kernel is the version being packed (dracut.modules(7))
    pick = "".join("    " + ln + "\n" for ln in _pick_image('"$kernel"', _sh_words(cmd))
                   .splitlines())
    return f"""#!/bin/bash
# Installed by `kdumpy install --initramfs`: early kdump (see kdumpy.setup.early).
check() {{ return 255; }}
depends() {{ return 0; }}
install() {{
    inst_binary kexec
    local k
    for k in "/boot/vmlinuz-$kernel" "/lib/modules/$kernel/vmlinuz"; do
        [ -f "$k" ] && {{ inst_simple "$k" /kdumpy/vmlinuz; break; }}
    done
{pick}    [ -f "$img" ] && inst_simple "$img" /kdumpy/initrd.img
    inst_simple {EARLY_CONF} /etc/kdumpy/early.conf
    inst_hook cmdline 00 "$moddir/kdumpy-early.sh"
}}
"""


DRACUT_HOOK = "#!/bin/sh\n" + LOAD_SCRIPT + "kdumpy_early\n"


def mkinitcpio_install(cmd: list[str]) -> str:
    # mkinitcpio: $KERNELVERSION is the version being packed; Arch keeps the image as
    # /usr/lib/modules/VERSION/vmlinuz and installs it as /boot/vmlinuz-PKGBASE (the name
    # in /usr/lib/modules/VERSION/pkgbase: vmlinuz-linux, vmlinuz-linux-lts, ...)
    pick = "".join("    " + ln + "\n" for ln in _pick_image('"$KERNELVERSION"',
                                                          _sh_words(cmd)).splitlines())
    return f"""#!/bin/bash
# Installed by `kdumpy install --initramfs`: add kdumpy-early to HOOKS in mkinitcpio.conf.
build() {{
    local k img base
    add_binary kexec
    base=$(cat "/usr/lib/modules/$KERNELVERSION/pkgbase" 2>/dev/null)
    for k in "/usr/lib/modules/$KERNELVERSION/vmlinuz" "/boot/vmlinuz-$KERNELVERSION" \\
             ${{base:+"/boot/vmlinuz-$base"}}; do
        [[ -f "$k" ]] && {{ add_file "$k" /kdumpy/vmlinuz; break; }}
    done
{pick}    [[ -f "$img" ]] && add_file "$img" /kdumpy/initrd.img
    add_file {EARLY_CONF} /etc/kdumpy/early.conf
    add_runscript
}}
help() {{ echo "Load the kdump capture kernel early (rd.earlykdump on the command line)."; }}
"""


MKINITCPIO_HOOK = "#!/usr/bin/ash\n" + LOAD_SCRIPT + "run_earlyhook() {\n    kdumpy_early\n}\n"


def hook_files(cmd: list[str]) -> dict[str, list[tuple[str, str]]]:
    """generator -> [(path, text)]; the first path marks the generator as installed.
    ``cmd`` runs kdumpy (absolute interpreter) when a hook must build the image."""
    return {
        "initramfs-tools": [("/etc/initramfs-tools/hooks/kdumpy", initramfs_tools_hook(cmd)),
                            ("/etc/initramfs-tools/scripts/init-top/kdumpy",
                             INITRAMFS_TOOLS_INIT_TOP)],
        "dracut": [("/usr/lib/dracut/modules.d/99kdumpy-early/module-setup.sh",
                    dracut_module_setup(cmd)),
                   ("/usr/lib/dracut/modules.d/99kdumpy-early/kdumpy-early.sh", DRACUT_HOOK)],
        "mkinitcpio": [("/etc/initcpio/install/kdumpy-early", mkinitcpio_install(cmd)),
                       ("/etc/initcpio/hooks/kdumpy-early", MKINITCPIO_HOOK)],
    }


#: Where each generator's hook lives (the first file of :func:`hook_files`).
HOOK_MARKERS = {g: files[0][0] for g, files in hook_files(["kdumpy"]).items()}
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
    installed = [g for g, path in HOOK_MARKERS.items() if os.path.exists(paths.path(path))]
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
