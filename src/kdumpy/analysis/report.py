"""A first look at a crash, in the spirit of ``crash``'s banner: what crashed, when, why.

:func:`build_report` gathers, from the dump alone:

- the kernel (VMCOREINFO ``OSRELEASE``, ``init_uts_ns``), the crash time (VMCOREINFO
  ``CRASHTIME``, written by ``crash_save_vmcoreinfo()`` with ``ktime_get_real_seconds()``),
  the uptime (timestamp of the last log record);
- the panic message, ranked from the kernel log (below), and the crash line ``CPU: N
  [UID: U] PID: P Comm: C [Kdump: loaded] Not tainted|Tainted: FLAGS RELEASE ...`` printed
  by ``dump_stack_print_info()`` (``lib/dump_stack.c``; ``UID:`` since 6.10);
- the taint flags: ``tainted_mask`` is not in VMCOREINFO, so it is read through kallsyms
  (:mod:`kdumpy.kallsyms`) when possible, else parsed from the crash line;
  the report says which;
- the crashing CPU: ``panic_cpu`` (set by ``panic()`` and ``crash_kexec()``) through
  kallsyms, else the crash line's CPU; its registers come from the NT_PRSTATUS notes, one
  per CPU that saved its state (``crash_save_cpu()``), in CPU order
  (``crash_prepare_elf64_headers()`` walks the possible CPUs, ``/proc/vmcore`` drops
  empty notes), cross-checked by the note's pid against the crash line's PID;
- a stack scan of the crashing CPU (kernel-text return addresses on its stack, each right
  after a call instruction; unreliable, like the kernel's ``?`` entries or crash's
  ``bt -t``) when kallsyms is readable, and a real backtrace through drgn when it is
  installed and the kernel's debug info is found.

Panic ranking (the strongest class wins, the first record of it is taken): ``Kernel panic -``
beats oops-class lines (``BUG:``, ``kernel BUG at``, ``Oops``, ``general protection
fault``, ``Unable to handle kernel``, ``Internal error:``, machine checks, lockups), which
beat warnings and triggers (``WARNING:``, ``sysrq: Trigger a crash``, hung tasks, RCU
stalls). The first oops-class line or crash trigger before a panic is reported as its cause.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import struct
from collections.abc import Sequence
from typing import Any, Literal

from kdumpy.kallsyms import Kallsyms, read_kallsyms
from kdumpy.kernel_log import KernelLog, LogRecord, format_record, read_kernel_log
from kdumpy.errors import KdumpyError
from kdumpy.kernel import KernelView, kernel_view
from kdumpy.taint import LETTER_BIT as _LETTER_BIT
from kdumpy.taint import NAME_BIT as _NAME_BIT
from kdumpy.taint import TAINT_FLAGS

# -- panic ranking ------------------------------------------------------------------------

#: (strength, kind, pattern at the start of a record's text)
PANIC_PATTERNS: list[tuple[int, str, re.Pattern[str]]] = [
    (3, "panic", re.compile(r"Kernel panic - ")),
    (2, "bug", re.compile(r"(?:watchdog: )?BUG: ")),
    (2, "bug", re.compile(r"[Kk]ernel BUG at ")),
    (2, "oops", re.compile(r"Oops")),
    (2, "oops", re.compile(r"(?:general protection fault|double fault|divide error|"
                           r"stack segment|invalid opcode)\b")),
    (2, "oops", re.compile(r"Unable to handle kernel ")),
    (2, "oops", re.compile(r"Internal error: ")),
    (2, "oops", re.compile(r"Kernel stack overflow|kernel stack overflow")),
    (2, "machine-check", re.compile(r"\[Hardware Error\]: |mce: \[Hardware Error\]")),
    (2, "lockup", re.compile(r"(?:NMI watchdog: )?Watchdog detected hard LOCKUP")),
    (1, "trigger", re.compile(r"(?:sysrq|SysRq ?): Trigger a crash")),
    (1, "warning", re.compile(r"WARNING: ")),
    (1, "hung-task", re.compile(r"INFO: task .* blocked for more than")),
    (1, "rcu-stall", re.compile(r"rcu: INFO: rcu_\w+ (?:self-)?detected")),
]

_CRASH_LINE = re.compile(r"CPU: (?P<cpu>\d+) (?:UID: (?P<uid>\d+) )?PID: (?P<pid>-?\d+) "
                         r"Comm: (?P<rest>.*)")
_TAINT_VERBOSE = re.compile(r"Tainted: ((?:\[[A-Z]\]=[A-Z_]+(?:, )?)+)\s*$")


#: x86_64 kernel stacks are THREAD_SIZE = 16 KiB (32 KiB with KASAN), THREAD_SIZE aligned.
THREAD_SIZE = 16 << 10


def rank_panic(records: Sequence[LogRecord]) -> tuple[LogRecord, str, LogRecord | None] | None:
    """The panic record (strongest class, first of it), its kind, and its cause (the first
    oops-class record or crash trigger before it, when it is itself a panic)."""
    best: tuple[int, int, str] | None = None   # strength, index, kind
    classified: list[tuple[int, int, str]] = []
    for i, rec in enumerate(records):
        text = rec.text.lstrip().decode("utf-8", "replace")
        for strength, kind, pat in PANIC_PATTERNS:
            if pat.match(text):
                classified.append((strength, i, kind))
                if best is None or strength > best[0]:
                    best = (strength, i, kind)
                break
    if best is None:
        return None
    strength, at, kind = best
    cause = None
    if strength == 3:
        for s, i, k in classified:
            if i < at and (s == 2 or k == "trigger"):
                cause = records[i]
                break
    return records[at], kind, cause


def parse_crash_line(text: str, release: str | None = None) -> dict[str, Any] | None:
    """Fields of a ``dump_stack_print_info()`` line, or None if ``text`` is not one."""
    m = _CRASH_LINE.match(text.strip())
    if m is None:
        return None
    rest = m.group("rest")
    rel = re.escape(release) if release else r"\S+"
    t = re.match(r"(?P<comm>.*?) (?:Kdump: loaded )?(?:(?P<not>Not tainted)|"
                 r"Tainted: (?P<flags>[A-Z ]*)) (?P<release>" + rel + r")(?: |$)", rest)
    out: dict[str, Any] = {"cpu": int(m.group("cpu")), "pid": int(m.group("pid")),
                           "uid": int(m.group("uid")) if m.group("uid") else None,
                           "comm": None, "taint": None, "kdump_loaded": "Kdump: loaded" in rest}
    if t is not None:
        out["comm"] = t.group("comm")
        out["taint"] = "" if t.group("not") else t.group("flags").strip()
    else:
        out["comm"] = rest.split(" ")[0]
    return out


def taint_from_letters(letters: str) -> int:
    """``tainted_mask`` bits of a ``print_tainted()`` flag string (``G`` = no proprietary
    module, spaces = unset)."""
    mask = 0
    for c in letters:
        if c in _LETTER_BIT:
            mask |= 1 << _LETTER_BIT[c]
    return mask


def describe_taint(mask: int) -> dict[str, Any]:
    names = [name for bit, _l, name in TAINT_FLAGS if mask >> bit & 1]
    letters = "".join(letter for bit, letter, _n in TAINT_FLAGS if mask >> bit & 1)
    unknown = mask & ~sum(1 << b for b, _l, _n in TAINT_FLAGS)
    if unknown:
        names.append(f"UNKNOWN({unknown:#x})")
    return {"value": mask, "letters": letters, "flags": names,
            "text": "Not tainted" if mask == 0 else f"Tainted: {letters}"}


# -- the report ---------------------------------------------------------------------------

def build_report(mem: Any, *, log_lines: int = 50, vmlinux: str | os.PathLike[str] | None = None,
                 backtrace: bool = True) -> dict[str, Any]:
    """Everything :func:`format_report` prints, as a JSON-serialisable dict.

    ``mem`` is a :class:`kdumpy.KernelView` (a :class:`kdumpy.Dump` is wrapped in one);
    ``vmlinux`` a kernel with debug info for drgn (default: Debian's ``-dbg`` package
    paths); ``backtrace=False`` skips drgn.
    """
    mem = kernel_view(mem)
    vi = mem.vmcoreinfo
    notes: list[str] = []
    uts = _safe(mem.read_kernel_utsname) or {}
    release = (vi.osrelease if vi is not None else None) or uts.get("release")
    report: dict[str, Any] = {
        "dump": {"path": str(mem.path), "format": mem.format, "container": mem.container},
        "kernel": {"release": release, "version": uts.get("version"),
                   "nodename": uts.get("nodename"), "machine": uts.get("machine") or mem.machine,
                   "build_id": vi.build_id if vi is not None else None},
        "notes": notes,
    }
    report["crash_time"] = _crash_time(mem)

    # kernel log
    log: KernelLog | None
    try:
        log = read_kernel_log(mem)
    except Exception as exc:  # noqa: BLE001 - the crashed kernel's memory may hold anything
        log = None
        notes.append(f"no kernel log: {exc if isinstance(exc, KdumpyError) else repr(exc)}")
    records = [r for r in log.records if not r.dataless] if log is not None else []
    report["log"] = {
        "source": log.source if log else None,
        "records": len(records),
        "warnings": list(log.warnings) if log else [],
        "tail": [format_record(r).decode("utf-8", "replace").rstrip("\n")
                 for r in records[-log_lines:]] if log_lines > 0 else [],
    }
    report["uptime"] = ({"seconds": round(records[-1].ts_nsec / 1e9, 6),
                         "source": "timestamp of the last kernel log record"}
                        if records else None)
    if records and report["crash_time"]:
        boot = report["crash_time"]["epoch"] - records[-1].ts_nsec / 1e9
        report["crash_time"]["boot_utc"] = _iso(round(boot))

    # panic and crash line
    ranked = rank_panic(records)
    panic_rec = None
    if ranked is None:
        report["panic"] = None
        if records:
            notes.append("no panic, oops or BUG line in the kernel log")
    else:
        panic_rec, kind, cause = ranked
        report["panic"] = {"message": panic_rec.message.strip(), "kind": kind,
                           "record": _record_dict(panic_rec),
                           "cause": _record_dict(cause) if cause is not None else None}
    crash_line = _find_crash_line(records, panic_rec, release)
    report["task"] = crash_line

    # kallsyms: tainted_mask, panic_cpu, symbol names
    ks: Kallsyms | None = None
    try:
        ks = read_kallsyms(mem)
    except Exception as exc:  # noqa: BLE001 - the crashed kernel's memory may hold anything
        ks = None
        notes.append(f"kallsyms not readable ({exc}): no symbol names, taint and crashing CPU "
                     "come from the log")
    report["taint"] = _taint(mem, ks, crash_line)

    # CPUs and registers
    report["cpus"], report["crashing_cpu"] = _crashing_cpu(mem, ks, crash_line, notes)
    report["stack_scan"] = _stack_scan(mem, ks, report["crashing_cpu"])

    report["backtrace"] = (drgn_backtrace(mem, release, vmlinux) if backtrace
                           else {"status": "skipped", "note": "backtrace not requested"})
    return report


def _safe(fn, *args):
    try:
        return fn(*args)
    except KdumpyError:
        return None


def _byteorder(mem: Any) -> Literal["little", "big"]:
    return "big" if mem.byteorder == "big" else "little"


def _iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crash_time(mem: Any) -> dict[str, Any] | None:
    vi = mem.vmcoreinfo
    epoch, source = (vi.crash_time, "VMCOREINFO CRASHTIME") if vi is not None else (None, None)
    if epoch is None and isinstance(mem, KernelView):
        tv = mem.dump.crash_time
        if tv:
            epoch, source = tv, "kdump header timestamp"
    if epoch is None:
        return None
    return {"epoch": epoch, "utc": _iso(epoch), "source": source}


def _record_dict(rec: LogRecord) -> dict[str, Any]:
    return {"seq": rec.seq, "timestamp": round(rec.ts_nsec / 1e9, 6), "level": rec.level,
            "facility": rec.facility, "caller": rec.caller, "text": rec.message,
            "line": format_record(rec).decode("utf-8", "replace").rstrip("\n")}


def _find_crash_line(records: Sequence[LogRecord], panic: LogRecord | None,
                     release: str | None) -> dict[str, Any] | None:
    """The crash line that belongs to the panic: the last one at or before it (an oops
    prints it before the panic does), else the first after it."""
    found: list[tuple[int, dict[str, Any]]] = []
    for i, rec in enumerate(records):
        if rec.text.lstrip()[:5] != b"CPU: ":
            continue
        parsed = parse_crash_line(rec.message, release)
        if parsed is not None:
            found.append((i, parsed))
    if not found:
        return None
    at = next((i for i, r in enumerate(records) if r is panic), len(records))
    before = [f for f in found if f[0] <= at]
    idx, parsed = before[-1] if before else found[0]
    parsed["record"] = _record_dict(records[idx])
    # newer kernels may spell the taint out on a line of its own ("Tainted: [W]=WARN")
    for nxt in records[idx + 1:idx + 3]:
        m = _TAINT_VERBOSE.match(nxt.message.strip())
        if m:
            parsed["taint_verbose"] = m.group(1)
    return parsed


def _taint(mem: Any, ks: Kallsyms | None, crash_line: dict[str, Any] | None) -> dict[str, Any]:
    from_log = None
    if crash_line is not None and crash_line.get("taint") is not None:
        from_log = taint_from_letters(crash_line["taint"])
        verbose = crash_line.get("taint_verbose")
        if verbose:
            for name in re.findall(r"=([A-Z_]+)", verbose):
                if name in _NAME_BIT:
                    from_log |= 1 << _NAME_BIT[name]
    from_memory = None
    if ks is not None:
        addr = ks.address("tainted_mask")
        if addr is not None:
            try:
                from_memory = int.from_bytes(mem.read_virt(addr, 8), _byteorder(mem))
            except KdumpyError:
                from_memory = None
    if from_memory is not None:
        out = describe_taint(from_memory)
        out["source"] = "tainted_mask (address from kallsyms), read from the dump"
        if from_log is not None and from_log != from_memory:
            out["log_value"] = from_log
            out["note"] = (f"the crash line printed {describe_taint(from_log)['text']}; "
                           "tainted_mask as the dump holds it is the later state (an oops "
                           "adds D after its report)")
        return out
    if from_log is not None:
        out = describe_taint(from_log)
        assert crash_line is not None
        out["source"] = (f"crash line of the kernel log (CPU {crash_line['cpu']}, "
                         f"PID {crash_line['pid']})")
        return out
    return {"value": None, "letters": None, "flags": [], "text": "unknown",
            "source": "tainted_mask is not in VMCOREINFO, kallsyms is not readable and the log "
                      "has no crash line"}


def _read_panic_cpu(mem: Any, ks: Kallsyms | None) -> int | None:
    if ks is None:
        return None
    addr = ks.address("panic_cpu")
    if addr is None:
        return None
    try:
        value = int.from_bytes(mem.read_virt(addr, 4), _byteorder(mem), signed=True)
    except KdumpyError:
        return None
    return value if value >= 0 else None          # PANIC_CPU_INVALID is -1


def _crashing_cpu(mem: Any, ks: Kallsyms | None, crash_line: dict[str, Any] | None,
                  notes: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    try:
        prs = mem.prstatus()
    except KdumpyError as exc:
        notes.append(f"NT_PRSTATUS notes unreadable: {exc}")
        prs = []
    cpus = [{"note_index": i, "pid": p.pid} for i, p in enumerate(prs)]
    panic_cpu = _read_panic_cpu(mem, ks)
    line_cpu = crash_line["cpu"] if crash_line else None
    line_pid = crash_line["pid"] if crash_line else None
    if panic_cpu is not None:
        cpu, how = panic_cpu, "panic_cpu (address from kallsyms)"
        if line_cpu is not None and line_cpu != panic_cpu:
            notes.append(f"panic_cpu is {panic_cpu} but the crash line names CPU {line_cpu}")
    elif line_cpu is not None:
        cpu, how = line_cpu, "CPU of the crash line in the kernel log"
    else:
        cpu, how = None, None
    if not prs:
        if cpu is not None:
            return cpus, {"cpu": cpu, "source": how, "note_index": None, "registers": None,
                          "certain": False, "note": "the dump has no NT_PRSTATUS notes"}
        return cpus, None
    index, certain, why = None, False, ""
    if cpu is not None and cpu < len(prs) and (line_pid is None or prs[cpu].pid == line_pid):
        index = cpu
        certain = line_pid is not None and (line_pid != 0 or panic_cpu is not None)
        why = "note N is CPU N (one note per CPU that saved its state, in CPU order)"
        if line_pid is not None:
            why += f"; its pid {prs[cpu].pid} matches the crash line"
    elif line_pid is not None:
        match = [i for i, p in enumerate(prs) if p.pid == line_pid]
        if len(match) == 1:
            index, certain = match[0], line_pid != 0
            why = f"the only note whose pid is the crash line's PID {line_pid}"
    if index is None:
        if cpu is not None and cpu < len(prs):
            index, why = cpu, "note N taken as CPU N; no pid confirms it"
        else:
            notes.append("cannot tell which NT_PRSTATUS note belongs to the crashing CPU")
            return cpus, {"cpu": cpu, "source": how, "note_index": None, "registers": None,
                          "certain": False}
    regs = prs[index].registers
    out: dict[str, Any] = {
        "cpu": cpu if cpu is not None else index, "source": how or "NT_PRSTATUS note order",
        "note_index": index, "pid": prs[index].pid, "certain": certain, "how": why,
        "registers": {k: f"{v:#018x}" for k, v in regs.items()},
    }
    if ks is not None:
        pc = regs.get("rip", regs.get("pc", regs.get("eip")))
        if pc is not None:
            out["pc_symbol"] = ks.describe(pc)
    return cpus, out


def _is_call_site(mem: Any, addr: int) -> bool:
    """Whether the bytes before ``addr`` end in an x86 call: ``e8 rel32``, ``ff 15
    disp32``, ``ff d0+r`` / ``41 ff d0+r`` (register), ``ff 14 24``-style forms excluded."""
    try:
        code = mem.read_virt(addr - 6, 6)
    except KdumpyError:
        return False
    return (code[1] == 0xE8 or code[:2] == b"\xff\x15"
            or (code[4] == 0xFF and code[5] & 0xF8 == 0xD0))


def _stack_scan(mem: Any, ks: Kallsyms | None, crashing: dict[str, Any] | None,
                limit: int = 64) -> dict[str, Any] | None:
    if ks is None or not crashing or not crashing.get("registers") or mem.machine != "x86_64":
        return None
    sp = int(crashing["registers"]["rsp"], 16)
    top = (sp & ~(THREAD_SIZE - 1)) + THREAD_SIZE
    frames: list[dict[str, Any]] = []
    pos = sp
    while pos < top and len(frames) < limit:
        n = min(top - pos, 4096 - (pos & 0xFFF))
        try:
            chunk = mem.read_virt(pos, n)
        except KdumpyError:
            break
        for off in range(0, n - 7, 8):
            value = struct.unpack_from("<Q", chunk, off)[0]
            hit = ks.symbolize(value)
            if hit is None or not hit[0].is_text or not _is_call_site(mem, value):
                continue
            frames.append({"stack": f"{pos + off:#x}", "address": f"{value:#x}",
                           "symbol": ks.describe(value)})
            if len(frames) >= limit:
                break
        pos += n
    return {"from": f"{sp:#x}", "to": f"{top:#x}", "frames": frames,
            "note": "return addresses found on the crashing CPU's stack (a scan, not an "
                    "unwind: stale entries appear, like the kernel's '?' frames)"}


# -- drgn ---------------------------------------------------------------------------------

def debuginfo_candidates(release: str | None) -> list[str]:
    """Where Debian's ``linux-image-<release>-dbg`` puts the kernel with debug info."""
    if not release:
        return []
    return [f"/usr/lib/debug/boot/vmlinux-{release}",
            f"/usr/lib/debug/lib/modules/{release}/vmlinux"]


