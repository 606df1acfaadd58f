"""One crash run: boot a real kernel in QEMU, crash it, capture in the kdump kernel, record.

Sequence (host side, each wait bounded by a timeout; see :data:`TIMEOUTS`)::

    QEMU start -> "Linux version" -> /init (role first) -> insmod -> 9p mounts -> kexec -p load
    -> memory fill -> snapshot (meminfo, Crash kernel range, clock) -> marker in kmsg
    -> sysrq c -> capture "Linux version" -> /init (role capture) -> insmod -> 9p mounts
    -> raw /proc/vmcore copy to a virtio disk -> makedumpfile -F -l -d 31 -> kdumpy save
    -> poweroff -> QEMU exit

With ``loader="early"`` the first kernel boots instead an initramfs-tools image carrying
kdumpy's early-kdump hook (:mod:`.early`): "Run /init" -> kdumpy's kmsg line "kexec_file_load
exit 0, loaded=1" -> the WARN module's panic; the capture side is the same.

Facts relied on:

* ``/proc/vmcore`` is an ELF core whose size ``stat`` reports exactly; the guest ``dd``s it to a
  sparse raw disk with ``conv=sparse`` and logs the size, and the host truncates the disk file
  to that size to obtain the copy without moving any data.
* The run directory is shared read-write into the guest and bind-mounted at the same path
  inside the chroot of the host's root, so paths in the guest equal paths on the host.
* A completed run (``meta.json`` with ``complete: true``, written last) whose recipe key and
  kdumpy source digest match is reused (see :func:`reuse_policy`).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdumpy.setup.triggers import BOOT_ONLY

from .cache import locked, release_dir
from .early import GENERATORS, LOADED_LINE, EarlyImage, ensure_early_image
from .guest_init import render_config
from .initramfs import Initramfs, ensure_initramfs, which_or_fail
from .kernels import Kernel, ensure_kernel
from .qemu import (
    Disk,
    Machine,
    Share,
    build_command,
    choose_accelerator,
    parse_size,
    qemu_version,
)
from .save_imports import save_files
from .serial import (
    LINUX_VERSION_RE,
    Event,
    Line,
    SerialCapture,
    Transcript,
    parse_event,
    parse_free,
    parse_meminfo,
)

Log = Callable[[str], None]

#: Bumped whenever the guest protocol or artifact layout changes (invalidates cached runs).
LAB_FORMAT = 1

#: Seconds allowed for each wait (multiplied by ``KDUMPY_LAB_TIMEOUT_SCALE``). Measured under
#: TCG on the 2-core build machines: 3-8 s to /init, 1-2 s kexec load, 3-6 s fill, 4-9 s from
#: the crash to the capture /init, 5-7 s raw copy of ~900 MB, 1.5-6 s makedumpfile, 11-18 s
#: kdumpy save; the limits leave a wide margin. A save that thrashes in a too-small capture
#: kernel is cut off by ``kdumpy_save``.
TIMEOUTS: dict[str, float] = {
    "boot": 240, "step": 120, "kexec_load": 180, "fill": 300, "crash_now": 120,
    "capture_boot": 300, "raw_copy": 600, "makedumpfile": 600, "kdumpy_save": 900,
    "next_step": 120, "exit": 120, "total": 5400,
}

DEFAULT_CRASHKERNEL = "256M"
#: The second, smaller reservation the tests use. Measured with a 1 GiB guest: 96M and 112M
#: fail on 6.1 (kdumpy save OOM-killed; capture kernel `free -m` total 45 / 59 MiB), 128M is
#: the smallest that captured on both kernels (save's lowest MemAvailable 21 MiB on 6.1,
#: 26 MiB on 6.12), 160M leaves ~52-58 MiB spare and is used here.
SMALL_CRASHKERNEL = "160M"

CAPTURE_APPEND = "console=ttyS0 irqpoll nr_cpus=1 reset_devices panic=1"
FIRST_APPEND = "console=ttyS0 panic=1"
RAW_SERIAL = "kdumpy-vmcore"

ARTIFACTS = {
    "raw_vmcore": "vmcore.raw",
    "kdumpy_dump": "kdumpy.kdump",
    "makedumpfile_flat": "makedumpfile.flat",
    "serial_log": "serial.log",
    "kdumpy_save_log": "kdumpy-save.log",
    "makedumpfile_log": "makedumpfile.log",
    "qemu_stderr": "qemu.stderr",
}


class LabError(RuntimeError):
    """A lab run failed; the message ends with the tail of the serial console."""


@dataclass(frozen=True)
class RunOptions:
    """What a run varies on. Everything here is part of the run's cache key."""

    crashkernel: str = DEFAULT_CRASHKERNEL
    memory_mib: int = 1024
    smp: int = 2
    cpu: str = "max"
    accel: str = "auto"
    kexec_mode: str = "auto"          # auto (file, then load), file, load
    #: kexec-tools; kdumpy (`kdumpy load`, kexec_file_load); or early / early-dracut: the
    #: first kernel boots an initramfs-tools / dracut image with kdumpy's early-kdump hook
    #: (:mod:`.early`) and dies in it (trigger warn / no-root)
    loader: str = "kexec-tools"
    save_with: str = "kdumpy"         # kdumpy, or makedumpfile as a stand-in while developing
    dump_level: int = 1
    compress: str = "lzo"
    capture_steps: tuple[str, ...] = ("raw", "makedumpfile", "save")
    capture_append: str = CAPTURE_APPEND
    first_append: str = FIRST_APPEND
    fill_random_mb: int = 64
    fill_text_mb: int = 32
    fill_anon_mb: int = 48
    trigger: str = "sysrq"            # how the first kernel dies: a key of TRIGGERS


