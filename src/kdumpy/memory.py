"""One physical-memory view over any dump kdumpy reads.

:func:`open_dump` recognises an ELF core (``/proc/vmcore``, ``makedumpfile -E``, QEMU
``dump-guest-memory``), a kdump-compressed file or split set, and either of those inside a
flattened stream, and returns a :class:`DumpMemory`: page frames by PFN, which are present
(inside some PT_LOAD / set in bitmap 1) and which dumpable (their data is in the file),
the notes and the VMCOREINFO. Files are read through mmap; nothing holds a whole dump.
"""

from __future__ import annotations

import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from kdumpy.errors import DumpFormatError, KdumpyError
from kdumpy.formats import bitmap as bm
from kdumpy.formats.elf import ELFMAG, ElfCore
from kdumpy.formats.flattened import FlattenedImage, is_flattened
from kdumpy.formats.kdump import (DISKDUMP_SIGNATURE, KDUMP_SIGNATURE, KdumpFile,
                                  order_split_files)
from kdumpy.formats.notes import NT_PRSTATUS, VMCOREINFO_NOTE_NAME, Note, Prstatus
from kdumpy.formats.vmcoreinfo import VmcoreInfo

#: x86_64 ``__START_KERNEL_map``: where the kernel image is mapped.
START_KERNEL_MAP = 0xFFFFFFFF80000000

#: Highest physical address any supported architecture can have (x86_64 5-level: 52 bits).
MAX_PHYS_ADDR = 1 << 52

#: ``e_machine`` for a kdump file's utsname machine.
MACHINE_TO_EM = {"x86_64": 62, "i386": 3, "i686": 3, "aarch64": 183, "ppc64le": 21,
                 "ppc64": 21, "s390x": 22, "riscv64": 243, "arm": 40}
EM_TO_MACHINE = {62: "x86_64", 3: "i386", 183: "aarch64", 21: "ppc64", 22: "s390x",
                 243: "riscv64", 40: "arm"}


def _slice_bits(bitmap: np.ndarray, start: int, count: int) -> np.ndarray:
    """A copy of the bytes of ``bitmap`` covering bits ``[start, start+count)`` (``start`` a
    multiple of 8), zero-padded past the bitmap's end; bits past ``count`` cleared."""
    if start & 7:
        raise ValueError(f"bitmap slice must start on a byte: {start}")
    nbytes = (count + 7) >> 3
    out = np.zeros(nbytes, dtype=np.uint8)
    part = np.asarray(bitmap[start >> 3:(start >> 3) + nbytes], dtype=np.uint8)
    out[:len(part)] = part
    if count & 7:
        out[-1] &= (1 << (count & 7)) - 1
    return out


def _interval_bits(intervals: Sequence[tuple[int, int]], start: int, count: int) -> np.ndarray:
    """Packed bits of ``[start, start+count)`` set where the sorted ``intervals`` cover."""
    out = bm.new_bitmap(count)
    end = start + count
    for s, e in intervals:
        if e <= start:
            continue
        if s >= end:
            break
        bm.set_range(out, max(s, start) - start, min(e, end) - start)
    return out


