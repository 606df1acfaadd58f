"""``kdumpy status``: is kdump operational, and if not, what to do about it.

Operational (exit 0, as ``kdumpctl status``; 3 otherwise) means: the kernel can do it
(CONFIG_CRASH_DUMP, CONFIG_PROC_VMCORE, and CONFIG_KEXEC_FILE or CONFIG_KEXEC), memory is
reserved (``/sys/kernel/kexec_crash_size`` > 0), a capture kernel is loaded
(``/sys/kernel/kexec_crash_loaded`` = 1), the configuration file is valid, kdumpy's
capture image exists and is current, the target can be written, and (under systemd)
``kdumpy.service`` is installed and enabled. Everything else (Secure Boot/lockdown, hotplug
handling, a reservation below the estimate, the last ``kdumpy test``) is reported as a
warning or information with its fix. Each check is one function in :data:`CHECKS`.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

from kdumpy.errors import KdumpyError
from kdumpy.setup import state, sysfs
from kdumpy.setup.cmdline import SAVE_UNIT
from kdumpy.setup.config import Config, load_config
from kdumpy.setup.crashkernel import KernelRules, evaluate
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.sizes import human

ERROR = "error"
WARNING = "warning"
INFO = "info"


@dataclass
class Finding:
    what: str
    severity: str                     # error | warning | info
    detail: str
    fix: str | None = None


@dataclass
class Status:
    operational: bool
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"operational": self.operational, "facts": self.facts,
                "findings": [asdict(f) for f in self.findings]}


def boot_time(paths: SystemPaths) -> int | None:
    """``btime`` of /proc/stat: the boot's epoch second."""
    text = sysfs.read_text(paths.path("/proc/stat")) or ""
    m = re.search(r"^btime (\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def test_outcome(paths: SystemPaths) -> dict[str, Any] | None:
    """The last ``kdumpy test``: did its dump arrive? None when no test is pending."""
    tid = state.read_test_id(paths)
    last = state.read_last_capture(paths)
    if tid is None:
        tid = last.get("test_id") if last else None
        if tid is None:
            return None
    if last and last.get("test_id") == tid:
        return {"test_id": tid, "arrived": last.get("status") == "complete",
                "status": last.get("status"), "dump_dir": last.get("dump_dir"),
                "vmcore": last.get("vmcore"), "error": last.get("error")}
    try:
        written = int(os.stat(paths.test_id).st_mtime)
    except OSError:
        written = None
    booted = boot_time(paths)
    rebooted = written is not None and booted is not None and booted > written
    return {"test_id": tid, "arrived": False,
            "status": "lost" if rebooted else "pending", "dump_dir": None, "vmcore": None,
            "error": None}


@dataclass
class Context:
    """What every check reads, gathered once."""

    paths: SystemPaths
    arch: str
    config_path: str
    st: Status
    release: str = ""
    cmdline: str = ""
    kc: sysfs.KernelConfig | None = None
    res: sysfs.CrashReservation | None = None
    ram: int = 0
    cfg: Config | None = None

    def find(self, what: str, severity: str, detail: str, fix: str | None = None) -> None:
        self.st.findings.append(Finding(what, severity, detail, fix))


def check_kernel_config(ctx: Context) -> None:
    """CONFIG_CRASH_DUMP, CONFIG_PROC_VMCORE, a load syscall, CONFIG_RELOCATABLE."""
    kc = ctx.kc = sysfs.kernel_config(ctx.paths, ctx.release)
    ctx.st.facts["kernel_config_source"] = kc.source
    ctx.st.facts["kernel_config"] = {k: kc.get(k) for k in sysfs.KEXEC_CONFIG_KEYS}
    if kc.source is None:
        ctx.find("kernel config", WARNING, "neither /proc/config.gz nor "
                 f"/boot/config-{ctx.release} is readable; kernel support not checked",
                 "install the kernel's config file, or `modprobe configs`")
        return
    for key, why in (("CONFIG_CRASH_DUMP", "the kernel cannot boot as a capture kernel"),
                     ("CONFIG_PROC_VMCORE", "the capture kernel has no /proc/vmcore")):
        if not kc.enabled(key):
            ctx.find(key, ERROR, f"{key} is not set in {kc.source}: {why}",
                     "use a distribution kernel or rebuild with " + key + "=y")
    if not kc.enabled("CONFIG_KEXEC_FILE") and not kc.enabled("CONFIG_KEXEC"):
        ctx.find("kexec", ERROR, f"neither CONFIG_KEXEC_FILE nor CONFIG_KEXEC in "
                 f"{kc.source}: no way to load a capture kernel",
                 "rebuild with CONFIG_KEXEC_FILE=y")
    elif not kc.enabled("CONFIG_KEXEC_FILE"):
        ctx.find("CONFIG_KEXEC_FILE", WARNING, "no kexec_file_load: loading falls "
                 "back to kexec-tools (kexec_load), which Secure Boot forbids",
                 "use a kernel with CONFIG_KEXEC_FILE=y")
    if kc.enabled("CONFIG_RELOCATABLE") is False:
        ctx.find("CONFIG_RELOCATABLE", WARNING, "the kernel is not relocatable: it "
                 "cannot serve as its own capture kernel",
                 "set load.kernel to a relocatable kernel, or rebuild with "
                 "CONFIG_RELOCATABLE=y")


def check_reservation(ctx: Context) -> None:
    """crashkernel= reserved memory (/sys/kernel/kexec_crash_size, /proc/iomem)."""
    res = ctx.res = sysfs.crash_reservation(ctx.paths)
    cmd = ctx.cmdline
    ram, ram_src = sysfs.ram_size(ctx.paths)
    ctx.ram = ram
    facts = ctx.st.facts
    facts["crash_size"] = res.size
    facts["iomem_crash_kernel"] = [{"start": s, "end": e} for s, e in res.regions]
    facts["cmdline_crashkernel"] = sysfs.crashkernel_words(cmd)
    facts["ram"] = {"bytes": ram, "source": ram_src}
    words = sysfs.crashkernel_words(cmd)
    if not res.size:
        if words:
            ev = evaluate(cmd, ram, KernelRules.for_kernel(ctx.release, ctx.arch))
            why = "; ".join(ev.explanation) if not ev.reserved else (
                f"{' '.join(words)} asks for {human(ev.size)}, but the kernel could not "
                "allocate it (dmesg | grep -i crashkernel)")
        else:
            why = "no crashkernel= on the kernel command line"
        ctx.find("reservation", ERROR, f"no memory reserved for the capture kernel: {why}",
                 "kdumpy estimate --apply (writes the GRUB setting), update-grub, reboot")
    else:
        regions = ", ".join(f"{s:#x}-{e:#x}" for s, e in res.regions) or (
            "addresses hidden (run as root)" if res.addresses_hidden else "not in /proc/iomem")
        ctx.find("reservation", INFO, f"{human(res.size)} reserved ({regions})")


def check_config(ctx: Context) -> None:
    """The configuration file parses and validates."""
    try:
        ctx.cfg = load_config(ctx.config_path)
        ctx.st.facts["config"] = ctx.config_path if os.path.exists(ctx.config_path) else None
    except KdumpyError as exc:
        ctx.find("config", ERROR, str(exc), f"fix {ctx.config_path} (see `kdumpy install` "
                                            "for an annotated example)")


def check_reservation_size(ctx: Context) -> None:
    """The reservation against a quick estimate of the capture boot's needs."""
    if not (ctx.res and ctx.res.size) or ctx.cfg is None:
        return
    from kdumpy.setup.estimate import estimate
    kernel, initrd, own = capture_images(ctx.paths, ctx.cfg, ctx.release)
    est = estimate(ctx.ram, kernel=kernel, initrd=initrd, arch=ctx.arch, quick=True,
                   own_image=own)
    ctx.st.facts["estimate"] = est.needed
    if ctx.res.size < est.needed:
        ctx.find("reservation size", WARNING,
                 f"{human(ctx.res.size)} reserved, the capture boot needs about "
                 f"{human(est.needed)} (quick estimate): it may run out of memory",
                 f"kdumpy estimate, then crashkernel={est.recommended}")


def check_capture_image(ctx: Context) -> None:
    """kdumpy's capture image for the running kernel exists and matches the kernel, the
    config, the target's devices and kdumpy (:mod:`kdumpy.setup.capture_image`)."""
    cfg = ctx.cfg
    if cfg is None:
        return
    if cfg.load.initrd:
        ctx.st.facts["capture_image"] = {"own": False, "initrd": cfg.load.initrd}
        ctx.find("capture image", INFO, f"load.initrd is set: the capture kernel boots "
                 f"{cfg.load.initrd} and the system's root, with {SAVE_UNIT}")
        return
    from kdumpy.setup.capture_image.build import freshness
    f = freshness(ctx.paths, cfg, ctx.release, ctx.config_path)
    ctx.st.facts["capture_image"] = {"own": True, "path": f.image, "exists": f.exists,
                                     "stale": f.stale, "error": f.error}
    if f.error:
        ctx.find("capture image", ERROR, f"cannot be built: {f.error}",
                 "fix the target in the config, then kdumpy rebuild")
    elif not f.exists:
        ctx.find("capture image", ERROR, f"{f.image} is missing: the capture kernel "
                 "would have nothing to mount the target with",
                 "kdumpy rebuild && kdumpy load (or systemctl restart kdumpy.service)")
    elif f.stale:
        ctx.find("capture image", ERROR, f"{f.image} is stale: {', '.join(f.stale)} "
                 "changed since it was built",
                 "kdumpy rebuild && kdumpy load (or systemctl restart kdumpy.service)")
    else:
        ctx.find("capture image", INFO, f"{f.image} is current")


#: Target checks for network targets, by [target] kind: (ctx) -> None, adding findings.
#: The network support registers its reachability checks here.
TARGET_CHECKS: dict[str, Callable[[Context], None]] = {}


def check_target(ctx: Context) -> None:
    """The dump target can be written: a local directory that exists (or can be made),
    is writable and has the configured free space; network targets through TARGET_CHECKS."""
    cfg = ctx.cfg
    if cfg is None:
        return
    t = cfg.target
    if t.kind != "path":
        check = TARGET_CHECKS.get(t.kind)
        if check is None:
            ctx.find("target", WARNING, f"{t.describe()}: reachability of {t.kind} targets "
                     "is not checked")
        else:
            check(ctx)
        return
    path = ctx.paths.path(t.path)
    existing = path
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    if os.path.exists(path) and not os.path.isdir(path):
        ctx.find("target", ERROR, f"{t.path} exists and is not a directory",
                 f"remove it or set [target] path to a directory")
        return
    if not os.access(existing, os.W_OK):
        ctx.find("target", ERROR, f"{existing if existing != path else t.path} is not "
                 "writable", f"make {t.path} writable by root, or choose another target")
        return
    try:
        sv = os.statvfs(existing)
        free = sv.f_bavail * sv.f_frsize
    except OSError as exc:
        ctx.find("target", ERROR, f"{t.path}: {exc.strerror}", "check the target directory")
        return
    ctx.st.facts["target"] = {"path": t.path, "free": free, "exists": os.path.isdir(path)}
    made = "" if os.path.isdir(path) else " (created at the first dump)"
    if cfg.dump.min_free and free < cfg.dump.min_free:
        ctx.find("target", ERROR, f"{t.path}: {human(free)} free, dump.min_free asks for "
                 f"{human(cfg.dump.min_free)}: the capture would refuse to start",
                 "free space there, lower dump.min_free, or set dump.keep")
    elif ctx.ram and free < ctx.ram // 10:
        ctx.find("target", WARNING, f"{t.path}{made}: {human(free)} free, less than a "
                 f"tenth of RAM ({human(ctx.ram)}): a dump may not fit",
                 "free space there or set dump.keep")
    else:
        ctx.find("target", INFO, f"{t.path}{made}: {human(free)} free")


def check_units(ctx: Context) -> None:
    """Under systemd: kdumpy.service installed and enabled (and kdumpy-save.service when
    the capture boots the system's root)."""
    if not os.path.isdir(ctx.paths.run_systemd_system):
        return
    from kdumpy.setup.units import LOAD_UNIT, unit_state
    state_ = unit_state(ctx.paths, LOAD_UNIT)
    ctx.st.facts["units"] = {LOAD_UNIT: state_}
    if state_ == "missing":
        ctx.find("units", ERROR, f"{LOAD_UNIT} is not installed: nothing loads the capture "
                 "kernel at boot", f"kdumpy install && systemctl daemon-reload && "
                 f"systemctl enable --now {LOAD_UNIT}")
    elif state_ == "disabled":
        ctx.find("units", ERROR, f"{LOAD_UNIT} is not enabled: the capture kernel is not "
                 "loaded after the next boot", f"systemctl enable --now {LOAD_UNIT}")
    else:
        ctx.find("units", INFO, f"{LOAD_UNIT} is enabled")
    if ctx.cfg is not None and ctx.cfg.load.initrd:
        save = unit_state(ctx.paths, SAVE_UNIT)
        ctx.st.facts["units"][SAVE_UNIT] = save
        if save == "missing":
            ctx.find("units", ERROR, f"{SAVE_UNIT} is not installed: the capture boot of "
                     f"{ctx.cfg.load.initrd} would save nothing", "kdumpy install")


def check_early_kdump(ctx: Context) -> None:
    """rd.earlykdump and the initramfs hooks (kdumpy install --initramfs)."""
    from kdumpy.setup import early
    es = early.state(ctx.paths, ctx.cmdline, sysfs.crash_loaded(ctx.paths))
    ctx.st.facts["early_kdump"] = {"active": es.active, "switch": es.switch_on,
                                   "hooks": es.installed}
    if es.active:
        ctx.find("early kdump", INFO, f"active: {early.SWITCH} is on the command line "
                 f"and the {', '.join(es.installed)} hook is installed")
        stale = early.initramfs_older_than_image(ctx.paths, ctx.release)
        if stale:
            ctx.find("early kdump", WARNING, stale, "update-initramfs -u (dracut -f, "
                     "mkinitcpio -P): the initramfs copies the capture image when built")
    elif es.switch_on:
        ctx.find("early kdump", WARNING, f"{early.SWITCH} is on the command line but no "
                 "early-kdump hook is installed", "kdumpy install --initramfs, then "
                 "rebuild the initramfs")
    elif es.installed:
        ctx.find("early kdump", INFO, f"hook installed ({', '.join(es.installed)}) but "
                 f"off: add {early.SWITCH} to the kernel command line")


def check_triggers(ctx: Context) -> None:
    _triggers(ctx.paths, ctx.cfg, ctx.st)


def check_loaded(ctx: Context) -> None:
    """A capture kernel is in the panic slot (/sys/kernel/kexec_crash_loaded)."""
    loaded = sysfs.crash_loaded(ctx.paths)
    rec = state.read_load_record(ctx.paths)
    ctx.st.facts["loaded"] = loaded
    ctx.st.facts["load_method"] = rec.get("method") if rec else None
    if loaded is None:
        ctx.find("loaded", ERROR, "/sys/kernel/kexec_crash_loaded is missing: this "
                 "kernel has no kexec support", "use a kernel with CONFIG_KEXEC_FILE=y")
    elif not loaded:
        ctx.find("loaded", ERROR, "no capture kernel is loaded",
                 "kdumpy load (at boot: systemctl enable --now kdumpy.service)")
    else:
        how = f" with {rec['method']}" if rec and rec.get("method") else ""
        ctx.find("loaded", INFO, f"capture kernel loaded{how}")


def check_secure_boot(ctx: Context) -> None:
    """Secure Boot / lockdown allow only kexec_file_load with a signed kernel."""
    sb = sysfs.secure_boot(ctx.paths)
    lock = sysfs.lockdown(ctx.paths)
    rec = state.read_load_record(ctx.paths)
    ctx.st.facts["secure_boot"] = sb
    ctx.st.facts["lockdown"] = lock
    if lock in (None, "none") and not sb:
        return
    detail = (f"Secure Boot {'on' if sb else 'off' if sb is False else 'unknown'}, "
              f"lockdown {lock or 'unknown'}: only kexec_file_load with a signed kernel "
              "works")
    sev, fix = INFO, None
    kc = ctx.kc
    if kc is not None and kc.source is not None and not kc.enabled("CONFIG_KEXEC_FILE"):
        sev, fix = ERROR, "use a kernel with CONFIG_KEXEC_FILE=y"
    elif rec and rec.get("method") == "kexec_load":
        sev, fix = WARNING, "kdumpy unload && kdumpy load (kexec_file_load)"
    ctx.find("secure boot", sev, detail, fix)


def check_hotplug(ctx: Context) -> None:
    hp = sysfs.crash_hotplug(ctx.paths)
    ctx.st.facts["crash_hotplug"] = hp
    if hp["cpu"] or hp["memory"]:
        ctx.find("hotplug", INFO, "the kernel updates the capture kernel's header on "
                 "CPU/memory hotplug (crash_hotplug=1): no reload needed")
    else:
        ctx.find("hotplug", INFO, "CPU/memory hotplug needs a reload; the kdumpy udev "
                 "rule does it (kdumpy install)")


def check_last_test(ctx: Context) -> None:
    """The outcome of the last ``kdumpy test``."""
    t = test_outcome(ctx.paths)
    ctx.st.facts["test"] = t
    if t is None:
        return
    if t["arrived"]:
        ctx.find("test", INFO, f"{t['test_id']}: the dump arrived in {t['dump_dir']}")
    elif t["status"] == "pending":
        ctx.find("test", INFO, f"{t['test_id']}: written, no crash since")
    else:
        detail = {"incomplete": f"the dump is incomplete ({t['vmcore']})",
                  "failed": f"the capture failed: {t['error']}"}.get(
            t["status"] or "", "no dump arrived (the machine rebooted without a capture)")
        ctx.find("test", WARNING, f"{t['test_id']}: {detail}",
                 "check the capture kernel's console log; kdumpy status; kdumpy estimate")


#: In report order; each adds findings (and facts) to the context's Status.
CHECKS: list[Callable[[Context], None]] = [
    check_kernel_config, check_reservation, check_config, check_reservation_size,
    check_capture_image, check_target, check_units, check_early_kdump, check_triggers,
    check_loaded, check_secure_boot, check_hotplug, check_last_test,
]


def collect(paths: SystemPaths, *, config_path: str | None = None,
            arch: str | None = None) -> Status:
    """Run every check; operational when none found an error."""
    st = Status(operational=True)
    ctx = Context(paths, arch or os.uname().machine, config_path or paths.config, st)
    ctx.release = sysfs.kernel_release(paths)
    ctx.cmdline = sysfs.cmdline(paths)
    st.facts["kernel_release"] = ctx.release
    for check in CHECKS:
        check(ctx)
    st.operational = not any(f.severity == ERROR for f in st.findings)
    return st


def _triggers(paths: SystemPaths, cfg: Config | None, st: Status) -> None:
    """Which events panic now, and whether the configured ``[triggers]`` are in force.

    A configured knob that differs from /proc/sys/kernel is a warning (``kdumpy load``
    sets them); one the running kernel lacks is an error, as ``kdumpy load`` refuses it."""
    from kdumpy.setup import triggers as trig
    wanted = cfg.triggers if cfg is not None else {}
    now = trig.status(paths, wanted)
    st.facts["triggers"] = now
    on = [f"{n}={trig.describe(n, v['current'])}" for n, v in now.items()
          if v["current"] and n != "sysrq"]
    sysrq = now["sysrq"]["current"]
    summary = (", ".join(on) if on else "only explicit panics (sysrq-c, panic())") + (
        f"; sysrq={sysrq}" if sysrq is not None else "")
    gone = trig.missing(paths, wanted)
    if gone:
        st.findings.append(Finding(
            "triggers", ERROR, "configured but missing from this kernel: "
            + ", ".join(f"{trig.SYSCTL_DIR}/{n}" for n in gone),
            "remove them from [triggers] in the config"))
    stale = [n for n, v in now.items() if v["configured"] is not None
             and v["current"] is not None and v["current"] != v["configured"]]
    if stale:
        st.findings.append(Finding(
            "triggers", WARNING, "not in force: " + ", ".join(
                f"{n} is {trig.describe(n, now[n]['current'])}, configured "
                f"{trig.describe(n, now[n]['configured'])}" for n in stale),
            "kdumpy load (sets them); kdumpy install (keeps them from boot)"))
    st.findings.append(Finding("triggers", INFO, f"panics on: {summary}"))


def default_images(paths: SystemPaths, cfg: Config,
                   release: str) -> tuple[str | None, str | None]:
    """(kernel, initrd) to load: the config's, else the running release's under /boot."""
    kernel = paths.path(cfg.load.kernel) if cfg.load.kernel else next(
        (p for p in paths.boot_kernel_candidates(release) if os.path.isfile(p)), None)
    initrd = paths.path(cfg.load.initrd) if cfg.load.initrd else next(
        (p for p in paths.boot_initrd_candidates(release) if os.path.isfile(p)), None)
    return kernel, initrd


def capture_images(paths: SystemPaths, cfg: Config,
                   release: str) -> tuple[str | None, str | None, bool]:
    """(kernel, initrd, own image) the capture boot uses: kdumpy's capture image unless
    ``load.initrd`` names another (None while the image is not built)."""
    kernel, system_initrd = default_images(paths, cfg, release)
    if cfg.load.initrd:
        return kernel, system_initrd, False
    from kdumpy.setup.capture_image.build import image_path
    img = image_path(paths, release)
    return kernel, img if os.path.isfile(img) else None, True


def format_status(st: Status) -> str:
    lines = [f"kdump is {'operational' if st.operational else 'NOT operational'}"]
    marks = {ERROR: "ERROR", WARNING: "warning", INFO: "ok"}
    for f in st.findings:
        lines.append(f"  [{marks[f.severity]}] {f.what}: {f.detail}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    return "\n".join(lines)