@dataclass(frozen=True)
class Trigger:
    """A way for the first kernel to die other than sysrq-c: the ``[triggers]`` config that
    ``kdumpy load --config`` applies (each knob is read back by the guest before the crash),
    and the panic message the dump's kernel log must then show."""

    config: tuple[tuple[str, int], ...]
    panic_text: str
    taint_value: int = 0              # written to /proc/sys/kernel/tainted (kind "taint")
    boot_append: str = ""             # first-kernel parameters the trigger needs
    warn_module: bool = False         # load lab.warn_module's kdumpy_warn.ko (kind "warn")
    corrupt: str = ""                 # lab.corrupt_module's mode (kinds "corrupt-*")


#: ``taint``: panic_on_taint = USER (bit 6), then ``echo 64 > /proc/sys/kernel/tainted``;
#: add_taint() panics with "panic_on_taint set ..." (kernel/panic.c). Debian 6.1 has no
#: panic_on_taint sysctl, so the mask comes from ``panic_on_taint=40`` on the first kernel's
#: command line and ``kdumpy load`` checks it there instead of writing. Every other knob is
#: written too, so each round-trips config -> /proc/sys/kernel in the guest; softlockup_panic
#: stays 0 because TCG is slow enough to trip the soft-lockup detector on its own.
TRIGGERS: dict[str, Trigger] = {
    "taint": Trigger(config=(("panic_on_oops", 1), ("panic_on_warn", 1),
                             ("panic_on_taint", 1 << 6), ("panic_on_taint_nousertaint", 0),
                             ("hardlockup_panic", 1), ("softlockup_panic", 0),
                             ("unknown_nmi_panic", 1), ("panic_on_unrecovered_nmi", 1),
                             ("sysrq", 1)),
                     panic_text="Kernel panic - not syncing: panic_on_taint set ...",
                     taint_value=1 << 6, boot_append="panic_on_taint=40"),
    #: ``warn``: panic_on_warn = 1, then insmod of lab.warn_module's module, whose init does
    #: WARN(); __warn() panics with "panic_on_warn set ..." (kernel/panic.c).
    "warn": Trigger(config=(("panic_on_warn", 1), ("sysrq", 1)),
                    panic_text="Kernel panic - not syncing: kernel: panic_on_warn set ...",
                    warn_module=True),
    #: ``corrupt-printk`` / ``corrupt-mem_section``: lab.corrupt_module scribbles over the
    #: printk ring's record metadata / section 1's mem_section entry, then panics
    "corrupt-printk": Trigger(config=(("sysrq", 1),), corrupt="printk",
                              panic_text="Kernel panic - not syncing: KDUMPY-LAB-CORRUPT: "
                                         "printk scribbled over"),
    "corrupt-mem_section": Trigger(config=(("sysrq", 1),), corrupt="mem_section",
                                   panic_text="Kernel panic - not syncing: KDUMPY-LAB-CORRUPT: "
                                              "mem_section scribbled over"),
}


def trigger_config(trigger: Trigger) -> str:
    """The kdumpy config the first kernel's ``kdumpy load --config`` reads."""
    return "[triggers]\n" + "".join(f"{k} = {v}\n" for k, v in trigger.config)


def timeout(name: str) -> float:
    """The timeout for ``name`` scaled by ``KDUMPY_LAB_TIMEOUT_SCALE`` (default 1)."""
    return TIMEOUTS[name] * float(os.environ.get("KDUMPY_LAB_TIMEOUT_SCALE", "1"))


def project_src() -> Path:
    """The directory that holds the ``kdumpy`` package (``src/`` of the checkout this lab is in)."""
    return Path(__file__).resolve().parents[1] / "src"


