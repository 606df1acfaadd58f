"""``kdumpy test``: crash the machine on purpose and find out afterwards whether the dump
arrived (as ``kdumpctl test``).

The test id is written to ``/var/lib/kdumpy/test-id`` and synced before the crash; the
capture image binds ``/var/lib/kdumpy`` at its own path when it lives on the target's
filesystem (:mod:`kdumpy.setup.capture_image.plan`), so the capture session reads it and
records it in ``last-capture.json`` and the dump's ``report.json``; ``kdumpy status`` after the
reboot compares the two. The crash is ``echo c > /proc/sysrq-trigger``
(Documentation/admin-guide/sysrq.rst: ``c`` "will perform a system crash and a crashdump
will be taken if configured"; the trigger file works whatever ``kernel.sysrq`` says).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

from kdumpy.errors import KdumpyError
from kdumpy.setup import state, sysfs
from kdumpy.setup.paths import SystemPaths

WARNING = ("This crashes the kernel NOW (sysrq-c): every program dies and unsaved data is "
           "lost. The capture kernel saves a dump and the machine reboots.")


def new_test_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}-{uuid.uuid4().hex[:12]}"


def run_test(paths: SystemPaths, *, confirm: Callable[[str], bool],
             crash: Callable[[SystemPaths], None] | None = None,
             sync: Callable[[], None] = os.sync, require_loaded: bool = True) -> str:
    """Write a test id and crash. Returns the id (only when ``crash`` returns, i.e. in
    tests, or when the kernel did not crash)."""
    if require_loaded and sysfs.crash_loaded(paths) is not True:
        raise KdumpyError("no capture kernel is loaded: a crash now would just hang or "
                          "reboot without a dump (see `kdumpy status`, then `kdumpy load`)")
    if not confirm(WARNING):
        raise KdumpyError("not confirmed; nothing done")
    test_id = new_test_id()
    state.write_test_id(paths, test_id)
    sync()
    (crash or sysrq_crash)(paths)
    return test_id


def sysrq_crash(paths: SystemPaths) -> None:
    with open(paths.sysrq_trigger, "w") as f:
        f.write("c")
