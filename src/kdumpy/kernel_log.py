"""The crashed kernel's log (``dmesg``) from a dump, with VMCOREINFO as the only guide.

Three layouts exist; they are tried in makedumpfile's order (``makedumpfile.c: dump_dmesg``):

1. **Lockless printk ringbuffer** (Linux 5.10+, ``kernel/printk/printk_ringbuffer.[ch]``,
   commit 896fbe20b4e2 "printk: use the lockless ringbuffer"), detected by ``SYMBOL(prb)``.
   ``prb`` is a pointer to ``struct printk_ringbuffer`` holding a descriptor ring (``count =
   1 << count_bits`` descriptors ``prb_desc {atomic_long_t state_var; prb_data_blk_lpos
   text_blk_lpos}`` plus a parallel array of ``printk_info``) and a text data ring of ``1 <<
   size_bits`` bytes. A descriptor's ``state_var`` holds the record id in its low bits and
   the state in the top two (0 reserved, 1 committed, 2 finalized, 3 reusable). Records
   from ``tail_id`` to ``head_id`` whose id matches and whose state is committed or
   finalized are readable. Their text block runs from logical position ``begin`` to
   ``next``; it starts with the descriptor id (one ``unsigned long``); a block that would
   cross the ring's end is stored at offset 0 instead (``get_data()``). Positions with bit
   0 set are "data-less": ``FAILED_LPOS`` (0x1, text lost) and ``EMPTY_LINE_LPOS`` (0x3,
   called ``NO_LPOS`` before 6.7; an empty line).
   ``printk_info`` is ``{u64 seq; u64 ts_nsec; u16 text_len; u8 facility; u8 flags:5;
   u8 level:3; u32 caller_id; struct dev_printk_info dev_info}``; facility and the
   flags/level byte are not exported but always follow ``text_len``.
2. **Variable-length records** (3.5 - 5.9, commit 7ff9554bb578 "printk: convert byte-buffer
   to variable-length record buffer"): ``log_buf`` (a ``char *``) holds ``struct
   printk_log`` records (``struct log`` before 3.11) ``{u64 ts_nsec; u16 len, text_len,
   dict_len; u8 facility; u8 flags:5, level:3; [u32 caller_id]}``, each followed by its
   text and dictionary; walked from ``log_first_idx`` to ``log_next_idx``; a record with
   ``len == 0`` marks the wrap to offset 0.
3. **Character ring** (before 3.5, ``SYMBOL(log_end)``): plain text already carrying
   ``<level>[time]`` prefixes; ``log_end`` counts every byte ever written.

:func:`format_dmesg` renders records exactly as ``makedumpfile --dump-dmesg`` 1.7.2 does
(``printk.c: dump_record``, ``makedumpfile.c: dump_log_entry``), or with the caller field of
makedumpfile >= 1.7.5 (commit 48bb1e0).

Deliberate differences from makedumpfile, none of which shows on a healthy ring:

- A text block ending exactly at the end of the text ring (allowed since kernel commit
  67e1b0052f6b "printk_ringbuffer: don't needlessly wrap data blocks around") is read in
  place as the kernel's ``get_data()`` does; makedumpfile 1.7.2 takes it for a wrapped
  block and prints bytes from the start of the ring.
- Corrupt descriptors, positions and lengths are skipped or cut short with a warning in
  :attr:`KernelLog.warnings` instead of reading outside the buffers, and a tail..head
  range longer than the descriptor ring is clamped to the ring.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kdumpy.errors import KdumpyError
from kdumpy.formats.vmcoreinfo import VmcoreInfo

#: ``printk_info.caller_id``: bit 31 set = CPU number (printed ``C<n>``), else task id.
CALLER_CPU = 0x80000000
#: ``enum desc_state`` values kept by readers (``printk_ringbuffer.h``).
DESC_COMMITTED = 1
DESC_FINALIZED = 2
#: ``FAILED_LPOS`` and ``EMPTY_LINE_LPOS`` (``NO_LPOS``), ``printk_ringbuffer.h``.
FAILED_LPOS = 0x1
EMPTY_LINE_LPOS = 0x3
#: ``enum printk_info_flags`` (``kernel/printk/printk_ringbuffer.h``, ``printk.c``).
LOG_NEWLINE = 2
LOG_CONT = 8

#: Largest rings accepted before the header is called corrupt: the kernel caps the text
#: ring at 2 GiB (``log_buf_len_update``) and uses 32 bytes of text per descriptor.
MAX_SIZE_BITS = 31
MAX_COUNT_BITS = 27


class KernelMemory(Protocol):
    """What the decoder needs from a dump (:class:`kdumpy.KernelView` provides it)."""

    @property
    def vmcoreinfo(self) -> VmcoreInfo | None: ...

    @property
    def byteorder(self) -> str: ...

    @property
    def machine(self) -> str: ...

    def read_virt(self, vaddr: int, size: int) -> bytes: ...


@dataclass(frozen=True)
class LogRecord:
    """One kernel log record.

    ``caller_id`` is the raw ``printk_info.caller_id`` (None when the kernel does not
    record it); ``dataless`` marks an ``EMPTY_LINE_LPOS`` record, which the kernel's own
    readers show as an empty line and makedumpfile omits. ``context`` holds the device
    information (``SUBSYSTEM``/``DEVICE`` of the lockless ring, the legacy dictionary).
    """

    seq: int
    ts_nsec: int
    level: int
    facility: int
    flags: int
    caller_id: int | None
    text: bytes
    dataless: bool = False
    context: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def caller(self) -> str | None:
        """``"T<pid>"`` or ``"C<cpu>"``, as dmesg and makedumpfile print it."""
        if self.caller_id is None:
            return None
        kind = "C" if self.caller_id & CALLER_CPU else "T"
        return f"{kind}{self.caller_id & ~CALLER_CPU & 0xFFFFFFFF}"

    @property
    def timestamp(self) -> float:
        """Seconds since boot (``local_clock()``)."""
        return self.ts_nsec / 1e9

    @property
    def message(self) -> str:
        """The text as a string (invalid UTF-8 replaced)."""
        return self.text.decode("utf-8", errors="replace")

    def format(self, *, caller: bool = False) -> bytes:
        """This record as one makedumpfile ``--dump-dmesg`` line (newline included)."""
        return format_record(self, caller=caller)


@dataclass
class KernelLog:
    """A dump's kernel log.

    ``source`` names the layout read: ``"printk_ringbuffer"``, ``"printk_log"`` or
    ``"log_buf"`` (the pre-3.5 character ring, whose bytes are kept in ``raw`` and whose
    records are parsed from its ``<level>[time]`` lines on a best-effort basis).
    """

    source: str
    records: list[LogRecord]
    warnings: list[str] = field(default_factory=list)
    raw: bytes | None = None
    has_caller: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------

#: Bytes makedumpfile copies unchanged: ``isprint() || isspace()`` in the C locale.
_KEPT = bytes(range(0x20, 0x7F)) + b"\t\n\v\f\r"


def _escape_table() -> list[bytes]:
    table = []
    for b in range(256):
        if b in _KEPT:
            table.append(bytes([b]))
        else:
            # sprintf("\\x%02x", *p) with a signed char: bytes >= 0x80 are sign-extended
            # to int, so 0xc3 prints as \xffffffc3.
            value = b if b < 0x80 else b | 0xFFFFFF00
            table.append(b"\\x%02x" % value)
    return table


_ESCAPE = _escape_table()


def escape_text(text: bytes, indent: int) -> bytes:
    """makedumpfile's rendering of record text: non-printable bytes as ``\\x..``, each
    newline followed by ``indent`` spaces (the width of the line prefix)."""
    if not text.translate(None, _KEPT) and b"\n" not in text:
        return text
    newline = b"\n" + b" " * indent
    return b"".join(newline if b == 0x0A else _ESCAPE[b] for b in text)


def line_prefix(ts_nsec: int, caller_id: int | None = None) -> bytes:
    """``[%5lu.%06lu] `` and, when ``caller_id`` is given, ``[%8s] `` with T/C id."""
    prefix = b"[%5d.%06d] " % (ts_nsec // 1_000_000_000, ts_nsec % 1_000_000_000 // 1000)
    if caller_id is not None:
        kind = b"C" if caller_id & CALLER_CPU else b"T"
        prefix += b"[%8s] " % (kind + b"%d" % (caller_id & ~CALLER_CPU & 0xFFFFFFFF))
    return prefix


def format_record(rec: LogRecord, *, caller: bool = False) -> bytes:
    prefix = line_prefix(rec.ts_nsec, rec.caller_id if caller else None)
    return prefix + escape_text(rec.text, len(prefix)) + b"\n"


def format_dmesg(log: KernelLog, *, caller: bool = False) -> bytes:
    """The log as ``makedumpfile --dump-dmesg`` writes it.

    ``caller=False`` matches makedumpfile 1.7.2 (Debian 12) byte for byte; ``caller=True``
    adds the ``[    T123] `` field as makedumpfile >= 1.7.5 does whenever the kernel
    records caller ids. Data-less (empty-line) records are left out, as makedumpfile does.
    The pre-3.5 character ring is written out as it is.
    """
    if log.raw is not None:
        return log.raw
    use_caller = caller and log.has_caller
    return b"".join(format_record(r, caller=use_caller) for r in log.records if not r.dataless)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

class _Reader:
    """Kernel memory reads with the dump's byte order and word size."""

    def __init__(self, mem: KernelMemory, vi: VmcoreInfo) -> None:
        self.mem = mem
        self.vi = vi
        self.bo = "<" if mem.byteorder == "little" else ">"
        word = vi.size("atomic_long_t") or vi.size("long")
        if word not in (4, 8):
            word = 4 if mem.machine in ("i386", "i686", "arm", "ppc", "s390") else 8
        self.word = word

    def read(self, vaddr: int, size: int, what: str) -> bytes:
        try:
            data = self.mem.read_virt(vaddr, size)
        except KdumpyError as exc:
            raise _Unreadable(f"cannot read {what} ({size} bytes at {vaddr:#x}): {exc}") from None
        if len(data) != size:
            raise _Unreadable(f"short read of {what} at {vaddr:#x}")
        return data

    def unpack(self, fmt: str, data: bytes, offset: int = 0) -> int:
        return struct.unpack_from(self.bo + fmt, data, offset)[0]

    def word_at(self, data: bytes, offset: int) -> int:
        return self.unpack("Q" if self.word == 8 else "I", data, offset)

    def read_word(self, vaddr: int, what: str) -> int:
        return self.word_at(self.read(vaddr, self.word, what), 0)

    def read_u32(self, vaddr: int, what: str) -> int:
        return self.unpack("I", self.read(vaddr, 4, what))


