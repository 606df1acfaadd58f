"""The ``[triggers]`` config section: which kernel events panic (and so reach kdump).

A crash dump is only taken when the kernel panics with a capture kernel loaded; whether an
oops, a WARN(), a taint, a lockup or an NMI panics is decided by sysctls under
``/proc/sys/kernel`` (Documentation/admin-guide/sysctl/kernel.rst). kdumpy sets them when it
loads the capture kernel (``kdumpy load``), writes them to a sysctl.d drop-in so they hold
from boot (``kdumpy install``; systemd-sysctl.service applies ``/etc/sysctl.d/*.conf``,
sysctl.d(5)) and shows them (``kdumpy status``).

Kernel facts relied on:

* ``panic_on_oops``, ``panic_on_warn``, ``panic_on_unrecovered_nmi``, ``unknown_nmi_panic``,
  ``hardlockup_panic``, ``softlockup_panic`` are integers read as booleans
  (kernel/panic.c, kernel/watchdog.c, arch/x86/kernel/nmi.c). ``hardlockup_panic`` exists
  only with CONFIG_HARDLOCKUP_DETECTOR, ``softlockup_panic`` only with
  CONFIG_SOFTLOCKUP_DETECTOR, the two NMI knobs only on x86: a knob the running kernel
  lacks has no file under /proc/sys/kernel, which is an error here.
* ``panic_on_taint`` is an unsigned long bit mask of taint flags; ``add_taint()`` panics
  with "panic_on_taint set ..." when a flag in the mask gets set (kernel/panic.c).
  ``panic_on_taint_nousertaint`` makes writes of those flags to ``/proc/sys/kernel/tainted``
  fail with EINVAL instead (proc_taint(), kernel/panic.c).
* The taint flag numbers and letters are ``TAINT_*`` in include/linux/panic.h and
  ``taint_flags[]`` in kernel/panic.c (TAINT_TEST = 18 since 5.19; TAINT_FWCTL = 19 since
  6.15; TAINT_FLAGS_COUNT is 19 in 6.1 and 6.12).
* ``panic_on_taint`` has no sysctl in Debian's 6.1 kernel (found in the lab: no
  /proc/sys/kernel/panic_on_taint); it is the boot parameter ``panic_on_taint=<hex
  mask>[,nousertaint]``, parsed with kstrtoul(..., 16) by panic_on_taint_setup()
  (kernel/panic.c). When the sysctl file is missing, the configured mask must therefore
  be on /proc/cmdline, and the error says so.
* ``sysrq`` is the bit mask of allowed SysRq functions (0 none, 1 all;
  Documentation/admin-guide/sysrq.rst); the ``/proc/sysrq-trigger`` file is not governed by
  it, but keyboard and serial SysRq are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdumpy.errors import KdumpyError
from kdumpy.setup.paths import SystemPaths
from kdumpy.taint import TAINT_FLAGS

SYSCTL_DIR = "/proc/sys/kernel"
SYSCTL_DROPIN = "/etc/sysctl.d/90-kdumpy.conf"

TAINT_MASK_MAX = (1 << len(TAINT_FLAGS)) - 1

#: knob -> kind: "bool" (0/1), "taint" (mask of TAINT_FLAGS), "sysrq" (0-511 bit mask).
KNOBS: dict[str, str] = {
    "panic_on_oops": "bool",
    "panic_on_warn": "bool",
    "panic_on_taint": "taint",
    "panic_on_taint_nousertaint": "bool",
    "hardlockup_panic": "bool",
    "softlockup_panic": "bool",
    "unknown_nmi_panic": "bool",
    "panic_on_unrecovered_nmi": "bool",
    "sysrq": "sysrq",
}
#: The order in which they are written: the mask before its nousertaint switch.
ORDER = tuple(KNOBS)
SYSRQ_MAX = 511


class TriggerError(KdumpyError):
    """A trigger cannot be applied to the running kernel."""


class BadValue(ValueError):
    """A ``[triggers]`` value is invalid; the message says why (no file/key prefix)."""


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def taint_bit(word: str) -> int:
    """The bit of a taint flag given as a name (``WARN``, ``TAINT_WARN``, any case), a
    letter (``W``) or a bit number (``"9"``)."""
    w = word.strip()
    if w.isdigit():
        n = int(w)
        if n >= len(TAINT_FLAGS):
            raise BadValue(f"taint bit {n} is out of range (0-{len(TAINT_FLAGS) - 1})")
        return n
    if len(w) == 1:
        for bit, letter, _name in TAINT_FLAGS:
            if letter == w.upper():
                return bit
    name = w.upper().removeprefix("TAINT_")
    for bit, _letter, known in TAINT_FLAGS:
        if known == name:
            return bit
    raise BadValue(f"{word!r} is not a taint flag (names: "
                   f"{', '.join(f'{n}({c})' for _b, c, n in TAINT_FLAGS)})")


def parse_taint_mask(v: Any) -> int:
    """A ``panic_on_taint`` value: a number (the mask), or taint flags as a list or a
    comma/space separated string of names, letters or bit numbers."""
    if isinstance(v, bool):
        raise BadValue("expected a taint mask (a number or taint names), not a boolean")
    if isinstance(v, int):
        if not 0 <= v <= TAINT_MASK_MAX:
            raise BadValue(f"mask {v:#x} has bits beyond the known taint flags "
                           f"(0-{TAINT_MASK_MAX:#x})")
        return v
    if isinstance(v, str):
        s = v.strip()
        if s.lower().startswith("0x"):
            try:
                return parse_taint_mask(int(s, 16))
            except ValueError:
                raise BadValue(f"{v!r} is not a hexadecimal mask") from None
        words = [w for w in s.replace(",", " ").split() if w]
    elif isinstance(v, list):
        words = []
        for w in v:
            if isinstance(w, bool) or not isinstance(w, (str, int)):
                raise BadValue(f"expected taint names or bit numbers, not {_kind(w)}")
            words.append(str(w))
    else:
        raise BadValue(f"expected a mask or taint names, not {_kind(v)}")
    if not words:
        raise BadValue("no taint flags given (use 0 to disable)")
    mask = 0
    for w in words:
        mask |= 1 << taint_bit(w)
    return mask


def taint_names(mask: int) -> list[str]:
    """The flag names in ``mask``, lowest bit first."""
    return [name for bit, _c, name in TAINT_FLAGS if mask >> bit & 1]


def parse_value(name: str, v: Any) -> int:
    """Validate one ``[triggers]`` value; the integer written to /proc/sys/kernel/NAME."""
    kind = KNOBS.get(name)
    if kind is None:
        raise BadValue(f"unknown trigger (known: {', '.join(KNOBS)})")
    if kind == "taint":
        return parse_taint_mask(v)
    if isinstance(v, bool):
        return int(v)
    if not isinstance(v, int):
        raise BadValue(f"expected true/false or a number, not {_kind(v)}")
    hi = 1 if kind == "bool" else SYSRQ_MAX
    if not 0 <= v <= hi:
        raise BadValue(f"{v} is out of range (0-{hi})")
    return v


def knob_path(paths: SystemPaths, name: str) -> str:
    return paths.path(f"{SYSCTL_DIR}/{name}")


def read_knob(paths: SystemPaths, name: str) -> int | None:
    """The knob's current value, or None when the running kernel has no such file."""
    try:
        with open(knob_path(paths, name), encoding="ascii") as f:
            text = f.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise TriggerError(f"cannot read {SYSCTL_DIR}/{name}: {exc.strerror}") from None
    try:
        return int(text.split()[0], 0) if text else None
    except ValueError:
        raise TriggerError(f"{SYSCTL_DIR}/{name} reads {text!r}, not a number") from None


