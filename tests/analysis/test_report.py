"""Crash report: panic ranking, crash-line and taint parsing, kallsyms, the drgn bridge, and
the lab's real sysrq crashes."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_kernel import (PRB_VMCOREINFO, TEXT_BASE, FakeMemory, LocklessWriter,  # noqa: E402
                         kallsyms_tables)

from kdumpy.analysis.kallsyms import read_kallsyms  # noqa: E402
from kdumpy.analysis.kernel_log import LogRecord  # noqa: E402
from kdumpy.analysis.report import (build_report, describe_taint, format_report,  # noqa: E402
                                    parse_crash_line, rank_panic, taint_from_letters)
from kdumpy.errors import KdumpyError  # noqa: E402
from kdumpy.formats.notes import Prstatus  # noqa: E402

RELEASE = "6.1.0-fake-amd64"


def recs(*texts: str) -> list[LogRecord]:
    return [LogRecord(i, i * 1000, 4, 0, 2, None, t.encode()) for i, t in enumerate(texts)]


# -- ranking and parsing ----------------------------------------------------------------------

def test_sysrq_crash_ranks_the_panic_line_with_the_trigger_as_cause():
    r = recs("random: crng init done", "KDUMPY-LAB-MARKER-x", "sysrq: Trigger a crash",
             "Kernel panic - not syncing: sysrq triggered crash",
             "CPU: 0 PID: 1 Comm: init Kdump: loaded Not tainted 6.1.0 #1")
    rec, kind, cause = rank_panic(r)
    assert rec.text == b"Kernel panic - not syncing: sysrq triggered crash" and kind == "panic"
    assert cause is not None and cause.text == b"sysrq: Trigger a crash"


def test_oops_then_panic_names_the_first_oops_line_as_cause():
    r = recs("WARNING: CPU: 1 PID: 9 at mm/x.c:1 f+0x1/0x2",
             "BUG: kernel NULL pointer dereference, address: 0000000000000008",
             "#PF: supervisor read access in kernel mode", "Oops: 0000 [#1] PREEMPT SMP NOPTI",
             "Kernel panic - not syncing: Fatal exception",
             "Kernel panic - not syncing: second")
    rec, kind, cause = rank_panic(r)
    assert rec.seq == 4 and kind == "panic"
    assert cause.text.startswith(b"BUG: kernel NULL pointer dereference")


def test_ranking_without_a_panic():
    rec, kind, cause = rank_panic(recs("WARNING: CPU: 0 PID: 1 at x", "kernel BUG at mm/slub.c:99!",
                                       "invalid opcode: 0000 [#1] SMP"))
    assert (rec.seq, kind, cause) == (1, "bug", None)
    rec, kind, _ = rank_panic(recs("hello", "WARNING: CPU: 0 PID: 1 at x"))
    assert kind == "warning"
    assert rank_panic(recs("nothing", "to see")) is None
    # a pattern must start the text: a mention elsewhere is not a panic
    assert rank_panic(recs("audit: note Kernel panic - later")) is None
    rec, kind, _ = rank_panic(recs("watchdog: BUG: soft lockup - CPU#0 stuck for 22s!"))
    assert kind == "bug"


@pytest.mark.parametrize("line,release,want", [
    ("CPU: 0 PID: 1 Comm: init Kdump: loaded Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2",
     "6.1.0-56-amd64", (0, 1, None, "init", "", True)),
    ("CPU: 1 UID: 0 PID: 1 Comm: init Kdump: loaded Not tainted 6.12.117+deb12-amd64 #1  Debian",
     "6.12.117+deb12-amd64", (1, 1, 0, "init", "", True)),
    ("CPU: 3 PID: 4242 Comm: my prog Tainted: G      D W  O      5.10.0-9-amd64 #1 Debian",
     "5.10.0-9-amd64", (3, 4242, None, "my prog", "G      D W  O", False)),
    ("CPU: 3 PID: 4242 Comm: my prog Tainted: P           OE     5.10.0-9-amd64 #1 Debian",
     None, (3, 4242, None, "my prog", "P           OE", False)),
    ("CPU: 2 UID: 1000 PID: 77 Comm: kworker/2:1 Tainted: G        W          6.13.0 #5", "6.13.0",
     (2, 77, 1000, "kworker/2:1", "G        W", False)),
])
def test_parse_crash_line(line, release, want):
    got = parse_crash_line(line, release)
    assert (got["cpu"], got["pid"], got["uid"], got["comm"], got["taint"],
            got["kdump_loaded"]) == want


def test_parse_crash_line_rejects_other_lines():
    assert parse_crash_line("CPU: Physical Processor ID: 0") is None
    assert parse_crash_line("Hardware name: QEMU Standard PC") is None


def test_taint_letters_and_names():
    assert taint_from_letters("G      D W") == (1 << 7) | (1 << 9)
    assert taint_from_letters("P           OE") == 1 | (1 << 12) | (1 << 13)
    d = describe_taint((1 << 7) | (1 << 9))
    assert d["letters"] == "DW" and d["flags"] == ["DIE", "WARN"] and d["text"] == "Tainted: DW"
    assert describe_taint(0)["text"] == "Not tainted"
    assert describe_taint(1 << 40)["flags"] == [f"UNKNOWN({1 << 40:#x})"]


# -- kallsyms ---------------------------------------------------------------------------------

SYMS = [("T", "_stext", TEXT_BASE), ("T", "__crash_kexec", TEXT_BASE + 0x1000),
        ("t", "crash_" + "x" * 150, TEXT_BASE + 0x1100),      # 2-byte length
        ("T", "panic", TEXT_BASE + 0x2000), ("T", "caller_fn", TEXT_BASE + 0x2100),
        ("T", "_etext", TEXT_BASE + 0x3000),
        ("D", "panic_cpu", TEXT_BASE + 0x100000), ("b", "tainted_mask", TEXT_BASE + 0x100010),
        ("B", "_end", TEXT_BASE + 0x100100)]


@pytest.mark.parametrize("absolute_percpu", [False, True])
def test_kallsyms_decoding(absolute_percpu):
    syms = SYMS + ([("A", "runqueues", 0x1F000)] if absolute_percpu else [])
    vmci, regions = kallsyms_tables(syms, absolute_percpu=absolute_percpu)
    mem = FakeMemory(vmci)
    for addr, data in regions:
        mem.add(addr, data)
    ks = read_kallsyms(mem)
    assert len(ks) == len(syms)
    for t, name, addr in syms:
        sym = ks.lookup(name)
        assert (sym.name, sym.type, sym.address) == (name, t, addr)
    assert ks.describe(TEXT_BASE + 0x1010) == "__crash_kexec+0x10/0x100"
    assert ks.describe(TEXT_BASE + 0x1100 + 5).startswith("crash_xxx")
    assert ks.lookup("panic").is_text and not ks.lookup("tainted_mask").is_text
    assert ks.symbolize(TEXT_BASE - 1) is None
    if absolute_percpu:
        assert ks.address("runqueues") == 0x1F000


def test_kallsyms_needs_the_vmcoreinfo_symbols():
    with pytest.raises(KdumpyError, match="kallsyms"):
        read_kallsyms(FakeMemory("OSRELEASE=5.10.0\n"))


# -- build_report on a fake crash ------------------------------------------------------------

class FakeDump(FakeMemory):
    format = "elf"
    container = "file"

    def __init__(self, vmcoreinfo: str, notes: list[Prstatus]) -> None:
        super().__init__(vmcoreinfo)
        self._notes = notes

    def read_kernel_utsname(self):
        return {"sysname": "Linux", "nodename": "box", "release": RELEASE,
                "version": "#1 SMP Debian 6.1.0-1", "machine": "x86_64", "domainname": "(none)"}

    def prstatus(self):
        return self._notes


STACK = 0xFFFFC90000010000


def fake_crash(*, with_kallsyms: bool) -> FakeDump:
    w = LocklessWriter(count_bits=5, size_bits=11)
    for text in ["Linux version 6.1.0-fake-amd64", "WARNING: CPU: 1 PID: 77 at mm/x.c:1 f+0x1/0x2",
                 "BUG: kernel NULL pointer dereference, address: 0000000000000008",
                 "Oops: 0000 [#1] PREEMPT SMP NOPTI",
                 f"CPU: 1 PID: 77 Comm: my task Kdump: loaded Tainted: G        W          "
                 f"{RELEASE} #1  Debian 6.1.0-1",
                 "RIP: 0010:__crash_kexec+0x10/0x100",
                 "Kernel panic - not syncing: Fatal exception"]:
        w.add(text.encode())
    ring = w.memory()
    regs = {n: 0 for n in ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                           "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
                           "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")}
    crashed = dict(regs, rip=TEXT_BASE + 0x1010, rsp=STACK + 0x3F00)
    notes = [Prstatus(0, 0, dict(regs, rip=TEXT_BASE + 0x2000)), Prstatus(77, 0, crashed)]
    vmci = PRB_VMCOREINFO.replace("OSRELEASE=6.1.0-fake-amd64", f"OSRELEASE={RELEASE}")
    regions = list(ring.regions)
    if with_kallsyms:
        ks_vmci, ks_regions = kallsyms_tables(SYMS)
        vmci += ks_vmci
        regions += ks_regions
        text = bytearray(0x3000)
        text[0x2140 - 5] = 0xE8                          # call rel32 before caller_fn+0x40
        regions.append((TEXT_BASE, bytes(text)))
        # panic_cpu = 1, tainted_mask = D | W
        regions.append((TEXT_BASE + 0x100000,
                        struct.pack("<iiiiQ", 1, 0, 0, 0, (1 << 7) | (1 << 9))))
        stack = bytearray(0x100)
        struct.pack_into("<QQQQ", stack, 0, 0x1234, TEXT_BASE + 0x2140, TEXT_BASE + 0x2050, 0)
        regions.append((STACK + 0x3F00, bytes(stack)))
    mem = FakeDump(vmci, notes)
    for addr, data in regions:
        mem.add(addr, data)
    return mem


def test_report_from_the_log_alone():
    mem = fake_crash(with_kallsyms=False)
    r = build_report(mem, log_lines=3, backtrace=False)
    json.dumps(r)
    assert r["kernel"]["release"] == RELEASE and r["kernel"]["nodename"] == "box"
    assert r["crash_time"] == {"epoch": 1795415190, "utc": "2026-11-23T06:26:30Z",
                               "source": "VMCOREINFO CRASHTIME",
                               "boot_utc": "2026-11-23T06:26:24Z"}
    assert r["uptime"]["seconds"] == 6.123457
    p = r["panic"]
    assert p["message"] == "Kernel panic - not syncing: Fatal exception" and p["kind"] == "panic"
    assert p["cause"]["text"].startswith("BUG: kernel NULL pointer dereference")
    assert p["record"]["seq"] == 6
    assert (r["task"]["pid"], r["task"]["comm"], r["task"]["cpu"]) == (77, "my task", 1)
    assert r["taint"]["flags"] == ["WARN"] and "crash line" in r["taint"]["source"]
    c = r["crashing_cpu"]
    assert (c["cpu"], c["note_index"], c["pid"], c["certain"]) == (1, 1, 77, True)
    assert c["registers"]["rip"] == f"{TEXT_BASE + 0x1010:#018x}"
    assert "pc_symbol" not in c and r["stack_scan"] is None
    assert len(r["log"]["tail"]) == 3 and r["log"]["tail"][-1].endswith("Fatal exception")
    assert any("kallsyms not readable" in n for n in r["notes"])
    text = format_report(r)
    for want in ("PANIC: Kernel panic - not syncing: Fatal exception",
                 "CAUSE: BUG: kernel NULL pointer dereference",
                 "TASK: PID 77 (my task) on CPU 1", "TAINTED: Tainted: W",
                 f"RIP: {TEXT_BASE + 0x1010:016x}", "Backtrace: backtrace not requested"):
        assert want in text, want


def test_report_with_kallsyms():
    mem = fake_crash(with_kallsyms=True)
    r = build_report(mem, backtrace=False)
    json.dumps(r)
    t = r["taint"]
    assert t["flags"] == ["DIE", "WARN"] and t["source"].startswith("tainted_mask")
    assert t["log_value"] == 1 << 9 and "oops adds D" in t["note"]
    c = r["crashing_cpu"]
    assert c["source"].startswith("panic_cpu") and c["cpu"] == 1 and c["note_index"] == 1
    assert c["pc_symbol"] == "__crash_kexec+0x10/0x100"
    frames = r["stack_scan"]["frames"]
    # panic+0x50 is on the stack too, but no call instruction precedes it
    assert [f["symbol"] for f in frames] == ["caller_fn+0x40/0xf00"]
    assert "caller_fn+0x40/0xf00" in format_report(r)


def test_pid_mismatch_falls_back_to_the_note_with_that_pid():
    mem = fake_crash(with_kallsyms=False)
    mem._notes = list(reversed(mem._notes))          # notes not in CPU order
    c = build_report(mem, backtrace=False)["crashing_cpu"]
    assert (c["cpu"], c["note_index"], c["pid"]) == (1, 0, 77)
    assert "only note whose pid" in c["how"]


def test_report_without_log_symbols():
    mem = FakeDump("OSRELEASE=6.1.0\nCRASHTIME=1795415190\n", [])
    r = build_report(mem, backtrace=False)
    assert r["panic"] is None and r["log"]["records"] == 0
    assert any("no kernel log" in n for n in r["notes"])
    assert "PANIC: none found" in format_report(r)


# -- drgn ---------------------------------------------------------------------------------------

def test_backtrace_note_when_drgn_has_no_debug_info(monkeypatch):
    pytest.importorskip("drgn")
    import kdumpy.analysis.report as report

    monkeypatch.setattr(report, "debuginfo_candidates",
                        lambda release: [f"/nonexistent/vmlinux-{release}"])
    r = build_report(fake_crash(with_kallsyms=False))
    bt = r["backtrace"]
    assert bt["status"] == "no-debug-info"
    assert f"apt-get install linux-image-{RELEASE}-dbg" in bt["note"]
    assert "--vmlinux" in bt["note"]
    assert "apt-get install" in format_report(r)
    bt = build_report(fake_crash(with_kallsyms=False), vmlinux="/nonexistent/vmlinux")["backtrace"]
    assert bt["status"] == "no-debug-info" and "does not exist" in bt["note"]


def test_backtrace_note_without_drgn(monkeypatch):
    monkeypatch.setitem(sys.modules, "drgn", None)     # import drgn -> ImportError
    bt = build_report(fake_crash(with_kallsyms=False))["backtrace"]
    assert bt["status"] == "unavailable" and "pip install drgn" in bt["note"]


def test_backtrace_frames_through_drgn(monkeypatch, tmp_path):
    """The drgn path with a stand-in for drgn (the real one needs the 858 MB -dbg package)."""
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF")
    calls = {}

    class Sym:
        name, address, size = "panic", TEXT_BASE + 0x2000, 0x100

    class Frame:
        def __init__(self, pc, name, inline, src):
            self.pc, self.name, self.is_inline, self._src = pc, name, inline, src

        def source(self):
            if self._src is None:
                raise LookupError("no source")
            return self._src

        def symbol(self):
            if self.name != "panic":
                raise LookupError("no symbol")
            return Sym()

    class Thread:
        tid = 77

        def stack_trace(self):
            return [Frame(TEXT_BASE + 0x2010, "panic", False, ("kernel/panic.c", 340, 3)),
                    Frame(TEXT_BASE + 0x2110, "caller_fn", True, None)]

    class Module:
        build_id = bytes.fromhex("abcd")

        def wants_debug_file(self):
            return False

    class Program:
        def set_core_dump(self, path):
            calls["core"] = path

        def load_debug_info(self, paths):
            calls["paths"] = list(paths)
            raise fake.MissingDebugInfoError("modules missing")

        def main_module(self):
            return Module()

        def crashed_thread(self):
            return Thread()

    fake = types.ModuleType("drgn")
    fake.Program = Program
    fake.MissingDebugInfoError = type("MissingDebugInfoError", (Exception,), {})
    monkeypatch.setitem(sys.modules, "drgn", fake)
    r = build_report(fake_crash(with_kallsyms=False), vmlinux=vmlinux)
    bt = r["backtrace"]
    assert calls == {"core": "<fake>", "paths": [str(vmlinux)]}
    assert bt["status"] == "ok" and bt["tid"] == 77
    assert bt["frames"][0] == {"index": 0, "pc": f"{TEXT_BASE + 0x2010:#x}", "function": "panic",
                               "symbol": "panic+0x10/0x100", "source": "kernel/panic.c:340",
                               "inline": False}
    assert bt["frames"][1]["inline"] and bt["frames"][1]["symbol"] is None
    text = format_report(r)
    assert "Backtrace (drgn" in text and "panic+0x10/0x100  kernel/panic.c:340" in text
    assert "caller_fn (inlined)" in text


# -- the lab's real sysrq crashes --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["raw_vmcore", "kdumpy_dump", "makedumpfile_flat"])
def test_lab_report(lab_crash, kind):
    from kdumpy.dump import open_dump

    with open_dump(getattr(lab_crash, kind)) as mem:
        r = build_report(mem, log_lines=20, backtrace=False)
    json.dumps(r)
    assert r["kernel"]["release"] == lab_crash.release
    assert r["kernel"]["machine"] == "x86_64"
    assert r["panic"]["message"] == "Kernel panic - not syncing: sysrq triggered crash"
    assert r["panic"]["cause"]["text"] == "sysrq: Trigger a crash"
    clock = lab_crash.meta["guest_clock_at_crash"]
    assert abs(r["crash_time"]["epoch"] - clock["realtime"]) < 60
    assert abs(r["uptime"]["seconds"] - clock["uptime"]) < 5
    task = r["task"]
    assert (task["pid"], task["comm"], task["taint"]) == (1, "init", "")
    assert r["taint"]["value"] == 0 and r["taint"]["source"].startswith("tainted_mask")
    cpu = r["crashing_cpu"]
    assert cpu["cpu"] == task["cpu"] and cpu["pid"] == 1 and cpu["certain"]
    assert cpu["pc_symbol"].startswith("__crash_kexec+")
    scanned = [f["symbol"].split("+")[0] for f in r["stack_scan"]["frames"]]
    assert {"panic", "sysrq_handle_crash", "write_sysrq_trigger"} <= set(scanned)
    assert len(r["log"]["tail"]) == 20 and r["log"]["warnings"] == []
    text = format_report(r)
    assert "PANIC: Kernel panic - not syncing: sysrq triggered crash" in text
    assert lab_crash.release in text


def test_lab_backtrace_with_the_wrong_vmlinux(lab_crash):
    pytest.importorskip("drgn")
    from kdumpy.dump import open_dump

    with open_dump(lab_crash.kdumpy_dump) as mem:
        bt = build_report(mem, vmlinux="/bin/ls")["backtrace"]
    assert bt["status"] == "no-debug-info"
    assert "is not the debug info of this kernel" in bt["note"]
    assert f"linux-image-{lab_crash.release}-dbg" in bt["note"]
