"""Check a dump against the raw /proc/vmcore copy of the same crash, page for page.

The raw copy is read by the lab's own ELF reader (:mod:`lab.vmcore`), the dump under
test through kdumpy's :func:`kdumpy.dump.open_dump`, so the comparison does not trust the
reader it checks against itself.

Facts relied on:

* The capture kernel never writes to the crashed kernel's memory outside the crashkernel
  reservation (which is not in the dump), so two reads of /proc/vmcore give the same bytes.
* Dump level 1 drops exactly the all-zero pages: every page of the raw copy is present in a
  ``-d 1`` dump, and every non-zero page is dumpable (its bytes are in the file). Higher
  levels drop non-zero pages too, so for them only dumpable pages are compared.
* A kernel-log record is stored contiguously in the printk ring buffer, so a string written to
  ``/dev/kmsg`` appears as one byte run in physical memory (it may cross a page boundary).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .vmcore import RawVmcore

BATCH_PAGES = 4096


@dataclass
class Comparison:
    """Outcome of :func:`compare_dump`; ``ok`` is True when nothing disagreed."""

    pages_in_raw: int = 0
    pages_compared: int = 0
    mismatched: list[int] = field(default_factory=list)          # PFNs whose bytes differ
    missing_present: list[int] = field(default_factory=list)     # in raw, not present in dump
    nonzero_excluded: list[int] = field(default_factory=list)    # non-zero raw, not dumpable
    extra_present: list[tuple[int, int]] = field(default_factory=list)  # present, not in raw
    found: dict[bytes, list[int]] = field(default_factory=dict)  # needle -> physical addresses
    mismatch_count: int = 0
    missing_count: int = 0
    nonzero_excluded_count: int = 0

    @property
    def ok(self) -> bool:
        return not (self.mismatch_count or self.missing_count or self.nonzero_excluded_count
                    or self.extra_present)

    def describe(self) -> str:
        return (f"{self.pages_compared} of {self.pages_in_raw} raw pages compared; "
                f"{self.mismatch_count} differ (first {[hex(p) for p in self.mismatched[:8]]}), "
                f"{self.missing_count} not present in the dump "
                f"(first {[hex(p) for p in self.missing_present[:8]]}), "
                f"{self.nonzero_excluded_count} non-zero pages excluded "
                f"(first {[hex(p) for p in self.nonzero_excluded[:8]]}), "
                f"present outside raw: {self.extra_present[:4]}")


def _unpack(bitmap: np.ndarray, start: int, count: int) -> np.ndarray:
    """Bits ``[start, start+count)`` of a packed LSB-first bitmap as a bool array."""
    first_byte, last_byte = start // 8, (start + count + 7) // 8
    chunk = np.asarray(bitmap[first_byte:last_byte], dtype=np.uint8)
    bits = np.unpackbits(chunk, bitorder="little").astype(bool)
    off = start - first_byte * 8
    out = np.zeros(count, dtype=bool)
    avail = bits[off:off + count]
    out[:len(avail)] = avail
    return out


def _ranges_minus(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]
                  ) -> list[tuple[int, int]]:
    """Parts of half-open ``ranges`` not covered by ``minus``."""
    out = []
    for lo, hi in ranges:
        cur = lo
        for mlo, mhi in sorted(minus):
            if mhi <= cur or mlo >= hi:
                continue
            if mlo > cur:
                out.append((cur, mlo))
            cur = max(cur, mhi)
        if cur < hi:
            out.append((cur, hi))
    return out


def compare_dump(dump_path: Path | str, raw: RawVmcore, *, level1: bool,
                 needles: tuple[bytes, ...] = (), keep: int = 64) -> Comparison:
    """Compare every page of ``raw`` with the dump at ``dump_path``.

    ``level1``: the dump was made with ``-d 1``, so every raw page must be present and every
    non-zero one dumpable. ``needles`` are searched in the dump's dumpable bytes (as read
    through kdumpy), their physical addresses reported in ``found``.
    """
    from kdumpy.dump import open_dump  # the reader under test

    result = Comparison(found={n: [] for n in needles})
    ps = raw.page_size
    raw_ranges = raw.full_page_ranges()
    zero_page = np.zeros(ps, dtype=np.uint8)
    overlap = max((len(n) for n in needles), default=1) - 1
    with open_dump(dump_path) as mem:
        if mem.page_size != ps:
            raise ValueError(f"page size {mem.page_size} != raw {ps}")
        present_bm = mem.present_bitmap()
        dumpable_bm = mem.dumpable_bitmap()
        result.extra_present = _ranges_minus(list(mem.present_ranges()), raw.page_ranges())
        for lo, hi in raw_ranges:
            carry = b""
            carry_addr = lo * ps
            for start in range(lo, hi, BATCH_PAGES):
                count = min(BATCH_PAGES, hi - start)
                want = np.frombuffer(raw.read_pages(start, count), dtype=np.uint8)
                want = want.reshape(count, ps)
                got = mem.read_pfns(start, count, zero_fill=True)   # excluded pages read as zeros
                present = _unpack(present_bm, start, count)
                dumpable = _unpack(dumpable_bm, start, count)
                result.pages_in_raw += count
                missing = np.flatnonzero(~present)
                if missing.size:
                    result.missing_count += int(missing.size)
                    room = keep - len(result.missing_present)
                    result.missing_present += [start + int(i) for i in missing[:room]]
                idx = np.flatnonzero(dumpable)
                result.pages_compared += int(idx.size)
                if idx.size:
                    differs = ~(got[idx] == want[idx]).all(axis=1)
                    bad = idx[differs]
                    if bad.size:
                        result.mismatch_count += int(bad.size)
                        room = keep - len(result.mismatched)
                        result.mismatched += [start + int(i) for i in bad[:room]]
                if level1:
                    excluded = np.flatnonzero(~dumpable)
                    if excluded.size:
                        nonzero = excluded[(want[excluded] != zero_page).any(axis=1)]
                        if nonzero.size:
                            result.nonzero_excluded_count += int(nonzero.size)
                            room = keep - len(result.nonzero_excluded)
                            result.nonzero_excluded += [start + int(i) for i in nonzero[:room]]
                if needles:
                    data = carry + got.tobytes()
                    base = carry_addr
                    for needle in needles:
                        pos = data.find(needle)
                        while pos >= 0:
                            addr = base + pos
                            if addr not in result.found[needle]:
                                result.found[needle].append(addr)
                            pos = data.find(needle, pos + 1)
                    carry = data[len(data) - overlap:] if overlap else b""
                    carry_addr = (start + count) * ps - len(carry)
        for pfn in raw.partial_pages():
            _compare_partial(mem, raw, pfn, level1, result, keep)
    return result


def _compare_partial(mem, raw: RawVmcore, pfn: int, level1: bool, result: Comparison,
                     keep: int) -> None:
    """Compare the bytes of a page that the raw copy holds only in part.

    makedumpfile leaves such pages out of its dumps (its first bitmap counts whole pages
    only, ``paddr_to_pfn(end)`` rounding down) and kdumpy does the same, so no dump is required
    to have them; one that has such a page must hold the raw bytes where the raw copy has them.
    """
    ps = raw.page_size
    result.pages_in_raw += 1
    spans = raw.covered(pfn)
    want = [raw.read_phys(pfn * ps + lo, hi - lo) for lo, hi in spans]
    if not mem.is_present(pfn):
        return
    if not mem.is_dumpable(pfn):
        if level1 and any(any(part) for part in want):
            result.nonzero_excluded_count += 1
            if len(result.nonzero_excluded) < keep:
                result.nonzero_excluded.append(pfn)
        return
    result.pages_compared += 1
    got = mem.read_pfn(pfn)
    if any(got[lo:hi] != part for (lo, hi), part in zip(spans, want, strict=True)):
        result.mismatch_count += 1
        if len(result.mismatched) < keep:
            result.mismatched.append(pfn)


def dmesg_with_makedumpfile(dump: Path | str) -> str:
    """The kernel log of ``dump`` as ``makedumpfile --dump-dmesg`` (Debian makedumpfile) reads
    it: an oracle independent of kdumpy for what the crashed kernel logged."""
    tool = shutil.which("makedumpfile")
    if tool is None:
        raise RuntimeError("makedumpfile not found: apt-get install makedumpfile")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dmesg.txt"
        proc = subprocess.run([tool, "--dump-dmesg", str(dump), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"makedumpfile --dump-dmesg failed ({proc.returncode}):\n"
                               + proc.stdout[-2000:])
        return out.read_text(errors="replace")
