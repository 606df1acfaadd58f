"""How a dump is saved whatever the crashed kernel left: shared by ``kdumpy save`` and the
capture service (``kdumpy capture``).

A kernel that panicked often did so because its memory was corrupt, and the save reads that
memory: the log ring, VMCOREINFO, ``mem_section``, ``struct page``, kallsyms. Each stage that
reads such structures runs isolated (:meth:`SavePolicy.stage`): a failure of any type is
recorded as one line (stderr, ``report.json``) and the save goes on. The order follows
kdumpctl: the kernel log first (small, and it explains the crash if the dump cannot be
finished), then the vmcore, then the report.

The vmcore walks the dump-level list (makedumpfile's ``-d 31,1`` style):

* the target filled up (ENOSPC): the partial file is removed and the next level of the list
  is tried (a higher level is smaller);
* filtering failed on the crashed kernel's data (:class:`~.pipeline.FilterFailed`: an
  unreadable ``mem_section``, a garbage ``struct page``): the next level of the list, then
  level 1 (zero pages, decided from page data alone) and finally level 0, a plain copy;
* anything else (the source cannot be read, the target broke): the partial dump is kept,
  marked incomplete, and the failure is reported.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kdumpy.capture.pipeline import (DumpIncomplete, FilterFailed, SaveOptions, SaveResult,
                                     _what, save)
from kdumpy.errors import KdumpyError

T = TypeVar("T")

#: after a filtering failure, the levels that need nothing of the crashed kernel's structures
PLAIN_LEVELS = (1, 0)


def describe_failure(exc: BaseException) -> str:
    """One line for an exception of any type."""
    return _what(exc)


def is_nospace(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, DumpIncomplete) else exc
    return isinstance(cause, OSError) and cause.errno == errno.ENOSPC


def is_filter_failure(exc: BaseException) -> bool:
    return isinstance(exc, FilterFailed) or (isinstance(exc, DumpIncomplete)
                                             and isinstance(exc.__cause__, FilterFailed))


@dataclass
class SavePolicy:
    """The notes of one save and the log line writer (``log(message)``)."""

    log: Callable[[str], None]
    notes: list[str] = field(default_factory=list)
    #: stages that failed: ``{stage: one line}`` (report.json's ``failures``)
    failures: dict[str, str] = field(default_factory=dict)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log(message)

    def stage(self, name: str, fn: Callable[[], T]) -> T | None:
        """Run one stage that reads the crashed kernel's structures; a failure of any type
        is recorded and None returned."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - kernel memory may hold anything
            why = describe_failure(exc)
            self.failures[name] = why
            self.note(f"{name} not available: {why}")
            return None

    def kernel_log(self, mem: Any) -> tuple[bytes | None, int]:
        """The crashed kernel's log as ``dmesg`` text and its record count; None (and a
        recorded failure) when it cannot be read."""
        def read() -> tuple[bytes, int]:
            from kdumpy.analysis.kernel_log import format_dmesg, read_kernel_log
            log = read_kernel_log(mem)
            if not log.records and not log.raw:
                raise KdumpyError(f"{mem.path}: no kernel log record could be read"
                                  + (f" ({'; '.join(log.warnings)})" if log.warnings else ""))
            if log.warnings:
                # records the reader could only partly decode: the text is saved, and the
                # damage named where the save is recorded
                self.note(f"kernel log: {len(log.warnings)} damaged records (first: "
                          f"{log.warnings[0]})")
            return format_dmesg(log), len(log.records)
        got = self.stage("kernel log", read)
        return (None, 0) if got is None else got

    def report(self, mem: Any) -> dict[str, Any]:
        """``report.json``'s body (no backtraces); a failure leaves a report that says so."""
        def build() -> dict[str, Any]:
            from kdumpy.analysis.report import build_report
            return build_report(mem, backtrace=False)
        report = self.stage("report", build)
        if report is None:
            report = {"notes": [f"report not available: {self.failures['report']}"]}
        return report

    def save_vmcore(self, mem: Any, levels: Sequence[int],
                    make_target: Callable[[], Any], options: Callable[[int], SaveOptions],
                    progress: Callable[[], Any] | None = None,
                    discard: Callable[[str], None] | None = None, *,
                    close_progress: bool = True) -> SaveResult:
        """Save at the first level of ``levels`` that works (see the module's docstring).

        ``options(level)`` builds each attempt's options; ``discard(path)`` removes a
        partial file left by an attempt that is retried (ENOSPC); ``progress()`` gives the
        progress object of an attempt (closed after it when ``close_progress``). Raises the
        last failure.
        """
        todo = list(levels)
        filter_fallback_added = False
        i = 0
        while i < len(todo):
            level = todo[i]
            opts = options(level)
            prog = progress() if progress is not None else None
            try:
                res = save(mem, make_target, opts, prog)
            except Exception as exc:
                nxt = todo[i + 1] if i + 1 < len(todo) else None
                if is_nospace(exc) and nxt is not None and i + 1 < len(levels):
                    left = getattr(exc, "left", None)
                    if left and discard is not None:
                        discard(left)
                    self.note(f"no space left at dump level {level}; retrying at {nxt}")
                    i += 1
                    continue
                if is_filter_failure(exc):
                    self.failures["filter"] = describe_failure(exc)
                    if not filter_fallback_added:
                        todo += [lv for lv in PLAIN_LEVELS if lv not in todo[i + 1:]]
                        filter_fallback_added = True
                    rest = [lv for lv in todo[i + 1:] if lv != level]
                    if rest:
                        left = getattr(exc, "left", None)
                        if left and discard is not None:
                            discard(left)
                        todo = todo[:i + 1] + rest
                        self.note(f"dump level {level}: {describe_failure(exc)}; retrying at "
                                  f"level {rest[0]}")
                        i += 1
                        continue
                raise
            finally:
                if close_progress and prog is not None and hasattr(prog, "close"):
                    prog.close()
            return res
        raise KdumpyError("no dump level to try")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived during a save (systemd stops a unit with SIGTERM, and
    sends SIGHUP when its terminal goes): raised like Ctrl-C so that the save ends through
    the same path, leaving ``.incomplete`` with its incomplete mark."""

    def __init__(self, signum: int) -> None:
        import signal
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class end_on_signals:
    """Context manager: SIGTERM and SIGHUP raise :class:`Terminated` in the main thread
    while it is active; the previous handlers come back after."""

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "end_on_signals":
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum: int, _frame: Any) -> None:
            raise Terminated(signum)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
