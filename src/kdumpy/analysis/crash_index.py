"""The crash index (``kdumpy crashes TARGET``): which dumps a target holds, grouped by bug.

A dump directory is what the capture service writes: ``<host>-<YYYY-mm-dd-HH:MM:SS>/``
holding ``report.json`` (and ``dmesg.txt``, ``vmcore`` or ``vmcore.flat``). The index reads
only ``report.json``, never a vmcore, so browsing a fleet's bucket costs one small GET per
dump.

The **signature** of a crash is the panic message normalised plus the top frames of the
crashing stack, hashed:

* the panic message (``Kernel panic - not syncing: ...``, the line the kernel's ``panic()``
  prints) with addresses, hex and decimal numbers replaced by placeholders, so the pid, the
  CPU or a pointer in it do not split one bug into many;
* the frames come from the last ``Call Trace:`` the kernel printed before the panic, from the
  log tail kept in ``report.json`` (``dump_stack()`` marks frames the unwinder could not
  vouch for with ``?``; those are dropped). A ``RIP: 0010:`` line (kernel mode) inside the
  trace is the faulting function of an exception frame (an oops, a WARN's ``ud2``) and
  counts as a frame where it appears. Frames of the panic machinery itself (``panic``,
  ``vpanic``, ``dump_stack_lvl``, ``__warn``, ``report_bug``, the invalid-opcode handler,
  ``add_taint``...) are skipped, and compiler suffixes (``.cold``, ``.constprop.0``,
  ``.isra.0``, ``.part.0``) and ``+off/size`` are stripped, so the same bug on kernels built
  differently gives the same signature. Without a trace in the tail, the report's stack-scan
  frames stand in (less exact: a scan also finds stale return addresses).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

#: frames of the kernel's own panic/WARN/taint/printk path, not of the bug
MACHINERY = frozenset({
    "panic", "vpanic", "nmi_panic", "__crash_kexec", "crash_kexec", "dump_stack",
    "dump_stack_lvl", "show_stack", "_printk", "printk", "vprintk", "vprintk_emit",
    "check_panic_on_warn", "__warn", "warn_slowpath_fmt", "report_bug", "handle_bug",
    "exc_invalid_op", "asm_exc_invalid_op", "add_taint", "oops_end", "die", "__die",
    "die_body", "do_trap", "do_error_trap", "exc_general_protection",
    "asm_exc_general_protection", "exc_page_fault", "asm_exc_page_fault",
    "page_fault_oops", "kernelmode_fixup_or_oops", "__bad_area_nosemaphore",
    "bad_area_nosemaphore", "do_user_addr_fault", "make_task_dead", "rewind_stack_and_make_dead",
    "entry_SYSCALL_64_after_hwframe", "do_syscall_64", "x64_sys_call",
})
TOP_FRAMES = 3

_FRAME_RE = re.compile(r"^\s*(?P<unsure>\?\s+)?(?P<sym>[A-Za-z_.$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                       r"(?:\s+\[(?P<mod>[\w-]+)\])?\s*$")
_RIP_RE = re.compile(r"^\s*RIP:\s+0010:(?P<sym>[A-Za-z_.$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                     r"(?:\s+\[(?P<mod>[\w-]+)\])?")
_TIME_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_SUFFIX = re.compile(r"(\.(cold|constprop|isra|part|llvm|lto_priv)(\.\d+)?)+$")


def frame_name(symbol: str) -> str:
    """``__handle_sysrq.cold+0x44/0x11c`` -> ``__handle_sysrq``."""
    name = symbol.split("+", 1)[0].strip()
    name = _SUFFIX.sub("", name)
    return name[len("__pfx_"):] if name.startswith("__pfx_") else name


def normalise_panic(message: str) -> str:
    """The panic line with what changes from crash to crash taken out."""
    text = _TIME_PREFIX.sub("", message.strip())
    text = re.sub(r"\b[0-9a-f]{12,16}\b", "ADDR", text)            # bare 64-bit addresses
    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
    text = re.sub(r"\b\d+\b", "N", text)
    return re.sub(r"\s+", " ", text)


def trace_frames(lines: Iterable[str]) -> list[str]:
    """Reliable frame names of the last ``Call Trace:`` in ``lines`` (kernel log lines),
    innermost first, the panic machinery skipped."""
    body: list[str] = []
    for line in lines:
        text = _TIME_PREFIX.sub("", line)
        if text.strip() == "Call Trace:":
            body = []
            continue
        body.append(text)
    frames: list[str] = []
    for text in body:
        if text.strip() == "</TASK>":
            break
        m = _FRAME_RE.match(text) or _RIP_RE.match(text)
        if not m or m.groupdict().get("unsure"):
            continue
        name = frame_name(m.group("sym"))
        if name in MACHINERY:
            continue
        mod = m.group("mod")
        label = f"{name} [{mod}]" if mod else name
        if not frames or frames[-1] != label:
            frames.append(label)
    return frames


@dataclass
class CrashEntry:
    """One dump as the index sees it."""

    location: str                   # the dump directory (path or URL)
    host: str | None = None
    time: str | None = None         # crash time (UTC, ISO 8601), else capture time
    release: str | None = None
    panic: str | None = None
    frames: list[str] = field(default_factory=list)
    signature: str = ""
    normalised: str = ""
    status: str | None = None       # the capture's outcome: complete | incomplete | ...
    vmcore: str | None = None


def entry_from_report(location: str, report: dict[str, Any]) -> CrashEntry:
    """A :class:`CrashEntry` from a dump's ``report.json``."""
    cap = report.get("kdumpy_capture") or {}
    kernel = report.get("kernel") or {}
    crash_time = report.get("crash_time") or {}
    panic = report.get("panic") or {}
    message = panic.get("message") or (panic.get("record") or {}).get("text")
    log = report.get("log") or {}
    frames = trace_frames(log.get("tail") or [])
    if not frames:
        scan = (report.get("stack_scan") or {}).get("frames") or []
        frames = [f for f in (frame_name(s.get("symbol", "")) for s in scan
                              if isinstance(s, dict)) if f and f not in MACHINERY]
    frames = frames[:TOP_FRAMES]
    norm = normalise_panic(message) if message else "(no panic line)"
    sig = hashlib.sha256("\n".join([norm, *frames]).encode()).hexdigest()[:12]
    return CrashEntry(location=location, host=cap.get("host") or kernel.get("nodename"),
                      time=crash_time.get("utc") or cap.get("time"),
                      release=kernel.get("release"), panic=message, frames=frames,
                      signature=sig, normalised=norm, status=cap.get("status"),
                      vmcore=cap.get("vmcore"))


