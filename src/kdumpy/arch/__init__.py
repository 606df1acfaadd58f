"""One module per architecture: what reading a dump of that machine depends on.

Each module (``x86_64`` now) gives its ``NAME`` (``uname -m``), ``EM`` (ELF ``e_machine``),
``START_KERNEL_MAP``, ``PAGE_SIZE``, ``SYS_KEXEC_FILE_LOAD``, the capture kernel's command-line
words ``CAPTURE_APPEND``, the ``crashkernel=`` defaults ``CRASHKERNEL_TABLE`` and
``CRASHKERNEL_LOW_DEFAULT``, the ``NT_PRSTATUS`` register layout ``PRSTATUS``, ``max_physmem_bits(vmcoreinfo)``, ``kernel_image_to_phys(va,
phys_base)`` and ``PageTables(dump, phys_base)`` with ``translate(va)``.
"""

from __future__ import annotations

from types import ModuleType

from kdumpy.arch import x86_64
from kdumpy.errors import UnsupportedError

ARCHES: dict[str, ModuleType] = {x86_64.NAME: x86_64}

#: the widest physical address of any architecture Linux supports (x86_64 5-level paging,
#: arm64 with 52-bit PA): what a dump without a known architecture is checked against
MAX_PHYSMEM_BITS = 52


def known(machine: str) -> ModuleType | None:
    """The module for ``machine`` when kdumpy has one, else None (setup code then falls
    back to its per-architecture tables for machines it can load but not yet read)."""
    return ARCHES.get(machine)


def arch_for(machine: str) -> ModuleType:
    """The module for ``machine`` (``uname -m`` spelling); UnsupportedError otherwise."""
    try:
        return ARCHES[machine]
    except KeyError:
        raise UnsupportedError(f"kernel address translation for {machine} is not implemented") from None
