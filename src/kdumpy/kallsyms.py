"""The kernel's own symbol table (kallsyms), read from a dump through VMCOREINFO.

Kernels with commits 5fd8fea935a1 ("vmcoreinfo: include kallsyms symbols") and
f09bddbd8661 ("vmcoreinfo: add kallsyms_num_syms symbol") -- mainline 6.x, also backported,
e.g. to Debian's 6.1 -- name in VMCOREINFO the compressed symbol table ``/proc/kallsyms`` is
built from, so a dump can be symbolised, and kernel variables that VMCOREINFO does not
export (``tainted_mask``, ``panic_cpu``) can be found, without any debug info.

Layout (``scripts/kallsyms.c``, ``kernel/kallsyms.c``):

- ``kallsyms_num_syms``: ``unsigned int`` count.
- ``kallsyms_names``: per symbol a length, then that many token numbers (one byte each).
  A length byte with bit 7 set is followed by a second byte: ``len = (b0 & 0x7f) | b1 << 7``
  (commit 73bbb94466fd "kallsyms: support "big" kernel symbols", 6.1).
- ``kallsyms_token_table``: 256 NUL-terminated strings; ``kallsyms_token_index``: ``u16``
  offset of each. Expanding a symbol's tokens gives its nm type letter then its name.
- ``kallsyms_offsets`` (``int``) with ``kallsyms_relative_base``: the address is
  ``relative_base + (u32)offset``, except with ``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` (x86_64
  SMP kernels, until that option was removed) where a non-negative offset is itself the (per-CPU) address and a
  negative one means ``relative_base - 1 - offset``; which applies is settled by checking
  ``_stext`` against VMCOREINFO. Kernels built without base-relative kallsyms store
  absolute ``kallsyms_addresses`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdumpy.errors import KdumpyError

_REQUIRED = ("kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table",
             "kallsyms_token_index")
#: Bound on the compressed name table when nothing after it is known (scripts/kallsyms.c
#: emits at most KSYM_NAME_LEN (512) tokens per symbol; real tables are ~15 bytes/symbol).
_MAX_NAMES_BYTES = 64 << 20
#: Larger "symbols" are gaps (e.g. from the last text symbol to the data section).
MAX_SYMBOL_SIZE = 16 << 20


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    type: str        # nm letter: T/t text, D/d data, B/b bss, R/r rodata, ...

    @property
    def is_text(self) -> bool:
        return self.type in "TtWw"


class Kallsyms:
    """Symbol names, types and addresses of the crashed kernel (vmlinux only)."""

    def __init__(self, names: list[str], types: list[str], addresses: np.ndarray) -> None:
        order = np.argsort(addresses, kind="stable")
        self._addr = addresses[order]
        self._names = [names[i] for i in order]
        self._types = [types[i] for i in order]
        self._by_name: dict[str, int] = {}
        for i, n in enumerate(self._names):
            j = self._by_name.get(n)
            # a global definition wins over a same-named static one
            if j is None or (self._types[i].isupper() and not self._types[j].isupper()):
                self._by_name[n] = i
        # absolute symbols (per-CPU offsets with KALLSYMS_ABSOLUTE_PERCPU) are not places
        located = np.array([t not in "Aa" for t in self._types], bool)
        self._located = self._addr[located]
        self._located_index = np.flatnonzero(located)

    def __len__(self) -> int:
        return len(self._names)

    def _symbol(self, i: int) -> Symbol:
        addr = int(self._addr[i])
        size = 0
        if self._types[i] not in "Aa":
            # up to the next located (non-absolute) symbol at a higher address
            j = int(np.searchsorted(self._located, np.uint64(addr), side="right"))
            if j < len(self._located):
                size = int(self._located[j]) - addr
        return Symbol(self._names[i], addr, size, self._types[i])

    def lookup(self, name: str) -> Symbol | None:
        i = self._by_name.get(name)
        return None if i is None else self._symbol(i)

    def address(self, name: str) -> int | None:
        i = self._by_name.get(name)
        return None if i is None else int(self._addr[i])

    def symbolize(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol containing ``addr`` and the offset into it (None outside vmlinux,
        and past the last symbol or in gaps wider than :data:`MAX_SYMBOL_SIZE`)."""
        j = int(np.searchsorted(self._located, np.uint64(addr), side="right")) - 1
        if j < 0:
            return None
        sym = self._symbol(int(self._located_index[j]))
        if not 0 < sym.size <= MAX_SYMBOL_SIZE or addr >= sym.address + sym.size:
            return None
        return sym, addr - sym.address

    def describe(self, addr: int) -> str | None:
        """``name+0xoff/0xsize`` as the kernel's ``%pS`` prints it, or None."""
        hit = self.symbolize(addr)
        if hit is None:
            return None
        sym, off = hit
        return f"{sym.name}+{off:#x}/{sym.size:#x}"


