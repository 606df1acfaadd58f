"""Tiny fake crashed kernels for the analysis tests: kernel-virtual memory regions plus a
VMCOREINFO, and writers that lay out printk buffers the way the kernel does.

- :class:`LocklessWriter` follows ``kernel/printk/printk_ringbuffer.c``: ids start at
  ``DESC0_ID`` (just below the id wrap), logical positions at ``BLK0_LPOS`` (``-size``),
  each data block is ``ALIGN(sizeof(long) + text_len, sizeof(long))`` bytes starting with the
  descriptor id, and a block that would cross the ring's end is stored at offset 0
  (``get_next_lpos()``; with ``exact_end=True`` a block may end exactly at the end, as
  since commit 67e1b0052f6b). Records whose text was overwritten become reusable.
- :class:`LegacyWriter` follows ``log_store()`` of 3.5 - 5.9 ``kernel/printk/printk.c``
  (``struct printk_log`` packed, 4-byte aligned; a zero header marks the wrap).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kdumpy.formats.vmcoreinfo import VmcoreInfo
from kdumpy.arch.x86_64 import TranslationError

U64 = (1 << 64) - 1
ID_MASK = (1 << 62) - 1

PRB_SYM = 0xFFFFFFFF82664000
PRB_STRUCT = 0xFFFFFFFF82664100
CLEAR_SEQ = 0xFFFFFFFF82665000
DESCS = 0xFFFF888001000000
INFOS = 0xFFFF888002000000
TEXT = 0xFFFF888003000000
LOG_BUF_PTR = 0xFFFFFFFF82670000
LOG_BUF_LEN = 0xFFFFFFFF82670010
LOG_FIRST_IDX = 0xFFFFFFFF82670020
LOG_NEXT_IDX = 0xFFFFFFFF82670030
CLEAR_IDX = 0xFFFFFFFF82670040
LOG_END = 0xFFFFFFFF82670050
LOG_BUF = 0xFFFF888004000000

#: The printk part of a Debian 6.1 x86_64 VMCOREINFO (real values).
PRB_VMCOREINFO = f"""OSRELEASE=6.1.0-fake-amd64
PAGESIZE=4096
SYMBOL(prb)={PRB_SYM:x}
SYMBOL(clear_seq)={CLEAR_SEQ:x}
SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(dev_printk_info)=64
OFFSET(dev_printk_info.subsystem)=0
LENGTH(printk_info_subsystem)=16
OFFSET(dev_printk_info.device)=16
LENGTH(printk_info_device)=48
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
SIZE(atomic_long_t)=8
OFFSET(atomic_long_t.counter)=0
SIZE(latched_seq)=24
OFFSET(latched_seq.val)=8
CRASHTIME=1795415190
"""


class FakeMemory:
    """Kernel-virtual regions and a VMCOREINFO; reads outside the regions fail like an
    unmapped address does."""

    def __init__(self, vmcoreinfo: str | bytes | None, *, byteorder: str = "little",
                 machine: str = "x86_64") -> None:
        if isinstance(vmcoreinfo, str):
            vmcoreinfo = vmcoreinfo.encode()
        self.vmcoreinfo = VmcoreInfo.parse(vmcoreinfo) if vmcoreinfo is not None else None
        self.byteorder = byteorder
        self.machine = machine
        self.path = "<fake>"
        self.regions: list[tuple[int, bytearray]] = []
        self.reads: list[tuple[int, int]] = []

    def add(self, addr: int, data: bytes) -> None:
        self.regions.append((addr, bytearray(data)))

    def poke(self, addr: int, data: bytes) -> None:
        for base, buf in self.regions:
            if base <= addr and addr + len(data) <= base + len(buf):
                buf[addr - base:addr - base + len(data)] = data
                return
        raise KeyError(hex(addr))

    def read_virt(self, vaddr: int, size: int) -> bytes:
        self.reads.append((vaddr, size))
        for base, buf in self.regions:
            if base <= vaddr and vaddr + size <= base + len(buf):
                return bytes(buf[vaddr - base:vaddr - base + size])
        raise TranslationError(f"<fake>: {vaddr:#x} is not mapped")


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class LocklessWriter:
    """Builds a lockless printk ringbuffer (64-bit little-endian layout of PRB_VMCOREINFO)."""

    count_bits: int = 4
    size_bits: int = 8
    exact_end: bool = False
    descs: dict[int, tuple[int, int, int]] = field(default_factory=dict)   # idx -> sv, begin, next
    infos: dict[int, bytes] = field(default_factory=dict)
    written: list[tuple[int, int, int]] = field(default_factory=list)      # id, begin, next

    def __post_init__(self) -> None:
        self.count = 1 << self.count_bits
        self.size = 1 << self.size_bits
        self.next_id = (-(self.count + 1)) & ID_MASK     # DESC0_ID
        self.head_lpos = (-self.size) & U64             # BLK0_LPOS
        self.data = bytearray(self.size)
        self.seq = 0

    def _wraps(self, lpos: int) -> int:
        return lpos >> self.size_bits

    def add(self, text: bytes, *, ts: int | None = None, level: int = 6, facility: int = 0,
            flags: int = 2, caller: int = 1, state: int = 2, lpos: tuple[int, int] | None = None,
            text_len: int | None = None, subsystem: bytes = b"", device: bytes = b"") -> int:
        did = self.next_id
        self.next_id = (did + 1) & ID_MASK
        if lpos is None:
            size = align(8 + len(text), 8)
            begin = self.head_lpos
            nxt = (begin + size) & U64
            last = (nxt - 1) & U64 if self.exact_end else nxt
            if self._wraps(begin) != self._wraps(last):
                nxt = (((nxt >> self.size_bits) << self.size_bits) + size) & U64
                at = 0
            else:
                at = begin % self.size
            self.head_lpos = nxt
            block = struct.pack("<Q", did) + text
            self.data[at:at + len(block)] = block
            self.written.append((did, begin, nxt))
        else:
            begin, nxt = lpos
        idx = did % self.count
        self.descs[idx] = ((state << 62) | did, begin, nxt)
        info = bytearray(88)
        struct.pack_into("<QQHBBI", info, 0, self.seq,
                         self.seq * 1_000_000_000 + 123_456_789 if ts is None else ts,
                         len(text) if text_len is None else text_len, facility,
                         (flags & 0x1F) | (level << 5), caller)
        info[24:24 + len(subsystem)] = subsystem
        info[40:40 + len(device)] = device
        self.infos[idx] = bytes(info)
        self.seq += 1
        return did

    def tail_id(self) -> int:
        """Oldest id whose descriptor and text are both still intact."""
        head = (self.next_id - 1) & ID_MASK
        oldest_lpos = (self.head_lpos - self.size) & U64
        tail = head
        for k in range(self.count):
            cand = (head - k) & ID_MASK
            idx = cand % self.count
            if idx not in self.descs or self.descs[idx][0] & ID_MASK != cand:
                break
            wr = [w for w in self.written if w[0] == cand]
            if wr and ((wr[0][1] - oldest_lpos) & U64) >= self.size:
                break            # its text was overwritten
            tail = cand
        return tail

    def memory(self, *, head: int | None = None, tail: int | None = None,
               extra: str = "", clear_seq: int = 0) -> FakeMemory:
        head = (self.next_id - 1) & ID_MASK if head is None else head
        tail = self.tail_id() if tail is None else tail
        # descriptors before the tail whose text was overwritten are reusable
        descs = bytearray(24 * self.count)
        infos = bytearray(88 * self.count)
        for idx, (sv, b, n) in self.descs.items():
            did = sv & ID_MASK
            if (head - did) & ID_MASK >= (head - tail) & ID_MASK and did != tail:
                sv = (3 << 62) | did
            struct.pack_into("<QQQ", descs, idx * 24, sv, b, n)
            infos[idx * 88:(idx + 1) * 88] = self.infos[idx]
        prb = bytearray(88)
        struct.pack_into("<IxxxxQQQQ", prb, 0, self.count_bits, DESCS, INFOS, head, tail)
        struct.pack_into("<IxxxxQQQ", prb, 48, self.size_bits, TEXT, self.head_lpos,
                         (self.head_lpos - self.size) & U64)
        mem = FakeMemory(PRB_VMCOREINFO + extra)
        mem.add(PRB_SYM, struct.pack("<Q", PRB_STRUCT))
        mem.add(PRB_STRUCT, prb)
        mem.add(CLEAR_SEQ, struct.pack("<QQQ", 2, clear_seq, clear_seq))
        mem.add(DESCS, descs)
        mem.add(INFOS, infos)
        mem.add(TEXT, self.data)
        return mem


#: ``struct printk_log`` VMCOREINFO of a 4.x x86_64 kernel (optionally with caller_id).
def legacy_vmcoreinfo(caller: bool = False) -> str:
    text = (f"OSRELEASE=4.19.0-fake-amd64\nPAGESIZE=4096\n"
            f"SYMBOL(log_buf)={LOG_BUF_PTR:x}\nSYMBOL(log_buf_len)={LOG_BUF_LEN:x}\n"
            f"SYMBOL(log_first_idx)={LOG_FIRST_IDX:x}\nSYMBOL(clear_idx)={CLEAR_IDX:x}\n"
            f"SYMBOL(log_next_idx)={LOG_NEXT_IDX:x}\n"
            f"SIZE(printk_log)={20 if caller else 16}\nOFFSET(printk_log.ts_nsec)=0\n"
            f"OFFSET(printk_log.len)=8\nOFFSET(printk_log.text_len)=10\n"
            f"OFFSET(printk_log.dict_len)=12\nCRASHTIME=1600000000\n")
    if caller:
        text += "OFFSET(printk_log.caller_id)=16\n"
    return text


@dataclass
class LegacyWriter:
    """``log_store()`` of 3.5 - 5.9 into a ``buf_len``-byte ``log_buf``."""

    buf_len: int = 256
    caller: bool = False

    def __post_init__(self) -> None:
        self.hdr = 20 if self.caller else 16
        self.buf = bytearray(self.buf_len)
        self.first_idx = self.next_idx = 0
        self.first_seq = self.next_seq = 0
        self.stored: list[tuple[int, bytes, int]] = []    # seq, text, ts
        self.wraps = 0

    def _len_at(self, idx: int) -> int:
        return struct.unpack_from("<H", self.buf, idx + 8)[0]

    def _next(self, idx: int) -> int:
        n = self._len_at(idx)
        if n == 0:
            return self._len_at(0)
        return idx + n

    def _has_space(self, size: int, empty: bool) -> bool:
        if self.next_idx > self.first_idx or empty:
            free = max(self.buf_len - self.next_idx, self.first_idx)
        else:
            free = self.first_idx - self.next_idx
        return free >= size + self.hdr

    def add(self, text: bytes, *, dict_: bytes = b"", ts: int | None = None, level: int = 6,
            caller: int = 5) -> None:
        size = align(self.hdr + len(text) + len(dict_), 4)
        while self.first_seq < self.next_seq and not self._has_space(size, False):
            self.first_idx = self._next(self.first_idx)
            self.first_seq += 1
        if self.next_idx + size + self.hdr > self.buf_len:
            self.buf[self.next_idx:self.next_idx + self.hdr] = bytes(self.hdr)
            self.next_idx = 0
            self.wraps += 1
        ts = self.next_seq * 1_500_000 + 7 if ts is None else ts
        rec = struct.pack("<QHHHBB", ts, size, len(text), len(dict_), 0, 2 | (level << 5))
        if self.caller:
            rec += struct.pack("<I", caller)
        rec += text + dict_
        self.buf[self.next_idx:self.next_idx + len(rec)] = rec
        self.next_idx += size
        self.stored.append((self.next_seq, text, ts))
        self.next_seq += 1

    def surviving(self) -> list[tuple[int, bytes, int]]:
        return [s for s in self.stored if s[0] >= self.first_seq]

    def memory(self, *, first: int | None = None, nxt: int | None = None) -> FakeMemory:
        mem = FakeMemory(legacy_vmcoreinfo(self.caller))
        mem.add(LOG_BUF_PTR, struct.pack("<Q", LOG_BUF))
        mem.add(LOG_BUF_LEN, struct.pack("<I", self.buf_len))
        mem.add(LOG_FIRST_IDX, struct.pack("<I", self.first_idx if first is None else first))
        mem.add(LOG_NEXT_IDX, struct.pack("<I", self.next_idx if nxt is None else nxt))
        mem.add(CLEAR_IDX, struct.pack("<I", self.first_idx))
        mem.add(LOG_BUF, self.buf)
        return mem


def char_ring_memory(buf: bytes, log_end: int, *, osrelease: str = "3.2.0-fake") -> FakeMemory:
    """A pre-3.5 character ring ``log_buf`` with ``log_end`` bytes ever written."""
    mem = FakeMemory(f"OSRELEASE={osrelease}\nSYMBOL(log_buf)={LOG_BUF_PTR:x}\n"
                     f"SYMBOL(log_buf_len)={LOG_BUF_LEN:x}\nSYMBOL(log_end)={LOG_END:x}\n"
                     f"SYMBOL(logged_chars)={LOG_END + 8:x}\n")
    mem.add(LOG_BUF_PTR, struct.pack("<Q", LOG_BUF))
    mem.add(LOG_BUF_LEN, struct.pack("<I", len(buf)))
    mem.add(LOG_END, struct.pack("<Q", log_end))
    mem.add(LOG_BUF, buf)
    return mem


def expected_line(ts: int, text: str, caller: str | None = None) -> bytes:
    """One makedumpfile line for plain-ASCII text (written independently of the decoder)."""
    sec, usec = divmod(ts // 1000, 1_000_000)
    field = "" if caller is None else f"[{caller:>8}] "
    return f"[{sec:5d}.{usec:06d}] {field}{text}\n".encode()


# -- kallsyms ----------------------------------------------------------------------------

KALLSYMS_NAMES = 0xFFFFFFFF82100000
KALLSYMS_NUM = 0xFFFFFFFF82200000
KALLSYMS_TOKEN_TABLE = 0xFFFFFFFF82210000
KALLSYMS_TOKEN_INDEX = 0xFFFFFFFF82220000
KALLSYMS_OFFSETS = 0xFFFFFFFF82230000
KALLSYMS_BASE = 0xFFFFFFFF82240000
TEXT_BASE = 0xFFFFFFFF81000000


def kallsyms_tables(symbols: list[tuple[str, str, int]], *, absolute_percpu: bool = False,
                    base: int = TEXT_BASE) -> tuple[str, list[tuple[int, bytes]]]:
    """VMCOREINFO lines and memory regions of a kallsyms table for ``symbols`` (type
    letter, name, address), laid out as ``scripts/kallsyms.c`` does: multi-character tokens
    plus one token per character used, 2-byte lengths for names of 128+ tokens."""
    multi = [b"_kexec", b"crash", b"panic", b"Tt"]
    chars = sorted({c for t, n, _a in symbols for c in (t + n).encode()})
    tokens = multi + [bytes([c]) for c in chars]
    assert len(tokens) <= 256
    names = bytearray()
    for t, n, _a in symbols:
        word = (t + n).encode()
        out = []
        i = 0
        while i < len(word):
            for k, tok in enumerate(tokens):
                if word.startswith(tok, i):
                    out.append(k)
                    i += len(tok)
                    break
        if len(out) > 127:
            names += bytes([0x80 | (len(out) & 0x7F), len(out) >> 7])
        else:
            names.append(len(out))
        names += bytes(out)
    table = bytearray()
    index = []
    for tok in tokens + [b""] * (256 - len(tokens)):
        index.append(len(table))
        table += tok + b"\0"
    offsets = []
    for _t, _n, addr in symbols:
        if absolute_percpu:
            offsets.append(addr if addr < 1 << 31 else base - 1 - addr)
        else:
            offsets.append(addr - base)
    vmcoreinfo = (f"SYMBOL(kallsyms_names)={KALLSYMS_NAMES:x}\n"
                  f"SYMBOL(kallsyms_num_syms)={KALLSYMS_NUM:x}\n"
                  f"SYMBOL(kallsyms_token_table)={KALLSYMS_TOKEN_TABLE:x}\n"
                  f"SYMBOL(kallsyms_token_index)={KALLSYMS_TOKEN_INDEX:x}\n"
                  f"SYMBOL(kallsyms_offsets)={KALLSYMS_OFFSETS:x}\n"
                  f"SYMBOL(kallsyms_relative_base)={KALLSYMS_BASE:x}\n")
    stext = [a for _t, n, a in symbols if n == "_stext"]
    if stext:
        vmcoreinfo += f"SYMBOL(_stext)={stext[0]:x}\n"
    # (the tables sit back to back in the kernel's rodata: pad up to the next one)
    regions = [(KALLSYMS_NAMES, bytes(names).ljust(KALLSYMS_NUM - KALLSYMS_NAMES, b"\0")),
               (KALLSYMS_NUM, struct.pack("<I", len(symbols))),
               (KALLSYMS_TOKEN_TABLE, bytes(table) + bytes(256)),
               (KALLSYMS_TOKEN_INDEX, struct.pack("<256H", *index)),
               (KALLSYMS_OFFSETS, struct.pack(f"<{len(offsets)}i", *offsets)),
               (KALLSYMS_BASE, struct.pack("<Q", base))]
    return vmcoreinfo, regions
