"""A real-kernel crash lab: boot Debian kernels in QEMU, crash them, capture with kdumpy.

``kdumpy lab run`` (or ``python -m kdumpy.lab run``) downloads a Debian kernel package, builds
a tiny busybox initramfs, boots the kernel in QEMU (TCG) with ``crashkernel=``, loads a
capture kernel with the host's kexec-tools, fills memory with known content, crashes the
kernel with sysrq, and in the capture kernel runs the project's real ``kdumpy save`` next to a
raw copy of ``/proc/vmcore`` and a ``makedumpfile`` dump. Everything is cached under
``~/.cache/kdumpy/lab`` (``KDUMPY_LAB_CACHE``). See :mod:`kdumpy.lab.run` for the sequence and
:mod:`kdumpy.lab.corpus` for the Python API used by the pytest fixtures.

Environment: ``KDUMPY_LAB_KERNELS`` pins kernels, ``KDUMPY_LAB_REUSE=any`` reuses runs made by
an older kdumpy, ``KDUMPY_LAB_TIMEOUT_SCALE`` stretches every timeout.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kdumpy lab``; see :mod:`kdumpy.lab.cli`."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
