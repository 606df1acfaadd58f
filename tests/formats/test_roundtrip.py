"""Every output format x every codec x dump levels 0/1 reads back identical pages."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from kdumpy.cli import main
from kdumpy.formats.codecs import CODECS
from kdumpy.formats.elf import ElfCore
from kdumpy.formats.kdump import KdumpFile
from kdumpy.dump import open_dump

CODEC_NAMES = sorted(CODECS)


def assert_same_pages(path: str, synth, *, zero_excluded: bool = False) -> None:
    with open_dump(path) as mem:
        for pfn, data in synth.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data, f"PFN {pfn:#x} differs"
            if not (zero_excluded and pfn in synth.zero_pfns):
                assert mem.is_dumpable(pfn), f"PFN {pfn:#x} should be dumpable"
        for pfn in synth.present:
            assert mem.is_present(pfn)
        assert mem.vmcoreinfo is not None and mem.vmcoreinfo.osrelease == "6.1.0-synthetic-amd64"
        regs = mem.prstatus()[0].registers
        assert regs["rip"] == 0xffffffff8e9abcde


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("fmt", ["kdump", "flat"])
def test_kdump_roundtrip(tmp_path, synth_core, fmt, codec, level):
    out = str(tmp_path / "dump")
    assert main(["save", "-q", "-d", str(level), "-c", codec, "-f", fmt, synth_core.path, out]) == 0
    assert_same_pages(out, synth_core)
    with open_dump(out) as mem:
        assert mem.format == "kdump"
        assert mem.container == ("flattened" if fmt == "flat" else "file")
        assert mem.compression == codec
        assert mem.count_present() == len(synth_core.present)
        assert not mem.incomplete
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert not os.path.exists(out + ".incomplete")
    # the codec really ran: text pages are stored compressed, with the codec's flag
    with open(out, "rb") as f:
        data = f.read()
    if fmt == "kdump":
        kf = KdumpFile(data, path=out)
        flags = set(kf.descs["flags"].tolist())
        assert flags == ({0} if codec == "none" else {0, CODECS[codec].flag}), flags


def test_kdump_layout_matches_makedumpfile_rules(tmp_path, synth_core):
    """Shared zero page first, descriptors for every dumpable PFN, raw pages not compressed."""
    out = str(tmp_path / "dump")
    assert main(["save", "-q", "-d", "1", "-c", "zlib", synth_core.path, out]) == 0
    with open(out, "rb") as f:
        kf = KdumpFile(f.read(), path=out)
    assert kf.header.header_version == 6
    assert kf.header.signature == b"KDUMP   "
    assert kf.header.status == 0x1
    assert kf.sub.dump_level == 1
    assert kf.num_dumpable == len(synth_core.pages)
    zero_off = kf.layout.data_offset if False else kf.desc_offset + 24 * kf.num_dumpable
    zero_descs = kf.descs[kf.descs["offset"] == zero_off]
    assert len(zero_descs) == len(synth_core.zero_pfns)
    assert (zero_descs["size"] == 4096).all() and (zero_descs["flags"] == 0).all()
    nonzero = kf.descs[kf.descs["offset"] != zero_off]
    assert (nonzero["size"] <= 4096).all()
    assert set(nonzero["flags"].tolist()) <= {0, 1}
    assert ((nonzero["flags"] == 0) == (nonzero["size"] == 4096)).all()
    # The full PT_NOTE is stored right after the sub header; vmcoreinfo points inside it.
    assert kf.sub.offset_note == 4096 + 104
    assert b"OSRELEASE=6.1.0-synthetic-amd64" in kf.vmcoreinfo.raw
    assert kf.header.tv_sec == 1763881234


@pytest.mark.parametrize("level", [0, 1])
def test_elf_roundtrip_and_segments(tmp_path, synth_core, level):
    out = str(tmp_path / "dump.elf")
    assert main(["save", "-q", "-d", str(level), "-f", "elf", synth_core.path, out]) == 0
    assert_same_pages(out, synth_core, zero_excluded=bool(level))
    with open(out, "rb") as f:
        core = ElfCore(f, path=out)
        loads = core.loads
        if level:
            # the 300-page zero run splits its PT_LOAD: a segment with p_filesz < p_memsz
            assert (loads["p_filesz"] < loads["p_memsz"]).any()
            assert len(loads) > 4
        else:
            assert len(loads) == 4
        assert core.phdrs[0]["p_type"] == 4  # PT_NOTE first
        # Every excluded zero page reads back as zero, every kept byte is in the file.
        with open_dump(out) as mem:
            zero_kept = sum(mem.is_dumpable(p) for p in synth_core.zero_pfns)
        assert (zero_kept < len(synth_core.zero_pfns)) == bool(level)


def test_elf_compress_refused(tmp_path, synth_core, capsys):
    assert main(["save", "-q", "-f", "elf", "-c", "zlib", synth_core.path, str(tmp_path / "x")]) == 1
    assert "ELF dumps hold raw pages" in capsys.readouterr().err


def test_stdout_stream_reassembles_to_identical_file(tmp_path, synth_core):
    direct = str(tmp_path / "direct")
    assert main(["save", "-q", "-d", "1", "-c", "lzo", synth_core.path, direct]) == 0
    stream = subprocess.run([sys.executable, "-m", "kdumpy", "save", "-q", "-d", "1", "-c", "lzo",
                             synth_core.path, "-"], capture_output=True, check=True).stdout
    assert stream.startswith(b"makedumpfile\0")
    flat = tmp_path / "stream.flat"
    flat.write_bytes(stream)
    # reassembly from stdin and from a file both give the direct output, byte for byte
    r = subprocess.run([sys.executable, "-m", "kdumpy", "convert", "-", str(tmp_path / "re1")],
                       input=stream, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert main(["convert", str(flat), str(tmp_path / "re2")]) == 0
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(direct) == digest(tmp_path / "re1") == digest(tmp_path / "re2")


@pytest.mark.parametrize("target", ["elf", "kdump"])
def test_convert_between_formats(tmp_path, synth_core, target):
    kd = str(tmp_path / "a.kdump")
    assert main(["save", "-q", "-d", "1", "-c", "zstd", synth_core.path, kd]) == 0
    out = str(tmp_path / f"b.{target}")
    assert main(["convert", "-q", "-f", target, *(["-c", "snappy"] if target == "kdump" else []),
                 kd, out]) == 0
    with open_dump(out) as mem:
        assert mem.format == target
        for pfn, data in synth_core.pages.items():
            assert mem.read_pfn(pfn, zero_fill=True) == data


def test_never_overwrites(tmp_path, synth_core, capsys):
    out = tmp_path / "dump"
    out.write_bytes(b"precious")
    assert main(["save", "-q", "-d", "1", synth_core.path, str(out)]) == 1
    assert out.read_bytes() == b"precious"
    assert "never overwrites" in capsys.readouterr().err
    assert main(["save", "-q", "-d", "1", "--force", synth_core.path, str(out)]) == 0
    assert out.read_bytes()[:8] == b"KDUMP   "


def test_new_directories_are_private(tmp_path, synth_core):
    out = tmp_path / "new" / "dir" / "dump"
    assert main(["save", "-q", "-d", "1", synth_core.path, str(out)]) == 0
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert out.stat().st_mode & 0o777 == 0o600


def test_filtering_needs_vmcoreinfo_keys(tmp_path, synth_core, capsys):
    """The synthetic core exports no mem_section: levels above 1 fail naming the key, or are
    skipped (and the dump records the level it really used) with --allow-partial-filter."""
    assert main(["save", "-q", "-d", "31", synth_core.path, str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "VMCOREINFO" in err and err.count("\n") == 1 and "incomplete" not in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.incomplete").exists()
    assert main(["save", "-q", "-d", "31", "--allow-partial-filter", synth_core.path,
                 str(tmp_path / "p")]) == 0
    assert "skipped" in capsys.readouterr().err
    with open_dump(tmp_path / "p") as mem:
        assert mem.sub.dump_level == 1


def test_dump_level_list_and_range(tmp_path, synth_core, capsys):
    assert main(["save", "-q", "-d", "32", synth_core.path, str(tmp_path / "x")]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(["save", "-q", "-d", "1,0", synth_core.path, str(tmp_path / "y")]) == 0


def test_threads_do_not_change_output(tmp_path, synth_core):
    outs = []
    for n in (1, 2, 5):
        p = str(tmp_path / f"t{n}")
        assert main(["save", "-q", "-d", "1", "--threads", str(n), "-c", "zlib", synth_core.path, p]) == 0
        outs.append(open(p, "rb").read())
    assert outs[0] == outs[1] == outs[2]
