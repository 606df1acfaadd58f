"""The crashed kernel as a dump shows it: virtual addresses, symbols, the log.

:class:`KernelView` wraps a :class:`~kdumpy.dump.Dump` and adds what needs the
architecture (:mod:`kdumpy.arch`): kernel-image and page-table translation, ``read_virt``,
symbols from VMCOREINFO and from the kernel's own kallsyms table, the kernel's utsname, and
the printk log. Reads are strict: memory the dump does not hold raises
:class:`~kdumpy.dump.FaultError`, an unmapped virtual address ``TranslationError``.
"""

from __future__ import annotations

import struct

from types import ModuleType
from typing import Any

from kdumpy import arch as arches
from kdumpy.dump import Dump, FaultError
from kdumpy.errors import DumpFormatError, KdumpyError
from kdumpy.formats.notes import Prstatus
from kdumpy.formats.vmcoreinfo import VmcoreInfo
from kdumpy.kallsyms import Kallsyms, read_kallsyms
from kdumpy.kernel_log import KernelLog, read_kernel_log

__all__ = ["KernelView", "MemSections", "MissingKeyError"]

UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")

#: ``section_mem_map`` flag bits (``include/linux/mmzone.h``)
SECTION_MARKED_PRESENT = 1
SECTION_HAS_MEM_MAP = 2


class MissingKeyError(KdumpyError):
    """A dump level needs a VMCOREINFO key the crashed kernel did not export."""