BOOT_ONLY = ("panic_on_taint", "panic_on_taint_nousertaint")


def cmdline_taint(paths: SystemPaths) -> tuple[int, int] | None:
    """(mask, nousertaint) from ``panic_on_taint=`` on /proc/cmdline (the last one wins, as
    with every early_param), or None."""
    try:
        with open(paths.proc_cmdline, encoding="utf-8", errors="replace") as f:
            words = f.read().split()
    except OSError:
        return None
    found = None
    for w in words:
        if w.startswith("panic_on_taint="):
            mask, _, rest = w[len("panic_on_taint="):].partition(",")
            try:
                found = (int(mask, 16), int(rest == "nousertaint"))
            except ValueError:
                continue
    return found


def boot_param(wanted: Mapping[str, int]) -> str:
    mask = wanted.get("panic_on_taint", 0)
    return f"panic_on_taint={mask:x}" + (",nousertaint" if wanted.get(
        "panic_on_taint_nousertaint") else "")


def from_cmdline(paths: SystemPaths, wanted: Mapping[str, int]) -> list[str]:
    """Boot-only knobs without a sysctl file whose configured value /proc/cmdline sets."""
    got = cmdline_taint(paths)
    if got is None:
        return []
    values = {"panic_on_taint": got[0], "panic_on_taint_nousertaint": got[1]}
    return [n for n in BOOT_ONLY if n in wanted and not os.path.exists(knob_path(paths, n))
            and values[n] == wanted[n]]


