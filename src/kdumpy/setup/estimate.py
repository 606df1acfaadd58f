"""How much memory ``crashkernel=`` should reserve, and how to set it.

The capture boot runs in two phases inside the reservation, after the capture kernel's
own runtime image: the initramfs phase (the compressed image plus its unpacked copy in
rootfs) and, after ``switch_root`` has freed that, the save phase on the real root
filesystem (systemd, udev and ``kdumpy-save.service``, kdumpy's own peak). So the need is
kernel + max(initramfs phase, save phase). kdumpctl's ``estimate`` adds kernel + modules +
3 x initrd + 16M (its dracut initramfs stays the root); kdumpy measures what it can:

* kernel: the x86 boot protocol's ``init_size`` (setup header offset 0x260, protocol 2.10+,
  ``Documentation/arch/x86/boot.rst``): the memory the decompressed kernel needs to run;
  other images count 4 x their file size;
* initramfs: the unpacked size of every cpio archive in the file (leading uncompressed
  newc archives such as early microcode, then the compressed one: gzip, xz, zstd, bzip2,
  lz4 legacy/frame), streamed without holding it in memory; ``quick`` counts 3 x the file
  size instead (kdumpctl's rule);
* userspace: systemd, journald and udev in the capture boot: 64 MiB (assumed);
* kdumpy: the interpreter, numpy and codecs, plus its bounded pipeline (``threads + 2``
  batches of 512 pages, compressed and raw) and its bitmaps, 3 bits per page of RAM:
  40 MiB + pipeline + RAM/8192 (the crash lab measured 25-30 MiB for ``kdumpy save`` in a
  1 GiB guest's capture kernel: ``save_min_mem_available_kb`` against ``MemAvailable``);
* 20% margin, rounded up to 32 MiB.

The result is floored at the distribution default for this RAM size (kdump-utils'
per-arch tables); when the default is enough it is what kdumpy recommends, since its
ranges follow the machine's RAM.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kdumpy import arch as arches
from kdumpy.setup.crashkernel import KernelRules, evaluate
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.sizes import format_size, human

MiB = 1 << 20

#: kdump-utils' defaults (``kdump-lib.sh`` ``kdump_get_arch_recommend_crashkernel``) for
#: machines without an :mod:`kdumpy.arch` module (whose ``CRASHKERNEL_TABLE`` wins).
DEFAULT_TABLES = {
    "s390x": "2G-64G:256M,64G-:512M",
    "aarch64": "2G-4G:256M,4G-64G:320M,64G-:576M",
    "ppc64le": "2G-4G:384M,4G-16G:512M,16G-64G:1G,64G-128G:2G,128G-:4G",
}
FALLBACK_TABLE = "2G-64G:256M,64G-:512M"

USERSPACE_BYTES = 64 * MiB
KDUMPY_BASE_BYTES = 40 * MiB
IMAGE_KDUMPY_BASE_BYTES = 128 * MiB
MARGIN = 0.20
ROUND = 32 * MiB


@dataclass
class Estimate:
    ram: int
    components: dict[str, int]
    sources: dict[str, str]
    needed: int                       # with margin, rounded
    default_spec: str
    default_size: int                 # what the default gives at this RAM size
    recommended: str                  # the crashkernel= value to use
    recommended_size: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ram": self.ram, "components": self.components, "sources": self.sources,
                "needed": self.needed, "default": self.default_spec,
                "default_size": self.default_size, "recommended": self.recommended,
                "recommended_size": self.recommended_size, "notes": self.notes}


def kernel_runtime_size(path: str) -> tuple[int, str]:
    """(bytes, how it was found) the kernel image needs once decompressed and running."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x270)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        return 0, f"{path}: {exc.strerror}"
    if len(head) >= 0x264 and head[0x202:0x206] == b"HdrS":
        version = struct.unpack_from("<H", head, 0x206)[0]
        if version >= 0x020A:
            return struct.unpack_from("<I", head, 0x260)[0], "bzImage init_size"
    return size * 4, "4 x image size"


def _read_chunks(f: BinaryIO, first: bytes = b"", size: int = 1 << 20) -> Iterator[bytes]:
    if first:
        yield first
    while True:
        chunk = f.read(size)
        if not chunk:
            return
        yield chunk


def _decompressed_length(magic: bytes, chunks: Iterator[bytes]) -> int | None:
    """Length of the decompressed stream, streamed; None for an unknown compression."""
    if magic[:2] == b"\x1f\x8b":
        d: Any = zlib.decompressobj(wbits=47)
    elif magic[:6] == b"\xfd7zXZ\x00" or magic[:1] == b"\x5d":
        d = lzma.LZMADecompressor()
    elif magic[:3] == b"BZh":
        d = bz2.BZ2Decompressor()
    elif magic[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard
        d = zstandard.ZstdDecompressor().decompressobj()
    else:
        return None
    total = 0
    for chunk in chunks:
        try:
            total += len(d.decompress(chunk))
        except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError):
            break
        if getattr(d, "eof", False):
            break
    return total