class _Unreadable(Exception):
    """A structure of the log is not in the dump (ends the walk with a warning)."""


def read_kernel_log(mem: KernelMemory, *, since_clear: bool = False) -> KernelLog:
    """Read the kernel log of ``mem``.

    ``since_clear`` keeps only records after the last ``dmesg -c`` (makedumpfile
    ``--partial-dmesg``). Raises :class:`KdumpyError` when the dump has no VMCOREINFO or it
    names none of the log's symbols; anything wrong inside the log itself ends the walk
    with a message in :attr:`KernelLog.warnings`.
    """
    vi = mem.vmcoreinfo
    if vi is None:
        raise KdumpyError("the dump has no VMCOREINFO: cannot find the kernel log")
    rd = _Reader(mem, vi)
    if vi.symbol("prb") is not None:
        source, fn = "printk_ringbuffer", _read_lockless
    elif vi.symbol("log_buf") is not None and vi.symbol("log_buf_len") is not None:
        if vi.symbol("log_end") is None:
            source, fn = "printk_log", _read_records
        else:
            source, fn = "log_buf", _read_char_ring
    else:
        raise KdumpyError("VMCOREINFO names no kernel log (neither SYMBOL(prb) nor "
                          "SYMBOL(log_buf) and SYMBOL(log_buf_len))")
    log = KernelLog(source, [])
    try:
        fn(rd, log, since_clear)
    except _Unreadable as exc:
        log.warnings.append(str(exc))
    return log


