"""kdumpy: the Linux kdump userspace in Python.

Layers (data flows upward; nothing imports from a layer above it):
``formats`` (bytes in, bytes out) <- ``memory`` (one physical-memory view over any dump)
<- ``capture`` / ``analysis``; ``setup`` talks to the running kernel; ``service`` (the
capture-kernel job driven by the config) combines setup and capture; ``cli`` sits on top.
"""

__version__ = "0.1.0"
