"""kdumpy: the Linux kdump userspace in Python.

Layers (data flows upward; nothing imports from a layer above it):
``formats`` (bytes in, bytes out) <- ``memory`` (one physical-memory view over any dump)
<- ``capture`` / ``analysis`` <- ``cli``.
"""

__version__ = "0.1.0"
