"""Setting kdump up on the running system, and the pieces the capture kernel reads.

- :mod:`.paths`: every system path under one root (fake trees in tests).
- :mod:`.sizes`: ``memparse`` and size formatting.
- :mod:`.crashkernel`: the ``crashkernel=`` parser, exactly the kernel's, and its evaluation.
- :mod:`.estimate`: how much to reserve, and the GRUB setting.
- :mod:`.sysfs`: reservation, loaded state, hotplug, kernel config, Secure Boot, lockdown.
- :mod:`.status`: all of it judged, each problem with its fix.
- :mod:`.cmdline`: the capture kernel's command line.
- :mod:`.kexec`: ``kexec_file_load(2)`` through ctypes, kexec-tools as the fallback.
- :mod:`.config`: ``/etc/kdumpy.toml``.
- :mod:`.state`: the load record, the test id, the last capture's outcome.
- :mod:`.hooks`, :mod:`.actions`: pre/post hooks and failure/final actions.
- :mod:`.units`: systemd units, the udev rule, ``kdumpy install``.
- :mod:`.crash_test`: ``kdumpy test``.
- :mod:`.capture_image`: ``kdumpy rebuild``, the capture kernel's own initramfs.

The capture kernel's save job itself is :mod:`kdumpy.service`.
"""
