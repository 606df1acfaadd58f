"""The systemd units and the udev rule kdumpy ships, and ``kdumpy install``.

Both run kdumpy without ``--config``, so ``/etc/kdumpy.toml`` is optional (defaults apply).

* ``kdumpy.service`` (running system): loads the capture kernel at boot once local
  filesystems are up, unloads on stop. ``ConditionKernelCommandLine=crashkernel`` matches
  the word as a parameter name (``crashkernel=...``, also ``,high``), systemd.unit(5);
  ``ConditionPathExists=!/proc/vmcore`` keeps it from running in the capture kernel.
* ``kdumpy.service`` runs ``kdumpy load``, which first rebuilds kdumpy's capture image
  (:mod:`kdumpy.setup.capture_image`) when it is missing or stale; the capture kernel boots
  that image, which saves the dump without systemd.
* ``kdumpy-save.service`` (capture kernel, only with ``[load] initrd`` set to the system's
  initramfs): the capture command line carries ``systemd.unit=kdumpy-save.service``
  (:mod:`kdumpy.setup.cmdline`), so systemd boots the normal root filesystem and starts
  only this unit and its dependencies, as Debian's kdump-tools does. It runs ``kdumpy capture``, which performs the final or failure action
  itself and exits 0 (complete) or 4 (failed, action done); anything else (a crash, an
  unreadable config, an OOM kill) fails the unit, and ``FailureAction=reboot-force``
  reboots the machine rather than leaving it in the capture kernel.
* ``98-kdumpy.rules``: reloads on CPU add/remove and memory online/offline, because the
  capture kernel's ELF header lists the CPUs and memory ranges; skipped when the kernel
  updates the header itself (``crash_hotplug`` = 1 on the ``cpu``/``memory`` subsystem
  devices, Linux 6.5+; udev's ``ATTRS`` looks at parent devices too). The same idea as
  kdump-utils' ``98-kexec.rules``. initramfs-tools copies every rule under
  ``/etc/udev/rules.d`` into the initramfs; the rule does nothing unless systemd runs
  (``/run/systemd/system`` exists, sd_booted(3)), so that copy stays inert.

ExecStart lines are quoted for systemd (systemd.service(5), "Command lines"): words with
spaces or quotes in double quotes with ``\\`` escapes, ``%`` doubled (specifiers) and ``$``
doubled (variable expansion).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kdumpy.setup.config import __doc__ as CONFIG_DOC
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.triggers import SYSCTL_DROPIN, sysctl_dropin

LOAD_UNIT = "kdumpy.service"
SAVE_UNIT = "kdumpy-save.service"
UDEV_RULE = "98-kdumpy.rules"
#: ``kdumpy capture``'s status after a failed save whose failure action ran.
CAPTURE_FAILED_HANDLED = 4


def systemd_quote(word: str) -> str:
    word = word.replace("%", "%%").replace("$", "$$")
    if word and re.fullmatch(r"[A-Za-z0-9/_.,:=@+%$-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: Sequence[str]) -> str:
    return " ".join(systemd_quote(a) for a in argv)


def kdumpy_command() -> list[str]:
    """How units and hooks run kdumpy: this interpreter by absolute path (a venv's
    ``bin/python`` keeps its ``site-packages``), never whatever ``kdumpy`` is first on
    PATH at boot."""
    return [os.path.abspath(sys.executable), "-m", "kdumpy"]


#: Debian's kernel packages run ``run-parts /etc/kernel/postinst.d`` (and postrm.d) with the
#: version as $1 after depmod, in name order: before ``initramfs-tools``, so an early-kdump
#: initramfs built there finds the new kernel's capture image.
POSTINST_HOOK = "/etc/kernel/postinst.d/50-kdumpy"
POSTRM_HOOK = "/etc/kernel/postrm.d/50-kdumpy"
#: systemd's kernel-install(8) runs ``/etc/kernel/install.d/*.install COMMAND VERSION ...``
#: (Fedora, Arch with kernel-install): ``add`` after installing, ``remove`` before removing.
KERNEL_INSTALL_PLUGIN = "/etc/kernel/install.d/50-kdumpy.install"


def postinst_hook(cmd: Sequence[str]) -> str:
    # a failed build must not fail the kernel package: it is reported, and status says so
    return f"""#!/bin/sh
