"""Small files written beside a dump (``dmesg.txt``, ``report.json``), finished atomically.

Written as ``NAME.incomplete`` (mode 0600), fsynced, renamed; an existing file is never
replaced unless the caller forces it.
"""

from __future__ import annotations

import os

from kdumpy.capture.targets import INCOMPLETE_SUFFIX, make_private_dirs
from kdumpy.errors import TargetExistsError


def write_file_atomically(path: str, data: bytes, *, force: bool = False) -> str:
    path = os.path.abspath(path)
    if os.path.lexists(path) and not force:
        raise TargetExistsError(f"{path}: exists; not overwritten (pass --force)")
    make_private_dirs(os.path.dirname(path))
    tmp = path + INCOMPLETE_SUFFIX
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while len(view):
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def dmesg_path_for(dest: str) -> str:
    """``dmesg.txt`` beside the dump, as kdumpctl keeps ``vmcore-dmesg.txt`` beside ``vmcore``;
    ``DEST-dmesg.txt`` when the directory already holds another dump's ``dmesg.txt``."""
    d = os.path.dirname(os.path.abspath(dest))
    plain = os.path.join(d, "dmesg.txt")
    return plain if not os.path.lexists(plain) else os.path.abspath(dest) + "-dmesg.txt"
