"""Progress for long captures: a tqdm bar on a terminal (if tqdm is installed), plain
periodic lines elsewhere.

A serial console in the capture kernel is not a TTY; there a line every few seconds
(percent, MiB/s, ETA) keeps the log readable.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class ProgressReporter(Protocol):
    """What the capture pipeline reports to (:class:`Progress` does it on stderr)."""

    def set_total(self, total_pages: int) -> None: ...

    def advance(self, pages: int) -> None: ...

    def close(self) -> None: ...


class Progress:
    def __init__(self, total_pages: int, page_size: int, *, quiet: bool = False,
                 stream: TextIO | None = None, label: str = "saving", interval: float = 5.0) -> None:
        self.total = max(total_pages, 1)
        self.page_size = page_size
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.label = label
        self.interval = interval
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start
        self._bar = None
        if not quiet and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:      # an optional extra: plain lines without it
                return
            self._bar = tqdm(total=total_pages * page_size, unit="B", unit_scale=True,
                             unit_divisor=1024, desc=label, file=self.stream, leave=True)

    def set_total(self, total_pages: int) -> None:
        """The real page count, known once filtering has decided."""
        self.total = max(total_pages, 1)
        if self._bar is not None:
            self._bar.total = total_pages * self.page_size
            self._bar.refresh()

    def advance(self, pages: int) -> None:
        self.done += pages
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(pages * self.page_size)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        el = max(now - self.start, 1e-6)
        rate = self.done * self.page_size / el / (1 << 20)
        pct = 100.0 * self.done / self.total
        eta = (self.total - self.done) * el / self.done if self.done else 0.0
        print(f"kdumpy: {self.label} {pct:5.1f}% {rate:7.1f} MiB/s ETA {eta:5.0f}s",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet:
            self._line(time.monotonic())
