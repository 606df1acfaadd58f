"""Where the kernel command line lives, and putting ``crashkernel=`` there
(``kdumpy estimate --apply``).

Facts relied on:

* Debian/Ubuntu GRUB: ``update-grub`` sources ``/etc/default/grub`` and then
  ``/etc/default/grub.d/*.cfg`` (a Debian addition), so a drop-in there extends
  ``GRUB_CMDLINE_LINUX_DEFAULT`` (:func:`kdumpy.setup.estimate.apply_grub`).
* Fedora/RHEL (Boot Loader Specification): each kernel has an entry
  ``/boot/loader/entries/*.conf`` whose ``options`` line is its command line; GRUB reads
  them (``GRUB_ENABLE_BLSCFG=true``) and systemd-boot too. ``grubby --update-kernel=ALL
  --args=crashkernel=X`` rewrites every entry's ``options``, replacing a parameter of the
  same name; kernels installed later take their line from ``/etc/kernel/cmdline`` when it
  exists (kernel-install(8)), else from ``GRUB_CMDLINE_LINUX`` in ``/etc/default/grub``
  (grubby also updates that). Fedora's GRUB has no ``grub.d`` drop-in directory.
* Arch: the kernel is ``/usr/lib/modules/RELEASE/vmlinuz`` installed as
  ``/boot/vmlinuz-PKGBASE`` (``pkgbase`` names it: ``linux``, ``linux-lts``), and the
  initramfs ``/boot/initramfs-PKGBASE.img`` (:class:`kdumpy.setup.paths.SystemPaths`).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

from kdumpy.errors import KdumpyError
from kdumpy.setup.cmdline import param_name, split_cmdline
from kdumpy.setup.paths import SystemPaths

BLS_DIR = "/boot/loader/entries"


def bls_entries(paths: SystemPaths) -> list[str]:
    return sorted(glob.glob(os.path.join(paths.path(BLS_DIR), "*.conf")))


def kind(paths: SystemPaths) -> str | None:
    """``bls`` (entries in /boot/loader/entries), ``grub`` (Debian's GRUB) or None."""
    if bls_entries(paths):
        return "bls"
    if os.path.exists(paths.grub_default) or os.path.isdir(paths.path("/boot/grub")):
        return "grub"
    return None


def with_param(cmdline: str, word: str) -> str:
    """``cmdline`` with every parameter named like ``word`` replaced by ``word``."""
    name = param_name(word)
    kept = [w for w in split_cmdline(cmdline) if param_name(w) != name]
    return " ".join([*kept, word])


def _rewrite(path: str, edit) -> bool:  # noqa: ANN001 - (line) -> line | None
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    out = []
    changed = False
    for ln in lines:
        new = edit(ln)
        if new is not None and new != ln:
            changed = True
            ln = new
        out.append(ln)
    if changed:
        tmp = f"{path}.kdumpy-tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(out)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    return changed


def apply_bls(paths: SystemPaths, spec: str) -> list[str]:
    """Put ``crashkernel=spec`` on every BLS entry, in /etc/kernel/cmdline (when present)
    and in GRUB_CMDLINE_LINUX; grubby does the entries on the running system. Returns the
    files changed (or ``grubby``)."""
    word = f"crashkernel={spec}"
    changed: list[str] = []
    grubby = shutil.which("grubby") if paths.is_real_root else None
    if grubby:
        r = subprocess.run([grubby, "--update-kernel=ALL", f"--args={word}"],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise KdumpyError(f"grubby --update-kernel=ALL --args={word} failed: "
                              f"{(r.stderr or r.stdout).strip()}")
        changed.append("grubby --update-kernel=ALL")
    else:
        for entry in bls_entries(paths):
            def opts(ln: str) -> str | None:
                m = re.match(r"^(options\s+)(.*?)(\s*)$", ln)
                return f"{m.group(1)}{with_param(m.group(2), word)}\n" if m else None
            if _rewrite(entry, opts):
                changed.append(entry)
    kcl = paths.path("/etc/kernel/cmdline")
    if os.path.isfile(kcl) and _rewrite(kcl, lambda ln: with_param(ln.strip(), word) + "\n"
                                        if ln.strip() else None):
        changed.append(kcl)
    grub = paths.grub_default
    if os.path.isfile(grub) and not grubby:
        def linux(ln: str) -> str | None:
            m = re.match(r'^GRUB_CMDLINE_LINUX="(.*)"\s*$', ln)
            return f'GRUB_CMDLINE_LINUX="{with_param(m.group(1), word)}"\n' if m else None
        if _rewrite(grub, linux):
            changed.append(grub)
    return changed
