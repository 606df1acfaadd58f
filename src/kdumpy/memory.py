"""The names this module had before :mod:`kdumpy.dump` (kept for callers not yet moved)."""

from kdumpy.arch.x86_64 import START_KERNEL_MAP
from kdumpy.dump import (EM_TO_MACHINE, MACHINE_TO_EM, Dump, ElfDump, FaultError, KdumpDump,
                         PageState, open_dump)

DumpMemory = Dump
ElfMemory = ElfDump
KdumpMemory = KdumpDump

__all__ = ["Dump", "DumpMemory", "ElfDump", "ElfMemory", "KdumpDump", "KdumpMemory", "FaultError",
           "PageState", "open_dump", "START_KERNEL_MAP", "MACHINE_TO_EM", "EM_TO_MACHINE"]
