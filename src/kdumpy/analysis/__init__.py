"""Reading a crashed kernel's state out of a dump: its log, and a first-look crash report.

- :mod:`kdumpy.kernel_log` (here :func:`read_kernel_log` takes a Dump too): the printk buffer (lockless ring, legacy records,
  pre-3.5 character ring) decoded from VMCOREINFO alone, formatted as
  ``makedumpfile --dump-dmesg`` does.
- :mod:`kdumpy.analysis.report`: release, crash time, panic message, taint, crashing CPU
  and its registers, the log's tail, and a backtrace through drgn when debug info exists.
- :mod:`kdumpy.kallsyms`: the kernel's own symbol table, located through
  VMCOREINFO, for symbol names and variables VMCOREINFO does not export.
"""

from kdumpy.analysis.kernel_log import (KernelLog, LogRecord, format_dmesg, format_record,
                                        read_kernel_log)
from kdumpy.analysis.report import build_report, format_report

__all__ = ["KernelLog", "LogRecord", "build_report", "format_dmesg", "format_record",
           "format_report", "read_kernel_log"]