def kdumpy_digest(whole: bool = False, src: Path | None = None) -> str:
    """sha256 over the kdumpy sources that ``kdumpy save`` can import
    (:func:`lab.save_imports.save_files`, found from the imports themselves), or, with
    ``whole``, over all of them (runs where ``kdumpy load`` or ``kdumpy capture`` run in
    the guest, which import the setup side too)."""
    src = src or project_src()
    pkg = src / "kdumpy"
    files = sorted(pkg.rglob("*.py")) if whole else save_files(src)
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(pkg)
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def reuse_policy() -> str:
    """``KDUMPY_LAB_REUSE``: ``strict`` (default; kdumpy's sources must be unchanged since the
    run) or ``any`` (reuse a complete run even if kdumpy changed, for fast iteration)."""
    value = os.environ.get("KDUMPY_LAB_REUSE", "strict")
    if value not in ("strict", "any"):
        raise ValueError(f"KDUMPY_LAB_REUSE must be strict or any, not {value!r}")
    return value


SERVICE_CONFIG = "kdumpy.toml"
TRIGGER_CONFIG = "triggers.toml"
SERVICE_TARGET = "service"


def kdumpy_argv(*args: str) -> list[str]:
    """``python -m kdumpy ARGS`` as the guest runs it inside the chroot (this checkout)."""
    return ["/usr/bin/env", f"PYTHONPATH={project_src()}", "PYTHONDONTWRITEBYTECODE=1",
            "HOME=/tmp", "TMPDIR=/tmp", "LC_ALL=C.UTF-8", sys.executable, "-m", "kdumpy", *args]


def service_config(directory: Path, options: RunOptions) -> str:
    """The config ``kdumpy capture`` reads in the capture kernel: the run directory's
    ``service/`` as a path target, dump level 31, no final action (the lab powers off)."""
    target = directory / SERVICE_TARGET
    return (f'[dump]\nlevel = [31, 17]\ncompression = "{options.compress}"\n\n'
            f'[target]\npath = "{target}"\n\n'
            '[actions]\nfailure = "poweroff"\nfinal = "poweroff"\n')


def save_argv(options: RunOptions, dest: Path) -> list[str]:
    """The capture-side command that writes the dump under test (run inside the chroot)."""
    if options.save_with == "kdumpy":
        return ["/usr/bin/env", f"PYTHONPATH={project_src()}", "PYTHONDONTWRITEBYTECODE=1",
                "HOME=/tmp", "TMPDIR=/tmp", "LC_ALL=C.UTF-8", sys.executable, "-m", "kdumpy",
                "save",
                "-d", str(options.dump_level), "--compress", options.compress,
                "/proc/vmcore", str(dest)]
    if options.save_with == "makedumpfile":
        return [which_or_fail("makedumpfile", "makedumpfile"), "-l", "-d",
                str(options.dump_level), "/proc/vmcore", str(dest)]
    raise ValueError(f"unknown save tool {options.save_with!r}")


#: Directories the guest covers with its own file systems inside the chroot of the host's root.
GUEST_OVERLAID = ("/proc", "/sys", "/dev")


def check_visible(paths: list[Path]) -> None:
    """Raise LabError if a host path the guest must reach lies under :data:`GUEST_OVERLAID`."""
    for path in paths:
        resolved = Path(path).resolve()
        for top in GUEST_OVERLAID:
            if resolved == Path(top) or Path(top) in resolved.parents:
                raise LabError(f"{path} is under {top}, which the guest replaces with its own "
                               "file system; move the lab cache (KDUMPY_LAB_CACHE) elsewhere")


