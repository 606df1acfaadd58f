"""The guest's serial console: capture with host timestamps, and parse the lab protocol.

Facts relied on:

* QEMU's ``-chardev stdio`` forwards the guest's 8250 UART output byte for byte; the kernel's
  console and the ``/init`` script both write lines ending in ``\\r\\n``.
* Kernel messages can land in the middle of a user-space line on a shared console, so events
  are recognised anywhere in a line (``KDUMPY-LAB `` prefix) rather than only at its start,
  and the guest quiets the console loglevel while it works (see :mod:`lab.guest_init`).
* Each kernel prints ``Linux version <release> ...`` once early at boot; the first and the
  capture kernel therefore give two such lines per run.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

EVENT_PREFIX = "KDUMPY-LAB "
_EVENT_RE = re.compile(r"KDUMPY-LAB (?P<kind>[a-z][a-z-]*)(?: (?P<rest>.*))?$")
_FIELD_RE = re.compile(r"^(?P<key>[a-z_]+)=(?P<value>\S*)$")
LINUX_VERSION_RE = re.compile(r"Linux version (?P<release>\S+)")


@dataclass(frozen=True)
class Line:
    """One console line and the host time (seconds since QEMU started) it completed."""

    t: float
    text: str


@dataclass(frozen=True)
class Event:
    """A parsed ``KDUMPY-LAB`` line.

    ``name`` is the first word after the kind (step, block or value name), ``args`` the words
    after it that are not ``key=value``, ``fields`` the ``key=value`` words, ``rest`` the raw
    text after the name.
    """

    t: float
    kind: str
    name: str
    rest: str
    fields: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def parse_event(line: Line) -> Event | None:
    """The event on ``line``, or None if it carries none."""
    idx = line.text.find(EVENT_PREFIX)
    if idx < 0:
        return None
    match = _EVENT_RE.match(line.text[idx:].rstrip())
    if not match:
        return None
    kind = match["kind"]
    rest = match["rest"] or ""
    name, _, tail = rest.partition(" ")
    if "=" in name and kind in ("role", "crash-now", "capture-done", "halt"):
        # events without a name: "crash-now up=1.2"
        tail, name = rest, ""
    fields: dict[str, str] = {}
    args: list[str] = []
    if kind in ("value", "output"):
        # free text after the name: keep verbatim
        return Event(line.t, kind, name, tail)
    for word in tail.split():
        m = _FIELD_RE.match(word)
        if m:
            fields[m["key"]] = m["value"]
        else:
            args.append(word)
    return Event(line.t, kind, name, tail, fields, tuple(args))


@dataclass
class Transcript:
    """All lines seen so far, with helpers to extract the protocol's content."""

    lines: list[Line] = field(default_factory=list)

    def events(self) -> list[Event]:
        return [e for e in (parse_event(line) for line in self.lines) if e is not None]

    def values(self) -> dict[str, str]:
        """``value`` events as key -> text (a later value of the same key wins)."""
        return {e.name: e.rest for e in self.events() if e.kind == "value"}

    def blocks(self) -> dict[str, list[str]]:
        """Lines between ``block-begin NAME`` and ``block-end NAME``.

        Lines that are kernel messages (``[    1.234567] ...``) are dropped, in case the
        console loglevel let one through.
        """
        out: dict[str, list[str]] = {}
        current: str | None = None
        for line in self.lines:
            event = parse_event(line)
            if event is not None and event.kind == "block-begin":
                current = event.name
                out[current] = []
                continue
            if event is not None and event.kind == "block-end":
                current = None
                continue
            if current is not None and not re.match(r"^\s*\[\s*\d+\.\d+\]", line.text):
                out[current].append(line.text)
        return out

    def outputs(self, step: str) -> list[str]:
        return [e.rest for e in self.events() if e.kind == "output" and e.name == step]

    def linux_versions(self) -> list[tuple[float, str]]:
        """(time, release) of each ``Linux version`` boot line."""
        out = []
        for line in self.lines:
            m = LINUX_VERSION_RE.search(line.text)
            if m:
                out.append((line.t, m["release"]))
        return out

    def tail(self, count: int = 60) -> str:
        return "\n".join(f"{line.t:8.2f} | {line.text}" for line in self.lines[-count:])


def parse_meminfo(lines: Iterable[str]) -> dict[str, int]:
    """``/proc/meminfo`` lines -> {field: value in kB (or count for HugePages_*)}."""
    out: dict[str, int] = {}
    for text in lines:
        m = re.match(r"^(\S+):\s+(\d+)(?:\s+kB)?\s*$", text.strip())
        if m:
            out[m[1]] = int(m[2])
    return out


def parse_free(lines: Iterable[str]) -> dict[str, int]:
    """busybox ``free -m`` output -> {"total": MiB, "used": ..., "free": ..., ...} for Mem."""
    header: list[str] = []
    for text in lines:
        words = text.split()
        if not words:
            continue
        if words[0] == "total":
            header = words
        elif words[0] == "Mem:" and header:
            return {name: int(value) for name, value in zip(header, words[1:], strict=False)}
    return {}


class SerialCapture:
    """Reads QEMU's stdout in a thread; each completed line goes to a queue and a log file.

    The log file gets ``<seconds since start> | <line>``; ``raw_path`` (if given) gets the
    bytes exactly as received.
    """

    def __init__(self, stream: BinaryIO, log_path: Path, start: float,
                 raw_path: Path | None = None) -> None:
        self.queue: queue.Queue[Line | None] = queue.Queue()
        self.transcript = Transcript()
        self._stream = stream
        self._start = start
        self._log: TextIO = open(log_path, "w", encoding="utf-8", errors="replace")
        self._raw: BinaryIO | None = open(raw_path, "wb") if raw_path else None
        self._thread = threading.Thread(target=self._run, name="kdumpy-lab-serial", daemon=True)
        self._thread.start()

    def _emit(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace").rstrip("\r\n").replace("\r", "")
        line = Line(time.monotonic() - self._start, text)
        self.transcript.lines.append(line)
        self._log.write(f"{line.t:9.3f} | {text}\n")
        self._log.flush()
        self.queue.put(line)

    def _run(self) -> None:
        pending = b""
        try:
            while True:
                chunk = self._stream.read1(65536) if hasattr(self._stream, "read1") else \
                    self._stream.read(4096)
                if not chunk:
                    break
                if self._raw:
                    self._raw.write(chunk)
                    self._raw.flush()
                pending += chunk
                while b"\n" in pending:
                    data, pending = pending.split(b"\n", 1)
                    self._emit(data)
            if pending:
                self._emit(pending)
        finally:
            self.queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        self._log.close()
        if self._raw:
            self._raw.close()
