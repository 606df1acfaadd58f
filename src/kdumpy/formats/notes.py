"""ELF notes as the kernel writes them into a core's PT_NOTE segment.

Kernel facts relied on (``include/uapi/linux/elf.h``, ``kernel/crash_core.c``,
``fs/proc/vmcore.c``): a note is ``{u32 namesz, u32 descsz, u32 type}`` followed by the
NUL-terminated name and the descriptor, each padded to 4 bytes — in ELF64 cores too.
``/proc/vmcore`` merges the per-CPU ``CORE``/``NT_PRSTATUS`` notes and the ``VMCOREINFO``
note (type 0) into one PT_NOTE; trailing zero padding ends the list.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Literal

from kdumpy.errors import DumpFormatError

ByteOrder = Literal["little", "big"]

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_AUXV = 6
VMCOREINFO_NOTE_NAME = "VMCOREINFO"
#: makedumpfile appends an ``ERASEINFO`` note (type 0) to ELF dumps filtered with --config.
ERASEINFO_NOTE_NAME = "ERASEINFO"

_NHDR = {"little": struct.Struct("<III"), "big": struct.Struct(">III")}


def _pad4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class Note:
    """One ELF note; ``offset`` / ``desc_offset`` are where its header / descriptor start,
    counted from the ``base_offset`` given to :func:`parse_notes` (a file offset, or 0 for
    offsets within the note bytes)."""

    name: str
    type: int
    desc: bytes = field(repr=False)
    offset: int = 0
    desc_offset: int = 0


def parse_notes(buf: bytes, *, byteorder: ByteOrder = "little", path: str | None = None,
                base_offset: int = 0) -> list[Note]:
    """Parse every note in ``buf`` (a PT_NOTE segment's bytes).

    ``base_offset`` is the segment's file offset, used only to name offsets in errors.
    An all-zero header ends the list (the kernel pads the segment with zeros).
    """
    hdr = _NHDR[byteorder]
    notes: list[Note] = []
    pos = 0
    while pos + hdr.size <= len(buf):
        namesz, descsz, ntype = hdr.unpack_from(buf, pos)
        if namesz == 0 and descsz == 0 and ntype == 0:
            break
        name_at = pos + hdr.size
        desc_at = name_at + _pad4(namesz)
        end = desc_at + _pad4(descsz)
        if desc_at + descsz > len(buf):
            raise DumpFormatError(path, "ELF note", base_offset + pos,
                                  f"namesz {namesz} / descsz {descsz} run past the end of "
                                  f"the {len(buf)}-byte note segment")
        name = buf[name_at:name_at + namesz].split(b"\0", 1)[0].decode("latin-1")
        notes.append(Note(name, ntype, bytes(buf[desc_at:desc_at + descsz]), base_offset + pos,
                          base_offset + desc_at))
        pos = end
    return notes


def build_note(name: str, ntype: int, desc: bytes, *, byteorder: ByteOrder = "little") -> bytes:
    """Serialise one note (name NUL-terminated, both parts padded to 4 bytes)."""
    raw_name = name.encode("latin-1") + b"\0"
    out = bytearray(_NHDR[byteorder].pack(len(raw_name), len(desc), ntype))
    out += raw_name + b"\0" * (_pad4(len(raw_name)) - len(raw_name))
    out += desc + b"\0" * (_pad4(len(desc)) - len(desc))
    return bytes(out)


def build_notes(notes: Iterable[Note], *, byteorder: ByteOrder = "little") -> bytes:
    return b"".join(build_note(n.name, n.type, n.desc, byteorder=byteorder) for n in notes)


# --- NT_PRSTATUS ----------------------------------------------------------------------

@dataclass(frozen=True)
class PrstatusLayout:
    """Where ``struct elf_prstatus`` keeps pid and registers on one architecture.

    The generic part (``include/linux/elfcore.h``) is signal info, pids and four
    ``timeval``s; ``pr_reg`` (``elf_gregset_t``) follows at ``reg_offset``.
    """

    descsz: int
    word: int
    pid_offset: int
    cursig_offset: int
    reg_offset: int
    registers: tuple[str, ...]


#: Keyed by ELF ``e_machine``. x86_64 order is ``struct user_regs_struct``
#: (``arch/x86/include/asm/user_64.h``); i386 is ``user_regs_struct`` of ``user_32.h``;
#: aarch64 is ``struct user_pt_regs``.
PRSTATUS_LAYOUTS: dict[int, PrstatusLayout] = {
    62: PrstatusLayout(336, 8, 32, 12, 112, (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")),
    3: PrstatusLayout(144, 4, 24, 12, 72, (
        "ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs",
        "orig_eax", "eip", "cs", "eflags", "esp", "ss")),
    183: PrstatusLayout(392, 8, 32, 12, 112, tuple(f"x{i}" for i in range(31)) + (
        "sp", "pc", "pstate")),
}


@dataclass(frozen=True)
class Prstatus:
    """The registers and pid one CPU saved when the kernel crashed (``crash_save_cpu``)."""

    pid: int
    cursig: int
    registers: dict[str, int]

    @classmethod
    def parse(cls, desc: bytes, machine: int, *, byteorder: ByteOrder = "little",
              path: str | None = None, offset: int = 0) -> "Prstatus":
        layout = PRSTATUS_LAYOUTS.get(machine)
        if layout is None:
            raise DumpFormatError(path, "NT_PRSTATUS note", offset,
                                  f"no register layout for ELF machine {machine}")
        if len(desc) < layout.reg_offset + layout.word * len(layout.registers):
            raise DumpFormatError(path, "NT_PRSTATUS note", offset,
                                  f"descriptor is {len(desc)} bytes, expected {layout.descsz}")
        e = "<" if byteorder == "little" else ">"
        pid = struct.unpack_from(e + "i", desc, layout.pid_offset)[0]
        cursig = struct.unpack_from(e + "h", desc, layout.cursig_offset)[0]
        fmt = e + ("Q" if layout.word == 8 else "I") * len(layout.registers)
        values = struct.unpack_from(fmt, desc, layout.reg_offset)
        return cls(pid, cursig, dict(zip(layout.registers, values)))
