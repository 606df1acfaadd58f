"""Run one fuzz case in a forked child, bounded: RLIMIT_AS, RLIMIT_FSIZE, a wall-clock
timeout, stdout and stderr to files. The child inherits the parent's imports (no interpreter
start per case) and reports its verdict as JSON on a pipe."""

from __future__ import annotations

import json
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    verdict: dict[str, Any] | None   #: what the child reported (None: it died or hung)
    status: int                      #: raw wait status
    timed_out: bool
    seconds: float

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def run_forked(fn: Callable[[], dict[str, Any]], *, timeout: float, as_bytes: int,
               fsize_bytes: int, stdout: str, stderr: str) -> Outcome:
    """``fn()`` in a child under the limits; its return value is the verdict."""
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death
            out = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, 1)
            os.dup2(err, 2)
            verdict = fn()
        except BaseException:  # noqa: BLE001 - the harness's own failure, reported
            verdict = {"harness_error": traceback.format_exc()}
            code = 70
        try:
            os.write(w, json.dumps(verdict, default=str).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    timed_out = False
    status = 0
    os.set_blocking(r, False)
    while True:
        try:
            data = os.read(r, 1 << 16)
            if data:
                chunks.append(data)
        except BlockingIOError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.005)
    while True:
        try:
            data = os.read(r, 1 << 16)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(r)
    raw = b"".join(chunks)
    verdict = None
    if raw and not timed_out:
        try:
            verdict = json.loads(raw)
        except ValueError:
            verdict = None
    return Outcome(verdict, status, timed_out, time.monotonic() - t0)