def preflight_save(options: RunOptions) -> None:
    """Fail fast (before a minute of booting) if ``python -m kdumpy save`` cannot start."""
    if options.save_with != "kdumpy":
        return
    env = dict(os.environ, PYTHONPATH=str(project_src()))
    proc = subprocess.run([sys.executable, "-m", "kdumpy", "save", "--help"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    if proc.returncode != 0:
        raise LabError("`python -m kdumpy save --help` fails on the host, so the capture "
                       "kernel cannot run it either:\n" + proc.stdout[-2000:])


@dataclass
class CrashRun:
    """A completed run directory and its metadata."""

    directory: Path
    meta: dict[str, Any]

    def artifact(self, name: str) -> Path:
        return Path(self.meta["artifacts"][name])


def run_directory(release: str, crashkernel: str, options: RunOptions | None = None) -> Path:
    suffix = {"kdumpy": "-service", "early": "-early", "early-dracut": "-early-dracut"}.get(
        options.loader if options is not None else "", "")
    if options is not None and options.trigger != "sysrq":
        suffix += f"-{options.trigger}"
    if options is not None and options.kexec_mode == "load":
        suffix += "-kexec-load"
    return release_dir(release) / f"crash-{crashkernel}{suffix}"


def _recipe(kernel: Kernel, initramfs: Initramfs, options: RunOptions, accel: str,
            early: EarlyImage | None = None) -> dict:
    recipe = {"lab_format": LAB_FORMAT, "release": kernel.release, "package": kernel.package,
              "package_version": kernel.version, "initramfs_sha256": initramfs.sha256,
              "accelerator": accel, "options": asdict(options)}
    if early is not None:
        recipe["early_initramfs"] = early.digest
    return recipe


def check_options(options: RunOptions) -> None:
    """Reject combinations the guest cannot run."""
    if options.loader not in ("kexec-tools", "kdumpy", *EARLY_LOADERS):
        raise ValueError(f"unknown lab loader {options.loader!r}")
    if options.loader in EARLY_LOADERS:
        want = GENERATORS[EARLY_LOADERS[options.loader]].trigger
        if options.trigger != want:
            raise ValueError(f"loader={options.loader!r} dies by trigger={want!r}, not "
                             f"{options.trigger!r}")
        return
    if options.trigger != "sysrq" and options.trigger not in TRIGGERS:
        raise ValueError(f"unknown lab trigger {options.trigger!r} (known: sysrq, "
                         f"{', '.join(TRIGGERS)})")
    if options.trigger != "sysrq" and options.loader == "kexec-tools":
        raise ValueError("a trigger other than sysrq needs loader='kdumpy' (kdumpy load "
                         "applies the [triggers] config) or loader='early'")


#: Lab loaders that boot a generator's early-kdump image, and the generator.
EARLY_LOADERS = {"early": "initramfs-tools", "early-dracut": "dracut"}


def _key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def load_complete(directory: Path, key: str | None = None,
                  digest: str | None = None) -> CrashRun | None:
    """The run in ``directory`` if complete (and matching ``key``/``digest`` when given)."""
    meta_file = directory / "meta.json"
    if not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError:
        return None
    if not meta.get("complete"):
        return None
    if key is not None and meta.get("key") != key:
        return None
    if digest is not None and meta.get("kdumpy_digest") != digest:
        return None
    for name in ("raw_vmcore", "kdumpy_dump", "makedumpfile_flat"):
        path = meta.get("artifacts", {}).get(name)
        if path and not Path(path).exists():
            return None
    return CrashRun(directory, meta)


def ensure_run(spec: str, options: RunOptions | None = None, *, fresh: bool = False,
               log: Log = print) -> CrashRun:
    """A complete crash run for kernel ``spec``, from the cache or made now."""
    options = options or RunOptions()
    parse_size(options.crashkernel)
    check_options(options)
    kernel = ensure_kernel(spec, log=log)
    rdir = release_dir(kernel.release)
    initramfs = ensure_initramfs(kernel, rdir)
    early = (ensure_early_image(kernel, initramfs, EARLY_LOADERS[options.loader])
             if options.loader in EARLY_LOADERS else None)
    accel, accel_reason = choose_accelerator(options.accel)
    recipe = _recipe(kernel, initramfs, options, accel, early)
    key = _key(recipe)
    digest = kdumpy_digest(whole=options.loader != "kexec-tools"
                           or "service" in options.capture_steps) \
        if options.save_with == "kdumpy" else None
    directory = run_directory(kernel.release, options.crashkernel, options)
    with locked(directory.with_name(directory.name + ".lock")):
        if not fresh:
            want_digest = digest if reuse_policy() == "strict" else None
            done = load_complete(directory, key, want_digest)
            if done is not None:
                log(f"lab: reusing {directory}")
                return done
        preflight_save(options)
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            try:
                return _execute(kernel, initramfs, options, accel, accel_reason, recipe, key,
                                digest, directory, log, early)
            except LabError as exc:
                if attempt == BOOT_ATTEMPTS or not died_booting(str(exc)):
                    raise
                log(f"lab: the first kernel died while booting (attempt {attempt} of "
                    f"{BOOT_ATTEMPTS}); booting again")
        raise AssertionError("unreachable")


#: How often a run is started when the first kernel dies before reaching /init.
BOOT_ATTEMPTS = 2


def died_booting(message: str) -> bool:
    """Whether a failed run's first kernel oopsed before /init ran.

    Multi-threaded TCG occasionally lets a vCPU execute a kernel text byte while another vCPU
    is live-patching it (``text_poke_bp``'s int3 phase), seen here as ``Oops: int3`` in
    ``sched_clock_cpu`` during 6.12's early initcalls. Such a boot says nothing about kdumpy,
    so the lab boots once more; any other failure is reported at once."""
    return "while waiting for first kernel /init" in message and (
        "Oops:" in message or "Kernel panic" in message)


class _Watch:
    """Consumes console lines with deadlines; raises on guest failure or QEMU exit."""

    def __init__(self, proc: subprocess.Popen, capture: SerialCapture, started: float,
                 log: Log) -> None:
        self.proc = proc
        self.capture = capture
        self.started = started
        self.log = log
        self.total_deadline = started + timeout("total")
        self.exited_at: float | None = None

    def _fail(self, message: str) -> LabError:
        return LabError(f"{message}\n--- serial console (last lines, host seconds) ---\n"
                        f"{self.capture.transcript.tail(80)}")

    def line(self, what: str, limit: float) -> Line:
        deadline = min(time.monotonic() + limit, self.total_deadline)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(f"timed out after {limit:.0f} s waiting for {what}")
            try:
                item = self.capture.queue.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if item is None:
                self.proc.wait()
                self.exited_at = time.monotonic() - self.started
                raise self._fail(f"QEMU exited (status {self.proc.returncode}) while waiting "
                                 f"for {what}")
            event = parse_event(item)
            if event is not None and event.kind == "fail":
                raise self._fail(f"guest step {event.name!r} failed (rc={event.fields.get('rc')})"
                                 f" while waiting for {what}")
            return item

    def until(self, what: str, pred: Callable[[Line, Event | None], bool],
              limit: float) -> tuple[Line, Event | None]:
        deadline = time.monotonic() + limit
        while True:
            item = self.line(what, max(0.0, deadline - time.monotonic()) or 0.001)
            event = parse_event(item)
            if pred(item, event):
                return item, event

    def event(self, kind: str, name: str | None, limit: float, what: str | None = None) -> Event:
        label = what or f"{kind} {name or ''}".strip()
        _, event = self.until(label, lambda _l, e: e is not None and e.kind == kind
                              and (name is None or e.name == name), limit)
        assert event is not None
        return event

    def step(self, name: str, limit: float) -> Event:
        begin = self.event("begin", name, timeout("step"))
        end = self.event("end", name, limit)
        self.log(f"lab:   {name} rc={end.fields.get('rc')} ({end.t - begin.t:.1f} s)")
        return end

    def linux_version(self, limit: float, what: str) -> float:
        line, _ = self.until(what, lambda ln, _e: LINUX_VERSION_RE.search(ln.text) is not None,
                             limit)
        return line.t

    def wait_exit(self, limit: float) -> int:
        try:
            while self.capture.queue.get(timeout=limit) is not None:
                pass
        except queue.Empty:
            pass
        try:
            rc = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise self._fail(f"QEMU did not exit within {limit:.0f} s after the capture") from None
        self.exited_at = time.monotonic() - self.started
        return rc


def stop_qemu(proc: subprocess.Popen, capture: SerialCapture) -> None:
    """Kill QEMU if it still runs and collect the console reader (on any failure)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    capture.join(5)


def _make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def _execute(kernel: Kernel, initramfs: Initramfs, options: RunOptions, accel: str,
             accel_reason: str, recipe: dict, key: str, digest: str | None, directory: Path,
             log: Log, early: EarlyImage | None = None) -> CrashRun:
    directory.mkdir(parents=True, exist_ok=True)
    for child in directory.iterdir():
        if child.is_file() or child.is_symlink():
            child.unlink()
        elif child.is_dir() and child.name == SERVICE_TARGET:
            shutil.rmtree(child)
    paths = {name: directory / fname for name, fname in ARTIFACTS.items()}
    marker_hex = secrets.token_hex(8)
    marker = f"KDUMPY-LAB-MARKER-{marker_hex}"
    dest = paths["kdumpy_dump"]
    argv_save = save_argv(options, dest)
    config = {
        "LAB_RUNDIR": str(directory),
        "LAB_MARKER": marker_hex,
        "LAB_KEXEC": which_or_fail("kexec", "kexec-tools"),
        "LAB_KEXEC_MODE": options.kexec_mode,
        "LAB_VMLINUZ": str(kernel.vmlinuz),
        "LAB_INITRD": str(initramfs.path),
        "LAB_CAPTURE_APPEND": options.capture_append,
        "LAB_FILL_RANDOM_MB": options.fill_random_mb,
        "LAB_FILL_TEXT_MB": options.fill_text_mb,
        "LAB_FILL_ANON_MB": options.fill_anon_mb,
        "LAB_TEXT_LINE": f"KDUMPY-LAB-TEXT-{marker_hex} the quick brown fox jumps over the "
                         "lazy dog 0123456789",
        "LAB_PAGECACHE_FILE": str(kernel.system_map),
        "LAB_DD": which_or_fail("dd", "coreutils"),
        "LAB_DATE": which_or_fail("date", "coreutils"),
        "LAB_MAKEDUMPFILE": which_or_fail("makedumpfile", "makedumpfile"),
        "LAB_RAW_SERIAL": RAW_SERIAL,
        "LAB_SAVE_ARGV": shlex.join(argv_save),
        "LAB_CAPTURE_STEPS": " ".join(options.capture_steps),
    }
    load_extra: list[str] = []
    if options.trigger != "sysrq" and early is None:
        trigger = TRIGGERS[options.trigger]
        (directory / TRIGGER_CONFIG).write_text(trigger_config(trigger))
        load_extra = ["--config", str(directory / TRIGGER_CONFIG)]
        config["LAB_TRIGGER"] = options.trigger
        config["LAB_TRIGGER_TAINT"] = trigger.taint_value
        if trigger.warn_module:
            from .warn_module import ensure_warn_module
            config["LAB_WARN_MODULE"] = str(ensure_warn_module(kernel))
        if trigger.corrupt:
            from .corrupt_module import ensure_corrupt_module
            config["LAB_CORRUPT_MODULE"] = str(ensure_corrupt_module(kernel))
            config["LAB_CORRUPT_MODE"] = trigger.corrupt
        config["LAB_TRIGGER_EXPECT"] = " ".join(f"{k}={v}" for k, v in trigger.config
                                                if k not in BOOT_ONLY)
    if options.loader == "kdumpy":
        config["LAB_LOAD_ARGV"] = shlex.join(kdumpy_argv(
            "load", "--kernel", str(kernel.vmlinuz), "--initrd", str(initramfs.path),
            "--cmdline", options.capture_append, "--method", "file", "--json", *load_extra))
    if "service" in options.capture_steps:
        (directory / SERVICE_CONFIG).write_text(service_config(directory, options))
        config["LAB_SERVICE_ARGV"] = shlex.join(kdumpy_argv(
            "capture", "--config", str(directory / SERVICE_CONFIG), "--no-action", "--json"))
    check_visible([directory, kernel.vmlinuz, initramfs.path, kernel.system_map,
                   Path(sys.executable), project_src()])
    (directory / "lab-config.sh").write_text(render_config(config))
    _make_sparse(paths["raw_vmcore"], (options.memory_mib + 256) << 20)
    append = f"{options.first_append} crashkernel={options.crashkernel}"
    if early is not None:
        append += " " + early.generator.append
    elif options.trigger in TRIGGERS and TRIGGERS[options.trigger].boot_append:
        append += " " + TRIGGERS[options.trigger].boot_append
    machine = Machine(
        kernel=kernel.vmlinuz, initrd=early.path if early else initramfs.path, append=append,
        memory_mib=options.memory_mib, smp=options.smp, cpu=options.cpu, accel=accel,
        shares=(Share("hostroot", Path("/"), True), Share("labout", directory, False)),
        disks=(Disk(paths["raw_vmcore"], RAW_SERIAL),))
    argv = build_command(machine)
    (directory / "qemu.argv.json").write_text(json.dumps(argv, indent=1) + "\n")
    log(f"lab: booting {kernel.release} crashkernel={options.crashkernel} accel={accel} "
        f"({accel_reason})")
    started = time.monotonic()
    wall_start = time.time()
    with open(paths["qemu_stderr"], "wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=stderr, cwd=directory)
    assert proc.stdout is not None
    capture = SerialCapture(proc.stdout, paths["serial_log"], started)
    watch = _Watch(proc, capture, started, log)
    marks: dict[str, float] = {}
    early_values: dict[str, Any] = {}
    step_limits = {"kexec_load": timeout("kexec_load"), "fill": timeout("fill"),
                   "raw_copy": timeout("raw_copy"), "makedumpfile": timeout("makedumpfile"),
                   "kdumpy_save": timeout("kdumpy_save"),
                   "kdumpy_service": timeout("kdumpy_save")}
    try:
        marks["linux_version_first"] = watch.linux_version(timeout("boot"), "first kernel boot")
        if early is not None:
            early_values = _watch_early_first(watch, marks, early)
        else:
            _watch_first(watch, marks, options, step_limits)
        log(f"lab:   crash triggered at {marks['crash_now']:.1f} s")
        marks["linux_version_capture"] = watch.linux_version(timeout("capture_boot"),
                                                             "capture kernel boot")
        role = watch.event("role", None, timeout("capture_boot"), "capture kernel /init")
        if role.name != "capture":
            raise watch._fail(f"second /init started as {role.name!r}, expected 'capture'")
        marks["init_capture"] = role.t
        for name in ("insmod", "mount_shares"):
            watch.step(name, timeout("step"))
        while True:
            _, event = watch.until("next capture step", lambda _l, e: e is not None and e.kind in
                                   ("begin", "capture-done"), timeout("next_step"))
            assert event is not None
            if event.kind == "capture-done":
                marks["capture_done"] = event.t
                break
            end = watch.event("end", event.name, step_limits.get(event.name, timeout("step")))
            log(f"lab:   {event.name} rc={end.fields.get('rc')} ({end.t - event.t:.1f} s)")
        qemu_rc = watch.wait_exit(timeout("exit"))
        marks["qemu_exit"] = watch.exited_at or (time.monotonic() - started)
    except BaseException:
        stop_qemu(proc, capture)
        raise
    capture.join(5)
    transcript = capture.transcript
    meta = _collect_meta(transcript, marks, options, kernel, initramfs, accel, accel_reason,
                         recipe, key, digest, marker, argv_save, paths, qemu_rc, wall_start)
    if early is not None:
        meta["kexec_mode"] = "early-initramfs"
        meta["early"] = {"initramfs": str(early.path), "digest": early.digest,
                         "files": len(early.files), "early_conf": early.early_conf,
                         **early_values}
        meta["first_cmdline"] = append
    meta_file = directory / "meta.json"
    problems = _problems(meta, paths, options)
    if problems:
        meta["complete"] = False
        meta["problems"] = problems
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
        detail = ""
        save_log = paths["kdumpy_save_log"]
        if save_log.exists():
            detail = "\n--- kdumpy-save.log (tail) ---\n" + "\n".join(
                save_log.read_text(errors="replace").splitlines()[-30:])
        raise LabError("lab run incomplete: " + "; ".join(problems) + detail +
                       "\n--- serial console (last lines) ---\n" + transcript.tail(60))
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    return CrashRun(directory, meta)


def _watch_first(watch: _Watch, marks: dict[str, float], options: RunOptions,
                 step_limits: dict[str, float]) -> None:
    """The lab's own first-kernel /init: load, fill memory, snapshot, crash."""
    role = watch.event("role", None, timeout("boot"), "first kernel /init")
    if role.name != "first":
        raise watch._fail(f"/init started as {role.name!r}, expected 'first'")
    marks["init_first"] = role.t
    first_steps = ["insmod", "mount_shares", "kexec_load", "fill"]
    if options.trigger != "sysrq":
        first_steps.insert(3, "triggers")
    for name in first_steps:
        watch.step(name, step_limits.get(name, timeout("step")))
    marks["crash_now"] = watch.event("crash-now", None, timeout("crash_now")).t


#: initramfs-tools' /init as the kernel starts it, and the panic that ends the first kernel.
RUN_INIT_RE = re.compile(r"Run /init as init process")
PANIC_RE = re.compile(r"Kernel panic - not syncing: (.*)")


def _watch_early_first(watch: _Watch, marks: dict[str, float],
                       early: EarlyImage) -> dict[str, Any]:
    """The early case's first kernel: the generator's /init, kdumpy's hook loads the capture
    kernel (its kmsg line must say exit 0, loaded=1), then the kernel panics the generator's
    way (:data:`.early.GENERATORS`). Nothing of the lab's /init runs here."""
    line, _ = watch.until(f"{early.generator.name}'s /init",
                          lambda ln, _e: RUN_INIT_RE.search(ln.text) is not None, timeout("boot"))
    marks["init_first"] = line.t
    line, _ = watch.until("kdumpy's early-kdump load", lambda ln, _e: LOADED_LINE in ln.text,
                          timeout("kexec_load"))
    loaded = line.text[line.text.index(LOADED_LINE):].strip()
    marks["early_loaded"] = line.t
    if not loaded.endswith("exit 0, loaded=1"):
        raise watch._fail(f"early kdump did not load the capture kernel: {loaded!r}")
    line, _ = watch.until("the first kernel's panic",
                          lambda ln, _e: PANIC_RE.search(ln.text) is not None, timeout("fill"))
    marks["crash_now"] = line.t
    match = PANIC_RE.search(line.text)
    if early.generator.panic_text not in line.text:
        raise watch._fail(f"the first kernel panicked otherwise than expected "
                          f"({early.generator.panic_text!r}): {line.text.strip()!r}")
    return {"generator": early.generator.name, "loaded_line": loaded,
            "panic": match.group(1).strip() if match else "",
            "load_to_panic_seconds": round(line.t - marks["early_loaded"], 3)}


def _steps(transcript: Transcript) -> dict[str, dict[str, Any]]:
    """Per-step host timing, guest timing and exit status, keyed ``<role>.<step>``."""
    steps: dict[str, dict[str, Any]] = {}
    role = "boot"
    begun: dict[str, Event] = {}
    for event in transcript.events():
        if event.kind == "role":
            role = event.name
        elif event.kind == "begin":
            begun[event.name] = event
        elif event.kind == "end" and event.name in begun:
            start = begun.pop(event.name)
            entry: dict[str, Any] = {"host_seconds": round(event.t - start.t, 3),
                                     "rc": int(event.fields.get("rc", "-1"))}
            try:
                entry["guest_seconds"] = round(float(event.fields["up"]) -
                                               float(start.fields["up"]), 3)
            except (KeyError, ValueError):
                pass
            steps[f"{role}.{event.name}"] = entry
    return steps


def _collect_meta(transcript: Transcript, marks: dict[str, float], options: RunOptions,
                  kernel: Kernel, initramfs: Initramfs, accel: str, accel_reason: str,
                  recipe: dict, key: str, digest: str | None, marker: str,
                  argv_save: list[str], paths: dict[str, Path], qemu_rc: int,
                  wall_start: float) -> dict[str, Any]:
    values = transcript.values()
    blocks = transcript.blocks()
    steps = _steps(transcript)
    vmcore_size = int(values.get("vmcore_size", "0") or 0)
    raw = paths["raw_vmcore"]
    if vmcore_size and raw.exists():
        os.truncate(raw, vmcore_size)
    iomem = [line.strip() for line in blocks.get("crash_kernel_iomem", [])]
    try:
        clock: float | None = float(values.get("clock_realtime", ""))
    except ValueError:
        clock = None
    uptime_words = values.get("clock_uptime", "").split()
    crash = marks["crash_now"]

    def span(a: str, b: str) -> float:
        return round(marks[b] - marks[a], 3)

    phases: dict[str, float] = {
        "qemu_start_to_linux_version": round(marks["linux_version_first"], 3),
        "qemu_start_to_init": round(marks["init_first"], 3),
    }
    for name in ("insmod", "mount_shares", "kexec_load", "fill"):
        if f"first.{name}" in steps:
            phases[f"first_{name}"] = steps[f"first.{name}"]["host_seconds"]
    phases["crash_to_capture_linux_version"] = span("crash_now", "linux_version_capture")
    phases["crash_to_capture_init"] = span("crash_now", "init_capture")
    for name in ("insmod", "mount_shares", "raw_copy", "makedumpfile", "kdumpy_save"):
        if f"capture.{name}" in steps:
            phases[f"capture_{name}"] = steps[f"capture.{name}"]["host_seconds"]
    phases["crash_to_qemu_exit"] = round(marks["qemu_exit"] - crash, 3)
    phases["total"] = round(marks["qemu_exit"], 3)
    exit_status = {name.split(".", 1)[1]: entry["rc"] for name, entry in steps.items()
                   if name.startswith("capture.") or name.startswith("first.")}
    exit_status["qemu"] = qemu_rc
    free = parse_free(blocks.get("free", []))
    artifacts = {name: str(path) for name, path in paths.items() if path.exists()}
    return {
        "complete": True,
        "lab_format": LAB_FORMAT,
        "key": key,
        "kdumpy_digest": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_start)),
        "release": kernel.release,
        "booted_release": values.get("release"),
        "package": kernel.package,
        "package_version": kernel.version,
        "vmlinuz": str(kernel.vmlinuz),
        "initramfs": str(initramfs.path),
        "initramfs_sha256": initramfs.sha256,
        "initramfs_modules": list(initramfs.modules),
        "crashkernel": options.crashkernel,
        "crashkernel_bytes": parse_size(options.crashkernel),
        "memory_mib": options.memory_mib,
        "smp": options.smp,
        "cpu": options.cpu,
        "accelerator": accel,
        "accelerator_reason": accel_reason,
        "qemu_version": qemu_version(),
        "kexec_mode": values.get("kexec_mode"),
        "trigger": options.trigger,
        "triggers_read_back": {k[len("trigger_"):]: v for k, v in values.items()
                               if k.startswith("trigger_")},
        "marker": marker,
        "text_fill_line": f"KDUMPY-LAB-TEXT-{marker.rsplit('-', 1)[1]}",
        "meminfo": parse_meminfo(blocks.get("meminfo", [])),
        "reserved": {
            "iomem": iomem,
            "kexec_crash_size": int(values.get("kexec_crash_size", "0") or 0),
            "kexec_crash_loaded": values.get("kexec_crash_loaded"),
        },
        "first_cmdline": " ".join(blocks.get("cmdline", [])).strip(),
        "capture_cmdline": " ".join(blocks.get("capture_cmdline", [])).strip(),
        "guest_clock_at_crash": {
            "realtime": clock,
            "uptime": float(uptime_words[0]) if uptime_words else None,
        },
        "anon_rss_kb": int(values.get("anon_rss_kb", "0") or 0),
        "capture_free_mib": free,
        "capture_meminfo": parse_meminfo(blocks.get("capture_meminfo", [])),
        "save_min_mem_available_kb": int(values.get("save_min_mem_available_kb", "0") or 0)
        if values.get("save_min_mem_available_kb", "").strip().isdigit() else None,
        "vmcore_size": vmcore_size,
        "options": asdict(options),
        "recipe": recipe,
        "save_command": argv_save,
        "save_tool": options.save_with,
        "phases": phases,
        "steps": steps,
        "exit_status": exit_status,
        "kdumpy_save_output": transcript.outputs("kdumpy_save"),
        "artifacts": artifacts,
    }


def _problems(meta: dict[str, Any], paths: dict[str, Path], options: RunOptions) -> list[str]:
    problems = []
    for name, rc in meta["exit_status"].items():
        if rc != 0:
            problems.append(f"{name} exited with {rc}")
    if "raw" in options.capture_steps:
        if not meta["vmcore_size"]:
            problems.append("guest did not report the /proc/vmcore size")
    if "save" in options.capture_steps:
        dump = paths["kdumpy_dump"]
        if not dump.exists() or dump.stat().st_size == 0:
            problems.append(f"{dump.name} missing or empty")
        if dump.with_name(dump.name + ".incomplete").exists():
            problems.append(f"{dump.name}.incomplete left behind")
    if "service" in options.capture_steps:
        target = paths["serial_log"].parent / SERVICE_TARGET
        dumps = sorted(target.glob("*/vmcore")) if target.is_dir() else []
        if not dumps:
            problems.append(f"{SERVICE_TARGET}/<host>-<time>/vmcore missing")
    if meta["booted_release"] != meta["release"]:
        problems.append(f"guest ran {meta['booted_release']!r}, expected {meta['release']!r}")
    return problems