# Installed by `kdumpy install`: build kdumpy's capture image for a new kernel ($1).
[ -n "$1" ] || exit 0
{' '.join(_sh(a) for a in cmd)} rebuild --kernel "$1" || \\
    echo "kdumpy: capture image for $1 not built; see kdumpy status" >&2
exit 0
"""


def postrm_hook() -> str:
    return """#!/bin/sh
# Installed by `kdumpy install`: drop a removed kernel's capture image ($1).
[ -n "$1" ] || exit 0
rm -f "/var/lib/kdumpy/capture-$1.img" "/var/lib/kdumpy/capture-$1.json"
exit 0
"""


def kernel_install_plugin(cmd: Sequence[str]) -> str:
    return f"""#!/bin/sh
# Installed by `kdumpy install`: kdumpy's capture image for kernel-install(8).
COMMAND="$1"
KERNEL_VERSION="$2"
case "$COMMAND" in
    add)
        {' '.join(_sh(a) for a in cmd)} rebuild --kernel "$KERNEL_VERSION" || \\
            echo "kdumpy: capture image for $KERNEL_VERSION not built" >&2 ;;
    remove)
        rm -f "/var/lib/kdumpy/capture-$KERNEL_VERSION.img" \
              "/var/lib/kdumpy/capture-$KERNEL_VERSION.json" ;;
esac
exit 0
"""


def _sh(word: str) -> str:
    import shlex
    return shlex.quote(word)


def load_unit(cmd: Sequence[str]) -> str:
    return f"""# Installed by `kdumpy install`.
[Unit]
Description=Load the kdump capture kernel (kdumpy)
Documentation=https://docs.kernel.org/admin-guide/kdump/kdump.html
After=local-fs.target
ConditionKernelCommandLine=crashkernel
ConditionPathExists=!/proc/vmcore

[Service]
Type=oneshot
RemainAfterExit=yes
# load rebuilds the capture image first when it is stale (a new kdumpy, config or disk)
TimeoutStartSec=600
ExecStart={exec_line([*cmd, "load"])}
ExecReload={exec_line([*cmd, "load"])}
ExecStop={exec_line([*cmd, "unload"])}

[Install]
WantedBy=multi-user.target
"""


def save_unit(cmd: Sequence[str]) -> str:
    return f"""# Installed by `kdumpy install`; started by the capture kernel's
# systemd.unit={SAVE_UNIT} command-line parameter, never enabled.
[Unit]
Description=Save the crash dump (kdumpy, capture kernel)
ConditionPathExists=/proc/vmcore
Wants=network-online.target
After=local-fs.target network-online.target
FailureAction=reboot-force

[Service]
Type=oneshot
TimeoutStartSec=3600
ExecStart={exec_line([*cmd, "capture"])}
SuccessExitStatus={CAPTURE_FAILED_HANDLED}
StandardOutput=journal+console
StandardError=journal+console
"""


def udev_rule(systemctl: str = "/bin/systemctl") -> str:
    return f"""# Installed by `kdumpy install`: reload the capture kernel when CPUs or memory change,
# unless the kernel updates the loaded image's ELF header itself (crash_hotplug = 1).
SUBSYSTEM=="cpu", ATTRS{{crash_hotplug}}=="1", GOTO="kdumpy_end"
SUBSYSTEM=="memory", ATTRS{{crash_hotplug}}=="1", GOTO="kdumpy_end"
SUBSYSTEM=="cpu", ACTION=="add|remove", GOTO="kdumpy_reload"
SUBSYSTEM=="memory", ACTION=="online|offline", GOTO="kdumpy_reload"
GOTO="kdumpy_end"

LABEL="kdumpy_reload"
TEST!="/sys/kernel/kexec_crash_loaded", GOTO="kdumpy_end"
# not in an initramfs (initramfs-tools copies /etc/udev/rules.d into it) or without systemd
TEST!="/run/systemd/system", GOTO="kdumpy_end"
RUN+="{systemctl} --no-block try-reload-or-restart {LOAD_UNIT}"