class DumpStore(Protocol):
    """What the index needs of a target: list relative file names, read a small file."""

    def describe(self, rel: str = "") -> str: ...

    def list_files(self) -> Iterable[str]: ...

    def get(self, rel: str) -> bytes: ...


class LocalStore:
    """A local (or mounted) directory of dump directories, searched three levels deep."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def describe(self, rel: str = "") -> str:
        return os.path.join(self.path, rel) if rel else self.path

    def list_files(self) -> Iterator[str]:
        if not os.path.isdir(self.path):
            raise OSError(2, "no such directory", self.path)
        base_depth = self.path.rstrip("/").count("/")
        for dirpath, dirnames, filenames in os.walk(self.path):
            if dirpath.rstrip("/").count("/") - base_depth >= 3:
                dirnames[:] = []
            rel = os.path.relpath(dirpath, self.path)
            for f in filenames:
                yield f if rel == "." else f"{rel}/{f}"

    def get(self, rel: str) -> bytes:
        with open(os.path.join(self.path, rel), "rb") as f:
            return f.read()


def index_store(store: DumpStore, *, warn: Callable[[str], None] | None = None
                ) -> list[CrashEntry]:
    """Every dump directory in ``store``: one with ``report.json``, or a ``vmcore*`` without
    one (listed with what its name says)."""
    reports: set[str] = set()
    vmcores: dict[str, str] = {}
    for rel in store.list_files():
        d, _, name = rel.rpartition("/")
        if name == "report.json":
            reports.add(d)
        elif name.startswith("vmcore") and not name.endswith(".incomplete"):
            vmcores.setdefault(d, rel)
    entries = []
    for d in sorted(reports | set(vmcores)):
        loc = store.describe(d)
        if d in reports:
            rel = f"{d}/report.json" if d else "report.json"
            try:
                report = json.loads(store.get(rel))
                if not isinstance(report, dict):
                    raise ValueError("not a JSON object")
                entries.append(entry_from_report(loc, report))
                continue
            except (OSError, ValueError) as exc:
                if warn:
                    warn(f"{store.describe(rel)}: unreadable report ({exc})")
        m = re.match(r"^(?P<host>.+)-(?P<stamp>\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)", d.rsplit("/", 1)[-1])
        entries.append(CrashEntry(location=loc, host=m.group("host") if m else None,
                                  time=m.group("stamp") if m else None,
                                  signature="no-report", normalised="(no report.json)"))
    return entries


@dataclass
class CrashGroup:
    signature: str
    panic: str
    frames: list[str]
    count: int
    newest: str | None
    dumps: list[CrashEntry]


def group_entries(entries: Iterable[CrashEntry]) -> list[CrashGroup]:
    """Entries with the same signature together; the groups and each group's dumps newest
    first."""
    by_sig: dict[str, list[CrashEntry]] = {}
    for e in entries:
        by_sig.setdefault(e.signature, []).append(e)
    groups = []
    for sig, dumps in by_sig.items():
        dumps.sort(key=lambda e: e.time or "", reverse=True)
        groups.append(CrashGroup(signature=sig, panic=dumps[0].normalised,
                                 frames=dumps[0].frames, count=len(dumps),
                                 newest=dumps[0].time, dumps=dumps))
    groups.sort(key=lambda g: g.newest or "", reverse=True)
    return groups


def groups_json(groups: list[CrashGroup]) -> list[dict[str, Any]]:
    return [asdict(g) for g in groups]


def format_groups(groups: list[CrashGroup]) -> str:
    total = sum(g.count for g in groups)
    lines = [f"{total} dump{'s' if total != 1 else ''}, {len(groups)} "
             f"signature{'s' if len(groups) != 1 else ''}"]
    for g in groups:
        lines.append(f"{g.signature}  {g.count} dump{'s' if g.count != 1 else ''}, newest "
                     f"{g.newest or '?'}")
        lines.append(f"  panic:  {g.panic}")
        if g.frames:
            lines.append(f"  frames: {' < '.join(g.frames)}")
        for e in g.dumps:
            lines.append(f"    {e.time or '?':20}  {e.host or '?':12}  {e.release or '?':24}  "
                         f"{e.location}")
    return "\n".join(lines)