class DumpMemory(ABC):
    """Physical memory of a crashed machine as one dump file (or set) holds it."""

    path: str
    format: str            # "elf" or "kdump"
    container: str         # "file", "flattened" or "split"
    page_size: int
    max_pfn: int
    notes: list[Note]
    vmcoreinfo: VmcoreInfo | None
    compression: str
    incomplete: bool
    corrections: list[str]
    machine: str
    byteorder: str

    # -- what exists --------------------------------------------------------------------
    @abstractmethod
    def present_bitmap(self) -> np.ndarray:
        """Packed bitmap (LSB first) of PFNs inside the dumped physical ranges."""

    @abstractmethod
    def dumpable_bitmap(self) -> np.ndarray:
        """Packed bitmap of PFNs whose contents the dump holds."""

    def is_present(self, pfn: int) -> bool:
        return bm.test_bit(self.present_bitmap(), pfn)

    def is_dumpable(self, pfn: int) -> bool:
        return bm.test_bit(self.dumpable_bitmap(), pfn)

    def present_bits(self, start: int, count: int) -> np.ndarray:
        """Packed bitmap (bit 0 = PFN ``start``, a multiple of 8) of the present PFNs in
        ``[start, start+count)``: one cycle's part, without the whole bitmap."""
        return _slice_bits(self.present_bitmap(), start, count)

    def dumpable_bits(self, start: int, count: int) -> np.ndarray:
        """Like :meth:`present_bits`, for the dumpable PFNs."""
        return _slice_bits(self.dumpable_bitmap(), start, count)

    def present_ranges(self) -> Iterator[tuple[int, int]]:
        return bm.runs(self.present_bitmap(), self.max_pfn)

    def dumpable_ranges(self) -> Iterator[tuple[int, int]]:
        return bm.runs(self.dumpable_bitmap(), self.max_pfn)

    def count_present(self) -> int:
        return bm.count_bits(self.present_bitmap(), 0, self.max_pfn)

    def count_dumpable(self) -> int:
        return bm.count_bits(self.dumpable_bitmap(), 0, self.max_pfn)

    # -- contents -----------------------------------------------------------------------
    @abstractmethod
    def read_pfns(self, start: int, count: int) -> np.ndarray:
        """Pages ``[start, start+count)`` as a ``(count, page_size)`` uint8 array.

        Pages that are not dumpable read as zeros.
        """

    def read_pfn(self, pfn: int) -> bytes:
        return self.read_pfns(pfn, 1).tobytes()

    def read_pfns_bytes(self, start: int, count: int) -> bytes:
        """:meth:`read_pfns` as one ``bytes`` object (the capture pipeline slices pages
        out of it for the codecs)."""
        return self.read_pfns(start, count).tobytes()

    def read_phys(self, addr: int, size: int) -> bytes:
        ps = self.page_size
        first = addr // ps
        last = (addr + size + ps - 1) // ps
        data = self.read_pfns_bytes(first, last - first)
        off = addr - first * ps
        if off == 0 and size == len(data):
            return data
        return data[off:off + size]

    # -- kernel addresses ---------------------------------------------------------------
    def kernel_image_to_phys(self, vaddr: int) -> int | None:
        """Physical address of a kernel-image virtual address (text, data, bss), or None.

        x86_64 (``arch/x86/include/asm/page_64.h: __phys_addr_nodebug``): the image is
        mapped at ``__START_KERNEL_map`` (0xffffffff80000000) and
        ``pa = va - __START_KERNEL_map + phys_base``, ``phys_base`` from VMCOREINFO
        ``NUMBER(phys_base)`` (a signed value, KASLR included). Other architectures need a
        page-table walk (not yet done).
        """
        if self.machine == "x86_64" and vaddr >= START_KERNEL_MAP:
            base = self.phys_base
            if base is not None:
                return vaddr - START_KERNEL_MAP + base
        return None

    def page_tables(self):
        """The crashed kernel's page tables (x86_64), built on first use."""
        pt = getattr(self, "_page_tables", None)
        if pt is None:
            if self.machine != "x86_64":
                raise KdumpyError(f"{self.path}: kernel address translation for {self.machine} "
                                  "is not implemented")
            from kdumpy.vtop import X86_64PageTables
            pt = self._page_tables = X86_64PageTables(self)
        return pt

    def virt_to_phys(self, vaddr: int) -> int:
        return self.page_tables().translate(vaddr)

    def read_virt(self, vaddr: int, size: int) -> bytes:
        """Read ``size`` bytes at kernel virtual address ``vaddr`` (page by page, through
        the page tables; large mappings are translated once)."""
        chunks: list[bytes] = []
        pt = self.page_tables()
        translate = pt.translate
        while size > 0:
            n = min(size, 4096 - (vaddr & 0xFFF))
            pa = translate(vaddr)
            # extend within a physically contiguous run to cut per-page overhead
            while n < size:
                step = min(size - n, 4096)
                try:
                    if translate(vaddr + n) != pa + n:
                        break
                except KdumpyError:
                    break
                n += step
            chunks.append(self.read_phys(pa, n))
            vaddr += n
            size -= n
        if len(chunks) == 1:  # the usual case: one copy out of the dump, no joining
            return chunks[0]
        return b"".join(chunks)

    def read_kernel_utsname(self) -> dict[str, str] | None:
        """The crashed kernel's ``init_uts_ns.name`` (``struct new_utsname``), or None.

        makedumpfile copies this into the kdump header; libkdumpfile trusts the header's
        utsname only when sysname is "Linux" and release, version and machine are set.
        """
        vi = self.vmcoreinfo
        if vi is None:
            return None
        try:
            sym = vi.symbol("init_uts_ns")
            off = vi.offset("uts_namespace.name")
        except DumpFormatError:
            return None
        if sym is None:
            return None
        # Before the kref moved into ns_common, name followed a 4-byte kref.
        for name_off in ([off] if off is not None else [0, 4]):
            pa = self.kernel_image_to_phys(sym + name_off)
            if pa is None or pa < 0:
                return None
            raw = self.read_phys(pa, 6 * 65)
            fields = [raw[i * 65:(i + 1) * 65].split(b"\0", 1)[0] for i in range(6)]
            if fields[0] == b"Linux":
                return dict(zip(("sysname", "nodename", "release", "version", "machine",
                                 "domainname"), (f.decode("latin-1") for f in fields)))
        return None

    # -- description --------------------------------------------------------------------
    def prstatus(self) -> list[Prstatus]:
        """NT_PRSTATUS of every CPU, in note order (the crashing CPU saved its own)."""
        em = MACHINE_TO_EM.get(self.machine, 62)
        return [Prstatus.parse(n.desc, em, byteorder=self.byteorder, path=self.path)  # type: ignore[arg-type]
                for n in self.notes if n.type == NT_PRSTATUS and n.name == "CORE"]

    @property
    def phys_base(self) -> int | None:
        if self.vmcoreinfo is not None:
            try:
                return self.vmcoreinfo.number("phys_base")
            except DumpFormatError:
                return None
        return None

    def info(self) -> dict[str, Any]:
        vi = self.vmcoreinfo
        return {
            "path": self.path,
            "format": self.format,
            "container": self.container,
            "compression": self.compression,
            "machine": self.machine,
            "kernel_release": vi.osrelease if vi else None,
            "crash_time": vi.crash_time if vi else None,
            "page_size": self.page_size,
            "max_pfn": self.max_pfn,
            "pages_present": self.count_present(),
            "pages_dumpable": self.count_dumpable(),
            "incomplete": self.incomplete,
            "phys_base": self.phys_base,
            "nr_cpus": sum(1 for n in self.notes if n.type == NT_PRSTATUS and n.name == "CORE"),
            "notes": [{"name": n.name, "type": n.type, "size": len(n.desc)} for n in self.notes],
            "corrections": list(self.corrections),
            "vmcoreinfo": dict(vi) if vi else {},
        }

    # -- lifetime -------------------------------------------------------------------------
    def trim(self) -> None:
        """Drop this process's mappings of pages already read (``MADV_DONTNEED``).

        Pages of an mmap count toward the reader's RSS once touched; a capture kernel has
        little memory, so long sequential passes call this now and then. The data stays in
        the file (or in the old kernel's memory, for ``/proc/vmcore``) and faults back in
        if read again.
        """
        for res in getattr(self, "_resources", []):
            if isinstance(res, mmap.mmap):
                try:
                    res.madvise(mmap.MADV_DONTNEED)
                except (AttributeError, OSError, ValueError):
                    pass

    def close(self) -> None:
        for res in reversed(getattr(self, "_resources", [])):
            try:
                res.close()
            except (BufferError, ValueError):
                pass  # numpy views still reference the mmap; it is freed with them

    def __enter__(self) -> "DumpMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vmcoreinfo_from_notes(notes: list[Note], path: str) -> VmcoreInfo | None:
    for n in notes:
        if n.name == VMCOREINFO_NOTE_NAME:
            return VmcoreInfo.parse(n.desc, path=path, offset=n.desc_offset)
    return None


