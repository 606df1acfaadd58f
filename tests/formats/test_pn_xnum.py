"""More than 0xfffe program headers (QEMU ``dump-guest-memory -p`` writes ~65,700): e_phnum
is PN_XNUM and section header 0's sh_info holds the count."""

from __future__ import annotations

import numpy as np

from kdumpy.formats.elf import (ELF64LE, PN_XNUM, PT_LOAD, PT_NOTE, ElfHeader,
                                elf_core_headers_size, new_phdrs, pack_elf_core_headers)
from kdumpy.formats.notes import build_note
from kdumpy.dump import open_dump


def test_pn_xnum_core_reads_back(tmp_path):
    n_loads = 0x10000 + 5
    notes = build_note("VMCOREINFO", 0, b"OSRELEASE=6.1.0-xnum\nPAGESIZE=4096\n")
    phdrs = new_phdrs(1 + n_loads, ELF64LE)
    head = elf_core_headers_size(ELF64LE, len(phdrs))
    phdrs[0]["p_type"], phdrs[0]["p_offset"], phdrs[0]["p_filesz"] = PT_NOTE, head, len(notes)
    data_off = head + len(notes)
    idx = np.arange(n_loads, dtype=np.uint64)
    loads = phdrs[1:]
    loads["p_type"] = PT_LOAD
    loads["p_paddr"] = idx * np.uint64(2 * 4096)        # every other page: one PT_LOAD each
    loads["p_filesz"] = loads["p_memsz"] = 4096
    loads["p_offset"] = np.uint64(data_off) + idx * np.uint64(4096)
    body = (idx.astype("<u8").repeat(512)).tobytes()     # page i holds the number i
    p = tmp_path / "xnum.elf"
    p.write_bytes(pack_elf_core_headers(ElfHeader(ELF64LE), phdrs) + notes + body)
    raw = p.read_bytes()
    assert int.from_bytes(raw[56:58], "little") == PN_XNUM
    with open_dump(p) as mem:
        assert len(mem.core.loads) == n_loads
        assert mem.vmcoreinfo.osrelease == "6.1.0-xnum"
        for i in (0, 1, 0xFFFF, n_loads - 1):
            assert mem.read_pfn(2 * i) == int(i).to_bytes(8, "little") * 512
            assert mem.is_dumpable(2 * i) and not mem.is_present(2 * i + 1)
