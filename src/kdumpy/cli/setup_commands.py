"""``kdumpy crashkernel``, ``estimate``, ``status``, ``rebuild``, ``load``, ``unload``, ``install``,
``test``, ``capture``: setting kdump up, and the capture kernel's save job.

Exit status: 0 success; 1 a reported error; 2 bad usage. ``status``: 3 when kdump is not
operational. ``crashkernel``: 3 when the value is valid but reserves nothing at this RAM
size. ``capture``: 4 when the dump failed or is incomplete (the failure action ran).
Every command takes ``--root DIR`` to work on a tree other than ``/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from kdumpy.errors import KdumpyError

LOAD_METHOD_NAMES = {"auto": "auto", "file": "kexec_file_load", "kexec": "kexec_load",
                     "kexec_file_load": "kexec_file_load", "kexec_load": "kexec_load"}


def _paths(args: argparse.Namespace):
    from kdumpy.setup.paths import SystemPaths
    return SystemPaths(args.root)


def _config_path(args: argparse.Namespace) -> str:
    return args.config if args.config else _paths(args).config


def _dump_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _arch(args: argparse.Namespace) -> str:
    return getattr(args, "arch", None) or os.uname().machine


# -- crashkernel ------------------------------------------------------------------------------

def cmd_crashkernel(args: argparse.Namespace) -> int:
    from kdumpy.setup import sysfs
    from kdumpy.setup.crashkernel import (
        KernelRules,
        evaluate,
        format_reservation,
        normalise_spec,
    )
    from kdumpy.setup.sizes import parse_size
    paths = _paths(args)
    if args.ram is not None:
        ram = parse_size(args.ram, "--ram")
    else:
        ram, _src = sysfs.ram_size(paths)
        if not ram:
            raise KdumpyError("cannot tell this machine's RAM size; pass --ram SIZE")
    release = args.kernel_release or sysfs.kernel_release(paths)
    rules = KernelRules.for_kernel(release, _arch(args))
    res = evaluate(normalise_spec(args.spec), ram, rules)
    if args.json:
        _dump_json(res.to_json())
    else:
        print(format_reservation(res))
    if res.error:
        if not args.json:
            print(f"kdumpy: {res.word}: {res.error}", file=sys.stderr)
        return 1
    return 0 if res.reserved else 3


# -- estimate ---------------------------------------------------------------------------------

def cmd_estimate(args: argparse.Namespace) -> int:
    from kdumpy.setup import estimate as est_mod
    from kdumpy.setup import sysfs
    from kdumpy.setup.config import load_config
    from kdumpy.setup.crashkernel import KernelRules, evaluate
    from kdumpy.setup.sizes import human, parse_size
    from kdumpy.setup.status import capture_images
    paths = _paths(args)
    cfg = load_config(_config_path(args), must_exist=bool(args.config))
    release = sysfs.kernel_release(paths)
    ram = parse_size(args.ram, "--ram") if args.ram else sysfs.ram_size(paths)[0]
    if not ram:
        raise KdumpyError("cannot tell this machine's RAM size; pass --ram SIZE")
    kernel, initrd, own = capture_images(paths, cfg, release)
    image_note = None
    if own:
        # measure the image the capture kernel will boot: build it when missing or stale
        from kdumpy.setup.capture_image import build as image_build
        try:
            initrd, man = image_build.ensure(paths, cfg, release, _config_path(args))
            if man is not None and not args.json:
                print(f"kdumpy: built the capture image {initrd}")
        except KdumpyError as exc:
            image_note = f"estimated without the capture image, which cannot be built: {exc}"
    e = est_mod.estimate(ram, kernel=kernel, initrd=initrd, arch=_arch(args),
                         threads=cfg.dump.threads or 1, own_image=own)
    if image_note:
        e.notes.append(image_note)
    cmd = sysfs.cmdline(paths)
    current = sysfs.crash_reservation(paths).size
    now = evaluate(cmd, ram, KernelRules.for_kernel(release, _arch(args))) \
        if sysfs.crashkernel_words(cmd) else None
    applied = None
    bootloader_kind = None
    if args.apply:
        from kdumpy.setup import bootloader
        loader = bootloader.kind(paths)
        if loader is None:
            raise KdumpyError(f"no GRUB found ({paths.grub_default}) and no boot loader "
                              f"entries ({bootloader.BLS_DIR}); add "
                              f"crashkernel={e.recommended} to your boot loader's kernel "
                              "command line yourself")
        bootloader_kind = loader
        if loader == "bls":
            changed = bootloader.apply_bls(paths, e.recommended)
            applied = ", ".join(changed) if changed else "nothing (already set)"
        else:
            applied = est_mod.apply_grub(paths, e.recommended)
    if args.json:
        d = e.to_json()
        d["kernel"], d["initrd"] = kernel, initrd
        d["current"] = {"cmdline": sysfs.crashkernel_words(cmd), "reserved": current}
        d["applied"] = applied
        _dump_json(d)
        return 0
    print(f"The capture boot needs about {human(e.needed)} on this machine ({human(ram)} RAM): "
          f"kernel + the larger of (initramfs) and (userspace + kdumpy), plus "
          f"{int(est_mod.MARGIN * 100)}%:")
    for name, size in e.components.items():
        print(f"  {name:10} {human(size):>10}  {e.sources[name]}")
    print(f"recommended: crashkernel={e.recommended}"
          + (f"  (gives {human(e.recommended_size)} here)" if ":" in e.recommended else ""))
    for n in e.notes:
        print(f"  note: {n}")
    if now is not None:
        state = (f"reserves {human(now.size)}" if now.reserved else "reserves nothing")
        print(f"current: {' '.join(sysfs.crashkernel_words(cmd))} {state}"
              + (f"; {human(current)} reserved now" if current else ""))
    else:
        print("current: no crashkernel= on the kernel command line")
    if applied and bootloader_kind == "bls":
        print(f"updated {applied}; reboot to reserve it")
    elif applied:
        print(f"wrote {applied}; now run update-grub and reboot")
    else:
        print("to apply: add it to the kernel command line; with GRUB, "
              "`kdumpy estimate --apply` writes " + paths.grub_dropin + " containing")
        print(f"  GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT "
              f"crashkernel={e.recommended}\"")
        print("then run update-grub and reboot")
    return 0


# -- status -----------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    from kdumpy.setup.status import collect, format_status
    st = collect(_paths(args), config_path=_config_path(args), arch=_arch(args))
    if args.json:
        _dump_json(st.to_json())
    else:
        print(format_status(st))
    return 0 if st.operational else 3


# -- load / unload ----------------------------------------------------------------------------

def build_load_request(args: argparse.Namespace, *, rebuild: bool = True) -> dict[str, Any]:
    """Kernel, initrd and command line from the flags, the config and /proc/cmdline.

    Without ``load.initrd``/``--initrd``/``--no-initrd`` the initrd is kdumpy's capture
    image for the running release, rebuilt first when missing or stale (``rebuild``)."""
    from kdumpy.setup import sysfs
    from kdumpy.setup.cmdline import build_capture_cmdline
    from kdumpy.setup.config import load_config
    from kdumpy.setup.status import default_images
    paths = _paths(args)
    cfg = load_config(_config_path(args), must_exist=bool(args.config))
    release = sysfs.kernel_release(paths)
    kernel, _system_initrd = default_images(paths, cfg, release)
    own_image = not (args.initrd or args.no_initrd or cfg.load.initrd)
    initrd: str | None = None
    image: dict[str, Any] | None = None
    if args.initrd:
        initrd = args.initrd
    elif cfg.load.initrd and not args.no_initrd:
        initrd = paths.path(cfg.load.initrd)
    elif own_image:
        from kdumpy.setup.capture_image import build as image_build
        path = _config_path(args)
        if rebuild:
            initrd, man = image_build.ensure(paths, cfg, release, path)
            image = {"path": initrd, "rebuilt": man is not None}
        else:
            f = image_build.freshness(paths, cfg, release, path)
            initrd = f.image
            image = {"path": f.image, "exists": f.exists, "stale": f.stale, "error": f.error}
    if args.kernel:
        kernel = args.kernel
    if not kernel:
        raise KdumpyError(f"no kernel image: none of {', '.join(paths.boot_kernel_candidates(release))} "
                          "exists; set load.kernel in the config or pass --kernel")
    if args.cmdline is not None:
        cmdline = args.cmdline
        if args.append:
            cmdline = " ".join([cmdline, *args.append])
    else:
        base = cfg.load.cmdline if cfg.load.cmdline is not None else sysfs.cmdline(paths)
        cmdline = build_capture_cmdline(base, arch=_arch(args), remove=cfg.load.cmdline_remove,
                                        append=[*cfg.load.cmdline_append, *(args.append or [])],
                                        own_image=own_image)
    method = LOAD_METHOD_NAMES[args.method] if args.method else cfg.load.method
    req: dict[str, Any] = {"kernel": kernel, "initrd": initrd, "cmdline": cmdline,
                           "method": method}
    if image is not None:
        req["image"] = image
    if cfg.triggers:
        req["triggers"] = dict(cfg.triggers)
    return req


def cmd_load(args: argparse.Namespace) -> int:
    from kdumpy.setup import sysfs
    from kdumpy.setup.kexec import Kexec
    paths = _paths(args)
    from kdumpy.setup import triggers as trig
    if not args.dry_run:
        # nothing is built or loaded without a reservation to load into
        size = sysfs.crash_reservation(paths).size
        if size == 0:
            raise KdumpyError("no memory is reserved for the capture kernel "
                              "(/sys/kernel/kexec_crash_size is 0): add crashkernel= to the "
                              "kernel command line (`kdumpy estimate --apply`) and reboot")
    req = build_load_request(args, rebuild=not args.dry_run)
    wanted: dict[str, int] = req.get("triggers", {})
    if req.get("image", {}).get("rebuilt") and not args.json:
        print(f"kdumpy: rebuilt the capture image {req['image']['path']}")
    if args.dry_run:
        if args.json:
            _dump_json(req)
        else:
            for k in ("kernel", "initrd", "cmdline", "method"):
                print(f"{k:8} {req[k]}")
            img = req.get("image")
            if img and (not img.get("exists") or img.get("stale") or img.get("error")):
                why = img.get("error") or ", ".join(img.get("stale") or []) or "missing"
                print(f"image    stale ({why}): `kdumpy load` rebuilds it first")
            for name, value in wanted.items():
                print(f"trigger  {name} = {trig.describe(name, value)}")
        return 0
    # a knob this kernel lacks is an error before anything is loaded
    trig.check_available(paths, wanted)
    kx = Kexec(paths, arch=_arch(args))
    res = kx.load(req["kernel"], req["initrd"], req["cmdline"], method=req["method"],
                  lockdown=sysfs.lockdown(paths))
    for n in res.notes:
        print(f"kdumpy: note: {n}", file=sys.stderr)
    loaded = sysfs.crash_loaded(paths)
    if loaded is False:
        raise KdumpyError("the load call succeeded but /sys/kernel/kexec_crash_loaded still "
                          "reads 0")
    # the panic triggers go on only once a capture kernel is there to catch the panic
    applied = trig.apply(paths, wanted)
    if args.json:
        _dump_json({"method": res.method, "kernel": res.kernel, "initrd": res.initrd,
                    "cmdline": res.cmdline, "loaded": loaded, "notes": res.notes,
                    "triggers": {a.name: {"before": a.before, "after": a.after}
                                 for a in applied}})
    else:
        print(f"kdumpy: loaded {res.kernel} with {res.method}")
        print(f"kdumpy: capture command line: {res.cmdline}")
        for a in applied:
            print(f"kdumpy: {trig.SYSCTL_DIR}/{a.name} = {trig.describe(a.name, a.after)}"
                  + (f" (was {trig.describe(a.name, a.before)})"
                     if a.before is not None and a.before != a.after else ""))
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from kdumpy.setup.kexec import Kexec
    paths = _paths(args)
    kx = Kexec(paths, arch=_arch(args))
    method = kx.unload(LOAD_METHOD_NAMES[args.method] if args.method else None)
    print(f"kdumpy: unloaded the capture kernel ({method})")
    return 0


# -- rebuild -----------------------------------------------------------------------------------

def cmd_rebuild(args: argparse.Namespace) -> int:
    from kdumpy.setup import sysfs
    from kdumpy.setup.capture_image import build as image_build
    from kdumpy.setup.config import load_config
    from kdumpy.setup.sizes import human
    paths = _paths(args)
    path = _config_path(args)
    cfg = load_config(path, must_exist=bool(args.config))
    release = args.kernel or sysfs.kernel_release(paths)
    if not args.force:
        f = image_build.freshness(paths, cfg, release, path)
        if f.error:
            raise KdumpyError(f.error)
        if f.current:
            if args.json:
                _dump_json({"image": f.image, "rebuilt": False})
            else:
                print(f"kdumpy: {f.image} is current")
            return 0
        why = ", ".join(f.stale)
    else:
        why = "--force"
    man = image_build.build(paths, cfg, release, path)
    if args.json:
        _dump_json(dict(man, rebuilt=True))
        return 0
    print(f"kdumpy: built {man['image']} ({why}): {human(man['compressed_size'])} "
          f"{man['compression']}, {human(man['unpacked_size'])} unpacked")
    print(f"  modules: {' '.join(m.rsplit('/', 1)[-1] for m in man['modules']) or 'none'}")
    if man["target"]:
        t = man["target"]
        print(f"  target: {t['fstype']} UUID={t['uuid']} ({' > '.join(t['devices'])})")
    for n in man["notes"]:
        print(f"  note: {n}")
    return 0


# -- install / test / capture -----------------------------------------------------------------

def cmd_install(args: argparse.Namespace) -> int:
    import shlex

    from kdumpy.setup.config import load_config
    from kdumpy.setup.units import install
    cmd = shlex.split(args.kdumpy) if args.kdumpy else None
    paths = _paths(args)
    cfg = load_config(_config_path(args), must_exist=bool(args.config))
    for item in install(paths, cmd, triggers=cfg.triggers):
        word = "removed" if item.removed else "wrote" if item.written else "kept "
        print(f"{word} {item.path}")
    if args.initramfs:
        from kdumpy.setup import early, sysfs
        from kdumpy.setup.cmdline import build_capture_cmdline
        from kdumpy.setup.units import install_early
        base = cfg.load.cmdline if cfg.load.cmdline is not None else sysfs.cmdline(paths)
        capture = build_capture_cmdline(base, arch=_arch(args), remove=[
            *cfg.load.cmdline_remove, early.SWITCH], append=cfg.load.cmdline_append)
        gens = early.detect_generators(paths)
        for item in install_early(paths, capture, cmd):
            print(f"wrote {item.path}")
        for g in gens or ["initramfs-tools"]:
            print(f"early kdump ({g}): {early.REBUILD[g]}, then add {early.SWITCH} to the "
                  "kernel command line")
    root = "" if args.root == "/" else f" (in {args.root})"
    print(f"next{root}: systemctl daemon-reload && systemctl enable --now kdumpy.service; "
          "udevadm control --reload")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from kdumpy.setup.crash_test import run_test

    def confirm(warning: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise KdumpyError("refusing to crash without confirmation: pass --yes")
        print(warning, file=sys.stderr)
        return input("Type 'crash' to go on: ").strip() == "crash"

    test_id = run_test(_paths(args), confirm=confirm)
    print(f"kdumpy: test {test_id} written; the kernel did not crash")
    return 1


def cmd_capture(args: argparse.Namespace) -> int:
    from kdumpy.service import COMPLETE, CaptureSession
    from kdumpy.setup.actions import RecordedActions, SystemActions
    from kdumpy.setup.config import load_config
    from kdumpy.setup.units import CAPTURE_FAILED_HANDLED
    paths = _paths(args)

    def log(msg: str) -> None:
        print(f"kdumpy: capture: {msg}", file=sys.stderr, flush=True)

    actions = RecordedActions(log) if args.no_action else SystemActions(paths)
    try:
        cfg = load_config(_config_path(args), must_exist=bool(args.config))
    except KdumpyError as exc:
        log(f"{exc}; failure action: reboot")
        actions.perform("reboot")
        return 1
    session = CaptureSession(cfg, paths=paths, vmcore=args.vmcore, actions=actions, log=log,
                             quiet=args.quiet)
    res = session.run_all()
    if args.json:
        _dump_json(res.to_json())
    return 0 if res.status == COMPLETE else CAPTURE_FAILED_HANDLED


# -- registration -----------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="work on the system tree under DIR (default: /)")
    if config:
        p.add_argument("--config", default=None, metavar="FILE",
                       help="configuration file (default: /etc/kdumpy.toml under --root)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashkernel", help="what a crashkernel= value reserves, as the kernel "
                                           "parses it",
                       description="Parse SPEC exactly as the kernel does and say what it "
                                   "reserves on a machine with --ram of memory (default: this "
                                   "one). SPEC: '256M', '1G-4G:192M,4G-:256M@16M', '512M,high "
                                   "128M,low', or whole crashkernel= words.")
    p.add_argument("spec", nargs="+", metavar="SPEC")
    p.add_argument("--ram", metavar="SIZE", help="RAM size, e.g. 16G (default: this machine's)")
    p.add_argument("--kernel-release", metavar="R",
                   help="apply the rules of this kernel release, e.g. 6.1.0-27-amd64 "
                        "(default: the running one)")
    p.add_argument("--arch", help="architecture (default: this machine's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p, config=False)
    p.set_defaults(func=cmd_crashkernel)

    p = sub.add_parser("estimate", help="recommend a crashkernel= reservation and how to set it")
    p.add_argument("--apply", action="store_true",
                   help="write /etc/default/grub.d/kdumpy.cfg (GRUB only)")
    p.add_argument("--ram", metavar="SIZE", help="RAM size (default: this machine's)")
    p.add_argument("--arch", help="architecture (default: this machine's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("status", help="is kdump operational? (exit 0 yes, 3 no; each problem "
                                      "with its fix)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--arch", help=argparse.SUPPRESS)
    _common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("load", help="load the capture kernel (kexec_file_load, kexec-tools "
                                    "as fallback)",
                       description="Load the capture kernel into the crash slot. Flags "
                                   "override the config; by default the running kernel's "
                                   "image and initramfs under /boot with a command line "
                                   "built from /proc/cmdline.")
    p.add_argument("--kernel", metavar="FILE", help="kernel image (bzImage/vmlinuz)")
    p.add_argument("--initrd", metavar="FILE", help="initramfs")
    p.add_argument("--no-initrd", action="store_true", help="load without an initramfs")
    p.add_argument("--cmdline", metavar="TEXT",
                   help="the capture command line exactly (nothing removed or added)")
    p.add_argument("--append", action="append", metavar="TEXT",
                   help="words to add to the capture command line (repeatable)")
    p.add_argument("--method", choices=sorted(LOAD_METHOD_NAMES),
                   help="auto (default): kexec_file_load, then kexec-tools; file: "
                        "kexec_file_load only; kexec: kexec-tools' kexec_load only")
    p.add_argument("--dry-run", action="store_true", help="print what would be loaded")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--arch", help=argparse.SUPPRESS)
    _common(p)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("rebuild", help="build the capture image when it is missing or stale",
                       description="Build kdumpy's capture image (the initramfs the capture "
                                   "kernel boots) for a kernel release into /var/lib/kdumpy: "
                                   "the dump target's drivers and filesystem, busybox, fsck, "
                                   "this Python and kdumpy. Skipped when the image is current "
                                   "(same kernel, config, target devices and kdumpy).")
    p.add_argument("--force", action="store_true", help="build even when current")
    p.add_argument("--kernel", metavar="RELEASE",
                   help="kernel release (default: the running one), e.g. from a postinst hook")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("unload", help="unload the capture kernel (the way it was loaded)")
    p.add_argument("--method", choices=sorted(LOAD_METHOD_NAMES),
                   help="override the recorded load method")
    p.add_argument("--arch", help=argparse.SUPPRESS)
    _common(p, config=False)
    p.set_defaults(func=cmd_unload)

    p = sub.add_parser("install", help="install the systemd units, udev rule and an example "
                                       "config")
    p.add_argument("--kdumpy", metavar="COMMAND",
                   help="how the units run kdumpy (default: the kdumpy script on PATH, else "
                        "this Python with -m kdumpy)")
    p.add_argument("--initramfs", action="store_true",
                   help="also install early-kdump hooks (initramfs-tools, dracut, "
                        "mkinitcpio): the capture kernel is loaded from the initramfs when "
                        "rd.earlykdump is on the kernel command line")
    p.add_argument("--arch", help=argparse.SUPPRESS)
    _common(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("test", help="crash the machine now (sysrq-c) to test kdump end to end")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _common(p, config=False)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("capture", help="in the capture kernel: save the dump as the config "
                                       "says, then the final/failure action",
                       description="The capture kernel's save job (kdumpy-save.service): "
                                   "hooks, target, free space, dmesg.txt, vmcore, "
                                   "report.json, retention, then the final or failure action.")
    p.add_argument("--vmcore", metavar="FILE", help="dump to read (default: /proc/vmcore)")
    p.add_argument("--no-action", action="store_true",
                   help="print the final/failure action instead of performing it")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _common(p)
    p.set_defaults(func=cmd_capture)
    register_propagate(sub)


# -- propagate ----------------------------------------------------------------------------

def cmd_propagate(args: argparse.Namespace) -> int:
    from kdumpy.setup.config import load_config
    from kdumpy.setup.propagate import DEFAULT_KEY, DEFAULT_KNOWN_HOSTS, propagate
    paths = _paths(args)
    cfg = load_config(_config_path(args), must_exist=True)
    t = cfg.target
    res = propagate(t, key=paths.path(args.key or t.ssh_key or DEFAULT_KEY),
                    known_hosts=paths.path(t.ssh_known_hosts or DEFAULT_KNOWN_HOSTS),
                    identity=args.identity, options=args.ssh_option or (),
                    admin_known_hosts=os.path.expanduser(args.admin_known_hosts),
                    authorized_keys=args.authorized_keys,
                    log=lambda m: print(f"kdumpy: propagate: {m}", file=sys.stderr))
    if args.json:
        _dump_json(res.__dict__)
    return 0


def register_propagate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("propagate", help="ssh target: create kdumpy's key, pin the host key, "
                                         "install the key on the target, check the login",
                       description="Prepare the config's ssh [target] for the capture kernel: "
                                   "an ed25519 key (0600), the target's host key pinned in "
                                   "kdumpy's known_hosts, the public key appended to the "
                                   "target's authorized_keys over a session you authenticate "
                                   "(password, agent or --identity), then a BatchMode login "
                                   "as the capture kernel will make it.")
    p.add_argument("--key", metavar="FILE",
                   help="private key to create/use (default: target.ssh_key, else "
                        "/etc/kdumpy/ssh/id_ed25519)")
    p.add_argument("--identity", metavar="FILE",
                   help="your key for the installing session (default: agent or password)")
    p.add_argument("-o", "--ssh-option", action="append", metavar="OPT",
                   help="ssh -o option for the installing session (repeatable)")
    p.add_argument("--admin-known-hosts", default="~/.ssh/known_hosts", metavar="FILE",
                   help="take the host key from here when it is known (default: %(default)s); "
                        "else ssh-keyscan and print its fingerprints")
    p.add_argument("--authorized-keys", metavar="PATH",
                   help="the server's AuthorizedKeysFile, an absolute path (default: "
                        "~/.ssh/authorized_keys of the target user)")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    _common(p)
    p.set_defaults(func=cmd_propagate)