class ElfMemory(DumpMemory):
    """Physical memory of an ELF core: PT_LOAD ``p_paddr`` ranges, file-backed up to ``p_filesz``."""

    format = "elf"

    def __init__(self, buf: Any, *, path: str, container: str, resources: list[Any]) -> None:
        self.path = path
        self.container = container
        self._resources = resources
        self.buf = buf
        self.core = core = _ElfOverBuffer.open(buf, path)
        self.notes = core.notes
        self.corrections = list(core.corrections)
        self.vmcoreinfo = _vmcoreinfo_from_notes(self.notes, path)
        self.page_size = (self.vmcoreinfo.page_size if self.vmcoreinfo and self.vmcoreinfo.page_size
                          else 4096)
        self.machine = EM_TO_MACHINE.get(core.header.e_machine, str(core.header.e_machine))
        self.byteorder = core.header.elfclass.byteorder
        self.compression = "none"
        self.incomplete = core.incomplete
        ps = self.page_size
        loads = core.loads
        self.segments = [(int(p["p_paddr"]), int(p["p_memsz"]), int(p["p_filesz"]),
                          int(p["p_offset"]), int(p["p_vaddr"])) for p in loads]
        for i, (pa, mem, _f, _o, _v) in enumerate(self.segments):
            if pa + mem > MAX_PHYS_ADDR:
                raise DumpFormatError(path, "PT_LOAD program header", core.phdr_offset,
                                      f"physical range {pa:#x} + {mem:#x} is beyond the "
                                      f"{MAX_PHYS_ADDR.bit_length() - 1}-bit physical address space")
        end = max((pa + mem for pa, mem, *_ in self.segments), default=0)
        self.max_pfn = -(-end // ps)
        # Whole pages only: a PT_LOAD ending mid-page (kexec_load's BIOS range 0x1000-0x9fc00)
        # does not make its last page present, as makedumpfile's paddr_to_pfn(end) rounds down.
        self._present_iv = _merge((pa // ps, (pa + mem) // ps) for pa, mem, *_ in self.segments)
        self._dumpable_iv = _merge((pa // ps, min(-(-(pa + fsz) // ps), (pa + mem) // ps))
                                   for pa, mem, fsz, *_ in self.segments if fsz)
        self._present: np.ndarray | None = None
        self._dumpable: np.ndarray | None = None

    def _bitmap(self, iv: list[tuple[int, int]]) -> np.ndarray:
        b = bm.new_bitmap(self.max_pfn)
        for s, e in iv:
            bm.set_range(b, s, e)
        return b

    def present_bitmap(self) -> np.ndarray:
        if self._present is None:
            self._present = self._bitmap(self._present_iv)
        return self._present

    def dumpable_bitmap(self) -> np.ndarray:
        if self._dumpable is None:
            self._dumpable = self._bitmap(self._dumpable_iv)
        return self._dumpable

    def present_bits(self, start: int, count: int) -> np.ndarray:
        return _interval_bits(self._present_iv, start, count)

    def dumpable_bits(self, start: int, count: int) -> np.ndarray:
        return _interval_bits(self._dumpable_iv, start, count)

    def present_ranges(self) -> Iterator[tuple[int, int]]:
        return iter(self._present_iv)

    def dumpable_ranges(self) -> Iterator[tuple[int, int]]:
        return iter(self._dumpable_iv)

    def count_present(self) -> int:
        return sum(e - s for s, e in self._present_iv)

    def count_dumpable(self) -> int:
        return sum(e - s for s, e in self._dumpable_iv)

    def is_present(self, pfn: int) -> bool:
        return _in(self._present_iv, pfn)

    def is_dumpable(self, pfn: int) -> bool:
        return _in(self._dumpable_iv, pfn)

    def read_pfns(self, start: int, count: int) -> np.ndarray:
        ps = self.page_size
        out = np.zeros(count * ps, dtype=np.uint8)
        lo, hi = start * ps, (start + count) * ps
        fd = self._read_fd
        view = memoryview(out) if fd is not None else None
        for pa, _mem, fsz, off, _va in self.segments:
            a, b = max(lo, pa), min(hi, pa + fsz)
            if a >= b:
                continue
            src = off + (a - pa)
            if view is not None:
                got = os.preadv(fd, [view[a - lo:b - lo]], src)
                if got != b - a:
                    raise DumpFormatError(self.path, "PT_LOAD data", src,
                                          f"file ends {got} bytes into a {b - a}-byte read")
            else:
                out[a - lo:b - lo] = np.frombuffer(_slice(self.buf, src, b - a), dtype=np.uint8)
        return out.reshape(count, ps)

    def read_pfns_bytes(self, start: int, count: int) -> bytes:
        """One copy out of the file when the range lies inside one segment's file data
        (the common case: the pipeline reads runs of dumpable pages), else
        :meth:`read_pfns`."""
        ps = self.page_size
        lo, size = start * ps, count * ps
        for pa, _mem, fsz, off, _va in self.segments:
            if pa <= lo and lo + size <= pa + fsz:
                src = off + (lo - pa)
                fd = self._read_fd
                if fd is None:
                    return bytes(_slice(self.buf, src, size))
                data = os.pread(fd, size, src)
                if len(data) != size:
                    raise DumpFormatError(self.path, "PT_LOAD data", src,
                                          f"file ends {len(data)} bytes into a {size}-byte read")
                return data
        return self.read_pfns(start, count).tobytes()

    @property
    def _read_fd(self) -> int | None:
        """A descriptor for ``preadv`` when the dump is a plain file.

        Bulk reads from a regular file are cheaper with one ``preadv`` into the batch buffer
        than by faulting an mmap in page by page (and map nothing, so RSS stays flat).
        ``/proc/vmcore`` is different: its ``read`` copies the old kernel's memory a page at a
        time through a temporary mapping, while its ``mmap`` maps it once
        (``fs/proc/vmcore.c``), so it keeps the mmap.
        """
        if self.container != "file" or self.path.startswith("/proc/"):
            return None
        for r in getattr(self, "_resources", []):
            if hasattr(r, "fileno") and not isinstance(r, mmap.mmap):
                return r.fileno()
        return None

    def kernel_image_to_phys(self, vaddr: int) -> int | None:
        """Through the PT_LOAD whose ``p_vaddr`` range holds ``vaddr`` (the kernel-text
        segment of ``/proc/vmcore``), else as :meth:`DumpMemory.kernel_image_to_phys`."""
        for pa, mem, _f, _o, va in self.segments:
            if va and va <= vaddr < va + mem and va >= START_KERNEL_MAP:
                return pa + (vaddr - va)
        return super().kernel_image_to_phys(vaddr)

    def file_runs(self, start: int, count: int) -> list[tuple[int, int, int]]:
        """``(pfn, npages, file_offset)`` of whole pages in ``[start, start+count)`` that sit
        contiguously in the file (for zero-copy reads by the capture pipeline)."""
        ps = self.page_size
        runs: list[tuple[int, int, int]] = []
        for pa, _mem, fsz, off, _va in self.segments:
            s = max(start, -(-pa // ps))
            e = min(start + count, (pa + fsz) // ps)
            if s < e:
                runs.append((s, e - s, off + s * ps - pa))
        return runs


def _merge(intervals: Iterator[tuple[int, int]] | Any) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _in(intervals: list[tuple[int, int]], pfn: int) -> bool:
    import bisect
    i = bisect.bisect_right(intervals, (pfn, float("inf"))) - 1
    return i >= 0 and intervals[i][0] <= pfn < intervals[i][1]


def _slice(buf: Any, offset: int, size: int) -> Any:
    if hasattr(buf, "pread"):
        return buf.pread(offset, size)
    return memoryview(buf)[offset:offset + size]


class _ElfOverBuffer:
    """Adapter: :class:`ElfCore` reads from a stream; give it one over an mmap or image."""

    @staticmethod
    def open(buf: Any, path: str) -> ElfCore:
        import io

        class _Reader(io.RawIOBase):
            def __init__(self) -> None:
                self.pos = 0

            def readable(self) -> bool:
                return True

            def seekable(self) -> bool:
                return True

            def seek(self, pos: int, whence: int = 0) -> int:
                self.pos = pos if whence == 0 else (len(buf) + pos if whence == 2 else self.pos + pos)
                return self.pos

            def tell(self) -> int:
                return self.pos

            def read(self, n: int = -1) -> bytes:
                end = len(buf) if n < 0 else min(len(buf), self.pos + n)
                data = bytes(_slice(buf, self.pos, max(0, end - self.pos)))
                self.pos = end
                return data

        return ElfCore(_Reader(), path=path, size=len(buf))  # type: ignore[arg-type]


class KdumpMemory(DumpMemory):
    """Physical memory of a kdump-compressed file or split set."""

    format = "kdump"

    def __init__(self, files: Sequence[KdumpFile], *, path: str, container: str,
                 resources: list[Any]) -> None:
        self.path = path
        self.container = container
        self._resources = resources
        self.files = order_split_files(files) if len(files) > 1 else list(files)
        first = self.files[0]
        self.header = first.header
        self.sub = first.sub
        self.page_size = first.header.block_size
        self.max_pfn = first.max_mapnr
        self.notes = first.notes
        self.vmcoreinfo = first.vmcoreinfo
        self.compression = first.codec_name
        self.incomplete = any(f.incomplete for f in self.files)
        self.machine = first.header.utsname.get("machine") or "x86_64"
        self.byteorder = first.arch.byteorder
        self.corrections = []
        if first.header.block_size != (self.vmcoreinfo.page_size if self.vmcoreinfo and
                                       self.vmcoreinfo.page_size else first.header.block_size):
            self.corrections.append("block_size differs from VMCOREINFO PAGESIZE")
        vi_base = None
        if self.vmcoreinfo is not None:
            try:
                vi_base = self.vmcoreinfo.number("phys_base")
            except DumpFormatError:
                vi_base = None
        if vi_base is not None and vi_base != first.sub.phys_base:
            self.corrections.append(
                f"sub header phys_base {first.sub.phys_base:#x} disagrees with VMCOREINFO "
                f"NUMBER(phys_base)={vi_base} ({vi_base:#x}); QEMU 7.2 parses that decimal "
                "value as hex: using VMCOREINFO's")
        if not first.header.utsname.get("release") and self.vmcoreinfo and self.vmcoreinfo.osrelease:
            self.corrections.append("utsname is empty (as QEMU writes it); kernel release taken "
                                    "from VMCOREINFO OSRELEASE")
        if len(self.files) > 1:
            self.container = "split"

    def present_bitmap(self) -> np.ndarray:
        return self.files[0].bitmap1

    def dumpable_bitmap(self) -> np.ndarray:
        return self.files[0].bitmap2

    @property
    def phys_base(self) -> int | None:
        base = super().phys_base
        return base if base is not None else self.sub.phys_base

    def read_pfns(self, start: int, count: int) -> np.ndarray:
        ps = self.page_size
        out = np.zeros((count, ps), dtype=np.uint8)
        end = start + count
        for f in self.files:
            s, e = max(start, f.start_pfn), min(end, f.end_pfn)
            if s < e:
                f.read_pages(s, e - s, out[s - start:e - start])
        return out

    def lost_pages(self) -> int:
        return sum(f.lost_pages() for f in self.files)

    def info(self) -> dict[str, Any]:
        d = super().info()
        h = self.header
        d["header_version"] = h.header_version
        d["dump_level"] = self.sub.dump_level
        d["utsname"] = dict(h.utsname)
        if not d["kernel_release"]:
            d["kernel_release"] = h.utsname.get("release") or None
        if not d["crash_time"]:
            d["crash_time"] = h.tv_sec or None
        d["split_files"] = [f.path for f in self.files] if len(self.files) > 1 else []
        d["pages_lost"] = self.lost_pages()
        return d


def _map_file(path: str) -> tuple[Any, list[Any]]:
    """mmap a file read-only (bytes for an empty file)."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DumpFormatError(path, "file", None, exc.strerror or str(exc)) from None
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            f.close()
            return b"", []
        m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            m.madvise(mmap.MADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
    except (OSError, ValueError) as exc:
        f.close()
        raise DumpFormatError(path, "file", None, f"cannot map: {exc}") from None
    return m, [m, f]


def open_dump(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> DumpMemory:
    """Open a dump: one file of any supported format, or the files of a split set."""
    if isinstance(paths, (str, os.PathLike)):
        plist = [os.fspath(paths)]
    else:
        plist = [os.fspath(p) for p in paths]
    if not plist:
        raise ValueError("no dump file given")
    opened: list[tuple[str, Any, str]] = []
    resources: list[Any] = []
    try:
        for p in plist:
            buf, res = _map_file(p)
            resources.extend(res)
            container = "file"
            head = bytes(buf[:16])
            if is_flattened(head):
                buf = FlattenedImage(buf, path=p)
                container = "flattened"
                head = bytes(buf[:16])
            opened.append((p, buf, container))
        kinds = []
        for p, buf, container in opened:
            head = bytes(buf[:8])
            if head[:4] == ELFMAG:
                kinds.append("elf")
            elif head in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
                kinds.append("kdump")
            else:
                raise DumpFormatError(p, "file header", 0,
                                      f"signature {head!r} is not ELF, KDUMP, DISKDUMP or a "
                                      "flattened makedumpfile stream")
        if kinds[0] == "elf":
            if len(opened) > 1:
                raise DumpFormatError(opened[1][0], "file header", 0,
                                      "only kdump-compressed files form split sets")
            p, buf, container = opened[0]
            mem: DumpMemory = ElfMemory(buf, path=p, container=container, resources=resources)
        else:
            if any(k != "kdump" for k in kinds):
                raise DumpFormatError(plist[kinds.index("elf")], "file header", 0,
                                      "a split set must be all kdump-compressed files")
            files = [KdumpFile(buf, path=p) for p, buf, _ in opened]
            mem = KdumpMemory(files, path=plist[0], container=opened[0][2], resources=resources)
        mem.trim()  # indexing touched pages all over the file; do not keep them mapped
        return mem
    except BaseException:
        for r in reversed(resources):
            try:
                r.close()
            except (BufferError, ValueError):
                pass
        raise
