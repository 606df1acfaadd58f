"""Kernel log extraction: synthetic printk buffers, makedumpfile's line format, and the lab's
real dumps compared byte for byte with ``makedumpfile --dump-dmesg``."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_kernel import (CLEAR_SEQ, DESCS, ID_MASK, INFOS, LOG_BUF, PRB_STRUCT, TEXT,  # noqa: E402
                         FakeMemory, LegacyWriter, LocklessWriter, char_ring_memory,
                         expected_line)

from kdumpy.analysis.kernel_log import (EMPTY_LINE_LPOS, FAILED_LPOS, escape_text,  # noqa: E402
                                        format_dmesg, line_prefix, read_kernel_log)
from kdumpy.errors import KdumpyError  # noqa: E402
from kdumpy.kernel import KernelView  # noqa: E402


def lines(seqs, texts, caller=None) -> bytes:
    return b"".join(expected_line(s * 1_000_000_000 + 123_456_789, t, caller)
                    for s, t in zip(seqs, texts))


# -- line format --------------------------------------------------------------------------

def test_prefix_widths():
    assert line_prefix(0) == b"[    0.000000] "
    assert line_prefix(13_428_594_123) == b"[   13.428594] "
    assert line_prefix(123_456_789_012_345) == b"[123456.789012] "   # grows past width 5
    assert line_prefix(5_000_000, 1) == b"[    0.005000] [      T1] "
    assert line_prefix(5_000_000, 0x80000003) == b"[    0.005000] [      C3] "
    assert line_prefix(0, 4194304) == b"[    0.000000] [T4194304] "
    assert line_prefix(0, 123456789) == b"[    0.000000] [T123456789] "


def test_escaping_follows_makedumpfile():
    # isprint || isspace kept; others as \x%02x of a sign-extended char
    assert escape_text(b"plain text", 15) == b"plain text"
    assert escape_text(b"caf\xc3\xa9", 15) == b"caf\\xffffffc3\\xffffffa9"
    assert escape_text(b"\x01\x00\x7f\x1b[0m", 15) == b"\\x01\\x00\\x7f\\x1b[0m"
    assert escape_text(b"tab\there\rcr\vvt\fff", 15) == b"tab\there\rcr\vvt\fff"
    assert escape_text(b"a\nb", 4) == b"a\n    b"
    assert escape_text(b"\n", 2) == b"\n  "


def test_continuation_lines_are_indented_by_the_prefix():
    w = LocklessWriter(size_bits=10)
    w.add(b"first\nsecond\n\xff", ts=1_000, caller=0x80000000)
    log = read_kernel_log(w.memory())
    assert format_dmesg(log) == (b"[    0.000001] first\n" + b" " * 15 + b"second\n"
                                 + b" " * 15 + b"\\xffffffff\n")
    assert format_dmesg(log, caller=True) == (b"[    0.000001] [      C0] first\n" + b" " * 26
                                              + b"second\n" + b" " * 26 + b"\\xffffffff\n")


# -- lockless ring ------------------------------------------------------------------------

def test_lockless_records_and_fields():
    w = LocklessWriter(size_bits=10)
    w.add(b"Linux version 6.1.0", level=5, facility=0, caller=0)
    w.add(b"virtio_blk virtio1: [vda] 2048 512-byte logical blocks", level=6, caller=0x80000001,
          subsystem=b"virtio", device=b"+virtio:virtio1")
    w.add(b"user message", level=4, facility=1, caller=1234, flags=8)
    log = read_kernel_log(w.memory())
    assert log.source == "printk_ringbuffer" and log.warnings == [] and log.has_caller
    r0, r1, r2 = log.records
    assert [r.seq for r in log.records] == [0, 1, 2]
    assert (r0.level, r0.facility, r0.caller) == (5, 0, "T0")
    assert r1.caller == "C1" and r1.context == {"SUBSYSTEM": "virtio", "DEVICE": "+virtio:virtio1"}
    assert (r2.level, r2.facility, r2.flags, r2.caller) == (4, 1, 8, "T1234")
    assert r2.text == b"user message" and r2.ts_nsec == 2_123_456_789
    texts = ["Linux version 6.1.0", "virtio_blk virtio1: [vda] 2048 512-byte logical blocks",
             "user message"]
    assert format_dmesg(log) == lines(range(3), texts)
    assert format_dmesg(log, caller=True) == b"".join(
        expected_line(s * 1_000_000_000 + 123_456_789, t, c)
        for s, t, c in zip(range(3), texts, ["T0", "C1", "T1234"]))


def test_lockless_reads_big_regions_once():
    w = LocklessWriter(count_bits=6, size_bits=12)
    for i in range(40):
        w.add(b"message %d" % i)
    mem = w.memory()
    log = read_kernel_log(mem)
    assert len(log.records) == 40
    assert (DESCS, 24 * 64) in mem.reads and (INFOS, 88 * 64) in mem.reads
    assert (TEXT, 4096) in mem.reads and len(mem.reads) == 5


def test_lockless_ids_wrap_and_descriptor_reuse():
    # ids start just below DESC_ID_MASK (DESC0_ID); 40 records through 16 descriptors wrap
    # the ids past the mask and leave only the newest 16 readable.
    w = LocklessWriter(count_bits=4, size_bits=12)
    first = w.next_id
    for i in range(40):
        w.add(b"record %02d" % i)
    assert first > w.next_id                      # the id counter wrapped
    log = read_kernel_log(w.memory())
    assert [r.seq for r in log.records] == list(range(24, 40))
    assert format_dmesg(log) == lines(range(24, 40), ["record %02d" % i for i in range(24, 40)])


def test_lockless_wrapped_text_block():
    w = LocklessWriter(count_bits=5, size_bits=7)      # 128-byte text ring
    texts = [f"line {i} " + "x" * (i % 5 * 3) for i in range(14)]
    for t in texts:
        w.add(t.encode())
    wrapped = [(i, b, n) for i, b, n in w.written if b % 128 > n % 128]
    assert wrapped, "the writer should have wrapped a block"
    mem = w.memory()
    log = read_kernel_log(mem)
    assert log.warnings == []
    kept = [r.seq for r in log.records]
    assert kept == list(range(kept[0], 14)) and kept[0] > 0
    assert format_dmesg(log) == lines(kept, [texts[s] for s in kept])
    wrapped_seqs = {(i - w.written[0][0]) & ID_MASK for i, _b, _n in wrapped}
    assert wrapped_seqs & set(kept), "a wrapped record must be among the readable ones"


def test_block_ending_exactly_at_the_ring_end():
    # kernel commit 67e1b0052f6b lets a block end at the very end of the ring; it is read in
    # place (makedumpfile 1.7.2 would take it for a wrapped block).
    w = LocklessWriter(count_bits=4, size_bits=7, exact_end=True)
    w.add(b"a" * 56)          # 64-byte block at 0..64
    w.add(b"b" * 56)          # 64-byte block at 64..128: next % size == 0
    assert w.written[1][2] % 128 == 0
    log = read_kernel_log(w.memory())
    assert [r.text for r in log.records] == [b"a" * 56, b"b" * 56] and log.warnings == []


def test_dataless_records():
    w = LocklessWriter(size_bits=10)
    w.add(b"before")
    w.add(b"", lpos=(EMPTY_LINE_LPOS, EMPTY_LINE_LPOS))         # empty line
    w.add(b"", lpos=(FAILED_LPOS, FAILED_LPOS), text_len=5)     # text lost
    w.add(b"after")
    log = read_kernel_log(w.memory())
    assert [(r.seq, r.text, r.dataless) for r in log.records] == [
        (0, b"before", False), (1, b"", True), (3, b"after", False)]
    # makedumpfile (and crash) skip data-less records
    assert format_dmesg(log) == lines([0, 3], ["before", "after"])
    assert log.warnings == []


def test_uncommitted_and_reusable_descriptors_are_skipped():
    w = LocklessWriter(size_bits=10)
    w.add(b"one")
    w.add(b"being written", state=0)      # reserved
    w.add(b"two", state=1)                # committed, not finalized: readable
    w.add(b"freed", state=3)              # reusable
    log = read_kernel_log(w.memory())
    assert [r.text for r in log.records] == [b"one", b"two"]


def test_text_len_beyond_its_block_is_truncated_with_a_warning():
    w = LocklessWriter(size_bits=10)
    w.add(b"abc", text_len=300)           # block is 16 bytes: 8 id + 3 text + 5 padding
    w.add(b"next")
    log = read_kernel_log(w.memory())
    assert log.records[0].text == b"abc\0\0\0\0\0"
    assert "text_len 300 exceeds its 8-byte data block" in log.warnings[0]
    assert format_dmesg(log).startswith(b"[    0.123456] abc\\x00\\x00\\x00\\x00\\x00\n")


@pytest.mark.parametrize("lpos", [(0x13, 0x40),                     # misaligned
                                  (0x10, 0x10 + 5 * 1024),          # spans five wraps
                                  (0x40, 0x20),                     # next before begin
                                  (0x400, 0x400)])                  # zero-size block
def test_illegal_text_positions_are_skipped_with_a_warning(lpos):
    w = LocklessWriter(size_bits=10)
    w.add(b"good")
    w.add(b"", lpos=lpos, text_len=20)
    w.add(b"also good")
    log = read_kernel_log(w.memory())
    assert [r.text for r in log.records] == [b"good", b"also good"]
    assert len(log.warnings) == 1 and "is not valid" in log.warnings[0]


@pytest.mark.parametrize("bad", ["head_behind_tail", "huge_span"])
def test_id_range_longer_than_the_ring_is_clamped(bad):
    w = LocklessWriter(count_bits=4, size_bits=10)
    for i in range(10):
        w.add(b"m%d" % i)
    head = (w.next_id - 1) & ID_MASK
    tail = (head + 3) & ID_MASK if bad == "head_behind_tail" else (head - 1_000_000_000) & ID_MASK
    t0 = time.perf_counter()
    log = read_kernel_log(w.memory(tail=tail))
    assert time.perf_counter() - t0 < 1
    assert "reading only the last 16" in log.warnings[0]
    assert [r.text for r in log.records] == [b"m%d" % i for i in range(10)]


def test_corrupt_header_sizes():
    w = LocklessWriter()
    w.add(b"x")
    mem = w.memory()
    mem.poke(0xFFFFFFFF82664100, struct.pack("<I", 60))           # count_bits
    log = read_kernel_log(mem)
    assert log.records == [] and "corrupt" in log.warnings[0]


def test_unreadable_ring_gives_a_warning_not_an_exception():
    w = LocklessWriter()
    w.add(b"x")
    mem = w.memory()
    mem.regions = [r for r in mem.regions if r[0] != TEXT]
    log = read_kernel_log(mem)
    assert log.records == [] and "cannot read printk text data ring" in log.warnings[0]


def test_since_clear_uses_the_latched_clear_seq():
    w = LocklessWriter(size_bits=10)
    for i in range(6):
        w.add(b"r%d" % i)
    mem = w.memory(clear_seq=4)
    assert [r.seq for r in read_kernel_log(mem, since_clear=True).records] == [4, 5]
    assert len(read_kernel_log(mem).records) == 6
    # before 5.13 clear_seq was a plain u64
    mem = w.memory(extra="")
    mem.vmcoreinfo = type(mem.vmcoreinfo)({k: v for k, v in mem.vmcoreinfo.items()
                                           if "latched_seq" not in k})
    mem.poke(CLEAR_SEQ, struct.pack("<Q", 3))
    assert [r.seq for r in read_kernel_log(mem, since_clear=True).records] == [3, 4, 5]


def test_dump_without_log_symbols():
    with pytest.raises(KdumpyError, match="names no kernel log"):
        read_kernel_log(FakeMemory("OSRELEASE=6.1.0\nPAGESIZE=4096\n"))
    with pytest.raises(KdumpyError, match="no VMCOREINFO"):
        read_kernel_log(FakeMemory(None))
    with pytest.raises(KdumpyError, match="lacks"):
        read_kernel_log(FakeMemory("SYMBOL(prb)=ffffffff82664000\n"))


def test_big_endian_layout():
    """The same ring stored big-endian: words swapped, bit-fields allocated from the most
    significant bit (``level:3`` high on little-endian, low on big-endian)."""
    w = LocklessWriter(size_bits=10)
    w.add(b"hello", level=3, flags=2, caller=7)
    le = w.memory()
    be = FakeMemory(le.vmcoreinfo.raw, byteorder="big")

    def swapped(data: bytes, fields: list[tuple[int, str]], stride: int) -> bytearray:
        out = bytearray(data)
        for base in range(0, len(data), stride):
            for off, fmt in fields:
                (v,) = struct.unpack_from("<" + fmt, data, base + off)
                struct.pack_into(">" + fmt, out, base + off, v)
        return out

    for addr, buf in le.regions:
        if addr == DESCS:
            data = swapped(buf, [(0, "Q"), (8, "Q"), (16, "Q")], 24)
        elif addr == INFOS:
            data = swapped(buf, [(0, "Q"), (8, "Q"), (16, "H"), (20, "I")], 88)
            for base in range(0, len(data), 88):
                fb = buf[base + 19]
                data[base + 19] = ((fb & 0x1F) << 3) | (fb >> 5)
        elif addr == PRB_STRUCT:
            data = swapped(buf, [(0, "I"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "Q"),
                                 (48, "I"), (56, "Q")], 88)
        elif addr == TEXT:
            data = buf
        else:
            data = swapped(buf, [(i, "Q") for i in range(0, len(buf), 8)], len(buf))
        be.add(addr, bytes(data))
    rec = read_kernel_log(be).records[0]
    assert (rec.text, rec.level, rec.flags, rec.caller) == (b"hello", 3, 2, "T7")


# -- legacy printk_log records ----------------------------------------------------------------

def test_legacy_records_with_wrap():
    w = LegacyWriter(buf_len=256)
    for i in range(14):
        w.add(b"legacy message %d" % i + b"!" * (i % 4),
              dict_=b"SUBSYSTEM=pci\0DEVICE=+pci:0000:00:01.0" if i == 12 else b"")
    assert w.wraps >= 2, "the buffer should have wrapped"
    log = read_kernel_log(w.memory())
    assert log.source == "printk_log" and log.warnings == [] and not log.has_caller
    surv = w.surviving()
    assert [r.text for r in log.records] == [t for _s, t, _ts in surv]
    assert format_dmesg(log) == b"".join(expected_line(ts, t.decode()) for _s, t, ts in surv)
    assert log.records[-2].context == {"SUBSYSTEM": "pci", "DEVICE": "+pci:0000:00:01.0"}
    assert log.records[0].level == 6


def test_legacy_caller_id():
    w = LegacyWriter(buf_len=512, caller=True)
    w.add(b"from a task", caller=42)
    w.add(b"from a cpu", caller=0x80000002)
    log = read_kernel_log(w.memory())
    assert log.has_caller and [r.caller for r in log.records] == ["T42", "C2"]
    assert format_dmesg(log, caller=True) == (expected_line(7, "from a task", "T42")
                                              + expected_line(1_500_007, "from a cpu", "C2"))
    assert format_dmesg(log) == (expected_line(7, "from a task")
                                 + expected_line(1_500_007, "from a cpu"))


def test_legacy_cycle_ends_the_walk():
    """A stray wrap marker sends the walk back to offset 0 while log_next_idx is never
    reached: each record comes out once, plus the one the marker stands for (as
    makedumpfile's detect_cycle prints it), then a warning."""
    w = LegacyWriter(buf_len=512)
    for i in range(4):
        w.add(b"rec %d" % i)
    mem = w.memory(nxt=400)
    mem.poke(LOG_BUF + 3 * 24 + 8, struct.pack("<H", 0))    # record 3 becomes a wrap marker
    t0 = time.perf_counter()
    log = read_kernel_log(mem)
    assert time.perf_counter() - t0 < 1
    assert [r.text for r in log.records] == [b"rec 0", b"rec 1", b"rec 2", b"rec 0"]
    assert "loops back" in log.warnings[0]


def test_legacy_record_pointing_outside_the_buffer():
    w = LegacyWriter(buf_len=512)
    for i in range(3):
        w.add(b"rec %d" % i)
    mem = w.memory(nxt=400)
    mem.poke(LOG_BUF + 24 + 8, struct.pack("<H", 480))
    log = read_kernel_log(mem)
    assert [r.text for r in log.records] == [b"rec 0", b"rec 1"]
    assert "points outside" in log.warnings[0]


def test_legacy_bad_indices_and_lengths():
    w = LegacyWriter(buf_len=256)
    w.add(b"x")
    log = read_kernel_log(w.memory(first=4000))
    assert log.records == [] and "outside" in log.warnings[0]
    mem = w.memory()
    mem.poke(LOG_BUF + 10, struct.pack("<H", 200))       # text_len beyond record length
    log = read_kernel_log(mem)
    assert log.records == [] and "cannot hold" in log.warnings[0]


# -- pre-3.5 character ring ---------------------------------------------------------------

def test_character_ring_not_wrapped():
    text = b"<6>[    0.000000] Linux version 3.2.0\n<4>[    1.500000] warn\n"
    buf = text + bytes(128 - len(text))
    log = read_kernel_log(char_ring_memory(buf, len(text)))
    assert log.source == "log_buf" and format_dmesg(log) == text
    assert [(r.level, r.ts_nsec, r.text) for r in log.records] == [
        (6, 0, b"Linux version 3.2.0"), (4, 1_500_000_000, b"warn")]


def test_character_ring_wrapped():
    buf = bytearray(b"." * 64)
    stream = b"".join(b"<6>[%5d.000000] line %02d\n" % (i, i) for i in range(6))
    for i, c in enumerate(stream):                 # log_buf[log_end & mask] = c
        buf[i % 64] = c
    log = read_kernel_log(char_ring_memory(bytes(buf), len(stream)))
    assert format_dmesg(log) == stream[-64:]


# -- the lab's real dumps --------------------------------------------------------------------

@pytest.fixture(scope="module")
def makedumpfile_dmesg(tmp_path_factory):
    """``makedumpfile --dump-dmesg`` of a dump, cached per path."""
    exe = shutil.which("makedumpfile")
    if exe is None:
        pytest.fail("makedumpfile is not installed (apt-get install makedumpfile)")
    cache: dict[str, bytes] = {}

    def run(path) -> bytes:
        key = str(path)
        if key not in cache:
            out = tmp_path_factory.mktemp("dmesg") / "dmesg.txt"
            subprocess.run([exe, "--dump-dmesg", key, str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cache[key] = out.read_bytes()
        return cache[key]
    return run


@pytest.mark.parametrize("kind", ["raw_vmcore", "kdumpy_dump", "makedumpfile_flat"])
def test_lab_dmesg_matches_makedumpfile(lab_crash, kind, makedumpfile_dmesg):
    from kdumpy.dump import open_dump

    expected = makedumpfile_dmesg(lab_crash.raw_vmcore)
    with open_dump(getattr(lab_crash, kind)) as mem:
        t0 = time.perf_counter()
        log = read_kernel_log(mem)
        out = format_dmesg(log)
        elapsed = time.perf_counter() - t0
    assert log.warnings == []
    assert out == expected
    assert lab_crash.marker.encode() in out
    assert b"Kernel panic - not syncing: sysrq triggered crash" in out
    assert elapsed < 1.0, f"kernel log took {elapsed:.3f}s"


def test_lab_kdumpy_dump_through_makedumpfile(lab_crash, makedumpfile_dmesg):
    """makedumpfile reads kdumpy's own dump to the same log."""
    assert makedumpfile_dmesg(lab_crash.kdumpy_dump) == makedumpfile_dmesg(lab_crash.raw_vmcore)


def test_lab_caller_field(lab_crash):
    from kdumpy.dump import open_dump

    with open_dump(lab_crash.raw_vmcore) as mem:
        log = read_kernel_log(mem)
    plain = format_dmesg(log).splitlines()
    with_caller = format_dmesg(log, caller=True).splitlines()
    assert len(plain) == len(with_caller)
    panic = next(line for line in with_caller if b"Kernel panic - not syncing" in line)
    # the sysrq write comes from the lab's init (pid 1)
    assert panic.split(b"] ", 2)[1] == b"[      T1"


# -- makedumpfile as the oracle on a doctored copy of a real dump -------------------------------

def _file_offsets(mem, vaddr: int) -> list[int]:
    """Every file offset holding ``vaddr`` (PT_LOADs may overlap physically, as the
    kernel-text segment of /proc/vmcore overlaps RAM)."""
    pa = KernelView(mem).virt_to_phys(vaddr)
    found = [off + pa - seg_pa for seg_pa, _memsz, filesz, off, _va in mem.segments
             if seg_pa <= pa < seg_pa + filesz]
    assert found, f"{vaddr:#x} is not in the file"
    return found


def test_lab_doctored_ring_matches_makedumpfile(lab_crash, tmp_path, makedumpfile_dmesg):
    """Rewrite parts of a real ring (escapes and continuation lines in the marker record,
    an empty-line record, a lost record, an unfinished one, and a block moved to wrap
    around the ring's end) and check the result against makedumpfile itself."""
    from kdumpy.dump import open_dump

    copy = tmp_path / "vmcore"
    subprocess.run(["makedumpfile", "-E", "-d", "31", str(lab_crash.raw_vmcore), str(copy)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open_dump(copy) as mem:
        vi = mem.vmcoreinfo
        kv = KernelView(mem)
        prb = struct.unpack("<Q", kv.read_virt(vi.symbol("prb"), 8))[0]
        hdr = kv.read_virt(prb, 88)
        count_bits, descs, infos, head, tail = struct.unpack_from("<IxxxxQQQQ", hdr, 0)
        size_bits, data = struct.unpack_from("<IxxxxQ", hdr, 48)
        count, size = 1 << count_bits, 1 << size_bits
        log = read_kernel_log(mem)
        by_text = {r.text: r for r in log.records}
        marker = by_text[lab_crash.marker.encode()]
        patches: list[tuple[int, bytes]] = []

        def desc_of(seq: int) -> tuple[int, int, int, int]:
            for k in range(count):
                did = (tail + k) & ID_MASK
                i = did % count
                if struct.unpack("<Q", kv.read_virt(infos + i * 88, 8))[0] == seq:
                    sv, b, n = struct.unpack("<QQQ", kv.read_virt(descs + i * 24, 24))
                    return did, i, b, n
            raise AssertionError(seq)

        # 1. the marker's text: escapes, a continuation line, a tab (same length)
        _id, _i, b, _n = desc_of(marker.seq)
        new = (b"caf\xc3\xa9 \x01\x7f\x1b[1m\tX\nnext line ")[:len(marker.text)]
        new += b"." * (len(marker.text) - len(new))
        patches.append((data + b % size + 8, new))
        # 2-4. data-less and unfinished records
        seqs = [r.seq for r in log.records]
        for seq, how in zip(seqs[5:8], ("empty", "lost", "reserved")):
            did, i, b, n = desc_of(seq)
            if how == "reserved":
                patches.append((descs + i * 24, struct.pack("<Q", did)))
            else:
                lp = EMPTY_LINE_LPOS if how == "empty" else FAILED_LPOS
                patches.append((descs + i * 24 + 8, struct.pack("<QQ", lp, lp)))
        # 5. move a short record's block to ring offset 0 as if it had wrapped
        victim = next(r for r in log.records[20:] if 4 < len(r.text) < 40)
        did, i, b, n = desc_of(victim.seq)
        block = struct.pack("<Q", did) + victim.text
        blen = (len(block) + 7) // 8 * 8
        wrap_start = (b // size + 1) * size           # (lpos values wrap at 2**64)
        patches.append((descs + i * 24 + 8, struct.pack("<QQ", (wrap_start - 16) % 2**64,
                                                        (wrap_start + blen) % 2**64)))
        patches.append((data, block))
        offsets = [(off, blob) for va, blob in patches for off in _file_offsets(mem, va)]
    with open(copy, "r+b") as f:
        for off, blob in offsets:
            f.seek(off)
            f.write(blob)

    expected = makedumpfile_dmesg(copy)
    with open_dump(copy) as mem:
        log2 = read_kernel_log(mem)
    assert format_dmesg(log2) == expected
    assert b"caf\\xffffffc3\\xffffffa9 \\x01\\x7f\\x1b[1m\tX\n" in expected
    assert victim.text in expected
    empty = [r for r in log2.records if r.dataless]
    assert len(empty) == 1 and len(log2.records) == len(log.records) - 2
