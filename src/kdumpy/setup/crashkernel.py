"""``crashkernel=``: parsed exactly as the kernel parses it, evaluated against a RAM size.

The parser follows Linux ``kernel/crash_reserve.c`` (``kernel/crash_core.c`` before 6.9)
character by character, on the whole command line, so quirks carry over:

* ``get_last_crashkernel``: the *last* ``crashkernel=`` wins (found with ``strstr``, so
  ``foo_crashkernel=`` counts too); for the plain form, words ending in a known suffix
  (``,high``, ``,low``, and ``,cma`` from 6.16) are skipped; a suffixed form takes the last
  word ending in that suffix.
* A ``:`` before the first space selects the range syntax
  ``start-[end]:size[,start-[end]:size...][@offset]`` (``parse_crashkernel_mem``): the RAM
  size is first rounded up to 128 MiB (Linux 6.0+, commit "kdump: round up the total memory
  size to 128M for crashkernel reservation"), a range matches when
  ``start <= ram < end`` (``end`` exclusive, omitted = no end), the first match wins and the
  rest of the list is not checked; any size ``>= ram`` seen before the match is
  "invalid size"; no match reserves nothing ("crashkernel size resulted in zero bytes").
* Otherwise ``size[@offset]`` (``parse_crashkernel_simple``): after the size only ``@``,
  space or end may follow; whatever follows the offset is ignored.
* ``size,high`` / ``size,low`` / ``size,cma`` (``parse_crashkernel_suffix``): exactly the
  suffix, then space or end.
* Numbers are ``memparse`` (see :mod:`kdumpy.setup.sizes`).
* The generic reservation (``parse_crashkernel`` with ``high``; x86, arm64, riscv,
  loongarch since 6.7): plain ``crashkernel=X`` wins; only when it is *absent* is
  ``,high`` tried, and then ``,low`` (absent: the arch default, x86 ``max(swiotlb+8M,
  256M)`` = 256M, others 128M; malformed: nothing is reserved; 0: no low part). The size
  must be non-zero and below the RAM size (unrounded).
* Before 6.7 x86 (and arm64 from 5.19) decided in arch code (``arch/x86/kernel/setup.c``
  ``reserve_crashkernel``): ``,high`` is tried when the plain form is absent, *malformed or
  zero*; a malformed ``,low`` silently gives the default low size.

Error texts are the kernel's own ``pr_warn`` lines.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from kdumpy import arch as arches
from kdumpy.errors import KdumpyError
from kdumpy.setup.sizes import ULLONG_MAX, char_at, format_size, human, memparse

SZ_128M = 128 << 20
#: x86_64 MAX_PHYSMEM_BITS with 5-level paging (52; 46 with 4 levels): no RAM lies above
MAX_PHYS_BITS = 52
MAX_PHYS_ADDR = 1 << MAX_PHYS_BITS
SZ_4G = 4 << 30
NAME = "crashkernel="


class CrashkernelError(KdumpyError):
    """A ``crashkernel=`` value the kernel rejects; ``str()`` is the kernel's warning."""

    def __init__(self, kernel_message: str) -> None:
        self.kernel_message = kernel_message
        super().__init__(kernel_message)


def _low_default(arch: str) -> int:
    """``crashkernel=X,high``'s reservation below 4 GiB when no ``,low`` is given:
    the arch module's ``CRASHKERNEL_LOW_DEFAULT``, else ``DEFAULT_CRASH_KERNEL_LOW_SIZE``
    (128 MiB, ``include/linux/crash_reserve.h``)."""
    mod = arches.known(arch)
    return int(mod.CRASHKERNEL_LOW_DEFAULT) if mod is not None else 128 << 20


