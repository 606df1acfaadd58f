"""The VMCOREINFO note: the crashed kernel's description of itself, as a typed object.

Kernel facts (``kernel/vmcore_info.c``, ``include/linux/vmcore_info.h``): one ``KEY=value``
per line; ``SYMBOL(x)`` and ``KERNELOFFSET`` are hex without ``0x``; ``SIZE``, ``OFFSET``,
``LENGTH``, ``PAGESIZE`` and ``CRASHTIME`` are decimal; ``NUMBER(x)`` is signed decimal
(``NUMBER(phys_base)=-148897792``) except a few printed as ``0x`` hex (``VMALLOC_START``,
arm64 ``kimage_voffset``); ``CONFIG_X=y`` marks a config option; ``OSRELEASE`` and
``BUILD-ID`` are text. The note is NUL padded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from kdumpy.errors import DumpFormatError


class VmcoreInfo(Mapping[str, str]):
    """Parsed VMCOREINFO text; a mapping of raw key to raw value plus typed accessors."""

    def __init__(self, entries: dict[str, str], raw: bytes = b"", *, path: str | None = None,
                 offset: int | None = None, line_offsets: dict[str, int] | None = None) -> None:
        self._entries = entries
        self.raw = raw
        self._path = path
        self._offset = offset
        self._line_offsets = line_offsets or {}

    # -- construction ---------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes, *, path: str | None = None, offset: int | None = None) -> "VmcoreInfo":
        """Parse the note descriptor; ``offset`` is its file offset (for errors only)."""
        text = data.rstrip(b"\0")
        entries: dict[str, str] = {}
        line_offsets: dict[str, int] = {}
        pos = 0
        for line in text.split(b"\n"):
            here = pos
            pos += len(line) + 1
            if not line.strip():
                continue
            key, sep, value = line.partition(b"=")
            bad = (not sep or not key or b"\0" in line
                   or any(c < 0x20 or c > 0x7e for c in key))
            if bad:
                where = None if offset is None else offset + here
                shown = line[:40].decode("latin-1").encode("unicode_escape").decode()
                raise DumpFormatError(path, "VMCOREINFO note", where,
                                      f"line {shown!r} is not KEY=value")
            k = key.decode("ascii")
            entries[k] = value.decode("latin-1")
            line_offsets[k] = here
        return cls(entries, bytes(data), path=path, offset=offset, line_offsets=line_offsets)

    # -- Mapping ----------------------------------------------------------------------
    def __getitem__(self, key: str) -> str:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- typed access -----------------------------------------------------------------
    def _bad(self, key: str, what: str) -> DumpFormatError:
        where = None
        if self._offset is not None and key in self._line_offsets:
            where = self._offset + self._line_offsets[key]
        return DumpFormatError(self._path, "VMCOREINFO note", where,
                               f"{key}={self._entries[key]!r} is not {what}")

    def _int(self, key: str, base: int) -> int | None:
        value = self._entries.get(key)
        if value is None:
            return None
        text = value.strip()
        try:
            if base == 0:  # NUMBER(): signed decimal, or 0x-prefixed hex
                neg = text.startswith("-")
                body = text[1:] if neg else text
                n = int(body, 16) if body.lower().startswith("0x") else int(body, 10)
                return -n if neg else n
            return int(text, base)
        except ValueError:
            raise self._bad(key, "hexadecimal" if base == 16 else "a number") from None

    def symbol(self, name: str) -> int | None:
        """``SYMBOL(name)``: the runtime address (KASLR already applied)."""
        return self._int(f"SYMBOL({name})", 16)

    def size(self, name: str) -> int | None:
        return self._int(f"SIZE({name})", 10)

    def offset(self, member: str) -> int | None:
        """``OFFSET(struct.member)``, e.g. ``offset("page.flags")``."""
        return self._int(f"OFFSET({member})", 10)

    def length(self, name: str) -> int | None:
        return self._int(f"LENGTH({name})", 10)

    def number(self, name: str) -> int | None:
        return self._int(f"NUMBER({name})", 0)

    def config(self, name: str) -> bool:
        """Whether ``CONFIG_<name>=y`` is present."""
        return self._entries.get(f"CONFIG_{name}") == "y"

    @property
    def osrelease(self) -> str | None:
        return self._entries.get("OSRELEASE")

    @property
    def page_size(self) -> int | None:
        return self._int("PAGESIZE", 10)

    @property
    def crash_time(self) -> int | None:
        return self._int("CRASHTIME", 10)

    @property
    def kernel_offset(self) -> int | None:
        return self._int("KERNELOFFSET", 16)

    @property
    def build_id(self) -> str | None:
        return self._entries.get("BUILD-ID")

    def with_entry(self, key: str, value: str) -> "VmcoreInfo":
        """A copy with one entry replaced (used when correcting a writer's mistake)."""
        entries = dict(self._entries)
        entries[key] = value
        return VmcoreInfo(entries, self.raw, path=self._path, offset=self._offset,
                          line_offsets=self._line_offsets)
