"""ELF dumps that gdb opens (issue 7, gdb part) and ELF32 headers.

Lab tests (both kernels): ``kdumpy save --format elf -d 31`` of the raw ``/proc/vmcore`` and
``kdumpy convert -f elf`` of the kdump file saved in the capture kernel, opened with the gdb
command ``kdumpy info`` prints for them (Debian's debug vmlinux, KASLR offset from
VMCOREINFO), print the crashing CPU's NT_PRSTATUS registers and a backtrace through
``sysrq_handle_crash``. Synthetic tests: gdb's thread numbering as
:func:`~kdumpy.capture.elf_gdb.gdb_thread_for_note` predicts it, and ``--elf32``.
"""

from __future__ import annotations

import json
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kdumpy.capture.elf_gdb import gdb_thread_for_note
from kdumpy.cli import main
from kdumpy.formats.elf import PT_LOAD
from kdumpy.dump import open_dump

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synth import make_vmcore, note, prstatus  # noqa: E402

#: Registers ``info registers`` prints that NT_PRSTATUS holds (x86_64, same names).
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15", "rip", "eflags", "cs", "ss")


def gdb(*args: str, timeout: int = 300) -> str:
    try:
        r = subprocess.run(["gdb", "-nx", "-batch", *args], capture_output=True, text=True,
                           timeout=timeout, check=False)
    except FileNotFoundError:
        pytest.fail("gdb is not installed (apt-get install gdb)", pytrace=False)
    return r.stdout + r.stderr


def gdb_registers(out: str) -> dict[str, int]:
    regs = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(0x[0-9a-f]+)\s", line)
        if m and m.group(1) in GPRS:
            regs[m.group(1)] = int(m.group(2), 16)
    return regs


def elf_header(path: Path) -> tuple[int, int]:
    """(EI_CLASS, e_machine)."""
    head = path.read_bytes()[:20]
    return head[4], struct.unpack_from("<H", head, 18)[0]


# -- gdb's threads -------------------------------------------------------------------------

def core_with_pids(path: Path, pids: tuple[int, ...]) -> None:
    """An x86_64 core whose NT_PRSTATUS note i has pid ``pids[i]`` and rip 0x1000 + i."""
    notes = b"".join(note(b"CORE", 1, prstatus(pid, 0x1000 + i)) for i, pid in enumerate(pids))
    off = 64 + 56 * 2
    ph = struct.pack("<IIQQQQQQ", 4, 0, off, 0, 0, len(notes), len(notes), 0)
    ph += struct.pack("<IIQQQQQQ", 1, 7, off + len(notes), 0xFFFF888000000000, 0, 4096, 4096, 0)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    eh = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    path.write_bytes(eh + ph + notes + bytes(4096))


@pytest.mark.parametrize("pids", [(0, 1), (1, 0), (0, 0, 7), (0, 5, 0), (5, 5), (3, 0, 3, 4)])
def test_gdb_thread_numbers_are_predicted(tmp_path, pids):
    core = tmp_path / "core"
    core_with_pids(core, pids)
    for i in range(len(pids)):
        thread = gdb_thread_for_note(pids, i)
        if thread is None:
            # gdb shows the first note with that pid (or the first note, for pid 0) instead
            assert (pids[i] == 0 and i > 0) or pids.index(pids[i]) < i
            continue
        out = gdb("-ex", f"thread {thread}", "-ex", "p/x $rip", "-c", str(core))
        assert f"$1 = {0x1000 + i:#x}" in out, out


def test_memsz_only_pt_loads_do_not_repeat_threads(tmp_path):
    """A PT_LOAD at p_offset 0 made gdb's BFD read the notes again, adding every thread
    again under new numbers; memsz-only PT_LOADs now point past the data."""
    core = make_vmcore(str(tmp_path / "core"))
    raw = bytearray(Path(core.path).read_bytes())
    phnum = struct.unpack_from("<H", raw, 56)[0]
    struct.pack_into("<Q", raw, 64 + 56 * (phnum - 1) + 32, 0)   # last PT_LOAD: p_filesz 0
    src = tmp_path / "memsz-only"
    src.write_bytes(bytes(raw))
    out = tmp_path / "d.elf"
    assert main(["save", "-q", "--no-dmesg", "-d", "1", "-f", "elf", str(src), str(out)]) == 0
    with open_dump(out) as mem:
        loads = mem.core.phdrs[mem.core.phdrs["p_type"] == PT_LOAD]
        assert (loads["p_filesz"] == 0).any() and (loads["p_offset"] > 0).all()
    text = gdb("-ex", "info threads", "-c", str(out))
    assert re.search(r"^\*\s+1\s", text, re.MULTILINE) and not re.search(r"^\s+2\s", text, re.MULTILINE), text


