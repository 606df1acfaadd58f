"""Moved to :mod:`kdumpy.kallsyms` (symbols belong to :class:`kdumpy.KernelView`)."""

from kdumpy.kallsyms import Kallsyms, Symbol, read_kallsyms  # noqa: F401