class KernelView:
    """Kernel-level access to a dump: ``KernelView(open_dump(path))``."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self._arch: ModuleType | None = None
        self._page_tables: Any = None
        self._kallsyms: Kallsyms | None = None
        self._kallsyms_error: KdumpyError | None = None
        self._sections: MemSections | None = None

    # -- the dump's facts, as analysis needs them --------------------------------------------
    @property
    def path(self) -> str:
        return self.dump.path

    @property
    def format(self) -> str:
        return self.dump.format

    @property
    def container(self) -> str:
        return self.dump.container

    @property
    def machine(self) -> str:
        return self.dump.machine

    @property
    def byteorder(self) -> str:
        return self.dump.byteorder

    @property
    def page_size(self) -> int:
        return self.dump.page_size

    @property
    def vmcoreinfo(self) -> VmcoreInfo | None:
        return self.dump.vmcoreinfo

    @property
    def phys_base(self) -> int | None:
        return self.dump.phys_base

    def prstatus(self) -> list[Prstatus]:
        return self.dump.prstatus()

    @property
    def arch(self) -> ModuleType:
        """The :mod:`kdumpy.arch` module of the crashed machine."""
        if self._arch is None:
            self._arch = arches.arch_for(self.dump.machine)
        return self._arch

    # -- addresses ----------------------------------------------------------------------------
    def kernel_image_to_phys(self, vaddr: int) -> int | None:
        """Physical address of a kernel-image virtual address (text, data, bss), or None.

        Through the PT_LOAD whose ``p_vaddr`` range holds ``vaddr`` when the dump has one
        (``/proc/vmcore``'s kernel-text segment), else the architecture's rule
        (x86_64: ``va - __START_KERNEL_map + phys_base``).
        """
        try:
            arch = self.arch
        except KdumpyError:
            return None
        for pa, mem, _f, _o, va in self.dump.load_segments or ():
            if va and va <= vaddr < va + mem and va >= arch.START_KERNEL_MAP:
                return pa + (vaddr - va)
        return arch.kernel_image_to_phys(vaddr, self.dump.phys_base)

    def page_tables(self) -> Any:
        """The crashed kernel's page tables (built on first use)."""
        if self._page_tables is None:
            self._page_tables = self.arch.PageTables(self.dump, self.dump.phys_base)
        return self._page_tables

    def virt_to_phys(self, vaddr: int) -> int:
        """Physical address of kernel virtual address ``vaddr`` (page-table walk)."""
        return self.page_tables().translate(vaddr)

    def read_virt(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at kernel virtual address ``vaddr``, through the page tables
        (physically contiguous runs are read at once). Memory the dump does not hold raises
        :class:`FaultError`; an unmapped address raises ``TranslationError``."""
        chunks: list[bytes] = []
        translate = self.page_tables().translate
        read_phys = self.dump.read_phys
        while size > 0:
            n = min(size, 4096 - (vaddr & 0xFFF))
            pa = translate(vaddr)
            while n < size:
                step = min(size - n, 4096)
                try:
                    if translate(vaddr + n) != pa + n:
                        break
                except KdumpyError:
                    break
                n += step
            try:
                chunks.append(read_phys(pa, n))
            except FaultError as exc:
                raise FaultError(vaddr + (exc.address - pa), exc.reason, self.path,
                                 "virtual") from None
            vaddr += n
            size -= n
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    # -- symbols ------------------------------------------------------------------------------
    def kallsyms(self) -> Kallsyms:
        """The kernel's own symbol table (read once); KdumpyError when not available."""
        if self._kallsyms is None:
            if self._kallsyms_error is not None:
                raise self._kallsyms_error
            try:
                self._kallsyms = read_kallsyms(self)
            except KdumpyError as exc:
                self._kallsyms_error = exc
                raise
        return self._kallsyms

    def symbol(self, name: str) -> int | None:
        """Address of kernel symbol ``name``: VMCOREINFO ``SYMBOL(name)``, else kallsyms,
        else None."""
        vi = self.vmcoreinfo
        if vi is not None:
            try:
                addr = vi.symbol(name)
            except DumpFormatError:
                addr = None
            if addr is not None:
                return addr
        try:
            return self.kallsyms().address(name)
        except KdumpyError:
            return None

    def read_kernel_utsname(self) -> dict[str, str] | None:
        """The crashed kernel's ``init_uts_ns.name`` (``struct new_utsname``), or None.

        makedumpfile copies this into the kdump header; libkdumpfile trusts the header's
        utsname only when sysname is "Linux" and release, version and machine are set.
        """
        vi = self.vmcoreinfo
        if vi is None:
            return None
        try:
            sym = vi.symbol("init_uts_ns")
            off = vi.offset("uts_namespace.name")
        except DumpFormatError:
            return None
        if sym is None:
            return None
        # Before the kref moved into ns_common, name followed a 4-byte kref.
        for name_off in ([off] if off is not None else [0, 4]):
            pa = self.kernel_image_to_phys(sym + name_off)
            if pa is None or pa < 0:
                return None
            try:
                raw = self.dump.read_phys(pa, 6 * 65)
            except FaultError:
                return None
            fields = [raw[i * 65:(i + 1) * 65].split(b"\0", 1)[0] for i in range(6)]
            if fields[0] == b"Linux":
                return dict(zip(UTS_FIELDS, (f.decode("latin-1") for f in fields)))
        return None

    # -- struct page ----------------------------------------------------------------------------
    def mem_sections(self) -> "MemSections":
        """Where each memory section's ``struct page`` array is (built on first use);
        :class:`MissingKeyError` when VMCOREINFO lacks the keys."""
        if self._sections is None:
            self._sections = MemSections(self)
        return self._sections

    def struct_pages(self, pfn: int, count: int) -> bytes | None:
        """The ``struct page`` entries of PFNs ``[pfn, pfn+count)`` (one memory section at
        most: ``SIZE(page)`` bytes each), or None when the section has no ``mem_map``."""
        sections = self.mem_sections()
        nr = pfn // sections.pages_per_section
        if (pfn + count - 1) // sections.pages_per_section != nr:
            raise ValueError(f"PFNs {pfn:#x}+{count} cross a memory section")
        base = sections.mem_map(nr)
        if base is None:
            return None
        off = (pfn % sections.pages_per_section) * sections.size_page
        return self.read_virt(base + off, count * sections.size_page)

    # -- the log ------------------------------------------------------------------------------
    def kernel_log(self, *, since_clear: bool = False) -> KernelLog:
        """The printk log (:func:`kdumpy.kernel_log.read_kernel_log`)."""
        return read_kernel_log(self, since_clear=since_clear)


def kernel_view(obj: Dump | KernelView) -> KernelView:
    """``obj`` as a :class:`KernelView` (a Dump is wrapped; a view is returned as is)."""
    return KernelView(obj) if isinstance(obj, Dump) else obj


class MemSections:
    """``struct page`` addresses per memory section, from VMCOREINFO's mem_section keys."""

    def __init__(self, mem: Dump | KernelView) -> None:
        mem = kernel_view(mem)
        vi = mem.vmcoreinfo
        if vi is None:
            raise MissingKeyError(f"{mem.path}: no VMCOREINFO: dump levels above 1 need it")
        need = {}
        for key, val in (("SYMBOL(mem_section)", vi.symbol("mem_section")),
                         ("SIZE(mem_section)", vi.size("mem_section")),
                         ("OFFSET(mem_section.section_mem_map)", vi.offset("mem_section.section_mem_map")),
                         ("NUMBER(SECTION_SIZE_BITS)", vi.number("SECTION_SIZE_BITS")),
                         ("NUMBER(MAX_PHYSMEM_BITS)", vi.number("MAX_PHYSMEM_BITS"))):
            if val is None:
                raise MissingKeyError(f"{mem.path}: VMCOREINFO lacks {key} (needed to find struct page)")
            need[key] = val
        self.mem = mem
        self.symbol = need["SYMBOL(mem_section)"]
        self.size = need["SIZE(mem_section)"]
        self.off_map = need["OFFSET(mem_section.section_mem_map)"]
        page_shift = mem.page_size.bit_length() - 1
        self.pfn_shift = need["NUMBER(SECTION_SIZE_BITS)"] - page_shift
        self.pages_per_section = 1 << self.pfn_shift
        nr_sections = 1 << (need["NUMBER(MAX_PHYSMEM_BITS)"] - need["NUMBER(SECTION_SIZE_BITS)"])
        self.per_root = mem.page_size // self.size
        length = vi.length("mem_section")
        self.extreme = length is None or length == -(-nr_sections // self.per_root)
        self.map_mask = ~(min(mem.page_size, self.pages_per_section) - 1)
        self._roots: dict[int, int] = {}
        self._roots_base = self.symbol
        self.size_page = vi.size("page") or 64

    def _u64(self, va: int) -> int:
        return struct.unpack("<Q", self.mem.read_virt(va, 8))[0]

    def section_entry(self, nr: int) -> int | None:
        """Address of ``struct mem_section`` number ``nr`` (None if its root is absent)."""
        if not self.extreme:
            return self.symbol + nr * self.size
        r = nr // self.per_root
        root = self._roots.get(r)
        if root is None:
            root = self._roots[r] = self._u64(self._roots_base + 8 * r)
        if root == 0:
            return None
        return root + (nr % self.per_root) * self.size

    def mem_map(self, nr: int) -> int | None:
        """``struct page`` address of the section's first PFN, None without a mem_map."""
        entry = self.section_entry(nr)
        if entry is None:
            return None
        smm = self._u64(entry + self.off_map)
        if not (smm & SECTION_MARKED_PRESENT) or not (smm & SECTION_HAS_MEM_MAP):
            return None
        coded = smm & self.map_mask & 0xFFFFFFFFFFFFFFFF
        return (coded + (nr << self.pfn_shift) * self.size_page) & 0xFFFFFFFFFFFFFFFF