def _need(vi: VmcoreInfo, kind: str, names: Iterable[str]) -> dict[str, int]:
    get = {"SIZE": vi.size, "OFFSET": vi.offset, "SYMBOL": vi.symbol}[kind]
    out: dict[str, int] = {}
    missing = []
    for n in names:
        v = get(n)
        if v is None:
            missing.append(f"{kind}({n})")
        else:
            out[n] = v
    if missing:
        raise KdumpyError("VMCOREINFO lacks " + ", ".join(missing) + ": cannot read the kernel log")
    return out


# -- lockless ringbuffer ----------------------------------------------------------------

_PRB_OFFSETS = ("printk_ringbuffer.desc_ring", "printk_ringbuffer.text_data_ring",
                "prb_desc_ring.count_bits", "prb_desc_ring.descs", "prb_desc_ring.infos",
                "prb_desc_ring.head_id", "prb_desc_ring.tail_id",
                "prb_desc.state_var", "prb_desc.text_blk_lpos",
                "prb_data_blk_lpos.begin", "prb_data_blk_lpos.next",
                "prb_data_ring.size_bits", "prb_data_ring.data",
                "printk_info.seq", "printk_info.ts_nsec", "printk_info.text_len")
_PRB_SIZES = ("printk_ringbuffer", "prb_desc", "printk_info")


