"""Drive a root shell on a guest's serial console: one QEMU process per boot.

Facts relied on:

* QEMU's ``-chardev stdio`` feeds the host's writes to the guest's 16550 UART and only reads
  from the pipe when the UART can take a byte, so nothing written is lost however fast the
  host writes.
* systemd's ``serial-getty@ttyS0`` with the lab's ``agetty --autologin root`` drop-in prints
  ``<host> login: root (automatic login)`` and starts root's login shell (bash) on the line.
  Input typed before bash reads the line may be flushed by login, so the host repeats a
  harmless probe until one answer comes back (bounded in count and time).
* With ``stty -echo`` the terminal stops echoing what the host sends; the markers the host
  waits for are printed with ``printf 'KDUMPY-%s ...' LAB`` so that even an echoed command line
  never contains them.
* ``dmesg -n 1`` keeps kernel messages off the console while the shell is in use.
* With ``-no-reboot`` a guest reboot (``systemctl reboot``, the capture image's final
  ``reboot -f``, ``panic=N``) ends the QEMU process; the next boot is a new process on the same
  disk, which is also how the lab changes the kernel command line between boots (the guest has
  no boot loader: QEMU's ``-kernel``/``-append``).
"""

from __future__ import annotations

import itertools
import queue
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .qemu import Machine, build_command
from .serial import Line, SerialCapture

Log = Callable[[str], None]

_MARK_RE = re.compile(r"KDUMPY-LAB (?P<kind>sh-begin|sh-end) (?P<id>\d+)(?: rc=(?P<rc>\d+))?")
LOGIN_RE = re.compile(r"login: root \(automatic login\)")
LINUX_VERSION_RE = re.compile(r"Linux version (\S+)")


class GuestError(RuntimeError):
    """The guest did not do what the lab waited for; the message ends with the console tail."""


@dataclass
class Result:
    """One shell command's exit status and output lines (stdout and stderr merged)."""

    rc: int
    lines: list[str]
    seconds: float

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class GuestBoot:
    """One boot of a guest: a QEMU process whose serial line is the lab's shell."""

    machine: Machine
    log_path: Path
    log: Log = print
    name: str = "boot"
    proc: subprocess.Popen | None = None
    capture: SerialCapture | None = None
    started: float = 0.0
    exited_at: float | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def start(self) -> GuestBoot:
        argv = build_command(self.machine)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        stderr = open(self.log_path.with_suffix(".stderr"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, cwd=self.log_path.parent)
        stderr.close()
        assert self.proc.stdout is not None
        self.capture = SerialCapture(self.proc.stdout, self.log_path, self.started)
        return self

    # -- console ------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.started

    def fail(self, message: str) -> GuestError:
        tail = self.capture.transcript.tail(60) if self.capture else ""
        return GuestError(f"{self.name}: {message}\n--- serial console ({self.log_path}) ---\n"
                          f"{tail}")

    def next_line(self, what: str, deadline: float) -> Line:
        assert self.capture is not None and self.proc is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"timed out waiting for {what}")
            try:
                item = self.capture.queue.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if item is None:
                self.proc.wait()
                self.exited_at = self.now()
                raise self.fail(f"QEMU exited (status {self.proc.returncode}) while waiting "
                                f"for {what}")
            return item

    def wait_for(self, pattern: str | re.Pattern[str], limit: float,
                 what: str | None = None) -> Line:
        """The next console line matching ``pattern`` (a regex), within ``limit`` seconds."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + limit
        while True:
            line = self.next_line(what or rx.pattern, deadline)
            if rx.search(line.text):
                return line

    def send(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self.fail("QEMU closed its console input") from None

    # -- shell --------------------------------------------------------------------------------

    def login(self, limit: float = 300) -> float:
        """Wait for the autologin and make the shell quiet; the boot's time to a shell."""
        self.wait_for(LOGIN_RE, limit, "the serial autologin")
        deadline = time.monotonic() + 60
        for _ in range(20):
            ident = next(self._ids)
            self.send("stty -echo; dmesg -n 1; bind 'set enable-bracketed-paste off' 2>/dev/null;"
                      f" printf 'KDUMPY-%s sh-end {ident} rc=0\\n' LAB\n")
            try:
                self._wait_mark("sh-end", ident, min(deadline, time.monotonic() + 3))
                return self.now()
            except GuestError:
                if time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise
        raise self.fail("the shell never answered")

    def _wait_mark(self, kind: str, ident: int, deadline: float,
                   collect: list[str] | None = None) -> tuple[Line, int]:
        while True:
            line = self.next_line(f"shell marker {kind} {ident}", deadline)
            m = _MARK_RE.search(line.text)
            if m and m["kind"] == kind and int(m["id"]) == ident:
                return line, int(m["rc"] or 0)
            if collect is not None and not m:
                collect.append(line.text)

    def run(self, command: str, limit: float = 120, check: bool = True) -> Result:
        """Run ``command`` in a subshell of the guest's shell (an ``exit`` in it ends only the
        subshell); its exit status and output lines."""
        ident = next(self._ids)
        self.send(f"printf 'KDUMPY-%s sh-begin {ident}\\n' LAB; ( {command}\n) </dev/null 2>&1;"
                  f" printf 'KDUMPY-%s sh-end {ident} rc=%d\\n' LAB $?\n")
        deadline = time.monotonic() + limit
        begin, _ = self._wait_mark("sh-begin", ident, deadline)
        lines: list[str] = []
        end, rc = self._wait_mark("sh-end", ident, deadline, lines)
        result = Result(rc, lines, end.t - begin.t)
        self.log(f"lab:   [{self.name}] $ {command[:100]} -> {rc} ({result.seconds:.1f} s)")
        if check and rc != 0:
            raise self.fail(f"`{command}` exited {rc}:\n{result.text[-3000:]}")
        return result

    def send_detached(self, command: str) -> None:
        """Type ``command`` without waiting for it to end (a crash or a reboot)."""
        self.send(command + "\n")

    # -- end ----------------------------------------------------------------------------------

    def wait_exit(self, limit: float, what: str = "QEMU to exit") -> float:
        """Wait for QEMU to exit (the guest rebooted or powered off); host seconds since start."""
        assert self.proc is not None and self.capture is not None
        deadline = time.monotonic() + limit
        while True:
            try:
                self.next_line(what, deadline)
            except GuestError:
                if self.proc.poll() is not None:
                    break
                raise
        self.capture.join(5)
        self.exited_at = self.exited_at or self.now()
        return self.exited_at

    def kill(self) -> None:
        """Stop QEMU if it still runs (every path out of a test ends here)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.capture:
            self.capture.join(5)

    def __enter__(self) -> GuestBoot:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
