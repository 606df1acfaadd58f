"""``kdumpy save``, ``info``, ``convert``: the dump commands."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys
from typing import Any

from kdumpy.errors import KdumpyError

DEFAULT_VMCORE = "/proc/vmcore"
FORMATS = ("kdump", "elf", "flat")
COMPRESSIONS = ("zlib", "lzo", "snappy", "zstd", "none")


def _add_output_options(p: argparse.ArgumentParser, *, default_compress: str | None) -> None:
    p.add_argument("-f", "--format", choices=FORMATS, default=None,
                   help="kdump-compressed (default), ELF, or the flattened kdump stream")
    p.add_argument("-c", "--compress", choices=COMPRESSIONS, default=default_compress,
                   help="per-page codec of kdump-compressed output (save default: lzo, as "
                        "kdumpctl; convert default: the source's)")
    p.add_argument("--elf32", action="store_true",
                   help="ELF32 headers (kexec's --elf32-core-headers; implies --format elf); "
                        "refused when memory lies above 4 GiB")
    p.add_argument("--force", action="store_true", help="replace an existing DEST")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="compression threads (default: usable CPUs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--cyclic-buffer", type=int, default=None, metavar="KiB",
                   help="bound the page bitmap to KiB per cycle (8192 PFNs per KiB), filtering "
                        "each cycle again while writing, as makedumpfile's option; by default "
                        "cycles are 1 MiB and a bitmap up to 4 MiB (128 GiB of RAM) is kept "
                        "between the two passes")


def _progress(total: int, page_size: int, quiet: bool, label: str):
    from kdumpy.capture.progress import Progress
    return Progress(total, page_size, quiet=quiet, label=label)


def _target(dest: str, fmt: str, force: bool):
    from kdumpy.capture.targets import LocalTarget, StdoutTarget
    if dest == "-":
        return StdoutTarget()
    return LocalTarget(dest, force=force, flattened=(fmt == "flat"))


def _save_options(mem, *, fmt: str, compress: str, level: int, recorded: int | None,
                  threads: int | None, allow_partial: bool = False, elf32: bool = False,
                  cyclic_kib: int | None = None):
    from kdumpy.capture.pipeline import SaveOptions, check_dump_level, usable_cpus
    check_dump_level(level)
    if fmt == "elf" and compress != "none":
        raise KdumpyError(f"--compress {compress}: ELF dumps hold raw pages; "
                          "use --format kdump or flat to compress")
    opts = SaveOptions(dump_level=level, compress=compress,
                       format="elf" if fmt == "elf" else "kdump",
                       threads=threads or usable_cpus(), recorded_dump_level=recorded,
                       allow_partial_filter=allow_partial, elf32=elf32)
    if cyclic_kib is not None:
        if cyclic_kib <= 0:
            raise KdumpyError(f"--cyclic-buffer {cyclic_kib}: must be a positive number of KiB")
        opts.cycle_pfns, opts.bitmap_budget = cyclic_kib * 8192, 0
    return opts


def _stderr(msg: str) -> None:
    print(f"kdumpy: {msg}", file=sys.stderr, flush=True)


def _run_levels(mem, dest: str, levels: list[int], *, fmt: str, compress: str,
                recorded: int | None, force: bool, threads: int | None, quiet: bool,
                label: str, policy, allow_partial: bool = False, elf32: bool = False,
                cyclic_kib: int | None = None) -> int:
    """Save ``mem`` to ``dest`` through the shared save policy (:mod:`kdumpy.capture.policy`):
    the level list, its ENOSPC retry and the fallback to plain copies after a filtering
    failure."""
    from kdumpy.capture.policy import Terminated, end_on_signals
    if dest == "-" and fmt == "kdump":
        fmt = "flat"
    for level in levels:       # every level checked before anything is written
        _save_options(mem, fmt=fmt, compress=compress, level=level, recorded=recorded,
                      threads=threads, allow_partial=allow_partial, elf32=elf32,
                      cyclic_kib=cyclic_kib)

    def options(level: int):
        return _save_options(mem, fmt=fmt, compress=compress, level=level, recorded=recorded,
                             threads=threads, allow_partial=allow_partial, elf32=elf32,
                             cyclic_kib=cyclic_kib)

    def progress():
        return _progress(mem.count_dumpable(), mem.page_size, quiet or dest == "-", label)

    def discard(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    try:
        with end_on_signals():
            res = policy.save_vmcore(mem, levels, lambda: _target(dest, fmt, force), options,
                                     progress, discard)
    except Terminated as exc:
        _stderr(f"{exc}: save stopped; a partial dump is left as .incomplete, marked "
                "incomplete")
        return 128 + exc.signum
    for note in res.notes:
        _stderr(f"note: {note}")
    if not quiet and dest != "-":
        excl = ", ".join(f"{k} {v}" for k, v in res.excluded.items()) or "none"
        _stderr(f"wrote {res.path}: dump level {res.dump_level}, {res.pages_written} pages "
                f"({res.zero_pages} zero), {res.bytes_written} bytes; excluded pages: {excl}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from kdumpy.dump import open_dump
    if len(args.paths) == 1:
        src, dest = DEFAULT_VMCORE, args.paths[0]
    elif len(args.paths) == 2:
        src, dest = args.paths
    else:
        raise KdumpyError("save takes [SRC] DEST")
    from kdumpy.capture.pipeline import parse_dump_levels
    from kdumpy.capture.policy import SavePolicy
    levels = parse_dump_levels(args.dump_level)
    fmt = args.format or ("elf" if args.elf32 else "kdump")
    compress = args.compress or ("none" if fmt == "elf" else "lzo")
    if fmt == "elf" and compress != "none":
        raise KdumpyError(f"--compress {compress}: ELF dumps hold raw pages; "
                          "use --format kdump or flat to compress")
    policy = SavePolicy(log=lambda m: _stderr(f"warning: {m}"))
    check_random_access([src])
    if dest != "-":
        _check_not_own_source([src], dest)
    with open_dump(src) as mem:
        from kdumpy.capture.filter import MissingKeyError, check_filter_keys
        try:
            check_filter_keys(mem, levels[0], allow_partial=args.allow_partial_filter)
        except MissingKeyError:
            raise              # a level the kernel cannot support: the user's choice to make
        except Exception:      # noqa: BLE001 - garbage VMCOREINFO: the save falls back
            pass
        if dest != "-" and not args.no_dmesg:
            _save_dmesg(mem, args.dmesg or None, dest, args.force, args.quiet, policy)
        return _run_levels(mem, dest, levels, fmt=fmt, compress=compress, recorded=None,
                           force=args.force, threads=args.threads, quiet=args.quiet,
                           label="saving", policy=policy,
                           allow_partial=args.allow_partial_filter, elf32=args.elf32,
                           cyclic_kib=args.cyclic_buffer)


def _save_dmesg(mem, path: str | None, dest: str, force: bool, quiet: bool, policy) -> None:
    """The kernel log first, as kdumpctl does: if the dump cannot be finished, the log that
    explains the crash is already on disk. A log that cannot be read, or written, is a
    warning: the dump matters more."""
    from kdumpy.capture.targets import dmesg_path_for, write_file_atomic
    target = path or dmesg_path_for(dest)
    if os.path.lexists(dest) and not force:
        return  # the dump itself will be refused; leave everything as it is
    data, records = policy.kernel_log(mem)
    if data is None:
        return
    try:
        written = write_file_atomic(target, data, replace=force)
    except (OSError, KdumpyError) as exc:
        policy.note(f"kernel log not written: {describe_os_error(exc)}")
        return
    if not quiet:
        _stderr(f"wrote {written} ({records} log records)")


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return str(exc)


def check_random_access(paths: list[str] | tuple[str, ...]) -> None:
    """Refuse, before opening it, a source that is not a regular file or a block device: a
    pipe, FIFO, socket or character device cannot be mapped, and opening a FIFO without a
    writer would block forever. Only ``convert`` streams (a flattened source)."""
    for p in paths:
        if p == "-":
            raise KdumpyError("-: a dump on stdin can only be reassembled from the flattened "
                              "format (kdumpy convert - DEST)")
        try:
            st = os.stat(p)
        except OSError as exc:
            raise KdumpyError(f"{p}: {exc.strerror}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            kind = ("a pipe or FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "a directory" if stat.S_ISDIR(st.st_mode) else
                    "a socket" if stat.S_ISSOCK(st.st_mode) else "a character device")
            raise KdumpyError(f"{p}: {kind}: reading a dump needs random access; only a "
                              "flattened stream can be read from a pipe (kdumpy convert SRC "
                              "DEST reassembles it)")


def _check_not_own_source(srcs: list[str], dest: str) -> None:
    """``convert`` never writes over its own input: DEST, or DEST's ``.incomplete``
    temporary name, must not be one of the sources (same path, or same file by a link)."""
    if dest == "-":
        return
    from kdumpy.capture.targets import INCOMPLETE_SUFFIX
    dest_abs = os.path.realpath(dest)
    names = {dest_abs, dest_abs + INCOMPLETE_SUFFIX}
    for src in srcs:
        if src == "-":
            continue
        real = os.path.realpath(src)
        same = real in names
        if not same:
            for n in (dest, dest + INCOMPLETE_SUFFIX):
                try:
                    same = same or os.path.samefile(src, n)
                except OSError:
                    pass
        if same:
            raise KdumpyError(f"{dest}: is the source {src} (or its temporary name); convert "
                              "to another file")


def cmd_convert(args: argparse.Namespace) -> int:
    from kdumpy.dump import open_dump
    if len(args.paths) < 2:
        raise KdumpyError("convert takes SRC... DEST")
    *srcs, dest = args.paths
    _check_not_own_source(srcs, dest)
    plain_reassembly = (args.format is None and args.compress is None and args.dump_level is None
                        and not args.elf32)
    if len(srcs) == 1 and plain_reassembly:
        stream = _open_flattened_source(srcs[0])
        if stream is not None:
            return _reassemble(stream, srcs[0], dest, args.force)
    if "-" in srcs:
        raise KdumpyError("-: a stream on stdin can only be reassembled (no --format, "
                          "--compress or -d); reassemble it first, then convert the file")
    check_random_access(srcs)
    with open_dump(srcs) as mem:
        src_level = mem.dump_level or 0
        level = (args.dump_level or 0) | (src_level & 1)
        fmt = args.format or ("elf" if args.elf32 else "kdump")
        compress = args.compress or ("none" if fmt == "elf" else
                                     mem.compression if mem.format == "kdump" else "lzo")
        from kdumpy.capture.policy import SavePolicy
        return _run_levels(mem, dest,
                           [level & 1 if args.dump_level is None else args.dump_level],
                           fmt=fmt, compress=compress, recorded=src_level | level,
                           force=args.force, threads=args.threads, quiet=args.quiet,
                           label="converting", policy=SavePolicy(log=lambda m: None),
                           elf32=args.elf32, cyclic_kib=args.cyclic_buffer)


def _open_flattened_source(src: str):
    """The source as an open binary stream if it is a flattened stream, else None.

    The first bytes are peeked, not consumed, so a pipe (``-``, ``<(...)``, a FIFO) is read
    once, from the start. A FIFO is opened without blocking (no writer yet: an empty
    stream, reported as such) and then read blocking."""
    from kdumpy.formats.flattened import FLAT_SIGNATURE, is_flattened
    if src == "-":
        return sys.stdin.buffer
    try:
        st = os.stat(src)
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC
                     | (os.O_NONBLOCK if stat.S_ISFIFO(st.st_mode) else 0))
    except OSError as exc:
        raise KdumpyError(f"{src}: {exc.strerror}") from None
    if stat.S_ISFIFO(st.st_mode):
        os.set_blocking(fd, True)
    f: io.BufferedReader = os.fdopen(fd, "rb", buffering=1 << 20)  # type: ignore[assignment]
    try:
        head = f.peek(len(FLAT_SIGNATURE) + 4)[:16]
    except OSError as exc:
        f.close()
        raise KdumpyError(f"{src}: {exc.strerror}") from None
    if is_flattened(head):
        return f
    seekable = stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)
    f.close()
    if not seekable:
        raise KdumpyError(f"{src}: not a flattened stream, and a pipe or FIFO can carry only "
                          "that format (other formats need random access)")
    return None


def _reassemble(stream, src: str, dest: str, force: bool) -> int:
    """makedumpfile -R: apply the records to DEST (``-``: standard output; a stream that
    cannot seek gets the flattened records passed through, checked, unchanged)."""
    from kdumpy.capture.targets import LocalTarget
    from kdumpy.formats.flattened import reassemble
    name = "<stdin>" if src == "-" else src
    try:
        if dest == "-":
            return _flattened_to_stdout(stream, name)
        target = LocalTarget(dest, force=force)
        try:
            reassemble(stream, target.fd, path=name)
        except BaseException:
            left = target.abandon()
            if left is not None:
                os.unlink(left)  # a half-reassembled file has no incomplete mark: do not leave it
            raise
        target.commit()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return 0


def _flattened_to_stdout(stream, name: str) -> int:
    from kdumpy.formats.flattened import reassemble
    out = sys.stdout.buffer
    out.flush()
    if out.isatty():
        raise KdumpyError("-: refusing to write a dump to a terminal; redirect stdout")
    try:
        seekable = stat.S_ISREG(os.fstat(out.fileno()).st_mode)
    except (OSError, ValueError):
        seekable = False
    if seekable:
        reassemble(stream, out.fileno(), path=name)
        return 0
    from kdumpy.formats.flattened import FLAT_END, _REC, check_flat_header
    head = stream.read(4096)
    check_flat_header(head, name)
    out.write(head)
    pos = len(head)
    while True:
        rec = stream.read(_REC.size)
        if len(rec) != _REC.size:
            raise KdumpyError(f"{name}: flattened stream at offset {pos:#x}: stream ends "
                              "before the end marker")
        out.write(rec)
        if rec == FLAT_END:
            break
        offset, size = _REC.unpack(rec)
        if offset < 0 or size < 0:
            raise KdumpyError(f"{name}: flattened record at offset {pos:#x}: offset {offset} "
                              f"/ size {size} is out of range")
        pos += _REC.size
        while size:
            piece = stream.read(min(size, 1 << 20))
            if not piece:
                raise KdumpyError(f"{name}: flattened record at offset {pos:#x}: stream ends "
                                  "inside the record")
            out.write(piece)
            size -= len(piece)
            pos += len(piece)
    out.flush()
    return 0


def _human_info(d: dict[str, Any]) -> str:
    lines = []
    order = ["path", "format", "container", "compression", "machine", "kernel_release",
             "crash_time", "page_size", "max_pfn", "pages_present", "pages_dumpable",
             "pages_lost", "dump_level", "incomplete", "phys_base", "nr_cpus", "header_version"]
    for k in order:
        if k not in d:
            continue
        v = d[k]
        if k == "crash_time" and v:
            import datetime
            v = f"{v} ({datetime.datetime.fromtimestamp(v, datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC)"
        if k == "phys_base" and isinstance(v, int):
            v = f"{v:#x}" if v >= 0 else f"-{-v:#x}"
        lines.append(f"{k.replace('_', ' '):16} {v}")
    if d.get("split_files"):
        lines.append(f"{'split files':16} {' '.join(d['split_files'])}")
    for c in d.get("corrections", []):
        lines.append(f"{'corrected':16} {c}")
    if d.get("vmcoreinfo"):
        lines.append(f"vmcoreinfo       {len(d['vmcoreinfo'])} entries (--json lists them)")
    if d.get("gdb"):
        lines.append(f"{'gdb':16} {d['gdb']['command']}")
        lines.extend(f"{'gdb note':16} {n}" for n in d["gdb"]["notes"])
    return "\n".join(lines)


def _gdb_hint(mem) -> dict[str, Any] | None:
    """How to open an ELF dump in gdb (:func:`kdumpy.capture.elf_gdb.gdb_hint`), with the
    crashing CPU as ``kdumpy report`` finds it."""
    if mem.format != "elf":
        return None
    from kdumpy.analysis.report import build_report, debuginfo_candidates
    from kdumpy.capture.elf_gdb import gdb_hint
    try:
        report = build_report(mem, log_lines=0, backtrace=False)
        crashing = report.get("crashing_cpu") or {}
        vmlinux = next((p for p in debuginfo_candidates(report["kernel"]["release"])
                        if os.path.exists(p)), "vmlinux")
        return gdb_hint(mem, crashing.get("note_index"), vmlinux=vmlinux)
    except Exception:  # noqa: BLE001 - a description of the dump matters more than the hint
        return None


def cmd_info(args: argparse.Namespace) -> int:
    from kdumpy.dump import open_dump
    check_random_access(args.dumps)
    with open_dump(args.dumps) as mem:
        d = mem.info()
        gdb = _gdb_hint(mem)
        if gdb is not None:
            d["gdb"] = gdb
    if args.json:
        json.dump(d, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(_human_info(d))
    return 0




def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("save", help="save a crash dump (in the capture kernel: from /proc/vmcore)",
                       description="Save SRC (default /proc/vmcore) to DEST, dropping pages by "
                                   "dump level; DEST '-' streams the flattened format to stdout.")
    p.add_argument("-d", "--dump-level", default="31", metavar="LEVEL[,LEVEL...]",
                   help="pages to drop, makedumpfile's bits: 1 zero, 2 page cache, 4 private "
                        "cache, 8 user, 16 free (default: %(default)s); a list is tried in turn "
                        "when the target fills up")
    p.add_argument("--allow-partial-filter", action="store_true",
                   help="skip a dump level the kernel's VMCOREINFO cannot support, instead of "
                        "failing")
    p.add_argument("--dmesg", metavar="PATH", help="where to write the kernel log first "
                   "(default: dmesg.txt beside DEST, or DEST-dmesg.txt if that exists)")
    p.add_argument("--no-dmesg", action="store_true", help="do not write the kernel log")
    _add_output_options(p, default_compress=None)
    p.add_argument("paths", nargs="+", metavar="[SRC] DEST")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("info", help="describe a dump (any format, or a split set)")
    p.add_argument("dumps", nargs="+", metavar="DUMP")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert between dump formats; reassemble flattened "
                                       "streams ('-' reads stdin) and split sets",
                       description="With a flattened SRC and no --format/--compress, DEST is the "
                                   "reassembled file, byte for byte (makedumpfile -R). Any option "
                                   "re-encodes, which also corrects what 'kdumpy info' lists as "
                                   "corrected (e.g. QEMU 7.2's phys_base and empty utsname). "
                                   "Several SRCs are a split set joined into one DEST.")
    p.add_argument("-d", "--dump-level", type=int, default=None, metavar="LEVEL",
                   help="additionally drop pages (makedumpfile's bits, as for save)")
    _add_output_options(p, default_compress=None)
    p.add_argument("paths", nargs="+", metavar="SRC... DEST")
    p.set_defaults(func=cmd_convert)
