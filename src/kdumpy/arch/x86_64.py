"""x86_64: kernel address translation, register layout and the numbers kdumpy needs.

Kernel facts (``arch/x86/include/asm/pgtable_types.h``, ``arch/x86/kernel/vmcore_info_64.c``,
``arch/x86/mm/init_64.c``):

- The kernel image is mapped at ``__START_KERNEL_map`` (0xffffffff80000000):
  ``pa = va - __START_KERNEL_map + phys_base``; ``NUMBER(phys_base)`` is signed.
- The page-table root is ``init_top_pgt`` (``SYMBOL(init_top_pgt)``, called
  ``init_level4_pgt`` before 4.13), itself in the image, so its physical address needs no walk.
- 4-level tables index bits 39, 30, 21, 12 of the address; with
  ``NUMBER(pgtable_l5_enabled)=1`` a fifth level indexes bit 48 first. 512 entries of 8 bytes.
- An entry is present if bit 0 is set; bit 7 (PSE) in a PUD maps a 1 GiB page, in a PMD a
  2 MiB page. The next table's (or frame's) address is bits 12..51, with the SME/SEV
  encryption bit (``NUMBER(sme_mask)``) cleared.
- ``MAX_PHYSMEM_BITS`` (``arch/x86/include/asm/sparsemem.h``) is 46 with 4-level paging
  and 52 with 5-level; kernels export it as ``NUMBER(MAX_PHYSMEM_BITS)``.
- ``NT_PRSTATUS`` holds ``struct elf_prstatus`` of 336 bytes with ``pr_reg`` (27 longs in
  ``user_regs_struct`` order) at 112 (:data:`kdumpy.formats.notes.PRSTATUS_LAYOUTS` [62]).
- ``kexec_file_load`` is system call 320 (``arch/x86/entry/syscalls/syscall_64.tbl``).
- The capture kernel boots on one CPU without the devices' old state: kdump-utils appends
  ``KDUMP_COMMANDLINE_APPEND`` (``gen-kdump-sysconfig.sh``, x86_64) for that, and
  :data:`CAPTURE_APPEND` is that list.
- ``crashkernel=`` defaults: kdump-utils recommends ``2G-64G:256M,64G-:512M`` on x86_64
  (``kdump-lib.sh``, ``kdump_get_arch_recommend_crashkernel``). When only
  ``crashkernel=X,high`` is given, x86_64 reserves ``CRASH_LOW_SIZE_MIN`` = 256 MiB below
  4 GiB for swiotlb and DMA (``arch/x86/kernel/setup.c``; other architectures 128 MiB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kdumpy.errors import KdumpyError
from kdumpy.formats.notes import PRSTATUS_LAYOUTS, PrstatusLayout
from kdumpy.formats.vmcoreinfo import VmcoreInfo

if TYPE_CHECKING:
    from kdumpy.dump import Dump

NAME = "x86_64"
#: ``e_machine`` of x86_64 ELF cores (EM_X86_64)
EM = 62
START_KERNEL_MAP = 0xFFFFFFFF80000000
PAGE_SIZE = 4096
#: ``kexec_file_load`` system call number
SYS_KEXEC_FILE_LOAD = 320

#: words appended to the capture kernel's command line
CAPTURE_APPEND = ("irqpoll", "nr_cpus=1", "reset_devices", "cgroup_disable=memory", "mce=off",
                  "numa=off", "udev.children-max=2", "panic=10", "acpi_no_memhotplug",
                  "transparent_hugepage=never", "nokaslr", "hest_disable", "cma=0",
                  "pcie_ports=compat")
#: the ``crashkernel=`` ranges recommended when the admin gives none
CRASHKERNEL_TABLE = "2G-64G:256M,64G-:512M"
#: what ``crashkernel=X,high`` reserves below 4 GiB unless ``crashkernel=Y,low`` says
CRASHKERNEL_LOW_DEFAULT = 256 << 20
PRSTATUS: PrstatusLayout = PRSTATUS_LAYOUTS[EM]
PTE_PRESENT = 1 << 0
PTE_PSE = 1 << 7
ADDR_MASK = 0x000FFFFFFFFFF000


class TranslationError(KdumpyError):
    """A kernel virtual address is not mapped (or its page tables are not in the dump)."""


def max_physmem_bits(vi: VmcoreInfo | None) -> int:
    """``MAX_PHYSMEM_BITS`` of the crashed kernel: VMCOREINFO's number, else 52 (5-level
    paging; 46 when VMCOREINFO says 5-level paging is off)."""
    if vi is not None:
        try:
            n = vi.number("MAX_PHYSMEM_BITS")
            if n is not None and 32 <= n <= 52:
                return n
            if vi.number("pgtable_l5_enabled") == 0:
                return 46
        except KdumpyError:
            pass
    return 52


def kernel_image_to_phys(vaddr: int, phys_base: int | None) -> int | None:
    """``__phys_addr_nodebug`` for the kernel image: ``va - __START_KERNEL_map +
    phys_base`` (``NUMBER(phys_base)``, signed, KASLR included), or None below the image."""
    if vaddr >= START_KERNEL_MAP and phys_base is not None:
        return vaddr - START_KERNEL_MAP + phys_base
    return None


class PageTables:
    """Walks the crashed kernel's page tables, caching table pages and large mappings."""

    def __init__(self, mem: "Dump", phys_base: int | None) -> None:
        vi = mem.vmcoreinfo
        if vi is None:
            raise KdumpyError(f"{mem.path}: no VMCOREINFO: cannot translate kernel addresses")
        self.mem = mem
        root = vi.symbol("init_top_pgt")
        if root is None:
            root = vi.symbol("init_level4_pgt")
        if root is None:
            raise KdumpyError(f"{mem.path}: VMCOREINFO lacks SYMBOL(init_top_pgt)")
        if phys_base is None:
            raise KdumpyError(f"{mem.path}: VMCOREINFO lacks NUMBER(phys_base)")
        self.phys_base = phys_base
        self.root = root - START_KERNEL_MAP + phys_base
        self.levels = 5 if (vi.number("pgtable_l5_enabled") or 0) == 1 else 4
        self.mask = ADDR_MASK & ~(vi.number("sme_mask") or 0)
        self._tables: dict[int, np.ndarray] = {}
        self._large: dict[int, tuple[int, int]] = {}  # va >> 21 -> (pa base, size)

    def _table(self, pa: int) -> np.ndarray:
        t = self._tables.get(pa)
        if t is None:
            if not self.mem.is_dumpable(pa >> 12):
                raise TranslationError(f"{self.mem.path}: page table at {pa:#x} is not in the dump")
            t = np.frombuffer(self.mem.read_phys(pa, 4096), dtype="<u8")
            if len(self._tables) > 4096:
                self._tables.clear()
            self._tables[pa] = t
        return t

    def translate(self, va: int) -> int:
        """Physical address of kernel virtual address ``va``."""
        hit = self._large.get(va >> 21)
        if hit is not None:
            base, size = hit
            return base | (va & (size - 1))
        shifts = (48, 39, 30, 21, 12) if self.levels == 5 else (39, 30, 21, 12)
        table = self.root
        for shift in shifts:
            entry = int(self._table(table)[(va >> shift) & 511])
            if not entry & PTE_PRESENT:
                raise TranslationError(f"{self.mem.path}: kernel address {va:#x} is not mapped "
                                       f"(level with shift {shift})")
            if shift in (30, 21) and entry & PTE_PSE:
                size = 1 << shift
                base = entry & self.mask & ~(size - 1)
                if shift == 21:
                    self._large[va >> 21] = (base, size)
                return base | (va & (size - 1))
            table = entry & self.mask
        return table | (va & 0xFFF)
