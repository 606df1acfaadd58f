"""ELF32 cores (i386, ``kexec --elf32-core-headers``) and the 32-bit kdump layout."""

from __future__ import annotations

import struct

from kdumpy.cli import main
from kdumpy.formats.kdump import ARCH32_LE, KdumpFile
from kdumpy.dump import open_dump


def to_elf32(src: bytes) -> bytes:
    """Re-encode an ELF64 x86_64 core from tests/synth.py as an ELF32 i386 core."""
    phnum = struct.unpack_from("<H", src, 56)[0]
    phdrs = [struct.unpack_from("<IIQQQQQQ", src, 64 + 56 * i) for i in range(phnum)]
    data_start = 64 + 56 * phnum
    new_start = 52 + 32 * phnum
    shift = new_start - data_start
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    out = struct.pack("<16sHHIIIIIHHHHHH", ident, 4, 3, 1, 0, 52, 0, 0, 52, 32, phnum, 0, 0, 0)
    for p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align in phdrs:
        out += struct.pack("<IIIIIIII", p_type, p_offset + shift, p_vaddr & 0xFFFFFFFF,
                           p_paddr, p_filesz, p_memsz, p_flags, p_align)
    return out + src[data_start:]


def test_elf32_core_reads_and_round_trips(tmp_path, synth_core):
    p = tmp_path / "vmcore32"
    p.write_bytes(to_elf32(open(synth_core.path, "rb").read()))
    with open_dump(p) as mem:
        assert mem.core.header.elfclass.bits == 32
        assert mem.machine == "i386"
        for pfn, data in synth_core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data
    kd = tmp_path / "k32"
    assert main(["save", "-q", "-d", "1", "-c", "zlib", str(p), str(kd)]) == 0
    kf = KdumpFile(kd.read_bytes(), path=str(kd))
    assert kf.arch is ARCH32_LE and kf.header.utsname["machine"] == "i386"
    with open_dump(kd) as mem:
        for pfn, data in synth_core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data
    e = tmp_path / "e32"
    assert main(["convert", "-q", "-f", "elf", str(kd), str(e)]) == 0
    with open_dump(e) as mem:
        assert mem.core.header.elfclass.bits == 32  # the crashed machine's word size
        for pfn, data in synth_core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data
