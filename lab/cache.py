"""Where the lab keeps what it downloads and builds, and per-path locking.

Layout (root is ``$KDUMPY_LAB_CACHE`` or ``~/.cache/kdumpy/lab``)::

    ROOT/
      downloads/                      .deb files while being unpacked (deleted afterwards)
      <kernel-release>/
        kernel.json                   package name, version, release, deb sha256
        kernel/                       the package unpacked with dpkg-deb -x (+ modules.dep)
        initramfs.cpio.gz             the guest initramfs (same for first and capture kernel)
        initramfs.json                what went into it and its digest
        crash-<crashkernel>/          one crash run (meta.json written last = complete)

Nothing here is needed in git; every file can be rebuilt by ``python -m lab run``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """The lab cache root, honouring ``KDUMPY_LAB_CACHE``."""
    env = os.environ.get("KDUMPY_LAB_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "kdumpy" / "lab"


def release_dir(release: str, root: Path | None = None) -> Path:
    """Directory for everything belonging to one kernel release."""
    if "/" in release or release in ("", ".", ".."):
        raise ValueError(f"bad kernel release {release!r}")
    return (root or cache_root()) / release


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block's duration.

    Used so that two processes (e.g. two pytest sessions) never build the same kernel or run
    at once; the second waits and then finds the first one's result in the cache.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
