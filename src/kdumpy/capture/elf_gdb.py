"""ELF dump layout for debuggers: what ``gdb vmlinux DUMP`` needs, and ELF32 headers.

What gdb does with an ELF core (GNU gdb 13 with its BFD, checked against Debian's 6.1 and
6.12 kernels in the lab):

- Memory is read through the PT_LOADs' ``p_vaddr``; ``p_paddr`` is ignored. A kernel
  address that no PT_LOAD's ``[p_vaddr, p_vaddr + p_memsz)`` covers reads as "Cannot
  access memory".
- ``/proc/vmcore`` (``crash_prepare_elf64_headers()``) only has PT_LOADs for the kernel
  image (``p_vaddr`` = ``_text``) and for RAM at its direct-map address. Debian kernels
  are built with ``CONFIG_VMAP_STACK=y``: task stacks are ``vmalloc``'d (``THREAD_SIZE``
  16 KiB, followed by an unmapped guard page), so a backtrace of a task that crashed in
  process context stops after the frames whose CFI needs nothing from the stack
  ("Backtrace stopped: Cannot access memory at address ..."). :func:`elf_segments` adds
  PT_LOADs that map each CPU's stack (the run of mapped pages around the ``rsp`` of its
  NT_PRSTATUS, found by walking the crashed kernel's page tables) at its vmalloc address.
  Such a PT_LOAD has the pages' real ``p_paddr`` and its own copy of their data: to a
  reader that goes by ``p_paddr`` (crash, makedumpfile, drgn, kdumpy) it is a second,
  identical copy of RAM it already has, as the kernel-image PT_LOAD of ``/proc/vmcore``
  is.
- makedumpfile (``get_page_offset_x86_64()``) takes the direct-map base from the *last*
  PT_LOAD with ``0 < p_vaddr < __START_KERNEL_map``, so the stack PT_LOADs go before the
  RAM PT_LOADs, and are only written when the RAM PT_LOADs have their direct-map
  ``p_vaddr``. For a source without them (a kdump-compressed file, a QEMU ELF dump taken
  without paging), the direct-map base is ``va - pa`` of a known direct-map pointer,
  VMCOREINFO ``SYMBOL(mem_section)`` (a ``memblock`` allocation on SPARSEMEM_EXTREME
  kernels, 4.15+), translated through the page tables; the base must be 1 GiB aligned
  (KASLR moves the direct map in PUD steps, ``arch/x86/mm/kaslr.c``). The kernel-image
  PT_LOAD is then made from the image's mapping at ``__START_KERNEL_map`` (from ``_stext``
  rounded down to 2 MiB, ``_text``, to the last page mapped below ``__START_KERNEL_map +
  KERNEL_IMAGE_SIZE``; ``cleanup_highmap()`` unmaps everything around the image).
- Threads come from the NT_PRSTATUS notes, in order. BFD names each note's registers
  ``.reg/<pr_pid>`` and also ``.reg`` for the first note; gdb makes one thread per
  ``.reg/N`` section, ptid (1, N) (1 is gdb's made-up pid: kdump cores have no
  NT_PRPSINFO), numbered from 1 in note order; a repeated pid replaces
  the earlier thread (a new number), and a thread's registers are those of the first note
  with its pid, or of the first note of all (``.reg``) for pid 0 (idle tasks). The
  current thread after loading is the first note's. kdumpy keeps the notes in CPU order,
  because crash (``map_cpus_to_prstatus()``), drgn and kdumpy's own report take note *i*
  to be the *i*-th online CPU; :func:`gdb_thread_for_note` says which gdb thread shows a
  given note, and :func:`gdb_command` selects it with ``thread N``. (A PT_LOAD with
  ``p_offset`` 0 makes BFD read the notes once more, so every thread is added again under
  a new number; ``write_elf`` never writes one.)
- gdb does not relocate an ``ET_EXEC`` file for a core (``svr4_exec_displacement()``
  only handles ``ET_DYN``), so with KASLR (VMCOREINFO ``KERNELOFFSET``, non-zero on
  Debian's default boot) ``gdb vmlinux DUMP`` cannot symbolise anything: the symbols must
  be loaded with ``symbol-file -o 0x<KERNELOFFSET> vmlinux`` (gdb 8.2+), which
  :func:`gdb_command` writes out.

ELF32 (``kexec --elf32-core-headers``): ``p_paddr``, ``p_vaddr``, ``p_offset``,
``p_filesz`` and ``p_memsz`` are 32-bit. kdumpy refuses (:func:`check_elf32`) when any
physical range ends above 4 GiB; a ``p_vaddr`` that does not fit (every kernel address of a
64-bit kernel) is written as 0, "no virtual address", as kdump sources already get, and
the stack PT_LOADs, which exist only for their ``p_vaddr``, are left out. The notes are
copied unchanged (a 64-bit kernel's NT_PRSTATUS stays 336 bytes; gdb reads an ELF32
``EM_X86_64`` core as x32, whose BFD accepts that size).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from kdumpy.errors import KdumpyError
from kdumpy.arch.x86_64 import START_KERNEL_MAP
from kdumpy.dump import Dump
from kdumpy.kernel import KernelView

#: ``(p_paddr, p_memsz, p_filesz, p_vaddr)`` of one PT_LOAD to be written, as ``write_elf``
#: plans them.
Segment = tuple[int, int, int, int]

PAGE = 4096
#: ``PMD_SIZE``: the kernel image is mapped, and ``_text`` aligned, in 2 MiB steps.
PMD_SIZE = 2 << 20
#: ``PUD_SIZE``: KASLR's granularity for the direct-map base.
PUD_SIZE = 1 << 30
#: x86_64 ``KERNEL_IMAGE_SIZE`` with KASLR (``page_64_types.h``) when VMCOREINFO lacks it.
DEFAULT_KERNEL_IMAGE_SIZE = 1 << 30
#: Pages looked at on each side of a stack pointer. A vmalloc'd stack is THREAD_SIZE (4
#: pages, 8 with KASAN) between unmapped guard pages, so the mapped run ends well before.
STACK_SCAN_PAGES = 16
#: Lowest kernel address (the kernel half of the x86_64 address space, 4- and 5-level).
KERNEL_HALF = 1 << 63
U32_LIMIT = 1 << 32


# -- PT_LOADs ------------------------------------------------------------------------------

def elf_segments(mem: Dump, segments: Sequence[Segment], *, bits: int,
                 gdb: bool = True) -> list[Segment]:
    """The PT_LOADs of an ELF dump of ``mem``: ``segments`` (the source's, in its order)
    completed for gdb and fitted to an ELF class of ``bits``.

    With ``gdb`` (x86_64, page tables readable): RAM PT_LOADs without a ``p_vaddr`` get
    their direct-map address and a kernel-image PT_LOAD is put first when the source has
    none; PT_LOADs mapping each CPU's kernel stack at its virtual address are put before
    the first RAM PT_LOAD. Anything that cannot be worked out is left as it was. For
    ``bits`` 32, ``p_vaddr`` values of 4 GiB and above become 0 (see the module notes).
    """
    out = list(segments)
    wide = bits == 64 or not _is_64bit(mem)
    if gdb and wide and mem.machine == "x86_64":
        try:
            out = _complete_for_gdb(mem, out)
        except KdumpyError:
            out = list(segments)       # no VMCOREINFO or page tables: the source's layout
    if bits == 32:
        out = [(pa, msz, fsz, va if va < U32_LIMIT else 0) for pa, msz, fsz, va in out]
    return out


def _is_64bit(mem: Dump) -> bool:
    from kdumpy.formats.kdump import MACHINE_WORD
    return MACHINE_WORD.get(mem.machine, 64) == 64


def _below_image(va: int) -> bool:
    """A kernel virtual address below ``__START_KERNEL_map`` (direct map, vmalloc, ...);
    0 is "no virtual address"."""
    return 0 < va < START_KERNEL_MAP


def _complete_for_gdb(mem: Dump, segs: list[Segment]) -> list[Segment]:
    kv = KernelView(mem)
    pt = kv.page_tables()
    if not any(_below_image(va) for *_x, va in segs):
        base = direct_map_base(kv)
        if base is not None:
            segs = [(pa, msz, fsz, base + pa if va == 0 else va) for pa, msz, fsz, va in segs]
    if not any(va >= START_KERNEL_MAP for *_x, va in segs):
        image = kernel_image_segment(kv)
        if image is not None:
            segs = [image] + segs
    ram_at = next((i for i, (*_x, va) in enumerate(segs) if _below_image(va)), None)
    if ram_at is None:
        return segs        # stack PT_LOADs would be taken for the direct map (module notes)
    covered = [(va, va + msz) for _pa, msz, _f, va in segs if va]
    stacks: list[Segment] = []
    for sp in _kernel_stack_pointers(mem):
        if any(s <= sp < e for s, e in covered):
            continue
        found = stack_segments(kv, sp, pt)
        stacks.extend(found)
        covered.extend((va, va + msz) for _pa, msz, _f, va in found)
    return segs[:ram_at] + stacks + segs[ram_at:]


def _kernel_stack_pointers(mem: Dump) -> list[int]:
    """``rsp`` of every NT_PRSTATUS whose CPU was in kernel mode (CPL 0 in ``cs``)."""
    out = []
    for pr in mem.prstatus():
        sp, cs = pr.registers.get("rsp"), pr.registers.get("cs")
        if sp is not None and sp >= KERNEL_HALF and cs is not None and cs & 3 == 0:
            out.append(sp)
    return out


def stack_segments(kv: KernelView, sp: int, pt=None) -> list[Segment]:
    """PT_LOADs mapping the stack that holds ``sp``: the run of mapped, dumpable pages
    around it (at most :data:`STACK_SCAN_PAGES` each way), one PT_LOAD per physically
    contiguous part."""
    dump = kv.dump
    pt = pt if pt is not None else kv.page_tables()
    page = sp & ~(PAGE - 1)

    def phys(va: int) -> int | None:
        try:
            pa = pt.translate(va)
        except KdumpyError:
            return None
        return pa if dump.is_dumpable(pa // dump.page_size) else None

    if phys(page) is None:
        return []
    lo = page
    while lo > page - STACK_SCAN_PAGES * PAGE and phys(lo - PAGE) is not None:
        lo -= PAGE
    hi = page + PAGE
    while hi < page + (STACK_SCAN_PAGES + 1) * PAGE and phys(hi) is not None:
        hi += PAGE
    out: list[Segment] = []
    for va in range(lo, hi, PAGE):
        pa = phys(va)
        assert pa is not None
        if out and out[-1][0] + out[-1][1] == pa and out[-1][3] + out[-1][1] == va:
            p0, n, _f, v0 = out[-1]
            out[-1] = (p0, n + PAGE, n + PAGE, v0)
        else:
            out.append((pa, PAGE, PAGE, va))
    return out


def direct_map_base(mem: KernelView) -> int | None:
    """``page_offset_base`` (the direct map's start) from VMCOREINFO and the page tables,
    or None: ``va - pa`` of ``SYMBOL(mem_section)``, accepted when it is 1 GiB aligned
    and below ``__START_KERNEL_map`` (older kernels export the array's image address)."""
    vi = mem.vmcoreinfo
    va = vi.symbol("mem_section") if vi is not None else None
    if va is None or not _below_image(va):
        return None
    try:
        base = va - mem.virt_to_phys(va)
    except KdumpyError:
        return None
    if base % PUD_SIZE or not _below_image(base):
        return None
    return base


def kernel_image_segment(mem: KernelView) -> Segment | None:
    """A PT_LOAD for the kernel image at ``__START_KERNEL_map`` (as ``/proc/vmcore`` has),
    from ``_text`` (``SYMBOL(_stext)`` rounded down to 2 MiB) to the last mapped page of
    the image region, or None."""
    vi = mem.vmcoreinfo
    stext = vi.symbol("_stext") if vi is not None else None
    if stext is None or stext < START_KERNEL_MAP:
        return None
    start = stext & ~(PMD_SIZE - 1)
    pa = mem.kernel_image_to_phys(start)
    if pa is None or pa < 0:
        return None
    size = (vi.number("KERNEL_IMAGE_SIZE") if vi is not None else None) or DEFAULT_KERNEL_IMAGE_SIZE
    limit = START_KERNEL_MAP + size
    pt = mem.page_tables()

    def mapped(va: int) -> bool:
        try:
            pt.translate(va)
        except KdumpyError:
            return False
        return True

    last_chunk = None
    for chunk in range(start, limit, PMD_SIZE):
        if mapped(chunk) or mapped(chunk + PMD_SIZE - PAGE):
            last_chunk = chunk
    if last_chunk is None:
        return None
    end = last_chunk + PAGE
    for va in range(last_chunk, last_chunk + PMD_SIZE, PAGE):
        if mapped(va):
            end = va + PAGE
    end_pa = pa + (end - start)
    if end_pa > mem.dump.max_pfn * mem.page_size:
        return None
    return (pa, end - start, end - start, start)


# -- ELF32 ---------------------------------------------------------------------------------

def check_elf32(mem: Dump) -> None:
    """Refuse ELF32 headers for a dump with physical memory at or above 4 GiB."""
    ps = mem.page_size
    if mem.load_segments is not None:
        ranges = [(pa, pa + msz) for pa, msz, *_r in mem.load_segments]
    else:
        ranges = [(s * ps, e * ps) for s, e in mem.present_ranges()]
    for start, end in ranges:
        if end > U32_LIMIT:
            raise KdumpyError(
                f"--elf32: {mem.path} has memory at physical {max(start, U32_LIMIT):#x}-"
                f"{end - 1:#x}, above the 4 GiB an ELF32 header can address; "
                "write ELF64 (drop --elf32)")


def check_elf32_file_size(size: int) -> None:
    """ELF32 ``p_offset`` and ``p_filesz`` are 32-bit: the file must end below 4 GiB."""
    if size > U32_LIMIT:
        raise KdumpyError(f"--elf32: the dump would be {size} bytes, more than the 4 GiB an "
                          "ELF32 file offset can reach; write ELF64 (drop --elf32) or raise "
                          "the dump level")


# -- gdb -----------------------------------------------------------------------------------

def gdb_thread_for_note(pids: Sequence[int], index: int) -> int | None:
    """The gdb thread number that shows NT_PRSTATUS note ``index`` of notes with
    ``pids``, or None when gdb cannot show that note (its pid repeats an earlier note's,
    or is 0 when the note is not the first: see the module notes)."""
    pid = pids[index]
    if pid == 0 and index != 0:
        return None
    if pid != 0 and list(pids).index(pid) != index:
        return None
    number = {}
    for n, p in enumerate(pids, start=1):
        number[p] = n        # a repeated pid replaces the thread, under a new number
    return number[pid]


def kernel_offset(mem: Dump) -> int:
    """VMCOREINFO ``KERNELOFFSET`` (the KASLR slide of the kernel image), 0 if absent."""
    vi = mem.vmcoreinfo
    if vi is None or "KERNELOFFSET" not in vi:
        return 0
    try:
        return int(vi["KERNELOFFSET"], 16)
    except ValueError:
        return 0


def _gdb_arg(path: str) -> str:
    """``path`` escaped for a gdb command that splits its arguments (libiberty
    ``buildargv``: backslash escapes any character)."""
    return re.sub(r"([\s'\"\\])", r"\\\1", path)


def gdb_argv(dump: str, *, offset: int, thread: int | None, vmlinux: str = "vmlinux",
             commands: Sequence[str] = (), batch: bool = False) -> list[str]:
    """gdb's argv to open ``dump`` with ``vmlinux``'s symbols relocated by ``offset``, the
    thread ``thread`` selected (None: gdb's current one), then run ``commands``.

    Without an offset this is ``gdb vmlinux DUMP``; with one, the symbols are loaded with
    ``symbol-file -o`` and the dump with ``-c`` (gdb loads ``-c`` before running ``-ex``,
    and ``symbol-file`` then re-reads the frames with symbols).
    """
    argv = ["gdb"] + (["-batch"] if batch else [])
    if offset:
        argv += ["-ex", f"symbol-file -o {offset:#x} {_gdb_arg(vmlinux)}"]
    if thread is not None:
        argv += ["-ex", f"thread {thread}"]
    for c in commands:
        argv += ["-ex", c]
    return argv + (["-c", dump] if offset else [vmlinux, dump])


def gdb_command(dump: str, *, offset: int, thread: int | None, vmlinux: str = "vmlinux",
                commands: Sequence[str] = (), batch: bool = False) -> str:
    """:func:`gdb_argv` as one shell command line."""
    return shlex.join(gdb_argv(dump, offset=offset, thread=thread, vmlinux=vmlinux,
                               commands=commands, batch=batch))


def stack_is_mapped(mem: Dump, note_index: int) -> bool | None:
    """Whether an ELF dump's PT_LOADs map the ``rsp`` of NT_PRSTATUS ``note_index`` at a
    virtual address (None: not an x86_64 ELF dump, or no such note)."""
    if mem.load_segments is None or mem.machine != "x86_64":
        return None
    prs = mem.prstatus()
    if not 0 <= note_index < len(prs) or "rsp" not in prs[note_index].registers:
        return None
    sp = prs[note_index].registers["rsp"]
    return any(va and va <= sp < va + msz for _pa, msz, _f, _o, va in mem.load_segments)


def gdb_hint(mem: Dump, crashing_note: int | None, *,
             vmlinux: str = "vmlinux") -> dict[str, object] | None:
    """How to open the ELF dump ``mem`` in gdb: the command line (:func:`gdb_command`) and
    what it cannot show, or None for a dump gdb cannot open (kdump-compressed) or without
    NT_PRSTATUS notes. ``crashing_note`` is the crashing CPU's note (the caller's decision,
    e.g. :func:`kdumpy.analysis.report.build_report`'s ``crashing_cpu``), None if unknown.
    """
    if mem.format != "elf":
        return None
    try:
        pids = [pr.pid for pr in mem.prstatus()]
    except KdumpyError:
        return None
    if not pids:
        return None
    offset = kernel_offset(mem)
    notes: list[str] = []
    thread = None
    if crashing_note is not None and 0 <= crashing_note < len(pids):
        thread = gdb_thread_for_note(pids, crashing_note)
        if thread is None:
            notes.append(f"gdb cannot show the crashing CPU's registers: its NT_PRSTATUS note "
                         f"(#{crashing_note}, pid {pids[crashing_note]}) repeats an earlier "
                         "note's pid, and gdb keys threads by pid")
        elif thread == 1:
            thread = None         # gdb starts on thread 1, the first note's
        if stack_is_mapped(mem, crashing_note) is False:
            notes.append("the crashing CPU's stack is not at its virtual address in this "
                         "dump's PT_LOADs (a copy of /proc/vmcore: vmalloc'd stacks are not "
                         "mapped), so bt stops early; `kdumpy convert -f elf` maps it")
    else:
        notes.append("the crashing CPU is unknown: gdb starts on the first NT_PRSTATUS note")
    return {"command": gdb_command(mem.path, offset=offset, thread=thread, vmlinux=vmlinux),
            "kernel_offset": f"{offset:#x}", "thread": thread, "crashing_note": crashing_note,
            "notes": notes}