@dataclass(frozen=True)
class KernelRules:
    """The parts of the parsing that changed between kernel versions and architectures."""

    #: RAM rounded up to 128 MiB before range matching (Linux 6.0+)
    round_ram_128m: bool = True
    #: the generic parse_crashkernel() with high/low (x86/arm64/riscv/loongarch, 6.7+)
    generic: bool = True
    #: the architecture supports ``,high`` / ``,low``
    high_low: bool = True
    #: ``crashkernel=size,cma`` is known (Linux 6.16+)
    cma_suffix: bool = True
    #: low memory reserved with ``,high`` when no ``,low`` is given
    low_default: int = 256 << 20
    label: str = "Linux 6.16+, x86_64"

    @classmethod
    def for_kernel(cls, release: str | None, arch: str = "x86_64") -> KernelRules:
        """Rules for a release string such as ``6.1.0-27-amd64`` (None: the newest)."""
        ver = _version(release) if release else (99, 0)
        x86 = arch in ("x86_64", "i386", "i686")
        if x86:
            high_low = True
        elif arch == "aarch64":
            high_low = ver >= (5, 19)
        elif arch in ("riscv64", "loongarch64"):
            high_low = ver >= (6, 6)
        else:
            high_low = False
        generic = high_low and ver >= (6, 7)
        label = f"Linux {release or 'newest'}, {arch}"
        return cls(round_ram_128m=ver >= (6, 0), generic=generic, high_low=high_low,
                   cma_suffix=ver >= (6, 16) and (x86 or arch in ("aarch64", "riscv64",
                                                                  "ppc64le", "ppc64")),
                   low_default=_low_default("x86_64" if x86 else arch), label=label)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (",high", ",low", ",cma") if self.cma_suffix else (",high", ",low")


def _version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (99, 0)


# -- the kernel's functions ----------------------------------------------------------------

@dataclass
class _Parsed:
    ret: str = "ok"                   # "ok", "ENOENT" or "EINVAL"
    size: int = 0
    base: int = 0
    syntax: str | None = None         # "simple", "ranges" or "suffix"
    word: str | None = None           # the crashkernel= word that was used
    matched: tuple[int, int | None] | None = None
    messages: list[str] = field(default_factory=list)


def _last_crashkernel(cmdline: str, suffix: str | None, suffixes: tuple[str, ...]) -> int | None:
    """``get_last_crashkernel``: index just after ``crashkernel=`` of the word used."""
    found = None
    p = cmdline.find(NAME)
    while p != -1:
        end = cmdline.find(" ", p)
        if end == -1:
            end = len(cmdline)
        word = cmdline[p:end]
        if suffix is None:
            if not any(word.endswith(s) for s in suffixes):
                found = p
        elif word.endswith(suffix):
            found = p
        p = cmdline.find(NAME, p + 1)
    return None if found is None else found + len(NAME)


