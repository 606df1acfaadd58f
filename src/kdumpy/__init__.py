"""kdumpy: the Linux kdump userspace in Python, and a library to read and write crash dumps.

The library (see ``docs/API.md``)::

    import kdumpy
    with kdumpy.open_dump("vmcore") as dump:          # ELF, kdump-compressed, flattened, split
        kernel = kdumpy.KernelView(dump)               # virtual addresses, symbols, the log
        kdumpy.save(dump, "vmcore.d31", level=31, compress="zstd")

Layers (data flows upward; nothing imports from a layer above it): ``formats`` (bytes in,
bytes out) <- :mod:`kdumpy.dump` (:class:`Dump`: one physical address space over any dump)
<- :mod:`kdumpy.arch` and :mod:`kdumpy.kernel` (:class:`KernelView`) <- ``capture`` /
``analysis``; ``setup`` talks to the running kernel; ``service`` (the capture-kernel job
driven by the config) combines setup and capture; ``cli`` sits on top.

The names below are imported on first use, so that ``import kdumpy`` (and the command
line, which starts with it) costs nothing until a dump is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kdumpy.capture.save import save
    from kdumpy.dump import Dump, FaultError, PageState, open_dump
    from kdumpy.errors import DumpFormatError, KdumpyError
    from kdumpy.kernel import KernelView

__all__ = ["Dump", "DumpFormatError", "FaultError", "KdumpyError", "KernelView", "PageState",
           "open_dump", "save", "__version__"]

_HOME = {"Dump": "kdumpy.dump", "FaultError": "kdumpy.dump", "PageState": "kdumpy.dump",
         "open_dump": "kdumpy.dump", "KernelView": "kdumpy.kernel",
         "DumpFormatError": "kdumpy.errors", "KdumpyError": "kdumpy.errors",
         "save": "kdumpy.capture.save"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'kdumpy' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
