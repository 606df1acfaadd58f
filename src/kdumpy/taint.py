"""The kernel's taint flags: ``include/linux/panic.h`` ``TAINT_*`` bits and the letters
``kernel/panic.c`` ``taint_flags[]`` prints for them ("Tainted: G  D W").

Shared by the crash report (decoding ``tainted_mask``) and the trigger settings
(``panic_on_taint`` masks given by name or letter).
"""

from __future__ import annotations

#: (bit, letter when set, name without ``TAINT_``). FWCTL (J, bit 19) is 6.14+.
TAINT_FLAGS: tuple[tuple[int, str, str], ...] = (
    (0, "P", "PROPRIETARY_MODULE"), (1, "F", "FORCED_MODULE"), (2, "S", "CPU_OUT_OF_SPEC"),
    (3, "R", "FORCED_RMMOD"), (4, "M", "MACHINE_CHECK"), (5, "B", "BAD_PAGE"),
    (6, "U", "USER"), (7, "D", "DIE"), (8, "A", "OVERRIDDEN_ACPI_TABLE"), (9, "W", "WARN"),
    (10, "C", "CRAP"), (11, "I", "FIRMWARE_WORKAROUND"), (12, "O", "OOT_MODULE"),
    (13, "E", "UNSIGNED_MODULE"), (14, "L", "SOFTLOCKUP"), (15, "K", "LIVEPATCH"),
    (16, "X", "AUX"), (17, "T", "RANDSTRUCT"), (18, "N", "TEST"), (19, "J", "FWCTL"),
)
LETTER_BIT = {letter: bit for bit, letter, _n in TAINT_FLAGS}
NAME_BIT = {name: bit for bit, _l, name in TAINT_FLAGS}