def _read_lockless(rd: _Reader, log: KernelLog, since_clear: bool) -> None:
    vi = rd.vi
    off = _need(vi, "OFFSET", _PRB_OFFSETS)
    size = _need(vi, "SIZE", _PRB_SIZES)
    counter = vi.offset("atomic_long_t.counter") or 0
    log.has_caller = vi.offset("printk_info.caller_id") is not None
    w = rd.word

    prb_addr = rd.read_word(vi.symbol("prb"), "prb")  # type: ignore[arg-type]
    prb = rd.read(prb_addr, size["printk_ringbuffer"], "struct printk_ringbuffer")
    dr = off["printk_ringbuffer.desc_ring"]
    tr = off["printk_ringbuffer.text_data_ring"]
    count_bits = rd.unpack("I", prb, dr + off["prb_desc_ring.count_bits"])
    size_bits = rd.unpack("I", prb, tr + off["prb_data_ring.size_bits"])
    if count_bits > MAX_COUNT_BITS or not 4 <= size_bits <= MAX_SIZE_BITS:
        log.warnings.append(f"printk ringbuffer header is corrupt (count_bits {count_bits}, "
                            f"size_bits {size_bits})")
        return
    count, ring_size = 1 << count_bits, 1 << size_bits
    head = rd.word_at(prb, dr + off["prb_desc_ring.head_id"] + counter)
    tail = rd.word_at(prb, dr + off["prb_desc_ring.tail_id"] + counter)

    desc_t, info_t = _prb_dtypes(rd, off, size, counter)
    descs = np.frombuffer(rd.read(rd.word_at(prb, dr + off["prb_desc_ring.descs"]),
                                  count * desc_t.itemsize, "prb descriptors"), desc_t)
    infos = np.frombuffer(rd.read(rd.word_at(prb, dr + off["prb_desc_ring.infos"]),
                                  count * info_t.itemsize, "printk_info array"), info_t)
    text = rd.read(rd.word_at(prb, tr + off["prb_data_ring.data"]), ring_size,
                   "printk text data ring")

    idx = _live_descriptors(descs, head, tail, w, log)
    d, inf = descs[idx], infos[idx]
    blk = _TextBlocks.locate(d["begin"], d["next"], inf["text_len"], size_bits, w)
    flagbyte = inf["flagbyte"]
    if rd.bo == "<":   # GCC allocates bit-fields from the least significant bit on LE
        flags, level = flagbyte & 0x1F, flagbyte >> 5
    else:
        flags, level = flagbyte >> 3, flagbyte & 0x7
    callers = inf["caller"] if log.has_caller else None
    ctx_fields: list[str] = [k for k in ("SUBSYSTEM", "DEVICE") if k in (info_t.names or ())]

    clear_seq = _clear_seq(rd) if since_clear else None
    for i in range(len(idx)):
        seq = int(inf["seq"][i])
        if clear_seq is not None and seq < clear_seq:
            continue
        if blk.bad[i]:
            log.warnings.append(f"record seq {seq}: text block {int(d['begin'][i]):#x}.."
                                f"{int(d['next'][i]):#x} is not valid in a {ring_size}-byte "
                                "ring: skipped")
            continue
        if blk.lost[i]:
            continue  # FAILED_LPOS: the text was lost (the kernel's readers skip it too)
        if blk.long_text[i]:
            log.warnings.append(f"record seq {seq}: text_len {int(inf['text_len'][i])} exceeds "
                                f"its {int(blk.avail[i])}-byte data block: truncated")
        start = int(blk.start[i])
        ctx = {k: inf[k][i].decode("latin-1") for k in ctx_fields if inf[k][i]}
        log.records.append(LogRecord(
            seq=seq, ts_nsec=int(inf["ts"][i]), level=int(level[i]),
            facility=int(inf["facility"][i]), flags=int(flags[i]),
            caller_id=int(callers[i]) if callers is not None else None,
            text=b"" if blk.dataless[i] else text[start:start + int(blk.length[i])],
            dataless=bool(blk.dataless[i]), context=ctx))


