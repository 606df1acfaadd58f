"""QEMU 7.2 ``dump-guest-memory`` defects that makedumpfile trips on, read anyway.

Built synthetically here from the layouts measured on QEMU 7.2 (``shared/notes/lab.md``);
``tests/e2e`` checks real QEMU output.
"""

from __future__ import annotations

import struct

from kdumpy.cli import main
from kdumpy.dump import open_dump


def qemu72_layout(src: bytes) -> bytes:
    """Rewrite an ELF64 core as QEMU 7.2 writes it: two section headers at offset 64,
    the program headers after them (e_phoff 192), e_ehsize 8."""
    (ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
     e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from(
        "<16sHHIQQQIHHHHHH", src, 0)
    phdrs = src[64:64 + 56 * e_phnum]
    shift = 128
    out_ph = bytearray()
    for i in range(e_phnum):
        f = list(struct.unpack_from("<IIQQQQQQ", phdrs, 56 * i))
        if f[2]:
            f[2] += shift
        out_ph += struct.pack("<IIQQQQQQ", *f)
    shdrs = bytes(128)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, e_machine, e_version, e_entry,
                       64 + 128, 64, e_flags, 8, 56, e_phnum, 64, 2, 0)
    return ehdr + shdrs + bytes(out_ph) + src[64 + 56 * e_phnum:]


def test_qemu72_elf_layout_read_and_reported(tmp_path, synth_core, capsys):
    bad = tmp_path / "qemu.elf"
    bad.write_bytes(qemu72_layout(open(synth_core.path, "rb").read()))
    with open_dump(bad) as mem:
        for pfn, data in synth_core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data
        text = " ".join(mem.corrections)
        assert "e_ehsize is 8" in text and "follow the section headers" in text
    assert main(["info", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "corrected" in out and "QEMU 7.2" in out
    # converting it gives a plain ELF that makedumpfile's fixed-offset reader accepts
    fixed = tmp_path / "fixed.elf"
    assert main(["convert", "-q", "-f", "elf", str(bad), str(fixed)]) == 0
    with open_dump(fixed) as mem:
        assert mem.corrections == []
        assert mem.core.header.e_phoff == 64


def test_qemu_kdump_hex_parsed_phys_base_and_empty_utsname(tmp_path, synth_core, capsys):
    kd = tmp_path / "q.kdump"
    assert main(["save", "-q", "-d", "1", "-c", "zlib", "-f", "flat", synth_core.path, str(kd)]) == 0
    plain = tmp_path / "plain"
    assert main(["convert", str(kd), str(plain)]) == 0
    data = bytearray(plain.read_bytes())
    data[12:12 + 390] = bytes(390)                      # utsname empty ...
    data[12 + 4 * 65:12 + 4 * 65 + 6] = b"x86_64"       # ... except machine
    data[408:416] = bytes(8)                            # timestamp 0
    # QEMU parses NUMBER(phys_base)=-148897792 as hex: garbage in the sub header
    struct.pack_into("<Q", data, 4096, 0x148897792)
    plain.write_bytes(bytes(data))
    with open_dump(plain) as mem:
        assert mem.phys_base == -148897792
        notes = " ".join(mem.corrections)
        assert "phys_base" in notes and "QEMU" in notes and "OSRELEASE" in notes
        info = mem.info()
        assert info["kernel_release"] == "6.1.0-synthetic-amd64"
        assert info["crash_time"] == 1763881234
    # convert writes a header with the right phys_base and utsname
    fixed = tmp_path / "fixed"
    assert main(["convert", "-q", str(plain), str(fixed)]) == 0
    with open_dump(fixed) as mem:
        assert mem.sub.phys_base == -148897792
        assert mem.header.utsname["release"] == "6.1.0-synthetic-amd64"
        assert mem.corrections == []
