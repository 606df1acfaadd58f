"""A one-line kernel module for the lab: loading it hits a ``WARN()``.

Debian's kernels give userspace no module-free way to provoke a WARN (6.1 has no
FAULT_INJECTION, LKDTM or function error injection), and the trigger issue wants a crash by
WARN with ``panic_on_warn=1`` captured like sysrq-c. The module is built against Debian's own
``linux-headers-<release>``: that package, its ``-common`` sibling and the ``linux-kbuild``
package it depends on are downloaded and unpacked into the lab cache (their symlinks are
relative; only the one-line top Makefile names an absolute path and is pointed at the
unpacked copy), nothing is installed on the host. BTF for modules is skipped
(``CONFIG_DEBUG_INFO_BTF_MODULES=``): it needs pahole and the vmlinux, and the module does
not need it. The kernel loads it unsigned (CONFIG_MODULE_SIG without _FORCE), tainting
itself E and O.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache import locked, release_dir
from .kernels import Kernel

MODULE_NAME = "kdumpy_warn"
WARN_TEXT = "KDUMPY-LAB-WARN: a deliberate WARN() from the kdumpy lab"

SOURCE = r"""// SPDX-License-Identifier: GPL-2.0
/* kdumpy lab: loading this module hits one WARN(); with panic_on_warn=1 the kernel panics
 * through the WARN path and kdump captures it. */
#include <linux/module.h>
#include <linux/bug.h>

static int __init kdumpy_warn_init(void)
{
	WARN(1, "%s\n", "@WARN_TEXT@");
	return 0;
}

static void __exit kdumpy_warn_exit(void)
{
}

module_init(kdumpy_warn_init);
module_exit(kdumpy_warn_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdumpy lab: trigger one WARN()");
"""


def header_packages(release: str) -> list[str]:
    """``linux-headers-<release>`` and the -common and linux-kbuild packages it depends on."""
    pkg = f"linux-headers-{release}"
    out = subprocess.run(["apt-cache", "show", pkg], capture_output=True, text=True)
    if out.returncode != 0 or "Depends:" not in out.stdout:
        raise RuntimeError(f"apt-cache show {pkg} failed (run apt-get update): {out.stderr.strip()}")
    depends = re.search(r"^Depends: (.*)$", out.stdout, re.M)
    names = re.findall(r"(linux-(?:headers-[^\s,()]+-common|kbuild-[^\s,()]+))",
                       depends.group(1) if depends else "")
    return [pkg, *dict.fromkeys(names)]


def ensure_warn_module(kernel: Kernel) -> Path:
    """The built ``kdumpy_warn.ko`` for ``kernel`` (cached in the lab cache)."""
    return build_module(kernel, MODULE_NAME, SOURCE.replace("@WARN_TEXT@", WARN_TEXT),
                        "warn-module")


def build_module(kernel: Kernel, name: str, source: str, cache_name: str) -> Path:
    """``name.ko`` built from the C ``source`` against ``kernel``'s Debian headers (downloaded
    and unpacked, never installed), cached as ``<release>/<cache_name>/<name>.ko``."""
    out_dir = release_dir(kernel.release) / cache_name
    ko = out_dir / f"{name}.ko"
    with locked(out_dir.with_name(out_dir.name + ".lock")):
        if ko.is_file():
            return ko
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{cache_name}-") as tmp:
            t = Path(tmp)
            (t / "debs").mkdir()
            pkgs = header_packages(kernel.release)
            r = subprocess.run(["apt-get", "download", *pkgs], cwd=t / "debs",
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"apt-get download {' '.join(pkgs)} failed: {r.stderr.strip()}")
            root = t / "root"
            for deb in sorted((t / "debs").glob("*.deb")):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            tree = root / "usr/src" / f"linux-headers-{kernel.release}"
            top = tree / "Makefile"
            top.write_text(top.read_text().replace("/usr/src/", f"{root}/usr/src/"))
            src = t / "mod"
            src.mkdir()
            (src / f"{name}.c").write_text(source)
            (src / "Kbuild").write_text(f"obj-m := {name}.o\n")
            r = subprocess.run(["make", "-C", str(tree), f"M={src}",
                                "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"],
                               capture_output=True, text=True)
            built = src / f"{name}.ko"
            if r.returncode != 0 or not built.is_file():
                raise RuntimeError(f"building {name}.ko for {kernel.release} failed:\n"
                                   + (r.stdout + r.stderr)[-2000:])
            shutil.copy2(built, ko)
    return ko
