"""Mutations of real dumps for the hardening tests: rewrite a kdump-compressed file's
VMCOREINFO, flip header fields, cut the file.

The kdump-compressed sub header holds the whole PT_NOTE of the crashed kernel; the
VMCOREINFO note is one of its notes, and ``offset_vmcoreinfo``/``size_vmcoreinfo`` point at
its descriptor. The notes end well before the sub header's last block (``sub_hdr_size``
blocks), so a rewritten VMCOREINFO of a few more bytes still fits in place.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from kdumpy.formats.kdump import KdumpFile
from kdumpy.formats.notes import parse_notes

def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def rewrite_vmcoreinfo_bytes(data: bytes, edit: Callable[[dict[str, str]], dict[str, str]],
                             *, raw: Callable[[bytes], bytes] | None = None,
                             path: str = "<dump>") -> bytes:
    """A kdump-compressed file's bytes with its VMCOREINFO replaced by ``edit(entries)`` (an
    ordered dict of KEY -> value) or, with ``raw``, by ``raw(text)``."""
    m = bytearray(data)
    k = KdumpFile(bytes(m[:1 << 20]) if len(m) > 1 << 20 else bytes(m), path=path)
    bs = k.header.block_size
    sub = k.sub
    notes = parse_notes(bytes(m[sub.offset_note:sub.offset_note + sub.size_note]),
                        byteorder="little")
    out = b""
    vi_off = vi_size = 0
    for n in notes:
        desc = bytes(n.desc)
        if n.name == "VMCOREINFO":
            if raw is not None:
                desc = raw(desc)
            else:
                entries: dict[str, str] = {}
                for line in desc.decode("ascii", "replace").splitlines():
                    if "=" in line:
                        key, _, value = line.partition("=")
                        entries[key] = value
                entries = edit(entries)
                desc = "".join(f"{key}={v}\n" for key, v in entries.items()).encode()
            name_size = len(n.name) + 1
            vi_off = len(out) + 12 + name_size + (-name_size % 4)
            vi_size = len(desc)
        out += _note(n.name.encode(), n.type, desc)
    room = bs * (1 + k.header.sub_hdr_size) - sub.offset_note
    if len(out) > room:
        raise ValueError(f"rewritten notes ({len(out)} bytes) do not fit in {room}")
    m[sub.offset_note:sub.offset_note + room] = out.ljust(room, b"\0")
    sub.offset_vmcoreinfo, sub.size_vmcoreinfo = sub.offset_note + vi_off, vi_size
    sub.size_note = len(out)
    packed = sub.pack(k.arch)
    m[bs:bs + len(packed)] = packed
    return bytes(m)


def rewrite_vmcoreinfo(src: str, dst: str, edit: Callable[[dict[str, str]], dict[str, str]],
                       *, raw: Callable[[bytes], bytes] | None = None) -> None:
    """Copy the kdump-compressed ``src`` to ``dst`` with its VMCOREINFO rewritten (see
    :func:`rewrite_vmcoreinfo_bytes`)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(rewrite_vmcoreinfo_bytes(data, edit, raw=raw, path=src))


def setting(values: dict[str, str | None]) -> Callable[[dict[str, str]], dict[str, str]]:
    """An edit for :func:`rewrite_vmcoreinfo_bytes` that sets each entry of ``values`` (or,
    with None, removes it)."""
    def edit(e: dict[str, str]) -> dict[str, str]:
        for key, v in values.items():
            if v is None:
                e.pop(key, None)
            else:
                e[key] = v
        return e
    return edit


def set_vmcoreinfo(src: str, dst: str, **values: str | None) -> None:
    """``rewrite_vmcoreinfo`` setting (or, with None, removing) entries; keyword names use
    ``__`` for ``(`` ... ``)``: pass a dict with the real keys through ``**{...}``."""
    rewrite_vmcoreinfo(src, dst, setting(values))
