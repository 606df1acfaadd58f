"""Pure on-disk formats: bytes in, bytes out. Nothing here touches the running system.

- :mod:`.notes`       ELF notes (NT_PRSTATUS, VMCOREINFO, ...)
- :mod:`.vmcoreinfo`  the VMCOREINFO key=value text as a typed object
- :mod:`.elf`         ELF core files (``/proc/vmcore``, ``makedumpfile -E``, QEMU ``dump-guest-memory``)
- :mod:`.kdump`       makedumpfile's kdump-compressed ("diskdump") format
- :mod:`.flattened`   makedumpfile's flattened stream (``-F`` / ``-R``)
- :mod:`.codecs`      the per-page compressors of the kdump format
- :mod:`.sink`        positional output (a seekable file or a flattened stream)
"""
