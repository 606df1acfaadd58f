"""Memory sizes as the kernel reads them (``memparse``) and as kdumpy prints them.

Facts (Linux ``lib/cmdline.c`` ``memparse``, ``lib/vsprintf.c`` ``simple_strtoull``,
``lib/kstrtox.c`` ``_parse_integer_fixup_radix`` / ``_parse_integer_limit``):

* The number is read by ``simple_strtoull(ptr, &end, 0)``: base 16 after ``0x``/``0X`` when a
  hex digit follows, base 8 after a leading ``0`` otherwise, else base 10. Digits are ASCII
  ``0-9``/``a-f``/``A-F`` below the base; reading stops at the first other character.
  Overflow is not an error: the value wraps modulo 2**64.
* One suffix letter may follow, either case: ``K``, ``M``, ``G``, ``T``, ``P``, ``E`` shift left
  by 10, 20, ... 60 bits (again modulo 2**64) and are consumed. Any other character ends the
  number without being consumed. A suffix with no digits before it is still consumed (the
  value is then 0), so ``memparse("M")`` moves past the ``M``.
"""

from __future__ import annotations

from kdumpy.errors import KdumpyError

ULLONG_MAX = (1 << 64) - 1
_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def char_at(text: str, i: int) -> str:
    """``text[i]``, or NUL past the end (C strings end in ``\\0``)."""
    return text[i] if 0 <= i < len(text) else "\0"


def _digit(c: str) -> int | None:
    if "0" <= c <= "9":
        return ord(c) - 48
    lc = c.lower()
    if len(c) == 1 and "a" <= lc <= "f":
        return ord(lc) - 87
    return None


def simple_strtoull(text: str, i: int) -> tuple[int, int]:
    """The kernel's ``simple_strtoull(text + i, &end, 0)``: (value, index after the digits)."""
    base = 10
    if char_at(text, i) == "0":
        if char_at(text, i + 1).lower() == "x" and _digit(char_at(text, i + 2)) is not None:
            base = 16
            i += 2
        else:
            base = 8
    value = 0
    while True:
        d = _digit(char_at(text, i))
        if d is None or d >= base:
            break
        value = (value * base + d) & ULLONG_MAX
        i += 1
    return value, i


def memparse(text: str, i: int = 0) -> tuple[int, int]:
    """The kernel's ``memparse(text + i, &end)``: (bytes, index of the first unread char)."""
    value, j = simple_strtoull(text, i)
    shift = _SHIFT.get(char_at(text, j).lower())
    if shift is not None and char_at(text, j) != "\0":
        value = (value << shift) & ULLONG_MAX
        j += 1
    return value, j


def parse_size(text: str | int, what: str = "size") -> int:
    """A whole size such as ``512M``, ``2G`` or ``1048576`` (memparse syntax, nothing after).

    For kdumpy's own options and config values, where trailing junk is an error (the
    kernel would silently ignore it).
    """
    if isinstance(text, bool):
        raise KdumpyError(f"{what}: expected a size such as 512M, not {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise KdumpyError(f"{what}: {text} is negative")
        return text
    s = text.strip()
    value, end = memparse(s, 0)
    if not s or end != len(s) or _digit(char_at(s, 0)) is None:
        raise KdumpyError(f"{what}: {text!r} is not a size (a number with an optional "
                          "K/M/G/T/P/E suffix, e.g. 512M)")
    return value


def format_size(n: int) -> str:
    """Shortest exact binary-suffixed form the kernel accepts back: ``256M``, ``1536K``, ``7``."""
    if n == 0:
        return "0"
    for suffix, shift in (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def human(n: int) -> str:
    """Approximate, for prose: ``1.5 GiB``, ``256 MiB``, ``12 KiB``, ``100 bytes``."""
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20),
                        ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"
