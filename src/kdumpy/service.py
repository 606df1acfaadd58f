"""The capture kernel's save job, driven by ``/etc/kdumpy.toml`` (``kdumpy capture``).

In order (kdump-utils' ``kdump.sh`` and Debian's ``kdump-config savecore`` do the same
steps):

1. pre hooks (``/etc/kdumpy/pre.d``); a failing hook means no dump and the failure action;
2. open ``/proc/vmcore``; reach the target: a local directory, an NFS export mounted with
   ``mount -t nfs`` (argv), or an SSH directory (``ssh ... 'mkdir -p -- DIR'``);
3. free space against an estimate of the dump: below ``min_free`` the save does not start;
   below estimate + ``min_free`` a warning (the dump-level list still gets its chance);
4. ``<target>/<host>-<YYYY-mm-dd-HH:MM:SS>/`` (0700): ``dmesg.txt`` first (small, and the
   most useful part when the rest does not fit), then ``vmcore`` (``vmcore.flat``, the
   flattened stream, over SSH), then ``report.json``; every file is written under
   ``NAME.incomplete`` and renamed only once complete and synced;
5. on ENOSPC the vmcore is retried at the next level of the ``level`` list; after a
   filtering failure (the crashed kernel's ``mem_section`` or ``struct page`` unreadable)
   the next level, then levels 1 and 0 (:mod:`kdumpy.capture.policy`, shared with ``kdumpy
   save``); when the last one fails too, ``vmcore.incomplete`` stays, carrying the format's
   incomplete mark (set from the first byte), which ``kdumpy info`` (and makedumpfile,
   crash) still read; SIGTERM and SIGHUP end the save the same way;
6. post hooks (``/etc/kdumpy/post.d``, argv ``[hook, status, dump-dir]``);
7. retention: only the ``keep`` newest of this host's dumps stay (local and NFS targets);
8. ``/var/lib/kdumpy/last-capture.json`` for ``kdumpy status`` after the reboot, with the
   pending ``kdumpy test`` id;
9. the final action (after a complete dump) or the failure action, through an injectable
   runner.

The kernel log and the report come from :mod:`kdumpy.analysis` when it can read them; each
runs isolated (:class:`~kdumpy.capture.policy.SavePolicy`): a dump whose log cannot be read
gets a one-line ``dmesg.txt`` saying why, and ``report.json`` lists every stage that failed
under ``kdumpy_capture.failures``.

Layering: this module is the capture *service*: it combines the setup side (config, hooks,
failure/final actions, recorded state) with the capture pipeline, so it sits above both
``kdumpy.setup`` and ``kdumpy.capture`` and below the CLI.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kdumpy.capture.pipeline import DumpIncomplete, SaveOptions, usable_cpus
from kdumpy.capture.policy import SavePolicy, Terminated, end_on_signals
from kdumpy.capture.targets import (
    INCOMPLETE_SUFFIX,
    DumpDirectory,
    LocalDirectory,
    NfsMount,
    RunFn,
    SshDirectory,
    run_argv,
)
from kdumpy.errors import KdumpyError
from kdumpy.setup import state
from kdumpy.setup.actions import ActionRunner, SystemActions
from kdumpy.setup.config import Config
from kdumpy.setup.hooks import run_hooks
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.sizes import human


DUMP_DIR_RE = re.compile(r"^(?P<host>.+)-(?P<stamp>\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)(?:-\d+)?$")
STAMP_FORMAT = "%Y-%m-%d-%H:%M:%S"

COMPLETE = "complete"
INCOMPLETE = "incomplete"
FAILED = "failed"


@dataclass
class CaptureResult:
    status: str = FAILED              # complete | incomplete | failed
    target: str | None = None
    dump_dir: str | None = None
    vmcore: str | None = None
    dump_level: int | None = None
    files: list[str] = field(default_factory=list)
    test_id: str | None = None
    action: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: stages that could not read the crashed kernel's structures: {stage: why}
    failures: dict[str, str] = field(default_factory=dict)
    time: str | None = None
    #: set when a network target failed and the dump went to target.fallback_path:
    #: {"from": target, "error": why, "status": its outcome, "vmcore": what it left}
    fallback: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _stderr_log(msg: str) -> None:
    print(f"kdumpy: capture: {msg}", file=sys.stderr, flush=True)


def hostname(paths: SystemPaths) -> str:
    """This machine's name for the dump directory: ``/etc/hostname`` (the capture kernel
    may not have set its hostname yet), else ``gethostname()``; made path-safe."""
    name = ""
    try:
        with open(paths.etc_hostname, encoding="utf-8") as f:
            name = f.readline().strip()
    except OSError:
        pass
    if not name or name == "(none)":
        name = socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-")
    return name or "localhost"


def estimate_dump_bytes(mem: Any, compression: str, *, samples: int = 256) -> int:
    """Bytes the dump will take before page filtering: pages present times the mean
    compressed size of an even sample of pages (zero pages count as nothing)."""
    from kdumpy.formats.codecs import CODECS
    total = mem.count_dumpable()
    if total == 0:
        return 0
    ps = mem.page_size
    ranks = np.linspace(0, total - 1, num=min(samples, total)).astype(np.int64).tolist()
    pick: list[int] = []
    seen = 0
    for start, end in mem.dumpable_ranges():   # bounded memory, whatever the RAM size
        while len(pick) < len(ranks) and ranks[len(pick)] < seen + (end - start):
            pick.append(start + ranks[len(pick)] - seen)
        seen += end - start
        if len(pick) == len(ranks):
            break
    codec = CODECS.get(compression)
    size = 0
    for pfn in pick:
        page = mem.read_pfn(pfn)
        if not any(page):
            continue
        if codec is None or codec.flag == 0:
            size += ps
        else:
            try:
                size += min(ps, len(codec.compress(page)))
            except Exception:  # noqa: BLE001 - a codec failure stores the page raw
                size += ps
    return int(size * total / len(pick)) + (1 << 20)


class CaptureSession:
    """One save, from hooks to the final action. Everything external is injectable."""

    def __init__(self, config: Config, *, paths: SystemPaths | None = None,
                 vmcore: str | None = None, actions: ActionRunner | None = None,
                 run: RunFn = run_argv, log: Callable[[str], None] = _stderr_log,
                 host: str | None = None, now: time.struct_time | None = None,
                 progress: Any = None, quiet: bool = False) -> None:
        self.cfg = config
        self.paths = paths or SystemPaths()
        self.vmcore = vmcore or self.paths.proc_vmcore
        self.actions = actions or SystemActions(self.paths)
        self.run = run
        self.log = log
        self.host = host or hostname(self.paths)
        self.now = now or time.localtime()
        self.progress = progress
        self.quiet = quiet
        self.result = CaptureResult(time=time.strftime("%Y-%m-%dT%H:%M:%S%z", self.now))
        self.policy = SavePolicy(log=self.log, notes=self.result.notes,
                                 failures=self.result.failures)
        self._nfs: NfsMount | None = None

    # -- the whole job --------------------------------------------------------------------
    def run_all(self) -> CaptureResult:
        """Run the session and the resulting action; never raises for a failed save."""
        res = self.result
        res.test_id = state.read_test_id(self.paths)
        try:
            with end_on_signals():
                self._save_all()
        except Terminated as exc:
            res.status = FAILED if res.status != INCOMPLETE else INCOMPLETE
            res.error = f"stopped by {exc}"
            self.log(f"failed: {res.error}")
        except (KdumpyError, OSError) as exc:
            res.status = FAILED if res.status != INCOMPLETE else INCOMPLETE
            res.error = _why(exc)
            self.log(f"failed: {res.error}")
            self._fallback()
        except Exception as exc:  # noqa: BLE001 - a bug must still end in the failure action
            res.status = FAILED if res.status != INCOMPLETE else INCOMPLETE
            res.error = f"internal error: {type(exc).__name__}: {exc}"
            self.log(res.error)
            import traceback
            traceback.print_exc()
        finally:
            self._post_hooks()
            if self._nfs is not None:
                self._nfs.umount()
        res.action = self.cfg.actions.final if res.status == COMPLETE else self.cfg.actions.failure
        self._record()
        self.log(f"dump {res.status}{' in ' + res.dump_dir if res.dump_dir else ''}; "
                 f"{'final' if res.status == COMPLETE else 'failure'} action: {res.action}")
        self.actions.perform(res.action)
        return res

    def _save_all(self) -> None:
        res = self.result
        hooks = run_hooks(self.paths.path(self.cfg.hooks.pre_dir), [self.vmcore],
                          env={"KDUMPY_VMCORE": self.vmcore}, timeout=self.cfg.hooks.timeout,
                          log=self.log, stop_on_failure=True)
        bad = [h for h in hooks if not h.ok]
        if bad:
            raise KdumpyError(f"pre hook {bad[0].path} failed ({bad[0].error}); not saving")
        self._hooks_passed = True
        self._save_into(self._open_target())

    def _save_into(self, directory: Any) -> None:
        from kdumpy.dump import open_dump
        res = self.result
        res.target = directory.describe()
        with open_dump(self.vmcore) as mem:
            self._check_space(directory, mem)
            rel = self._make_dump_dir(directory)
            res.dump_dir = directory.describe(rel)
            self._save_dmesg(directory, rel, mem)
            try:
                self._save_vmcore(directory, rel, mem)
            finally:
                self._save_report(directory, rel, mem)
        if res.status == COMPLETE and self.cfg.dump.keep and not directory.remote:
            self._retention(directory)

    # -- steps ----------------------------------------------------------------------------
    def _open_target(self) -> DumpDirectory:
        t = self.cfg.target
        directory: DumpDirectory
        if t.kind == "ssh":
            assert t.host is not None
            from kdumpy.setup.propagate import DEFAULT_KEY, DEFAULT_KNOWN_HOSTS
            key = self.paths.path(t.ssh_key or DEFAULT_KEY)
            known = self.paths.path(t.ssh_known_hosts or DEFAULT_KNOWN_HOSTS)
            directory = SshDirectory(
                t.host, t.path, user=t.user, port=t.port,
                key=key if t.ssh_key or os.path.exists(key) else None,
                known_hosts=known if t.ssh_known_hosts or os.path.exists(known) else None,
                options=t.ssh_options)
        elif t.kind == "s3":
            from kdumpy.capture.s3 import open_s3_directory
            directory = open_s3_directory(t, self.paths.path)
        elif t.kind == "nfs":
            assert t.nfs_source is not None
            self._nfs = NfsMount(t.nfs_source, self.paths.nfs_mountpoint, t.nfs_options,
                                 run=self.run)
            self._nfs.mount()
            directory = LocalDirectory(self.paths.nfs_mountpoint)
        else:
            directory = LocalDirectory(self.paths.path(t.path))
        try:
            directory.check()
        except OSError as exc:
            raise KdumpyError(f"target {directory.describe()} is not usable: {_why(exc)}") \
                from None
        self.log(f"target {directory.describe()}")
        return directory

    def _check_space(self, directory: DumpDirectory, mem: Any) -> None:
        free = directory.free_bytes()
        need = estimate_dump_bytes(mem, self.cfg.dump.compression)
        min_free = self.cfg.dump.min_free
        if free is None:
            self.result.notes.append("free space on the target unknown")
            return
        self.log(f"{human(free)} free; the dump needs about {human(need)} before filtering")
        floor = max(min_free, 1 << 20)
        if free < floor:
            raise OSError(errno.ENOSPC, f"only {human(free)} free on {directory.describe()}, "
                                        f"below the minimum of {human(floor)} (dump.min_free); "
                                        "not saving")
        if free < need + min_free:
            note = (f"{human(free)} free may not hold the dump (about {human(need)} before "
                    f"filtering, plus min_free {human(min_free)}); trying dump levels "
                    f"{', '.join(map(str, self.cfg.dump.levels))} in turn")
            self.result.notes.append(note)
            self.log(note)

    def _make_dump_dir(self, directory: DumpDirectory) -> str:
        base = f"{self.host}-{time.strftime(STAMP_FORMAT, self.now)}"
        rel = base
        for n in range(2, 100):
            if not directory.exists(rel):
                break
            rel = f"{base}-{n}"
        directory.make_dir(rel)
        return rel

    def _put(self, directory: DumpDirectory, rel: str, name: str,
             data: bytes) -> None:
        try:
            directory.put(f"{rel}/{name}", data)
            self.result.files.append(name)
        except (OSError, KdumpyError) as exc:
            if directory.remote:   # a local put removes its own temporary file
                directory.discard(f"{rel}/{name}{INCOMPLETE_SUFFIX}")
            note = f"{name} not written: {_why(exc)}"
            self.result.notes.append(note)
            self.log(note)

    def _save_dmesg(self, directory: DumpDirectory, rel: str, mem: Any) -> None:
        data, _records = self.policy.kernel_log(mem)
        if data is None:
            data = f"kdumpy: kernel log not available: {self.result.failures['kernel log']}\n" \
                .encode()
        self._put(directory, rel, "dmesg.txt", data)

    def _save_vmcore(self, directory: DumpDirectory, rel: str, mem: Any) -> None:
        res = self.result
        d = self.cfg.dump
        name = "vmcore.flat" if directory.remote else "vmcore"
        attempt: dict[str, int] = {}

        def options(level: int) -> SaveOptions:
            attempt["level"] = level
            self.log(f"saving {name} at dump level {level} ({d.compression})")
            return SaveOptions(dump_level=level, compress=d.compression, format=d.format,
                               threads=d.threads or usable_cpus(),
                               allow_partial_filter=d.allow_partial_filter)

        def progress() -> Any:
            return self.progress or self._default_progress(mem)

        def discard(left: str) -> None:
            if directory.remote:
                directory.discard(f"{rel}/{name}{INCOMPLETE_SUFFIX}")
            else:
                directory.discard(left)

        try:
            out = self.policy.save_vmcore(
                mem, d.levels,
                lambda: directory.dump_target(f"{rel}/{name}", flattened=directory.remote),
                options, progress, discard, close_progress=self.progress is None)
        except BaseException as exc:
            if isinstance(exc, DumpIncomplete) or (isinstance(exc, KeyboardInterrupt)
                                                   and self._partial(directory, rel, name)):
                res.status = INCOMPLETE
                left = getattr(exc, "left", None) or self._partial(directory, rel, name)
                res.vmcore = left if left and not directory.remote else \
                    directory.describe(f"{rel}/{name}{INCOMPLETE_SUFFIX}")
                res.dump_level = attempt.get("level")
            raise
        res.status = COMPLETE
        res.vmcore = directory.describe(f"{rel}/{name}")
        res.dump_level = out.dump_level
        res.files.append(name)
        res.notes.extend(out.notes)
        self.log(f"saved {res.vmcore}: {out.pages_written} pages, "
                 f"{human(out.bytes_written)}")

    @staticmethod
    def _partial(directory: DumpDirectory, rel: str, name: str) -> str | None:
        """The partial vmcore a stopped save left, if any (local targets)."""
        if directory.remote:
            return None
        import os
        path = os.path.join(directory.describe(rel), name + INCOMPLETE_SUFFIX)
        return path if os.path.lexists(path) else None

    def _default_progress(self, mem: Any) -> Any:
        from kdumpy.capture.progress import Progress
        return Progress(mem.count_dumpable(), mem.page_size, quiet=self.quiet, label="saving")

    def _save_report(self, directory: DumpDirectory, rel: str, mem: Any) -> None:
        report = self.policy.report(mem)
        report["kdumpy_capture"] = {
            "status": self.result.status, "dump_level": self.result.dump_level,
            "vmcore": self.result.vmcore, "test_id": self.result.test_id,
            "host": self.host, "time": self.result.time, "notes": list(self.result.notes),
            "failures": dict(self.result.failures)}
        data = json.dumps(report, indent=2, sort_keys=True, default=str).encode() + b"\n"
        self._put(directory, rel, "report.json", data)

    def _post_hooks(self) -> None:
        res = self.result
        env = {"KDUMPY_STATUS": res.status, "KDUMPY_DUMP_DIR": res.dump_dir or "",
               "KDUMPY_VMCORE": res.vmcore or ""}
        for h in run_hooks(self.paths.path(self.cfg.hooks.post_dir),
                           [res.status, res.dump_dir or ""], env=env,
                           timeout=self.cfg.hooks.timeout, log=self.log):
            if not h.ok:
                res.notes.append(f"post hook {h.path} failed: {h.error}")

    def _retention(self, directory: DumpDirectory) -> None:
        mine = []
        for name in directory.list_dirs():
            m = DUMP_DIR_RE.match(name)
            if m and m.group("host") == self.host:
                mine.append((m.group("stamp"), name))
        mine.sort()
        for _stamp, name in mine[: max(0, len(mine) - self.cfg.dump.keep)]:
            try:
                directory.remove_tree(name)
                self.log(f"retention: removed {directory.describe(name)}")
            except OSError as exc:
                self.result.notes.append(f"retention: cannot remove {name}: {_why(exc)}")

    def _fallback(self) -> None:
        """A network target failed: save into ``target.fallback_path`` on the local root
        filesystem instead (kdump-utils' ``dump_to_rootfs``), and record that it did."""
        res, t = self.result, self.cfg.target
        if t.kind == "path" or not t.fallback_path or res.status == COMPLETE or \
                not getattr(self, "_hooks_passed", False):
            return
        failed = res.target or t.describe()
        res.fallback = {"from": failed, "error": res.error, "status": res.status,
                        "vmcore": res.vmcore}
        note = f"{failed} failed ({res.error}); saving to {t.fallback_path} instead"
        res.notes.append(note)
        self.log(note)
        res.status, res.error, res.vmcore, res.dump_dir, res.dump_level = (
            FAILED, None, None, None, None)
        res.files = []
        try:
            directory = LocalDirectory(self.paths.path(t.fallback_path))
            directory.check()
            self._save_into(directory)
        except (KdumpyError, OSError) as exc:
            res.status = FAILED if res.status != INCOMPLETE else INCOMPLETE
            res.error = f"fallback {t.fallback_path}: {_why(exc)}"
            self.log(f"failed: {res.error}")

    def _record(self) -> None:
        try:
            state.write_last_capture(self.paths, self.result.to_json())
        except OSError as exc:
            self.log(f"cannot record the outcome in {self.paths.last_capture}: {_why(exc)}")
            return
        if self.result.test_id is not None:
            state.clear_test_id(self.paths)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror or exc}"
    return str(exc)


def run_capture(config: Config, **kwargs: Any) -> CaptureResult:
    """Run a :class:`CaptureSession` (keyword arguments as its constructor's)."""
    return CaptureSession(config, **kwargs).run_all()
