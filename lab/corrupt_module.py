"""A kernel module for the lab that corrupts the kernel, then panics: the capture must still
yield a dump, and kdumpy must say what it could not read.

Two modes (module parameter ``mode``):

``printk``
    Scribbles over half of the printk ring's ``printk_info`` array (the metadata of the log
    records: sequence number, timestamp, text length) with ``0xa5`` bytes. ``prb`` is a
    static pointer of kernel/printk/printk.c, not exported; the guest reads its address from
    ``/proc/kallsyms`` and passes it as ``prb_addr``. The layout used is the one VMCOREINFO
    describes for 5.10+ kernels: ``printk_ringbuffer.desc_ring`` at 0, whose ``count_bits``
    (u32) is at 0 and ``infos`` pointer at 16; ``SIZE(printk_info)`` is 88 on x86_64.
``mem_section``
    Overwrites the ``section_mem_map`` of memory section 1 (PFNs 32768-65535 with 128 MiB
    sections) with a non-canonical address that keeps the PRESENT and HAS_MEM_MAP flags, so
    that its ``struct page`` array cannot be read. ``mem_section`` is exported
    (CONFIG_SPARSEMEM_EXTREME: an array of pointers to arrays of ``struct mem_section``).

Then ``panic()``: the new records the panic prints are written whole (a writer fills its own
record's info), so the serial console still shows the panic. Built like
:mod:`lab.warn_module`, against Debian's headers.
"""

from __future__ import annotations

from pathlib import Path

from .kernels import Kernel
from .warn_module import build_module

MODULE_NAME = "kdumpy_corrupt"
PANIC_TEXT = "KDUMPY-LAB-CORRUPT"
#: the non-canonical struct page address written for section 1 (low bits: PRESENT | HAS_MEM_MAP)
BAD_SECTION_MEM_MAP = 0xDEAD000000000003

SOURCE = r"""// SPDX-License-Identifier: GPL-2.0
/* kdumpy lab: corrupt the printk ring's metadata or a mem_section entry, then panic. */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/mmzone.h>
#include <linux/string.h>
#include <linux/panic.h>

static char *mode = "printk";
module_param(mode, charp, 0);
static unsigned long prb_addr;
module_param(prb_addr, ulong, 0);

#define PRINTK_INFO_SIZE 88

static int __init kdumpy_corrupt_init(void)
{
	if (!strcmp(mode, "printk")) {
		char *rb = *(char **)prb_addr;
		unsigned int count_bits = *(unsigned int *)rb;
		char *infos = *(char **)(rb + 16);

		memset(infos, 0xa5, ((size_t)PRINTK_INFO_SIZE << count_bits) / 2);
	} else if (!strcmp(mode, "mem_section")) {
		mem_section[0][1].section_mem_map = @BAD@UL;
	} else {
		return -EINVAL;
	}
	panic("@PANIC@: %s scribbled over", mode);
	return 0;
}

module_init(kdumpy_corrupt_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdumpy lab: corrupt the kernel, then panic");
"""


def ensure_corrupt_module(kernel: Kernel) -> Path:
    """The built ``kdumpy_corrupt.ko`` for ``kernel`` (cached in the lab cache)."""
    source = SOURCE.replace("@BAD@", f"{BAD_SECTION_MEM_MAP:#x}").replace("@PANIC@", PANIC_TEXT)
    return build_module(kernel, MODULE_NAME, source, "corrupt-module")