def initramfs_unpacked_size(path: str) -> tuple[int, str]:
    """(bytes, how) the initramfs takes once unpacked (cpio data, headers included)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        return 0, f"{path}: {exc.strerror}"
    with f:
        size = os.fstat(f.fileno()).st_size
        total = 0
        pos = 0
        while True:
            f.seek(pos)
            head = f.read(110)
            if head[:6] in (b"070701", b"070702"):
                try:
                    filesize = int(head[54:62], 16)
                    namesize = int(head[94:102], 16)
                except ValueError:
                    break
                hdr = 110 + namesize
                hdr += -hdr % 4
                entry = hdr + filesize + (-filesize % 4)
                f.seek(pos + 110)
                name = f.read(namesize).rstrip(b"\0")
                total += entry
                pos += entry
                if name == b"TRAILER!!!":
                    while True:          # NUL padding between archives
                        f.seek(pos)
                        pad = f.read(4096)
                        n = len(pad) - len(pad.lstrip(b"\0"))
                        pos += n
                        if n < len(pad) or not pad:
                            break
                continue
            if not head:
                return total, "unpacked cpio size"
            unpacked = _decompressed_length(head[:8], _read_chunks(f, head))
            if unpacked is None:
                return total + (size - pos) * 4, "cpio size + 4 x compressed remainder"
            return total + unpacked, "unpacked cpio size"
        return size * 3, "3 x file size"


def default_table(arch: str) -> str:
    """The ``crashkernel=`` ranges recommended on ``arch`` when the admin gives none."""
    mod = arches.known(arch)
    if mod is not None:
        return str(mod.CRASHKERNEL_TABLE)
    return DEFAULT_TABLES.get(arch, FALLBACK_TABLE)


def estimate(ram: int, *, kernel: str | None, initrd: str | None, arch: str,
             threads: int = 1, quick: bool = False, own_image: bool = False) -> Estimate:
    """``own_image``: ``initrd`` is kdumpy's capture image, which stays the root for the
    whole capture (no switch_root, no systemd): the need is kernel + the larger of
    (compressed + unpacked image, while the kernel unpacks it) and (unpacked image + kdumpy
    at work); the compressed copy is freed once unpacked (``free_initrd_mem``)."""
    comps: dict[str, int] = {}
    srcs: dict[str, str] = {}
    notes: list[str] = []
    if kernel:
        comps["kernel"], srcs["kernel"] = kernel_runtime_size(kernel)
    else:
        comps["kernel"], srcs["kernel"] = 64 * MiB, "no kernel image found; assumed"
    packed = unpacked = 0
    if initrd:
        try:
            packed = os.path.getsize(initrd)
        except OSError as exc:
            packed = 0
            notes.append(f"{initrd}: {exc.strerror}")
        if own_image:
            unpacked, how = initramfs_unpacked_size(initrd)
            comps["initramfs"], srcs["initramfs"] = packed + unpacked, f"file + {how}"
        elif quick:
            comps["initramfs"], srcs["initramfs"] = packed * 3, "3 x file size (quick)"
        else:
            unpacked, how = initramfs_unpacked_size(initrd)
            comps["initramfs"], srcs["initramfs"] = packed + unpacked, f"file + {how}"
    else:
        comps["initramfs"], srcs["initramfs"] = 0, "no initramfs"
    if own_image:
        comps["userspace"], srcs["userspace"] = unpacked, "the capture image, unpacked"
    else:
        comps["userspace"], srcs["userspace"] = (USERSPACE_BYTES,
                                                 "systemd + udev in the capture boot")
    pipeline = (threads + 2) * 512 * 4096 * 2
    # in the capture image the interpreter, numpy and OpenBLAS run as anonymous memory next
    # to the unpacked image: the systemd lab saw python killed at ~85 MiB anon-rss with
    # 224M reserved on a 1 GiB guest (6.1 and 6.12)
    base = IMAGE_KDUMPY_BASE_BYTES if own_image else KDUMPY_BASE_BYTES
    comps["kdumpy"] = base + pipeline + ram // 8192
    srcs["kdumpy"] = "interpreter + numpy + pipeline + bitmaps (RAM/8192)"
    raw = comps["kernel"] + max(comps["initramfs"], comps["userspace"] + comps["kdumpy"])
    needed = int(raw * (1 + MARGIN))
    needed = -(-needed // ROUND) * ROUND
    table = default_table(arch)
    default_res = evaluate("crashkernel=" + table, ram, KernelRules())
    default_size = default_res.size if default_res.reserved else 0
    if default_size >= needed:
        rec, rec_size = table, default_size
    else:
        rec, rec_size = format_size(needed), needed
        if default_size:
            notes.append(f"the default {table} gives only {human(default_size)} here")
        else:
            notes.append(f"the default {table} reserves nothing with {human(ram)} of RAM")
    if needed * 2 > ram:
        notes.append(f"{human(needed)} is a large part of {human(ram)} of RAM; kdump on this "
                     "machine costs a lot of its memory")
    return Estimate(ram, comps, srcs, needed, table, default_size, rec, rec_size, notes)


def grub_present(paths: SystemPaths) -> bool:
    return os.path.exists(paths.grub_default) or os.path.isdir(paths.path("/boot/grub"))


def grub_dropin_text(spec: str) -> str:
    """Debian's GRUB sources ``/etc/default/grub.d/*.cfg`` after ``/etc/default/grub``;
    the last ``crashkernel=`` on the line wins (``get_last_crashkernel``)."""
    return ("# Written by `kdumpy estimate --apply`: memory for the kdump capture kernel.\n"
            "# Run update-grub (or grub-mkconfig -o /boot/grub/grub.cfg) and reboot.\n"
            f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel={spec}"\n')


def apply_grub(paths: SystemPaths, spec: str) -> str:
    """Write the GRUB drop-in (0644, the directory 0755 as GRUB's own); return its path."""
    path = paths.grub_dropin
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(grub_dropin_text(spec))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
