"""``kdumpy status``: is kdump operational, and if not, what to do about it.

Operational (exit 0, as ``kdumpctl status``; 3 otherwise) means: the kernel can do it
(CONFIG_CRASH_DUMP, CONFIG_PROC_VMCORE, and CONFIG_KEXEC_FILE or CONFIG_KEXEC), memory is
reserved (``/sys/kernel/kexec_crash_size`` > 0) and a capture kernel is loaded
(``/sys/kernel/kexec_crash_loaded`` = 1), and the configuration file is valid. Everything
else (Secure Boot/lockdown, hotplug handling, a reservation below the estimate, the last
``kdumpy test``) is reported as a warning or information with its fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from kdumpy.errors import KdumpyError
from kdumpy.setup import state, sysfs
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


def collect(paths: SystemPaths, *, config_path: str | None = None,
            arch: str | None = None) -> Status:
    arch = arch or os.uname().machine
    st = Status(operational=True)
    find = st.findings.append
    facts = st.facts
    release = sysfs.kernel_release(paths)
    facts["kernel_release"] = release

    # kernel configuration
    kc = sysfs.kernel_config(paths, release)
    facts["kernel_config_source"] = kc.source
    facts["kernel_config"] = {k: kc.get(k) for k in sysfs.KEXEC_CONFIG_KEYS}
    if kc.source is None:
        find(Finding("kernel config", WARNING, "neither /proc/config.gz nor "
                     f"/boot/config-{release} is readable; kernel support not checked",
                     "install the kernel's config file, or `modprobe configs`"))
    else:
        for key, why in (("CONFIG_CRASH_DUMP", "the kernel cannot boot as a capture kernel"),
                         ("CONFIG_PROC_VMCORE", "the capture kernel has no /proc/vmcore")):
            if not kc.enabled(key):
                find(Finding(key, ERROR, f"{key} is not set in {kc.source}: {why}",
                             "use a distribution kernel or rebuild with " + key + "=y"))
        if not kc.enabled("CONFIG_KEXEC_FILE") and not kc.enabled("CONFIG_KEXEC"):
            find(Finding("kexec", ERROR, f"neither CONFIG_KEXEC_FILE nor CONFIG_KEXEC in "
                         f"{kc.source}: no way to load a capture kernel",
                         "rebuild with CONFIG_KEXEC_FILE=y"))
        elif not kc.enabled("CONFIG_KEXEC_FILE"):
            find(Finding("CONFIG_KEXEC_FILE", WARNING, "no kexec_file_load: loading falls "
                         "back to kexec-tools (kexec_load), which Secure Boot forbids",
                         "use a kernel with CONFIG_KEXEC_FILE=y"))
        if kc.enabled("CONFIG_RELOCATABLE") is False:
            find(Finding("CONFIG_RELOCATABLE", WARNING, "the kernel is not relocatable: it "
                         "cannot serve as its own capture kernel",
                         "set load.kernel to a relocatable kernel, or rebuild with "
                         "CONFIG_RELOCATABLE=y"))

    # reservation
    res = sysfs.crash_reservation(paths)
    cmd = sysfs.cmdline(paths)
    ram, ram_src = sysfs.ram_size(paths)
    facts["crash_size"] = res.size
    facts["iomem_crash_kernel"] = [{"start": s, "end": e} for s, e in res.regions]
    facts["cmdline_crashkernel"] = sysfs.crashkernel_words(cmd)
    facts["ram"] = {"bytes": ram, "source": ram_src}
    words = sysfs.crashkernel_words(cmd)
    if not res.size:
        if words:
            ev = evaluate(cmd, ram, KernelRules.for_kernel(release, arch))
            why = "; ".join(ev.explanation) if not ev.reserved else (
                f"{' '.join(words)} asks for {human(ev.size)}, but the kernel could not "
                "allocate it (dmesg | grep -i crashkernel)")
        else:
            why = "no crashkernel= on the kernel command line"
        find(Finding("reservation", ERROR, f"no memory reserved for the capture kernel: {why}",
                     "kdumpy estimate --apply (writes the GRUB setting), update-grub, reboot"))
    else:
        regions = ", ".join(f"{s:#x}-{e:#x}" for s, e in res.regions) or (
            "addresses hidden (run as root)" if res.addresses_hidden else "not in /proc/iomem")
        find(Finding("reservation", INFO, f"{human(res.size)} reserved ({regions})"))

    # config file
    cfg: Config | None = None
    cpath = config_path or paths.config
    try:
        cfg = load_config(cpath)
        facts["config"] = cpath if os.path.exists(cpath) else None
    except KdumpyError as exc:
        find(Finding("config", ERROR, str(exc), f"fix {cpath} (see `kdumpy install` for an "
                                                "annotated example)"))

    if res.size and cfg is not None:
        from kdumpy.setup.estimate import estimate
        kernel, initrd = default_images(paths, cfg, release)
        est = estimate(ram, kernel=kernel, initrd=initrd, arch=arch, quick=True)
        facts["estimate"] = est.needed
        if res.size < est.needed:
            find(Finding("reservation size", WARNING,
                         f"{human(res.size)} reserved, the capture boot needs about "
                         f"{human(est.needed)} (quick estimate): it may run out of memory",
                         f"kdumpy estimate, then crashkernel={est.recommended}"))

    # early kdump (kdumpy install --initramfs, rd.earlykdump)
    from kdumpy.setup import early
    es = early.state(paths, cmd, sysfs.crash_loaded(paths))
    facts["early_kdump"] = {"active": es.active, "switch": es.switch_on,
                            "hooks": es.installed}
    if es.active:
        find(Finding("early kdump", INFO, f"active: {early.SWITCH} is on the command line "
                     f"and the {', '.join(es.installed)} hook is installed"))
    elif es.switch_on:
        find(Finding("early kdump", WARNING, f"{early.SWITCH} is on the command line but no "
                     "early-kdump hook is installed", "kdumpy install --initramfs, then "
                     "rebuild the initramfs"))
    elif es.installed:
        find(Finding("early kdump", INFO, f"hook installed ({', '.join(es.installed)}) but "
                     f"off: add {early.SWITCH} to the kernel command line"))

    # panic triggers ([triggers] in the config, /proc/sys/kernel)
    _triggers(paths, cfg, st)

    # loaded
    loaded = sysfs.crash_loaded(paths)
    rec = state.read_load_record(paths)
    facts["loaded"] = loaded
    facts["load_method"] = rec.get("method") if rec else None
    if loaded is None:
        find(Finding("loaded", ERROR, "/sys/kernel/kexec_crash_loaded is missing: this "
                     "kernel has no kexec support", "use a kernel with CONFIG_KEXEC_FILE=y"))
    elif not loaded:
        find(Finding("loaded", ERROR, "no capture kernel is loaded",
                     "kdumpy load (at boot: systemctl enable --now kdumpy.service)"))
    else:
        how = f" with {rec['method']}" if rec and rec.get("method") else ""
        find(Finding("loaded", INFO, f"capture kernel loaded{how}"))

    # Secure Boot, lockdown
    sb = sysfs.secure_boot(paths)
    lock = sysfs.lockdown(paths)
    facts["secure_boot"] = sb
    facts["lockdown"] = lock
    if lock not in (None, "none") or sb:
        detail = (f"Secure Boot {'on' if sb else 'off' if sb is False else 'unknown'}, "
                  f"lockdown {lock or 'unknown'}: only kexec_file_load with a signed kernel "
                  "works")
        sev = INFO
        fix = None
        if kc.source is not None and not kc.enabled("CONFIG_KEXEC_FILE"):
            sev, fix = ERROR, "use a kernel with CONFIG_KEXEC_FILE=y"
        elif rec and rec.get("method") == "kexec_load":
            sev, fix = WARNING, "kdumpy unload && kdumpy load (kexec_file_load)"
        find(Finding("secure boot", sev, detail, fix))

    # hotplug
    hp = sysfs.crash_hotplug(paths)
    facts["crash_hotplug"] = hp
    if hp["cpu"] or hp["memory"]:
        find(Finding("hotplug", INFO, "the kernel updates the capture kernel's header on "
                     "CPU/memory hotplug (crash_hotplug=1): no reload needed"))
    else:
        find(Finding("hotplug", INFO, "CPU/memory hotplug needs a reload; the kdumpy udev "
                     "rule does it (kdumpy install)"))

    # the last test
    t = test_outcome(paths)
    facts["test"] = t
    if t is not None:
        if t["arrived"]:
            find(Finding("test", INFO, f"{t['test_id']}: the dump arrived in {t['dump_dir']}"))
        elif t["status"] == "pending":
            find(Finding("test", INFO, f"{t['test_id']}: written, no crash since"))
        else:
            detail = {"incomplete": f"the dump is incomplete ({t['vmcore']})",
                      "failed": f"the capture failed: {t['error']}"}.get(
                t["status"] or "", "no dump arrived (the machine rebooted without a capture)")
            find(Finding("test", WARNING, f"{t['test_id']}: {detail}",
                         "check the capture kernel's console log; kdumpy status; "
                         "kdumpy estimate"))

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


def format_status(st: Status) -> str:
    lines = [f"kdump is {'operational' if st.operational else 'NOT operational'}"]
    marks = {ERROR: "ERROR", WARNING: "warning", INFO: "ok"}
    for f in st.findings:
        lines.append(f"  [{marks[f.severity]}] {f.what}: {f.detail}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    return "\n".join(lines)
