"""A real-kernel crash lab: boot Debian kernels in QEMU, crash them, capture with kdumpy.

``python -m lab run`` (``scripts/demo``) downloads a Debian kernel package, builds
a tiny busybox initramfs, boots the kernel in QEMU (TCG) with ``crashkernel=``, loads a
capture kernel with the host's kexec-tools, fills memory with known content, crashes the
kernel with sysrq, and in the capture kernel runs the project's real ``kdumpy save`` next to a
raw copy of ``/proc/vmcore`` and a ``makedumpfile`` dump. Everything is cached under
``~/.cache/kdumpy/lab`` (``KDUMPY_LAB_CACHE``). See :mod:`lab.run` for the sequence and
:mod:`lab.corpus` for the Python API used by the pytest fixtures.

Environment: ``KDUMPY_LAB_KERNELS`` pins kernels, ``KDUMPY_LAB_REUSE=any`` reuses runs made by
an older kdumpy, ``KDUMPY_LAB_TIMEOUT_SCALE`` stretches every timeout.

Subcommands: ``run`` (boot/crash/capture, cached; prints every phase's time), ``kernels``
(resolved and cached releases), ``show`` (summaries of cached runs), ``verify`` (page-for-page
comparison of the cached dumps with the raw vmcore), ``clean``.

Design, and why:

* The guest runs the host's own binaries. The host's root is exported read-only over
  virtio-9p and the initramfs ``chroot``s into it after mounting its own proc/sys/devtmpfs
  (and a writable /tmp), so kexec-tools, makedumpfile and the very Python interpreter that
  runs the lab (with ``PYTHONPATH`` at this checkout's ``src``) need no copying; the capture
  kernel's RAM holds only a ~1.3 MB initramfs (busybox-static + 5-9 modules).
* One initramfs serves both kernels (role chosen by ``/proc/vmcore``); per-run settings come
  from ``lab-config.sh`` in the writable 9p share (the run directory), which the guest
  bind-mounts at its host path so paths are the same inside and outside.
* TCG, not KVM: the build machines' /dev/kvm (PVM) is unusable; ``auto`` picks KVM only when
  the CPU shows vmx/svm.

Measured (QEMU 7.2 TCG, 1 GiB guest, -smp 2, 2-core host): a whole run is 35-52 s (6.1.0-56:
~5 s to /init; 6.12.117: ~3 s); ``kdumpy save -d 1 -c lzo`` of the ~900 MB /proc/vmcore takes
11-18 s in the capture kernel; both kernels, both reservations, downloads included, take
about 3 minutes from an empty cache.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lab``; see :mod:`lab.cli`."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