def _prb_dtypes(rd: _Reader, off: dict[str, int], size: dict[str, int],
                counter: int) -> tuple[np.dtype, np.dtype]:
    """numpy views of ``struct prb_desc`` and ``struct printk_info`` at VMCOREINFO's
    offsets (facility and the flags/level byte follow ``text_len``)."""
    vi, bo = rd.vi, rd.bo
    u = f"{bo}u{rd.word}"
    lpos = off["prb_desc.text_blk_lpos"]
    desc_t = np.dtype({"names": ["sv", "begin", "next"], "formats": [u, u, u],
                       "offsets": [off["prb_desc.state_var"] + counter,
                                   lpos + off["prb_data_blk_lpos.begin"],
                                   lpos + off["prb_data_blk_lpos.next"]],
                       "itemsize": size["prb_desc"]})
    tl = off["printk_info.text_len"]
    fields: list[tuple[str, str, int]] = [
        ("seq", f"{bo}u8", off["printk_info.seq"]), ("ts", f"{bo}u8", off["printk_info.ts_nsec"]),
        ("text_len", f"{bo}u2", tl), ("facility", "u1", tl + 2), ("flagbyte", "u1", tl + 3)]
    caller = vi.offset("printk_info.caller_id")
    if caller is not None:
        fields.append(("caller", f"{bo}u4", caller))
    dev = vi.offset("printk_info.dev_info")
    for key, member, length in (("SUBSYSTEM", "subsystem", "printk_info_subsystem"),
                                ("DEVICE", "device", "printk_info_device")):
        moff, mlen = vi.offset(f"dev_printk_info.{member}"), vi.length(length)
        if dev is not None and moff is not None and mlen:
            fields.append((key, f"S{mlen}", dev + moff))
    info_t = np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                       "offsets": [f[2] for f in fields], "itemsize": size["printk_info"]})
    return desc_t, info_t


def _live_descriptors(descs: np.ndarray, head: int, tail: int, word: int,
                      log: KernelLog) -> np.ndarray:
    """Indexes of the descriptors of ids ``tail..head`` (ids count modulo DESC_ID_MASK)
    that hold that id and are committed or finalized, oldest first."""
    count = len(descs)
    shift = 8 * word - 2
    id_mask = (1 << shift) - 1          # DESC_ID_MASK: the state is in the top two bits
    span = ((head - tail) & id_mask) + 1
    if span > count:
        log.warnings.append(f"printk ringbuffer tail_id {tail:#x} .. head_id {head:#x} spans "
                            f"{span} ids, more than its {count} descriptors: reading only "
                            f"the last {count}")
        tail, span = (head - count + 1) & id_mask, count
    ids = (np.uint64(tail) + np.arange(span, dtype=np.uint64)) & np.uint64(id_mask)
    idx = (ids & np.uint64(count - 1)).astype(np.intp)
    sv = descs["sv"][idx].astype(np.uint64)
    state = sv >> np.uint64(shift)
    readable = (state == DESC_COMMITTED) | (state == DESC_FINALIZED)
    live = ((sv & np.uint64(id_mask)) == ids) & readable
    return idx[live]