def _how_to_get_debuginfo(release: str | None) -> str:
    pkg = f"linux-image-{release}-dbg" if release else "linux-image-<release>-dbg"
    return (f"install the kernel's debug info (Debian: `apt-get install {pkg}`, which provides "
            f"/usr/lib/debug/boot/vmlinux-{release or '<release>'}) or pass --vmlinux PATH")


def drgn_backtrace(mem: Any, release: str | None,
                   vmlinux: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The crashed thread's stack through drgn, or a note saying what is missing."""
    try:
        import drgn
    except ImportError:
        return {"status": "unavailable",
                "note": "no backtrace: drgn is not installed (`pip install drgn`); then "
                        + _how_to_get_debuginfo(release)}
    if vmlinux is not None:
        paths = [os.fspath(vmlinux)]
        if not os.path.exists(paths[0]):
            return {"status": "no-debug-info", "note": f"no backtrace: {paths[0]} does not exist"}
    else:
        paths = [p for p in debuginfo_candidates(release) if os.path.exists(p)]
        if not paths:
            return {"status": "no-debug-info",
                    "note": f"no backtrace: no debug info for {release or 'this kernel'}; "
                            + _how_to_get_debuginfo(release)}
    if mem.container == "split":
        return {"status": "failed", "note": "no backtrace: drgn cannot open a split dump; "
                                            "join it first (kdumpy convert)"}
    prog = drgn.Program()
    try:
        prog.set_core_dump(os.fspath(mem.path))
        try:
            prog.load_debug_info(paths)
        except drgn.MissingDebugInfoError:
            pass
        main = prog.main_module() if hasattr(prog, "main_module") else None
        if main is not None and main.wants_debug_file():
            return {"status": "no-debug-info",
                    "note": f"no backtrace: {paths[0]} is not the debug info of this kernel "
                            f"(build ID {main.build_id.hex() if main.build_id else 'unknown'}); "
                            + _how_to_get_debuginfo(release)}
        thread = prog.crashed_thread()
        trace = thread.stack_trace()
        frames = [_frame_dict(i, f) for i, f in enumerate(trace)]
        return {"status": "ok", "debug_info": paths[0], "tid": thread.tid, "frames": frames}
    except Exception as exc:   # drgn raises many types (LookupError, FaultError, ...)
        return {"status": "failed",
                "note": f"no backtrace: drgn failed: {type(exc).__name__}: {exc}"}


def _frame_dict(i: int, frame: Any) -> dict[str, Any]:
    try:
        path, line, _col = frame.source()
        source = f"{path}:{line}"
    except (LookupError, ValueError):
        source = None
    try:
        sym = frame.symbol()
        symbol = f"{sym.name}+{frame.pc - sym.address:#x}/{sym.size:#x}"
    except (LookupError, ValueError):
        symbol = None
    return {"index": i, "pc": f"{frame.pc:#x}", "function": frame.name, "symbol": symbol,
            "source": source, "inline": bool(frame.is_inline)}


# -- text ---------------------------------------------------------------------------------

def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    out: list[str] = []

    def field(name: str, value: Any) -> None:
        out.append(f"{name:>12}: {value}")

    k = report["kernel"]
    field("KERNEL", f"{k['release']}  {k['version'] or ''}".rstrip())
    field("MACHINE", k["machine"])
    if k.get("nodename"):
        field("NODENAME", k["nodename"])
    d = report["dump"]
    field("DUMPFILE", f"{d['path']}  [{d['format']}, {d['container']}]")
    ct = report.get("crash_time")
    field("CRASH TIME", f"{ct['utc']}  ({ct['epoch']}, {ct['source']})" if ct else "unknown")
    up = report.get("uptime")
    field("UPTIME", f"{up['seconds']:.6f} s  ({up['source']})" if up else "unknown")
    p = report.get("panic")
    field("PANIC", p["message"] if p else "none found in the kernel log")
    if p and p.get("cause"):
        field("CAUSE", p["cause"]["text"].strip())
    t = report.get("task")
    if t:
        uid = f", UID {t['uid']}" if t.get("uid") is not None else ""
        field("TASK", f"PID {t['pid']} ({t['comm']}){uid} on CPU {t['cpu']}")
    tn = report.get("taint") or {}
    field("TAINTED", f"{tn.get('text')}  ({tn.get('source')})")
    if tn.get("flags"):
        field("", ", ".join(tn["flags"]))
    if tn.get("note"):
        field("", tn["note"])
    c = report.get("crashing_cpu")
    if c:
        certainty = "" if c.get("certain") else "  (uncertain)"
        field("CPU", f"{c['cpu']}  ({c['source']}){certainty}")
        regs = c.get("registers")
        if regs:
            out.append("")
            out.append(f"Registers of CPU {c['cpu']} (NT_PRSTATUS note {c['note_index']}, "
                       f"pid {c['pid']}; {c.get('how')}):")
            out.extend(_format_registers(regs, c.get("pc_symbol")))
    bt = report.get("backtrace") or {}
    out.append("")
    if bt.get("status") == "ok":
        out.append(f"Backtrace (drgn, debug info {bt['debug_info']}, thread {bt['tid']}):")
        for f in bt["frames"]:
            name = f["symbol"] or f["function"] or "??"
            src = f"  {f['source']}" if f.get("source") else ""
            inline = " (inlined)" if f.get("inline") else ""
            out.append(f"  #{f['index']:<2} {f['pc']}  {name}{inline}{src}")
    else:
        out.append(f"Backtrace: {bt.get('note', 'not available')}")
        scan = report.get("stack_scan")
        if scan and scan["frames"]:
            out.append(f"Stack scan of the crashing CPU {scan['from']}..{scan['to']} "
                       "(unreliable; kallsyms names):")
            for f in scan["frames"]:
                out.append(f"  {f['stack']}  {f['address']}  {f['symbol']}")
    lg = report.get("log") or {}
    if lg.get("warnings"):
        out.append("")
        out.append("Kernel log warnings:")
        out.extend(f"  {w}" for w in lg["warnings"])
    if lg.get("tail"):
        out.append("")
        out.append(f"Last {len(lg['tail'])} of {lg['records']} kernel log records "
                   f"({lg['source']}):")
        out.extend(lg["tail"])
    if report.get("notes"):
        out.append("")
        out.append("Notes:")
        out.extend(f"  - {n}" for n in report["notes"])
    return "\n".join(out) + "\n"


def _format_registers(regs: dict[str, str], pc_symbol: str | None) -> list[str]:
    names = list(regs)
    lines = []
    if "rip" in regs:
        order = ["rip", "rsp", "eflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "orig_rax",
                 "cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base"]
        names = [n for n in order if n in regs] + [n for n in regs if n not in order]
    first = names[0]
    sym = f"  {pc_symbol}" if pc_symbol else ""
    lines.append(f"  {first.upper():>8}: {regs[first][2:]}{sym}")
    rest = names[1:]
    for i in range(0, len(rest), 3):
        lines.append("  " + "  ".join(f"{n.upper():>8}: {regs[n][2:]}" for n in rest[i:i + 3]))
    return lines
