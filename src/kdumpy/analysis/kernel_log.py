"""The kernel log of a dump or kernel view (:mod:`kdumpy.kernel_log` decodes it)."""

from __future__ import annotations

from typing import Any

from kdumpy.kernel import kernel_view
from kdumpy.kernel_log import (EMPTY_LINE_LPOS, FAILED_LPOS, KernelLog, LogRecord,  # noqa: F401
                               escape_text, format_dmesg, format_record, line_prefix)
from kdumpy.kernel_log import read_kernel_log as _read_kernel_log


def read_kernel_log(mem: Any, *, since_clear: bool = False) -> KernelLog:
    """:func:`kdumpy.kernel_log.read_kernel_log` of ``mem``: a :class:`kdumpy.Dump` (read
    through a :class:`kdumpy.KernelView`) or anything with ``vmcoreinfo`` and ``read_virt``."""
    return _read_kernel_log(kernel_view(mem), since_clear=since_clear)