def _parse_mem(s: str, i: int, system_ram: int, rules: KernelRules, out: _Parsed) -> None:
    """``parse_crashkernel_mem``: the range list, then an optional ``@offset``."""
    total = -(-system_ram // SZ_128M) * SZ_128M if rules.round_ram_128m else system_ram
    out.syntax = "ranges"
    while True:
        start, j = memparse(s, i)
        if j == i:
            raise CrashkernelError("crashkernel: Memory value expected")
        i = j
        if char_at(s, i) != "-":
            raise CrashkernelError("crashkernel: '-' expected")
        i += 1
        end: int | None = None
        if char_at(s, i) != ":":
            e, j = memparse(s, i)
            if j == i:
                raise CrashkernelError("crashkernel: Memory value expected")
            i = j
            if e <= start:
                raise CrashkernelError("crashkernel: end <= start")
            end = e
        if char_at(s, i) != ":":
            raise CrashkernelError("crashkernel: ':' expected")
        i += 1
        size, j = memparse(s, i)
        if j == i:
            raise CrashkernelError("crashkernel: Memory value expected")
        i = j
        if size >= total:
            raise CrashkernelError("crashkernel: invalid size")
        if start <= total < (ULLONG_MAX if end is None else end):
            out.size = size
            out.matched = (start, end)
            break
        c = char_at(s, i)
        i += 1
        if c != ",":
            break
    if out.size > 0:
        while char_at(s, i) not in ("\0", " ", "@"):
            i += 1
        if char_at(s, i) == "@":
            i += 1
            base, j = memparse(s, i)
            if j == i:
                raise CrashkernelError("crashkernel: Memory value expected after '@'")
            out.base = base
    else:
        out.messages.append("crashkernel size resulted in zero bytes")


def _parse_simple(s: str, i: int, out: _Parsed) -> None:
    """``parse_crashkernel_simple``: ``size[@offset]``."""
    out.syntax = "simple"
    size, j = memparse(s, i)
    out.size = size
    if j == i:
        raise CrashkernelError("crashkernel: memory value expected")
    c = char_at(s, j)
    if c == "@":
        out.base, _ = memparse(s, j + 1)
    elif c not in (" ", "\0"):
        raise CrashkernelError(f"crashkernel: unrecognized char: {c}")


def _parse_suffix(s: str, i: int, suffix: str, out: _Parsed) -> None:
    """``parse_crashkernel_suffix``: ``size,high`` and friends. The size is stored before
    the suffix is checked, as the kernel does (it matters for ``,cma``, whose error is
    ignored)."""
    out.syntax = "suffix"
    size, j = memparse(s, i)
    out.size = size
    if j == i:
        raise CrashkernelError("crashkernel: memory value expected")
    if not s.startswith(suffix, j):
        raise CrashkernelError(f"crashkernel: unrecognized char: {_c(char_at(s, j))}")
    j += len(suffix)
    if char_at(s, j) not in (" ", "\0"):
        raise CrashkernelError(f"crashkernel: unrecognized char: {_c(char_at(s, j))}")


def _c(ch: str) -> str:
    return "" if ch == "\0" else ch


def _parse_one(cmdline: str, system_ram: int, suffix: str | None, rules: KernelRules) -> _Parsed:
    """``__parse_crashkernel``: find the word, pick the syntax, parse; errors become
    ``ret="EINVAL"`` with the warning in ``messages``."""
    out = _Parsed()
    i = _last_crashkernel(cmdline, suffix, rules.suffixes)
    if i is None:
        out.ret = "ENOENT"
        return out
    end = cmdline.find(" ", i)
    out.word = cmdline[i - len(NAME): len(cmdline) if end == -1 else end]
    try:
        if suffix is not None:
            _parse_suffix(cmdline, i, suffix, out)
        else:
            colon = cmdline.find(":", i)
            space = cmdline.find(" ", i)
            if colon != -1 and (space == -1 or colon < space):
                _parse_mem(cmdline, i, system_ram, rules, out)
            else:
                _parse_simple(cmdline, i, out)
    except CrashkernelError as exc:
        out.ret = "EINVAL"
        out.messages.append(exc.kernel_message)
    return out


# -- the result ------------------------------------------------------------------------------

@dataclass
class Reservation:
    """What the kernel would reserve for a command line on a machine with ``ram`` bytes."""

    cmdline: str
    ram: int
    ram_rounded: int
    rules: str
    reserved: bool = False
    size: int = 0
    offset: int = 0                   # 0: the kernel picks the place
    high: bool = False                # ,high: placed above 4 GiB if possible
    low: int = 0                      # low memory added when the region is above 4 GiB
    low_when: str | None = None       # when the low part applies
    cma: int = 0
    syntax: str | None = None
    word: str | None = None
    matched_range: tuple[int, int | None] | None = None
    error: str | None = None          # the kernel's warning for a malformed value
    kernel_messages: list[str] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.matched_range is not None:
            s, e = self.matched_range
            d["matched_range"] = {"start": s, "end": e}
        return d


@dataclass
class _Outcome:
    chosen: _Parsed
    failed: bool = False
    high: bool = False
    low: int = 0
    low_when: str | None = None
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _generic(cmdline: str, ram: int, rules: KernelRules) -> _Outcome:
    """``parse_crashkernel`` of kernel/crash_reserve.c with ``high`` (and the arch's
    ``reserve_crashkernel_generic`` low-memory rule)."""
    plain = _parse_one(cmdline, ram, None, rules)
    out = _Outcome(plain, messages=list(plain.messages))
    if plain.ret == "ENOENT" and rules.high_low:
        hi = _parse_one(cmdline, 0, ",high", rules)
        out.messages += hi.messages
        out.chosen = hi
        if hi.ret != "ok" or not hi.size:
            out.failed = True
            return out
        lo = _parse_one(cmdline, 0, ",low", rules)
        out.messages += lo.messages
        if lo.ret == "ENOENT":
            out.low, out.low_when = rules.low_default, "the default, no crashkernel=,low given"
        elif lo.ret != "ok":
            out.chosen, out.failed = lo, True
            return out
        else:
            out.low, out.low_when = lo.size, f"crashkernel={format_size(lo.size)},low"
        out.high = True
    elif plain.ret == "ok" and rules.high_low:
        out.low = rules.low_default
        out.low_when = "the default; crashkernel=,low only counts with crashkernel=,high"
    if out.chosen.ret != "ok" or not out.chosen.size:
        out.failed = True
    elif out.chosen.size >= ram:
        out.failed = True
        out.notes.append(f"{format_size(out.chosen.size)} is not below the RAM size "
                         f"{human(ram)}: parse_crashkernel() returns -EINVAL")
    return out


def _legacy(cmdline: str, ram: int, rules: KernelRules) -> _Outcome:
    """Before Linux 6.7: ``arch/x86/kernel/setup.c`` ``reserve_crashkernel`` (arm64 from
    5.19 alike; without high/low support only the plain form counts)."""
    plain = _parse_one(cmdline, ram, None, rules)
    out = _Outcome(plain, messages=list(plain.messages))
    if (plain.ret != "ok" or not plain.size) and rules.high_low:
        hi = _parse_one(cmdline, ram, ",high", rules)
        out.messages += hi.messages
        if hi.ret == "ok" and hi.size:
            out.chosen, out.high = hi, True
            if plain.ret != "ENOENT":
                out.notes.append(f"the plain {plain.word} is unusable, so crashkernel=,high "
                                 "is used (kernels before 6.7 fall back to it)")
        else:
            if plain.ret == "ENOENT":
                out.chosen = hi
            out.failed = True
            return out
    if out.chosen.ret != "ok" or not out.chosen.size:
        out.failed = True
        return out
    if out.chosen.size >= ram:
        out.failed = True
        out.notes.append(f"{format_size(out.chosen.size)} is not below the RAM size "
                         f"{human(ram)}: the allocation fails (\"crashkernel reservation "
                         "failed - No suitable area found.\")")
        return out
    if rules.high_low:
        lo = _parse_one(cmdline, 0, ",low", rules)
        if lo.ret == "ok":
            out.low, out.low_when = lo.size, f"crashkernel={format_size(lo.size)},low"
        elif lo.ret == "ENOENT":
            out.low, out.low_when = rules.low_default, "the default, no crashkernel=,low given"
        else:
            out.low = rules.low_default
            out.low_when = (f"the default, as crashkernel=,low is malformed "
                            f"(\"{lo.messages[-1]}\")")
    return out


def evaluate(cmdline: str, ram: int, rules: KernelRules | None = None) -> Reservation:
    """What ``cmdline`` (one or more ``crashkernel=`` words, or a whole kernel command
    line) reserves on a machine whose memblock RAM size is ``ram`` bytes."""
    rules = rules or KernelRules()
    rounded = -(-ram // SZ_128M) * SZ_128M if rules.round_ram_128m else ram
    res = Reservation(cmdline=cmdline, ram=ram, ram_rounded=rounded, rules=rules.label)
    out = (_generic if rules.generic else _legacy)(cmdline, ram, rules)
    chosen = out.chosen
    if rules.cma_suffix:
        cma = _parse_one(cmdline, 0, ",cma", rules)
        out.messages += cma.messages
        if cma.ret != "ENOENT":
            res.cma = cma.size       # the kernel ignores this parse's return value
    res.kernel_messages = out.messages
    res.syntax = "high" if out.high else chosen.syntax
    res.word = chosen.word
    res.matched_range = chosen.matched
    ex = res.explanation
    if chosen.ret == "EINVAL":
        res.error = chosen.messages[-1]
    if out.failed:
        if res.error:
            ex.append(f"{chosen.word}: malformed; the kernel logs \"{res.error}\" and "
                      "reserves nothing")
        elif chosen.ret == "ENOENT":
            ex.append("no crashkernel= parameter: nothing is reserved")
        elif chosen.syntax == "ranges" and not chosen.size:
            ex.append(f"no range covers {_ram_text(res, rules)}: the kernel logs "
                      "\"crashkernel size resulted in zero bytes\" and reserves nothing")
        elif not chosen.size:
            ex.append("size 0: nothing is reserved")
        ex.extend(out.notes)
        return res
    if chosen.base and chosen.base + chosen.size > MAX_PHYS_ADDR:
        # memparse wraps a too-large number (simple_strtoull ignores overflow, the suffix
        # shift drops high bits); the fixed-base allocation
        # (memblock_phys_alloc_range(size, align, base, base + size)) then finds no RAM there
        res.error = "crashkernel reservation failed - memory is in use."
        res.kernel_messages = out.messages + [res.error]
        ex.append(f"{chosen.word}: the offset is {chosen.base:#x} (memparse keeps 64 bits), "
                  f"beyond the {MAX_PHYS_BITS}-bit physical address space: there is no RAM "
                  f"there; the kernel logs \"{res.error}\" and reserves nothing")
        return res
    res.reserved = True
    res.size = chosen.size
    res.offset = chosen.base
    res.high = out.high
    ex.extend(out.notes)
    if chosen.syntax == "ranges" and chosen.matched is not None:
        s, e = chosen.matched
        end = format_size(e) if e is not None else ""
        ex.append(f"range {format_size(s)}-{end} covers {_ram_text(res, rules)} "
                  f"({format_size(s)} <= RAM < {end or 'no end'}): {format_size(chosen.size)}")
    ex.append(f"reserves {human(res.size)} ({res.size} bytes)")
    if res.offset:
        ex.append(f"at physical address {res.offset:#x} ({format_size(res.offset)}) exactly; "
                  "the reservation fails if that memory is in use")
    elif out.high:
        ex.append("placed above 4 GiB when possible (,high), else below")
    else:
        ex.append("placed by the kernel: below 4 GiB first, above 4 GiB if that fails")
    if out.low and not res.offset:
        res.low = out.low
        res.low_when = out.low_when
        when = "always with ,high" if out.high else "only if the region ends up above 4 GiB"
        ex.append(f"plus {human(out.low)} below 4 GiB for DMA/swiotlb, {when} "
                  f"({out.low_when})")
    elif out.high and not out.low:
        ex.append("no low memory (crashkernel=0,low)")
    if res.cma:
        ex.append(f"plus {human(res.cma)} of CMA memory (crashkernel=,cma), lent to the "
                  "running system's movable allocations until a crash")
    return res


def _ram_text(res: Reservation, rules: KernelRules) -> str:
    exact = "" if format_size(res.ram)[-1:].isalpha() else f" = {res.ram} bytes"
    if rules.round_ram_128m and res.ram_rounded != res.ram:
        return f"RAM {human(res.ram)}{exact}, rounded up to {human(res.ram_rounded)}"
    return f"RAM {human(res.ram)}{exact}"


def normalise_spec(words: list[str] | str) -> str:
    """``512M,high 128M,low`` -> ``crashkernel=512M,high crashkernel=128M,low``; words
    that already carry ``crashkernel=`` (or a whole command line) are kept."""
    if isinstance(words, str):
        words = words.split(" ")
    if any(NAME in w for w in words):
        return " ".join(words)
    return " ".join(NAME + w for w in words if w)


def format_reservation(res: Reservation) -> str:
    lines = [f"{res.cmdline}  (RAM {human(res.ram)}; {res.rules})"]
    lines += [f"  {e}" for e in res.explanation]
    return "\n".join(lines)