@dataclass
class _TextBlocks:
    """Where each record's text lies in the text ring (vectorised ``get_data()``)."""

    start: np.ndarray        # ring offset of the text (after the block's id word)
    length: np.ndarray       # bytes of text to take
    avail: np.ndarray        # bytes the block holds after its id
    dataless: np.ndarray     # EMPTY_LINE_LPOS / FAILED_LPOS
    lost: np.ndarray         # data-less and not an empty line
    bad: np.ndarray          # illegal block description
    long_text: np.ndarray    # text_len larger than the block

    @classmethod
    def locate(cls, begin: np.ndarray, nxt: np.ndarray, text_len: np.ndarray,
               size_bits: int, word: int) -> "_TextBlocks":
        begin, nxt = begin.astype(np.uint64), nxt.astype(np.uint64)
        one = np.uint64(1)
        smask = np.uint64((1 << size_bits) - 1)
        dataless = ((begin & one) == one) & ((nxt & one) == one)
        empty_line = (begin == EMPTY_LINE_LPOS) & (nxt == EMPTY_LINE_LPOS)
        # A block wraps when begin and next-1 lie in different wraps of the ring; its data
        # then sits at offset 0 up to next. Positions are unsigned longs that wrap around,
        # and so does their wrap count; any other relation is an illegal block description.
        b = begin & smask
        end = ((nxt - one) & smask) + one
        wrapped = b >= end
        wmask = np.uint64((1 << (8 * word)) - 1)
        wraps = ((((nxt - one) & wmask) >> np.uint64(size_bits)) - (begin >> np.uint64(size_bits))
                 ) & np.uint64((1 << (8 * word - size_bits)) - 1)
        illegal = np.where(wrapped, wraps != one, wraps != np.uint64(0))
        start = np.where(wrapped, np.uint64(0), b) + np.uint64(word)
        avail = end.astype(np.int64) - start.astype(np.int64)
        misaligned = ((begin | nxt) & np.uint64(word - 1)) != 0
        bad = ~dataless & (misaligned | illegal | (avail < 0))
        tl = text_len.astype(np.int64)
        return cls(start=start, length=np.minimum(tl, np.maximum(avail, 0)), avail=avail,
                   dataless=dataless, lost=dataless & ~empty_line, bad=bad,
                   long_text=~dataless & ~bad & (tl > avail))


def _clear_seq(rd: _Reader) -> int | None:
    """``clear_seq``: a ``u64`` before 5.13, then a ``struct latched_seq`` whose current
    value is ``val[seq & 1]`` (commit 7d7a23a91c91 "printk: use seqcount_latch for
    clear_seq")."""
    vi = rd.vi
    sym = vi.symbol("clear_seq")
    if sym is None:
        return None
    raw = rd.unpack("Q", rd.read(sym, 8, "clear_seq"))
    if vi.size("latched_seq") is not None:
        val = vi.offset("latched_seq.val") or 8
        raw = rd.unpack("Q", rd.read(sym + val + (raw & 1) * 8, 8, "clear_seq.val"))
    return raw


# -- variable-length records (3.5 - 5.9) ------------------------------------------------