LABEL="kdumpy_end"
"""


def example_config() -> str:
    """The annotated example of :mod:`kdumpy.setup.config`, every line commented out."""
    doc = CONFIG_DOC or ""
    body = doc.split("Example::", 1)[1] if "Example::" in doc else ""
    lines = [ln.removeprefix("    ") for ln in body.strip("\n").splitlines()]
    out = ["# kdumpy configuration (TOML). Every key is optional; the values below are",
           "# examples. Validate with `kdumpy status`.", ""]
    for ln in lines:
        if not ln.strip():
            out.append("")
        elif ln.lstrip().startswith("#") or ln.startswith("["):
            out.append(ln)
        else:
            out.append("# " + ln)
    return "\n".join(out).rstrip() + "\n"


@dataclass
class Installed:
    path: str
    written: bool                     # False: it existed and was kept
    removed: bool = False             # a stale file of ours was deleted


def _write(path: str, text: str, mode: int, *, keep_existing: bool = False) -> Installed:
    if keep_existing and os.path.exists(path):
        return Installed(path, False)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return Installed(path, True)


def install(paths: SystemPaths, cmd: Sequence[str] | None = None,
            triggers: Mapping[str, int] | None = None) -> list[Installed]:
    """Write the units, the udev rule, an example config (kept if present), the kernel
    postinst/postrm hooks and kernel-install plugin (the capture image of a new kernel),
    and the hook directories under ``paths.root``. Nothing is enabled or reloaded here.

    With ``triggers`` (the config's ``[triggers]``), also the sysctl.d drop-in
    (:data:`kdumpy.setup.triggers.SYSCTL_DROPIN`) that systemd-sysctl applies at boot;
    without, a drop-in left by an earlier install is removed."""
    cmd = list(cmd) if cmd else kdumpy_command()
    out = [
        _write(os.path.join(paths.systemd_unit_dir, LOAD_UNIT), load_unit(cmd), 0o644),
        _write(os.path.join(paths.systemd_unit_dir, SAVE_UNIT), save_unit(cmd), 0o644),
        _write(os.path.join(paths.udev_rules_dir, UDEV_RULE), udev_rule(), 0o644),
        _write(paths.config, example_config(), 0o600, keep_existing=True),
        _write(paths.path(POSTINST_HOOK), postinst_hook(cmd), 0o755),
        _write(paths.path(POSTRM_HOOK), postrm_hook(), 0o755),
        _write(paths.path(KERNEL_INSTALL_PLUGIN), kernel_install_plugin(cmd), 0o755),
    ]
    for d in ("/etc/kdumpy/pre.d", "/etc/kdumpy/post.d"):
        p = paths.path(d)
        existed = os.path.isdir(p)
        os.makedirs(p, mode=0o700, exist_ok=True)
        out.append(Installed(p, not existed))
    dropin = paths.path(SYSCTL_DROPIN)
    if triggers:
        out.append(_write(dropin, sysctl_dropin(triggers), 0o644))
    elif os.path.exists(dropin):
        os.unlink(dropin)
        out.append(Installed(dropin, False, removed=True))
    return out


def install_early(paths: SystemPaths, capture_cmdline: str,
                  cmd: Sequence[str] | None = None) -> list[Installed]:
    """Early-kdump hooks for every initramfs generator (:mod:`kdumpy.setup.early`) and the
    capture command line they copy into the initramfs. Nothing is rebuilt here."""
    from kdumpy.setup import early
    out = [_write(paths.path(early.EARLY_CONF), early.early_conf(capture_cmdline), 0o644)]
    for files in early.hook_files(list(cmd) if cmd else kdumpy_command()).values():
        for path, text in files:
            out.append(_write(paths.path(path), text, 0o755))
    return out


#: Where systemd looks for unit files, the admin's first (systemd.unit(5), "Unit File Load
#: Path"); ``systemctl enable`` links a unit into ``/etc/systemd/system/<target>.wants/``.
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")


def unit_state(paths: SystemPaths, unit: str) -> str:
    """``missing``, ``disabled`` or ``enabled`` (a ``*.wants/`` link in /etc)."""
    if not any(os.path.exists(paths.path(f"{d}/{unit}")) for d in UNIT_DIRS):
        return "missing"
    etc = paths.path("/etc/systemd/system")
    try:
        wants = [d for d in os.listdir(etc) if d.endswith(".wants")]
    except OSError:
        wants = []
    if any(os.path.lexists(os.path.join(etc, w, unit)) for w in wants):
        return "enabled"
    return "disabled"
