"""What the capture kernel does after saving: reboot, poweroff, halt, or a shell.

kdump-utils' ``failure_action``/``final_action`` values (minus ``dump_to_rootfs``). Under
systemd (``/run/systemd/system`` exists, sd_booted(3)) ``systemctl --force reboot`` stops
no services but still unmounts cleanly (systemctl(1): ``--force`` given once); without
systemd as PID 1 (a plain initramfs, a chroot), ``reboot -f -f`` and friends: twice forced
is the reboot(2) call itself for systemd's binaries, and busybox/sysvinit take the repeated
flag alike; everything was synced before. ``shell`` starts systemd's ``emergency.target`` (a root
shell on the console), or ``/bin/sh`` on the console without systemd. The runner is
injectable: tests and ``kdumpy capture --no-action`` record the action instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from kdumpy.setup.paths import SystemPaths

ACTIONS = ("reboot", "poweroff", "halt", "shell")


class ActionRunner(Protocol):
    def perform(self, action: str) -> None: ...


def action_argv(action: str, systemd: bool) -> list[str]:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if action == "shell":
        return (["systemctl", "--no-block", "isolate", "emergency.target"] if systemd
                else ["/bin/sh"])
    return ["systemctl", "--force", action] if systemd else [action, "-f", "-f"]


class SystemActions:
    """Carries the action out on this machine (argv only)."""

    def __init__(self, paths: SystemPaths,
                 run: Callable[[Sequence[str]], object] | None = None) -> None:
        self.paths = paths
        self.run = run or (lambda argv: subprocess.run(list(argv), check=False))

    def perform(self, action: str) -> None:
        os.sync()
        argv = action_argv(action, os.path.isdir(self.paths.run_systemd_system))
        self.run(argv)


class RecordedActions:
    """Remembers the actions instead of performing them (tests, ``--no-action``)."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.performed: list[str] = []
        self.log = log

    def perform(self, action: str) -> None:
        self.performed.append(action)
        if self.log is not None:
            self.log(f"would {action} now (--no-action)")