def missing(paths: SystemPaths, wanted: Mapping[str, int]) -> list[str]:
    """The configured knobs the running kernel lacks (no file under /proc/sys/kernel, and
    for the taint knobs no matching ``panic_on_taint=`` on /proc/cmdline)."""
    ok = set(from_cmdline(paths, wanted))
    return [n for n in wanted if not os.path.exists(knob_path(paths, n)) and n not in ok]


def check_available(paths: SystemPaths, wanted: Mapping[str, int]) -> None:
    gone = missing(paths, wanted)
    taint = [n for n in gone if n in BOOT_ONLY]
    if taint:
        raise TriggerError(
            f"the running kernel has no {SYSCTL_DIR}/panic_on_taint: it is set at boot "
            f"only; add {boot_param(wanted)} to the kernel command line and reboot")
    if gone:
        raise TriggerError(
            "the running kernel has no " + ", ".join(f"{SYSCTL_DIR}/{n}" for n in gone)
            + ": remove " + ", ".join(f"triggers.{n}" for n in gone) + " from the config "
            "(hardlockup_panic needs CONFIG_HARDLOCKUP_DETECTOR, softlockup_panic "
            "CONFIG_SOFTLOCKUP_DETECTOR, the NMI knobs x86)")


@dataclass
class Applied:
    name: str
    before: int | None
    after: int


def apply(paths: SystemPaths, wanted: Mapping[str, int]) -> list[Applied]:
    """Write every configured knob and read it back; raise on the first failure."""
    check_available(paths, wanted)
    booted = set(from_cmdline(paths, wanted))
    out = []
    for name in ORDER:
        if name not in wanted or name in booted:
            continue
        value = wanted[name]
        before = read_knob(paths, name)
        try:
            with open(knob_path(paths, name), "w", encoding="ascii") as f:
                f.write(f"{value}\n")
        except OSError as exc:
            raise TriggerError(f"cannot set {SYSCTL_DIR}/{name} to {value}: "
                               f"{exc.strerror}") from None
        now = read_knob(paths, name)
        if now != value:
            raise TriggerError(f"wrote {value} to {SYSCTL_DIR}/{name} but it reads {now}")
        out.append(Applied(name, before, value))
    return out


def describe(name: str, value: int) -> str:
    if KNOBS.get(name) == "taint":
        names = taint_names(value)
        return f"{value:#x}" + (f" ({','.join(names)})" if names else "")
    return str(value)


def sysctl_dropin(wanted: Mapping[str, int]) -> str:
    """The ``/etc/sysctl.d/90-kdumpy.conf`` text (sysctl.d(5): ``key = value`` lines)."""
    lines = ["# Installed by `kdumpy install` from the [triggers] section of kdumpy's config.",
             "# Which kernel events panic, and so reach the capture kernel."]
    for name in ORDER:
        if name in wanted:
            value = wanted[name]
            if KNOBS[name] == "taint" and value:
                lines.append(f"# {name}: {', '.join(taint_names(value))}")
            lines.append(f"kernel.{name} = {value}")
    return "\n".join(lines) + "\n"


def status(paths: SystemPaths, wanted: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Every knob: its current value (None: the kernel lacks it) and the configured one."""
    out: dict[str, dict[str, Any]] = {}
    boot = cmdline_taint(paths)
    for name in ORDER:
        try:
            cur = read_knob(paths, name)
        except TriggerError:
            cur = None
        if cur is None and name in BOOT_ONLY and boot is not None:
            cur = boot[BOOT_ONLY.index(name)]
        out[name] = {"current": cur, "configured": wanted.get(name)}
    return out
