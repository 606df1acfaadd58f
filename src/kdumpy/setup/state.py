"""kdumpy's small state files: how the capture kernel was loaded, the pending test id, and
the outcome of the last capture.

* ``/run/kdumpy/loaded.json`` (gone at reboot, like the loaded image): the load method, so
  ``unload`` uses the same syscall.
* ``/var/lib/kdumpy/test-id``: written by ``kdumpy test`` just before the crash; the capture
  session (the capture kernel boots the same root filesystem) moves it into
  ``last-capture.json``, so a later real crash is not taken for the test; while it is still
  there, ``status`` reports the test as pending (or lost, after a reboot without capture).
* ``/var/lib/kdumpy/last-capture.json``: written by the capture session (status, dump
  directory, test id), read by ``status`` after the reboot; works for every target type.

Files are written mode 0600 in 0700 directories, through a temporary name, fsync and rename.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kdumpy.capture.targets import write_file_atomic
from kdumpy.setup.paths import SystemPaths


def write_private(path: str, data: bytes) -> None:
    """Write one of kdumpy's state files atomically, mode 0600, parents 0700."""
    write_file_atomic(path, data, replace=True)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_load_record(paths: SystemPaths, record: dict[str, Any]) -> None:
    write_private(paths.load_record, json.dumps(record, indent=2).encode() + b"\n")


def read_load_record(paths: SystemPaths) -> dict[str, Any] | None:
    return _read_json(paths.load_record)


def clear_load_record(paths: SystemPaths) -> None:
    try:
        os.unlink(paths.load_record)
    except OSError:
        pass


def write_test_id(paths: SystemPaths, test_id: str) -> None:
    write_private(paths.test_id, test_id.encode() + b"\n")


def read_test_id(paths: SystemPaths) -> str | None:
    try:
        with open(paths.test_id, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


def clear_test_id(paths: SystemPaths) -> None:
    """The capture session consumed the id (it is in last-capture.json now)."""
    try:
        os.unlink(paths.test_id)
    except OSError:
        pass


def write_last_capture(paths: SystemPaths, record: dict[str, Any]) -> None:
    write_private(paths.last_capture, json.dumps(record, indent=2, sort_keys=True).encode()
                  + b"\n")


def read_last_capture(paths: SystemPaths) -> dict[str, Any] | None:
    return _read_json(paths.last_capture)