def _read_records(rd: _Reader, log: KernelLog, since_clear: bool) -> None:
    vi = rd.vi
    st = "printk_log" if vi.size("printk_log") is not None else "log"
    rec_size = vi.size(st)
    o_ts, o_len, o_tl = (vi.offset(f"{st}.ts_nsec"), vi.offset(f"{st}.len"),
                         vi.offset(f"{st}.text_len"))
    if rec_size is None or o_ts is None or o_len is None or o_tl is None:
        raise KdumpyError(f"VMCOREINFO lacks SIZE({st}) or its ts_nsec/len/text_len offsets: "
                          "cannot read the kernel log")
    o_dict = vi.offset(f"{st}.dict_len")
    o_fac = (o_dict if o_dict is not None else o_tl + 2) + 2
    o_caller = vi.offset(f"{st}.caller_id")
    log.has_caller = o_caller is not None
    first_sym = vi.symbol("log_first_idx")
    if since_clear and vi.symbol("clear_idx") is not None:
        first_sym = vi.symbol("clear_idx")
    next_sym = vi.symbol("log_next_idx")
    if first_sym is None or next_sym is None:
        raise KdumpyError("VMCOREINFO lacks SYMBOL(log_first_idx) or SYMBOL(log_next_idx): "
                          "cannot read the kernel log")
    first = rd.read_u32(first_sym, "log_first_idx")
    last = rd.read_u32(next_sym, "log_next_idx")
    buf_addr = rd.read_word(vi.symbol("log_buf"), "log_buf")  # type: ignore[arg-type]
    buf_len = rd.read_u32(vi.symbol("log_buf_len"), "log_buf_len")  # type: ignore[arg-type]
    if not 0 < buf_len <= 1 << MAX_SIZE_BITS:
        log.warnings.append(f"log_buf_len {buf_len} is not a plausible buffer size")
        return
    buf = rd.read(buf_addr, buf_len, "log_buf")
    limit = buf_len - rec_size     # a record header must fit (the kernel keeps this room)
    if first > limit or last > limit:
        log.warnings.append(f"log_first_idx {first:#x} / log_next_idx {last:#x} lie outside "
                            f"the {buf_len}-byte log_buf")
        return

    def u16(pos: int) -> int:
        return rd.unpack("H", buf, pos)

    seen: set[int] = set()
    pos = first
    seq = 0
    while pos != last:
        if pos in seen:
            log.warnings.append(f"log_buf record chain loops back to offset {pos:#x}: "
                                "the buffer is corrupt; stopped")
            return
        seen.add(pos)
        rec = pos
        if u16(rec + o_len) == 0:      # wrap marker: this record is the one at offset 0
            rec = 0
        rlen = u16(rec + o_len)
        tlen = u16(rec + o_tl)
        dlen = u16(o_dict + rec) if o_dict is not None else 0
        if rlen < rec_size + tlen + dlen:
            log.warnings.append(f"log_buf record at {rec:#x}: length {rlen} cannot hold its "
                                f"{tlen}-byte text: the buffer is corrupt; stopped")
            return
        tstart = rec + rec_size
        if tstart + tlen + dlen > buf_len:
            log.warnings.append(f"log_buf record at {rec:#x}: its {tlen}-byte text runs past "
                                f"the {buf_len}-byte buffer: the buffer is corrupt; stopped")
            return
        text = buf[tstart:tstart + tlen]
        ctx = _parse_dict(buf[tstart + tlen:tstart + tlen + dlen])
        fb = buf[rec + o_fac + 1]
        flags, level = (fb & 0x1F, fb >> 5) if rd.bo == "<" else (fb >> 3, fb & 7)
        log.records.append(LogRecord(
            seq=seq, ts_nsec=rd.unpack("Q", buf, rec + o_ts), level=level,
            facility=buf[rec + o_fac], flags=flags,
            caller_id=rd.unpack("I", buf, rec + o_caller) if o_caller is not None else None,
            text=bytes(text), context=ctx))
        seq += 1
        nxt = rec + rlen
        if nxt > limit:
            log.warnings.append(f"log_buf record at {rec:#x} (length {rlen}) points outside the "
                                f"{buf_len}-byte buffer: the buffer is corrupt; stopped")
            return
        pos = nxt


def _parse_dict(raw: bytes) -> dict[str, str]:
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode("latin-1")] = v.decode("latin-1")
    return out


# -- character ring (before 3.5) -------------------------------------------------------

_LINE = re.compile(rb"^<(\d)>(?:\[\s*(\d+)\.(\d+)\] ?)?(.*)$")


def _kernel_version(osrelease: str | None) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", osrelease or "")
    if not m:
        return (3, 4, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _read_char_ring(rd: _Reader, log: KernelLog, since_clear: bool) -> None:
    vi = rd.vi
    # log_end: "unsigned long" up to 2.6.24, "unsigned" from 2.6.25 (makedumpfile.c)
    if _kernel_version(vi.osrelease) >= (2, 6, 25):
        log_end = rd.read_u32(vi.symbol("log_end"), "log_end")  # type: ignore[arg-type]
    else:
        log_end = rd.read_word(vi.symbol("log_end"), "log_end")  # type: ignore[arg-type]
    buf_addr = rd.read_word(vi.symbol("log_buf"), "log_buf")  # type: ignore[arg-type]
    buf_len = rd.read_u32(vi.symbol("log_buf_len"), "log_buf_len")  # type: ignore[arg-type]
    if not 0 < buf_len <= 1 << MAX_SIZE_BITS or buf_len & (buf_len - 1):
        log.warnings.append(f"log_buf_len {buf_len} is not a power of two")
        return
    if log_end < buf_len:
        raw = rd.read(buf_addr, log_end, "log_buf")
    else:
        buf = rd.read(buf_addr, buf_len, "log_buf")
        cut = log_end & (buf_len - 1)
        raw = buf[cut:] + buf[:cut]
    log.raw = raw
    for n, line in enumerate(raw.split(b"\n")):
        m = _LINE.match(line)
        if m is None:
            if line:
                log.records.append(LogRecord(n, 0, 4, 0, 0, None, line))
            continue
        ts = 0
        if m.group(2):
            ts = int(m.group(2)) * 1_000_000_000 + int(m.group(3).ljust(9, b"0")[:9])
        log.records.append(LogRecord(n, ts, int(m.group(1)), 0, 0, None, m.group(4)))