def read_kallsyms(mem) -> Kallsyms:
    """Decode kallsyms from ``mem`` (``vmcoreinfo`` and ``read_virt``); raises
    :class:`KdumpyError` when VMCOREINFO does not name the tables or they are unreadable."""
    vi = mem.vmcoreinfo
    if vi is None:
        raise KdumpyError("no VMCOREINFO: no kallsyms")
    sym = {n: vi.symbol(n) for n in _REQUIRED + ("kallsyms_offsets", "kallsyms_relative_base",
                                                "kallsyms_addresses", "kallsyms_markers",
                                                "kallsyms_seqs_of_names", "_stext")}
    missing = [n for n in _REQUIRED if sym[n] is None]
    if missing or (sym["kallsyms_offsets"] is None and sym["kallsyms_addresses"] is None):
        raise KdumpyError("VMCOREINFO does not name the kallsyms tables (kernel older than "
                          "commit 5fd8fea935a1)")
    if (sym["kallsyms_addresses"] is None and sym["kallsyms_offsets"] is not None
            and sym["kallsyms_relative_base"] is None):
        raise KdumpyError("VMCOREINFO names kallsyms_offsets but not kallsyms_relative_base: "
                          "symbol addresses are not available")
    bo = "<" if mem.byteorder == "little" else ">"
    word = vi.size("atomic_long_t") or 8
    num = int(np.frombuffer(mem.read_virt(sym["kallsyms_num_syms"], 4), f"{bo}u4")[0])
    if not 0 < num < 10_000_000:
        raise KdumpyError(f"kallsyms_num_syms {num} is implausible")

    names_at = sym["kallsyms_names"]
    after = [a for n, a in sym.items()
             if a is not None and a > names_at and n.startswith("kallsyms")]
    span = min(after) - names_at if after else _MAX_NAMES_BYTES
    raw = mem.read_virt(names_at, min(span, _MAX_NAMES_BYTES))
    names_buf = np.frombuffer(raw, np.uint8)

    # where each symbol's tokens start and how many it has (sequential: lengths vary)
    tok_first = np.empty(num, np.int64)
    tok_count = np.empty(num, np.int64)
    len_bytes = []
    p = 0
    for i in range(num):
        if p >= len(raw):
            raise KdumpyError("kallsyms_names runs past its table")
        b = raw[p]
        if b & 0x80:
            n, k = (b & 0x7F) | (raw[p + 1] << 7), 2
            len_bytes.append(p + 1)
        else:
            n, k = b, 1
        len_bytes.append(p)
        tok_first[i], tok_count[i] = p + k, n
        p += k + n
    is_token = np.ones(p, bool)
    is_token[np.array(len_bytes, np.int64)] = False
    tokens = names_buf[:p][is_token]

    index = np.frombuffer(mem.read_virt(sym["kallsyms_token_index"], 512),
                          f"{bo}u2").astype(np.int64)
    table = np.frombuffer(mem.read_virt(sym["kallsyms_token_table"], int(index.max()) + 256),
                          np.uint8)
    nul = np.flatnonzero(table == 0)
    tok_len = nul[np.searchsorted(nul, index)] - index

    # expand every token of every symbol at once
    piece = tok_len[tokens]
    ends = np.cumsum(piece)
    total = int(ends[-1]) if len(ends) else 0
    src = np.repeat(index[tokens] - (ends - piece), piece) + np.arange(total)
    blob = table[src].tobytes()
    sym_len = np.add.reduceat(piece, np.cumsum(tok_count) - tok_count) if num else piece
    sym_len = np.where(tok_count > 0, sym_len, 0)
    sym_end = np.cumsum(sym_len)
    text = blob.decode("latin-1")
    starts = (sym_end - sym_len).tolist()
    types = [text[s] if n else "?" for s, n in zip(starts, sym_len.tolist())]
    names = [text[s + 1:e] for s, e in zip(starts, sym_end.tolist())]

    addresses = _addresses(mem, sym, num, bo, word, names)
    return Kallsyms(names, types, addresses)


def _addresses(mem, sym: dict, num: int, bo: str, word: int, names: list[str]) -> np.ndarray:
    if sym["kallsyms_offsets"] is None:
        raw = mem.read_virt(sym["kallsyms_addresses"], num * word)
        return np.frombuffer(raw, f"{bo}u{word}").astype(np.uint64)
    offs = np.frombuffer(mem.read_virt(sym["kallsyms_offsets"], num * 4),
                         f"{bo}i4").astype(np.int64)
    base = np.uint64(np.frombuffer(mem.read_virt(sym["kallsyms_relative_base"], word),
                                   f"{bo}u{word}")[0])
    top = np.uint64((1 << (8 * word)) - 1)
    low = (offs & 0xFFFFFFFF).astype(np.uint64)
    relative = (base + low) & top
    neg = (-offs).astype(np.uint64)                          # offs < 0: base - 1 - offs
    absolute = np.where(offs >= 0, offs.astype(np.uint64) & top,
                        (base - np.uint64(1) + neg) & top).astype(np.uint64)
    stext = sym["_stext"]
    if stext is not None and "_stext" in names:
        i = names.index("_stext")
        if int(absolute[i]) == stext and int(relative[i]) != stext:
            return absolute
        return relative
    return absolute if (offs < 0).any() else relative
