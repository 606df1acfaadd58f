"""Debian's debug vmlinux for a lab kernel, for drgn, crash and gdb.

``linux-image-<release>-dbg`` is about 1 GB (5-7 GiB installed, mostly module debug info);
only ``./usr/lib/debug/boot/vmlinux-<release>`` (~600 MB) is extracted, straight from the
package's data tarball, and the package is deleted afterwards. The file's GNU build ID
equals VMCOREINFO ``BUILD-ID`` of a dump of that kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache import cache_root


def debug_vmlinux(release: str) -> Path:
    """Path of the debug vmlinux for ``release``, downloading and extracting it once."""
    dest = cache_root() / release / "vmlinux-dbg"
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    package = f"linux-image-{release}-dbg"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".dbg-") as tmp:
        r = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed: {r.stderr.strip()}")
        deb = next(Path(tmp).glob("*.deb"))
        member = f"./usr/lib/debug/boot/vmlinux-{release}"
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-C", tmp, member], stdin=fsys.stdout,
                             capture_output=True, text=True)
        fsys.stdout.close()  # type: ignore[union-attr]
        fsys.wait()
        got = Path(tmp) / member
        if tar.returncode != 0 or not got.is_file():
            raise RuntimeError(f"{deb.name} has no {member}: {tar.stderr.strip()}")
        os.unlink(deb)
        partial = dest.with_suffix(".partial")
        shutil.move(str(got), partial)
        os.replace(partial, dest)
    return dest