# -- ELF32 ---------------------------------------------------------------------------------

def test_elf32_round_trips_pages(tmp_path):
    core = make_vmcore(str(tmp_path / "core"))
    out = tmp_path / "d32.elf"
    assert main(["save", "-q", "--no-dmesg", "-d", "1", "--elf32", core.path, str(out)]) == 0
    assert elf_header(out) == (1, 62)        # ELFCLASS32, the crashed machine's EM_X86_64
    with open_dump(out) as mem, open_dump(core.path) as src:
        assert mem.core.header.elfclass.bits == 32
        assert mem.core.note_bytes == src.core.note_bytes
        for pfn, data in core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data, pfn
        # the source's 64-bit kernel addresses do not fit: "no virtual address"
        assert (mem.core.loads["p_vaddr"] == 0).all()
    readelf = subprocess.run(["readelf", "-h", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(r"Class:\s+ELF32", readelf)
    text = gdb("-ex", "info registers rip", "-c", str(out))
    assert "elf32" in gdb("-ex", "info target", "-c", str(out))
    assert gdb_registers(text)["rip"] == 0xFFFFFFFF8E9ABCDE   # tests/synth.py's NT_PRSTATUS
    # and back: a kdump file converted with --elf32
    kd, back = tmp_path / "d.kdump", tmp_path / "back.elf"
    assert main(["save", "-q", "--no-dmesg", "-d", "1", core.path, str(kd)]) == 0
    assert main(["convert", "-q", "--elf32", str(kd), str(back)]) == 0
    assert elf_header(back) == (1, 62)
    with open_dump(back) as mem:
        for pfn, data in core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data, pfn


def test_elf32_refused_above_4gib(tmp_path, capsys):
    core = make_vmcore(str(tmp_path / "core"))
    raw = bytearray(Path(core.path).read_bytes())
    phnum = struct.unpack_from("<H", raw, 56)[0]
    last = 64 + 56 * (phnum - 1)                 # the last RAM PT_LOAD moves up by 4 GiB
    paddr = struct.unpack_from("<Q", raw, last + 24)[0]
    struct.pack_into("<Q", raw, last + 24, paddr + (1 << 32))
    high = tmp_path / "high"
    high.write_bytes(bytes(raw))
    out = tmp_path / "d32.elf"
    capsys.readouterr()
    assert main(["save", "-q", "--no-dmesg", "-d", "1", "--elf32", str(high), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--elf32" in err and "4 GiB" in err, err
    assert f"{paddr + (1 << 32):#x}" in err
    assert not out.exists() and not Path(str(out) + ".incomplete").exists()
    assert main(["convert", "-q", "--elf32", str(high), str(out)]) == 1
    assert "4 GiB" in capsys.readouterr().err and not out.exists()
    # without --elf32 the same dump is written as ELF64
    assert main(["save", "-q", "--no-dmesg", "-d", "1", "-f", "elf", str(high), str(out)]) == 0
    assert elf_header(out)[0] == 2


def test_elf32_is_for_elf_output(tmp_path, capsys):
    core = make_vmcore(str(tmp_path / "core"))
    assert main(["save", "-q", "--no-dmesg", "-d", "1", "-f", "kdump", "--elf32", core.path,
                 str(tmp_path / "x")]) == 1
    assert "--format elf" in capsys.readouterr().err


# -- the lab -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_elf(lab_crash, tmp_path_factory):
    out = tmp_path_factory.mktemp("elf") / "dump.elf"
    assert main(["save", "-q", "--no-dmesg", "--format", "elf", "-d", "31",
                 str(lab_crash.raw_vmcore), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def converted_elf(lab_crash, tmp_path_factory):
    """The kdump-compressed dump saved in the capture kernel, converted to ELF: kdumpy
    makes the kernel-image and direct-map PT_LOADs that kdump files do not record."""
    out = tmp_path_factory.mktemp("conv") / "dump.elf"
    assert main(["convert", "-q", "-f", "elf", str(lab_crash.kdumpy_dump), str(out)]) == 0
    return out


def info_json(dump: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", "--json", str(dump)]) == 0
    return json.loads(capsys.readouterr().out)


def gdb_from_info(hint: dict, vmlinux: Path, *commands: str) -> list[str]:
    """The command ``kdumpy info`` printed, with the debug vmlinux for its ``vmlinux``
    placeholder and ``-batch -ex COMMAND...`` added."""
    argv = shlex.split(hint["command"])
    assert argv[0] == "gdb"
    argv = [str(vmlinux) if a == "vmlinux" else
            re.sub(r" vmlinux$", f" {vmlinux}", a) if a.startswith("symbol-file ") else a
            for a in argv]
    at = argv.index("-c") if "-c" in argv else len(argv) - 2
    for c in reversed(commands):
        argv[at:at] = ["-ex", c]
    return ["gdb", "-nx", "-batch"] + argv[1:]


def crashing_registers(dump: Path) -> tuple[int, dict[str, int]]:
    from kdumpy.analysis.report import build_report
    with open_dump(dump) as mem:
        crashing = build_report(mem, log_lines=0, backtrace=False)["crashing_cpu"]
        index = crashing["note_index"]
        return index, mem.prstatus()[index].registers


def check_gdb_sees_the_crash(dump: Path, vmlinux: Path, capsys,
                             frames: tuple[str, ...] = ("sysrq_handle_crash", "panic"),
                             whole: bool = True) -> None:
    hint = info_json(dump, capsys)["gdb"]
    index, want = crashing_registers(dump)
    with open_dump(dump) as mem:
        offset = int(mem.vmcoreinfo["KERNELOFFSET"], 16)
    assert hint["crashing_note"] == index and hint["kernel_offset"] == f"{offset:#x}"
    if offset:  # KASLR: gdb does not relocate vmlinux for a core, the command does
        assert f"symbol-file -o {offset:#x} " in hint["command"]
    argv = gdb_from_info(hint, vmlinux, "info registers", "bt")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    out = r.stdout + r.stderr
    got = gdb_registers(out)
    assert got and all(got[k] == want[k] for k in GPRS), (argv, out[-3000:])
    bt = out[out.index("#0 ", out.index("\ngs ")):]
    assert all(f in bt for f in frames), (argv, out[-3000:])
    if whole:
        assert "Backtrace stopped: Cannot access memory" not in bt, bt
    assert not hint["notes"], hint


def test_gdb_on_saved_elf(lab_crash, lab_vmlinux, saved_elf, capsys):
    check_gdb_sees_the_crash(saved_elf, lab_vmlinux, capsys)


def test_gdb_on_converted_elf(lab_crash, lab_vmlinux, converted_elf, capsys):
    check_gdb_sees_the_crash(converted_elf, lab_vmlinux, capsys)
    with open_dump(converted_elf) as mem, open_dump(lab_crash.raw_vmcore) as raw:
        # kernel image and direct map where /proc/vmcore has them
        text = next(va for *_x, va in raw.segments if va >= 0xFFFFFFFF80000000)
        assert any(va == text for *_x, va in mem.segments)
        pa0, _m, _f, _o, va0 = next(s for s in raw.segments if 0 < s[4] < 0xFFFFFFFF80000000)
        base = va0 - pa0
        ram = [(pa, va) for pa, _m, _f, _o, va in mem.segments if 0 < va < 0xFFFFFFFF80000000]
        # each is RAM at its direct-map address, or a stack outside the direct map
        assert all(va - pa == base or not base <= va < base + (1 << 46) for pa, va in ram)
        assert sum(va - pa == base for pa, va in ram) > len(ram) // 2


def test_gdb_on_the_warn_panic(lab_warn_crash, lab_vmlinux, tmp_path, capsys):
    """The WARN() with panic_on_warn: gdb unwinds the crashing CPU from panic through the
    WARN path (check_panic_on_warn, __warn) into the module that warned."""
    out = tmp_path / "warn.elf"
    assert main(["save", "-q", "--no-dmesg", "--format", "elf", "-d", "31",
                 str(lab_warn_crash.raw_vmcore), str(out)]) == 0
    check_gdb_sees_the_crash(out, lab_vmlinux, capsys,
                             frames=("panic", "check_panic_on_warn", "__warn"))


def test_info_explains_raw_vmcore(lab_crash, capsys):
    """A byte copy of /proc/vmcore has no PT_LOAD for vmalloc'd stacks: info says so."""
    hint = info_json(lab_crash.raw_vmcore, capsys)["gdb"]
    assert any("kdumpy convert -f elf" in n for n in hint["notes"]), hint


def test_other_readers_of_the_elf(lab_crash, lab_vmlinux, saved_elf, tmp_path):
    """The stack PT_LOADs come before the RAM ones: makedumpfile takes the direct-map base
    from the last PT_LOAD below __START_KERNEL_map, and still reads the log; drgn unwinds."""
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(saved_elf), str(tmp_path / "log")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab_crash.marker.encode() in (tmp_path / "log").read_bytes()
    import drgn
    prog = drgn.Program()
    prog.set_core_dump(str(saved_elf))
    prog.load_debug_info([str(lab_vmlinux)])
    assert "sysrq_handle_crash" in str(prog.crashed_thread().stack_trace())
