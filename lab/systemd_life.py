"""kdumpy's whole life on the systemd guest: install, reserve, crash, capture, report.

One run (:func:`ensure_life`) is a sequence of boots of the systemd guest (:mod:`.systemd_guest`)
on one qcow2 overlay of its base image, each boot its own QEMU process (``-no-reboot``: the
guest's reboot ends it)::

    boot 1 (no crashkernel=)  autologin; venv at /opt/kdumpy/venv from the host's wheels;
                              kdumpy install; systemctl enable kdumpy.service; the scenario's
                              setup; kdumpy estimate --json; systemctl reboot
    boot 2 (crashkernel=R)    R is what estimate recommended: the guest has no boot loader
                              (QEMU -kernel), so the lab puts R on the next -append where
                              `estimate --apply` + update-grub would on a GRUB machine.
                              systemctl start kdumpy.service (builds the capture image, loads);
                              kdumpy status; kdumpy test --yes -> panic -> the capture kernel
                              boots kdumpy's image -> saves into /var/crash on the guest's disk
                              -> reboot (QEMU exits)
    boot 3                    kdumpy status --json; /var/crash and kdumpy's state are copied to
                              the run directory over 9p; poweroff

A lab-only pre hook (``/etc/kdumpy/pre.d/10-lab-raw-vmcore``, copied into the capture image)
``dd``s /proc/vmcore onto a second virtio disk (/dev/vdb in the capture kernel); the host trims
that sparse file to the ELF's end and compares the dump with it page for page.

Results are cached like the other lab runs: ``<lab cache>/<release>/systemd-<name>/meta.json``
(written last), reused while the guest image, the scenario and kdumpy's sources are unchanged
(``KDUMPY_LAB_REUSE=any`` ignores kdumpy's sources).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cache import locked, release_dir
from .guest_shell import GuestBoot, GuestError
from .guest_wheels import wheel_dirs
from .qemu import Disk, Machine, Share, choose_accelerator
from .run import kdumpy_digest, reuse_policy, timeout
from .systemd_guest import GuestImage, ensure_guest, overlay

Log = Callable[[str], None]

LIFE_FORMAT = 1
VENV = "/opt/kdumpy/venv"
KDUMPY = "/usr/local/sbin/kdumpy"
RAW_HOOK = "/etc/kdumpy/pre.d/10-lab-raw-vmcore"
RAW_HOOK_TEXT = """#!/bin/sh
# lab only: a byte copy of the crashed kernel's memory on the second virtio disk, which the
# host compares with the saved dump
dd if="${KDUMPY_VMCORE:-/proc/vmcore}" of=/dev/vdb bs=1M
echo "KDUMPY-LAB value raw_copy_rc $?" > /dev/console
"""

WARN_HOOK = "/etc/kdumpy/pre.d/05-lab-warn"
#: The life run's disk right after its install boot; from_life scenarios start from it.
INSTALLED = "installed.qcow2"
#: The root-on-LVM layout: volume group, logical volume and the root= Debian's installer
#: would write for it (Debian 12's initrd activates it through lvm2's udev rules).
LVM_VG, LVM_LV = "kdumpyvg", "root"
LVM_ROOT = f"/dev/mapper/{LVM_VG}-{LVM_LV}"
LVM_DISK_SIZE = "5G"


def warn_hook_text(release: str) -> str:
    """A pre hook that loads :mod:`lab.warn_module`'s module (carried in the hook itself, as
    base64: hooks are the files the image copies) so that a WARN() fires in the capture
    kernel."""
    import base64

    from .kernels import ensure_kernel
    from .warn_module import ensure_warn_module

    ko = ensure_warn_module(ensure_kernel(release))
    data = base64.encodebytes(ko.read_bytes()).decode()
    return ("#!/bin/sh\n# lab only: a WARN() in the capture kernel\n"
            "mkdir -p /tmp\nbase64 -d > /tmp/kdumpy_warn.ko <<'KO'\n" + data + "KO\n"
            "insmod /tmp/kdumpy_warn.ko\n"
            'echo "KDUMPY-LAB value warn_insmod_rc $?" > /dev/console\n'
            'echo "KDUMPY-LAB value capture_panic_on_warn $(cat /proc/sys/kernel/panic_on_warn)"'
            " > /dev/console\n")


#: Console lines of kdumpy's capture image (/init on /dev/console).
INIT_STARTED = re.compile(r"kdumpy-init: capture image started on (\S+)")
INIT_EXIT = re.compile(r"kdumpy-init: capture exit (\d+)")
INIT_ACTION = re.compile(r"kdumpy-init: action (\w+)")
INIT_FAILED = re.compile(r"kdumpy-init: FAILED: (.*)")
PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
LINUX_VERSION = re.compile(r"Linux version (\S+)")


@dataclass(frozen=True)
class LifeOptions:
    """A scenario. Everything here is part of the run's cache key."""

    name: str = "life"
    memory_mib: int = 1024
    smp: int = 2
    config: str = ""                     # /etc/kdumpy.toml ("" = none: the defaults)
    setup: tuple[str, ...] = ()          # shell commands after install, before the reboot
    crash_setup: tuple[str, ...] = ()    # shell commands in boot 2 right before the crash
    crashkernel: str | None = None       # None: what `kdumpy estimate` recommends
    raw_copy: bool = True                # the pre hook copies /proc/vmcore to /dev/vdb
    expect_dump: bool = True             # False: the capture must fail cleanly and reboot
    capture_deadline: float = 900        # seconds from the panic to QEMU's exit
    boot3_append: str = ""               # kernel parameters of the boot after the crash
    warn_hook: bool = False              # a pre hook loads lab.warn_module's WARN() module
    boot3_record: tuple[str, ...] = ()   # shell commands whose output boot 3 records
    #: Start from the disk of the plain life run after its install boot (kdumpy installed by
    #: the documented path, units enabled, the raw hook in place) instead of installing again:
    #: the scenario's configuration happens in boot 2, before kdumpy.service is restarted.
    from_life: bool = False
    #: Move the root filesystem onto LVM before boot 2 (:meth:`_Life._root_to_lvm`): the
    #: installed system is copied into a logical volume on a new disk, which then is the
    #: guest's only system disk, as after a Debian install with "guided - use LVM".
    root_lvm: bool = False


@dataclass
class LifeRun:
    directory: Path
    meta: dict[str, Any]

    @property
    def raw_vmcore(self) -> Path:
        return self.directory / "vmcore.raw"

    @property
    def crash_dir(self) -> Path:
        return self.directory / "crash"

    def dumps(self) -> list[Path]:
        return sorted(p for p in self.crash_dir.glob("*/vmcore*") if p.is_file()
                      and not p.name.endswith((".json", ".txt")))


def elf_end(path: Path) -> int:
    """The end of the last PT_LOAD's file data in the ELF64 core at ``path`` (its size)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise ValueError(f"{path}: offset 0: not an ELF64 core")
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    end = phoff + phentsize * phnum
    for i in range(phnum):
        _type, _flags, offset, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", table,
                                                                      i * phentsize)
        end = max(end, offset + filesz)
    return end


def _key(image: GuestImage, release: str, options: LifeOptions, accel: str,
         parent: LifeRun | None = None) -> str:
    opts = asdict(options)
    if not opts["root_lvm"]:
        del opts["root_lvm"]            # runs from before the field keep their keys
    recipe = {"format": LIFE_FORMAT, "guest": image.meta["key"], "release": release,
              "options": opts, "accel": accel,
              "hook": RAW_HOOK_TEXT, "dependencies": _dependencies(),
              "install_script": install_script().read_text(),
              "parent": [parent.meta["key"], parent.meta["created"]] if parent else None}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def run_dir(release: str, options: LifeOptions) -> Path:
    return release_dir(release) / f"systemd-{options.name}"


def _load(directory: Path, key: str, digest: str | None) -> LifeRun | None:
    meta_file = directory / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if meta.get("key") != key or not meta.get("complete"):
        return None
    if digest is not None and meta.get("kdumpy_digest") != digest:
        return None
    return LifeRun(directory, meta)


def ensure_life(release: str, options: LifeOptions | None = None, *, fresh: bool = False,
                log: Log = print) -> LifeRun:
    """A completed life-cycle run of ``options`` on kernel ``release`` (cached)."""
    options = options or LifeOptions()
    image = ensure_guest(log=log)
    if release not in image.releases:
        raise LookupError(f"the systemd guest has kernels {image.releases}, not {release}")
    accel, _why = choose_accelerator("auto")
    parent = ensure_life(release, LifeOptions(), log=log) if options.from_life else None
    key = _key(image, release, options, accel, parent)
    digest = kdumpy_digest(whole=True)
    directory = run_dir(release, options)
    with locked(directory.with_name(directory.name + ".lock")):
        if not fresh:
            done = _load(directory, key, digest if reuse_policy() == "strict" else None)
            if done is not None:
                log(f"lab: reusing {directory}")
                return done
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return _Life(image, release, options, accel, directory, log, parent).run(key, digest)


def ensure_venv_layer(image: GuestImage, deps: Path, log: Log = print) -> Path:
    """A qcow2 layer on the guest's base holding ``/opt/kdumpy/venv`` with kdumpy's
    dependencies installed from ``deps`` (built once per guest and dependency set).

    The documented install is ``python3 -m venv`` then ``pip install kdumpy``; here the venv
    and the dependencies come first, once, because pip unpacking and byte-compiling numpy
    under TCG costs minutes, and the life runs then ``pip install`` kdumpy into that venv
    (the same command, which finds its dependencies already satisfied)."""
    layer = image.directory / f"venv-{deps.name}.qcow2"
    with locked(layer.with_name(layer.name + ".lock")):
        if layer.is_file():
            return layer
        partial = layer.with_name(layer.name + ".partial")
        overlay(image.base, partial)
        release = image.releases[0]
        names = " ".join(shlex.quote(d) for d in _dependencies())
        machine = Machine(kernel=image.vmlinuz(release), initrd=image.initrd(release),
                          append=image.root_append(), memory_mib=1024, smp=2,
                          accel=choose_accelerator("auto")[0],
                          shares=(Share("wheels_deps", deps, True),),
                          disks=(Disk(partial, "kdumpy-root", format="qcow2"),))
        log(f"lab: systemd guest: venv layer with {names}")
        with GuestBoot(machine, image.directory / "venv-layer.log", log, "venv") as guest:
            guest.login(timeout("boot") + 60)
            guest.run("mkdir -p /mnt/wheels/deps && mount -t 9p -o trans=virtio,"
                      "version=9p2000.L,ro wheels_deps /mnt/wheels/deps", 60)
            guest.run(f"python3 -m venv {VENV} && {VENV}/bin/pip install -q --no-index "
                      f"--disable-pip-version-check --find-links /mnt/wheels/deps {names}",
                      1800)
            guest.run("umount /mnt/wheels/deps; sync", 60)
            guest.send_detached("systemctl poweroff")
            guest.wait_exit(timeout("boot"))
        partial.chmod(0o444)
        partial.rename(layer)
    return layer


def install_script() -> Path:
    """The documented installer (a venv at /opt/kdumpy/venv, /usr/local/sbin/kdumpy, kdumpy
    install, the unit enabled), run in the guest as an admin would."""
    from .guest_wheels import checkout
    return checkout() / "scripts" / "install-kdumpy"


def _dependencies() -> list[str]:
    import tomllib

    from .guest_wheels import checkout
    return list(tomllib.loads((checkout() / "pyproject.toml").read_text())
                ["project"]["dependencies"])


class _Life:
    def __init__(self, image: GuestImage, release: str, options: LifeOptions, accel: str,
                 directory: Path, log: Log, parent: LifeRun | None = None) -> None:
        self.image, self.release, self.options = image, release, options
        self.accel, self.directory, self.log = accel, directory, log
        self.parent = parent
        if parent is not None:
            self.disk = overlay(parent.directory / INSTALLED, directory / "disk.qcow2",
                                "qcow2")
        self.deps, self.kdumpy = wheel_dirs()
        if parent is None:
            layer = ensure_venv_layer(image, self.deps, log)
            self.disk = overlay(layer, directory / "disk.qcow2", "qcow2")
        self.meta: dict[str, Any] = {"release": release, "options": asdict(options),
                                     "guest": image.meta["key"], "accelerator": accel,
                                     "boots": {}}
        self.root_append = self.image.root_append()

    def machine(self, append: str, *, raw: bool = False,
                extra_disks: tuple[Disk, ...] = ()) -> Machine:
        disks = [Disk(self.disk, "kdumpy-root", format="qcow2"), *extra_disks]
        if raw:
            disks.append(Disk(self.directory / "vmcore.raw", "kdumpy-vmcore"))
        shares = (Share("wheels_deps", self.deps, True), Share("wheels_kdumpy", self.kdumpy, True),
                  Share("labout", self.directory, False))
        return Machine(kernel=self.image.vmlinuz(self.release),
                       initrd=self.image.initrd(self.release),
                       append=f"{self.root_append} {append}".strip(),
                       memory_mib=self.options.memory_mib, smp=self.options.smp,
                       accel=self.accel, shares=shares, disks=tuple(disks))

    def boot(self, name: str, append: str = "", raw: bool = False,
             extra_disks: tuple[Disk, ...] = ()) -> GuestBoot:
        self.log(f"lab: [{self.release}] {name}: booting ({append or 'no extra args'})")
        guest = GuestBoot(self.machine(append, raw=raw, extra_disks=extra_disks),
                          self.directory / f"{name}.log", self.log, name)
        guest.start()
        self.meta["boots"][name] = {"append": append, "wall_start": time.time()}
        return guest

    def mount_shares(self, guest: GuestBoot) -> None:
        guest.run("mkdir -p /mnt/wheels/deps /mnt/wheels/kdumpy /mnt/labout && "
                  "mount -t 9p -o trans=virtio,version=9p2000.L,ro wheels_deps /mnt/wheels/deps"
                  " && mount -t 9p -o trans=virtio,version=9p2000.L,ro wheels_kdumpy "
                  "/mnt/wheels/kdumpy && mount -t 9p -o trans=virtio,version=9p2000.L labout "
                  "/mnt/labout", 60)

    def run(self, key: str, digest: str) -> LifeRun:
        try:
            if self.parent is None:
                self._boot1()
            else:
                self.meta["crashkernel"] = (self.options.crashkernel or
                                            self.parent.meta["crashkernel"])
                self.meta["kdumpy_version"] = self.parent.meta["kdumpy_version"]
            if self.options.root_lvm:
                self._root_to_lvm()
            self._boot2()
            if self.meta["boots"]["boot2"].get("crashed"):
                self._boot3()
        except BaseException:
            self.meta["complete"] = False
            (self.directory / "meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")
            raise
        self.meta.update(complete=True, key=key, kdumpy_digest=digest,
                         created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (self.directory / "meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        return LifeRun(self.directory, self.meta)

    # -- boot 1: install ----------------------------------------------------------------------

    def _boot1(self) -> None:
        with self.boot("boot1") as guest:
            info = self.meta["boots"]["boot1"]
            info["login_seconds"] = guest.login(timeout("boot") + 60)
            self.mount_shares(guest)
            t0 = time.monotonic()
            shutil.copyfile(install_script(), self.directory / "install-kdumpy")
            wheel = next(self.kdumpy.glob("kdumpy-*.whl")).name
            self.meta["install_output"] = guest.run(
                f"sh /mnt/labout/install-kdumpy --wheel /mnt/wheels/kdumpy/{wheel} "
                "--find-links /mnt/wheels/deps --no-index --no-apt", 900).lines
            info["install_seconds"] = round(time.monotonic() - t0, 1)
            self.meta["kdumpy_version"] = guest.run(f"{KDUMPY} --version", 120,
                                                    check=False).text.strip()
            self._configure(guest)
            est = guest.run(f"{KDUMPY} estimate --json", 900)
            estimate = json.loads(est.text[est.text.index("{"):])
            self.meta["estimate"] = estimate
            self.meta["crashkernel"] = self.options.crashkernel or estimate["recommended"]
            guest.run("sync", 60)
            guest.send_detached("systemctl reboot")
            info["exit_seconds"] = guest.wait_exit(timeout("boot"))
        installed = self.directory / INSTALLED
        shutil.copyfile(self.disk, installed)
        installed.chmod(0o444)

    def _configure(self, guest: GuestBoot) -> None:
        """The scenario's config and hooks, ``kdumpy install``, the unit enabled, its setup."""
        if self.options.config:
            guest.run(f"printf '%s' {shlex.quote(self.options.config)} > /etc/kdumpy.toml")
        if self.options.raw_copy:
            guest.run(f"mkdir -p /etc/kdumpy/pre.d && printf '%s' "
                      f"{shlex.quote(RAW_HOOK_TEXT)} > {RAW_HOOK} && chmod 755 {RAW_HOOK}")
        if self.options.warn_hook:
            (self.directory / "warn-hook").write_text(warn_hook_text(self.release))
            guest.run(f"mkdir -p /etc/kdumpy/pre.d && cp /mnt/labout/warn-hook {WARN_HOOK}"
                      f" && chmod 755 {WARN_HOOK}")
        self.meta["reinstall_output"] = guest.run(f"{KDUMPY} install", 300).lines
        guest.run("systemctl daemon-reload && systemctl enable kdumpy.service", 120)
        for command in self.options.setup:
            guest.run(command, 600)

    # -- root on LVM -----------------------------------------------------------------------

    def _root_to_lvm(self) -> None:
        """Copy the installed system into a logical volume on a new disk, which becomes the
        system disk of every later boot (``root=`` :data:`LVM_ROOT`, fstab naming it too)."""
        lvm_disk = self.directory / "lvm.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(lvm_disk),
                        LVM_DISK_SIZE], check=True)
        new = Disk(lvm_disk, "kdumpy-lvm", format="qcow2")
        with self.boot("boot-lvm", extra_disks=(new,)) as guest:
            info = self.meta["boots"]["boot-lvm"]
            info["login_seconds"] = guest.login(timeout("boot") + 60)
            dev = "/dev/disk/by-id/virtio-kdumpy-lvm"
            t0 = time.monotonic()
            info["output"] = guest.run(
                f"pvcreate -y {dev} && vgcreate {LVM_VG} {dev} && "
                f"lvcreate -y -l 100%FREE -n {LVM_LV} {LVM_VG} && "
                f"mkfs.ext4 -q -L kdumpy-lvroot {LVM_ROOT} && mkdir -p /mnt/new && "
                f"mount {LVM_ROOT} /mnt/new && cp -ax /. /mnt/new/ && "
                f"echo '{LVM_ROOT} / ext4 errors=remount-ro 0 1' > /mnt/new/etc/fstab && "
                # the devices file (if lvm made one) names the disk by its boot-time path
                "rm -f /mnt/new/etc/lvm/devices/system.devices && "
                f"umount /mnt/new && vgchange -an {LVM_VG} && sync && lsblk", 1200).lines
            info["copy_seconds"] = round(time.monotonic() - t0, 1)
            guest.send_detached("systemctl poweroff")
            info["exit_seconds"] = guest.wait_exit(timeout("boot"))
        self.disk = lvm_disk
        self.root_append = f"root={LVM_ROOT} rw console=ttyS0"

    # -- boot 2: crash and capture ------------------------------------------------------------

    def _boot2(self) -> None:
        if self.options.raw_copy:
            with open(self.directory / "vmcore.raw", "wb") as f:
                f.truncate((self.options.memory_mib + 256) << 20)
        append = f"crashkernel={self.meta['crashkernel']}"
        with self.boot("boot2", append, raw=self.options.raw_copy) as guest:
            info = self.meta["boots"]["boot2"]
            info["login_seconds"] = guest.login(timeout("boot") + 60)
            start = "start"
            if self.parent is not None:
                # the scenario's configuration on the installed system; the unit already ran
                # at boot with the old one, so it is restarted (rebuild, load) afterwards
                self.mount_shares(guest)
                self._configure(guest)
                guest.run("systemctl restart systemd-sysctl.service", 120)
                start = "restart"
            t0 = time.monotonic()
            svc = guest.run(f"systemctl {start} kdumpy.service; rc=$?; "
                            "systemctl --no-pager status kdumpy.service | tail -n 20; exit $rc",
                            900, check=False)
            info["service_seconds"] = round(time.monotonic() - t0, 1)
            info["service_rc"] = svc.rc
            info["service_output"] = svc.lines
            st = guest.run(f"{KDUMPY} status", 300, check=False)
            info["status_rc"], info["status_output"] = st.rc, st.lines
            info["crash_kernel_loaded"] = guest.run("cat /sys/kernel/kexec_crash_loaded",
                                                    check=False).text.strip()
            info["kexec_crash_size"] = guest.run("cat /sys/kernel/kexec_crash_size",
                                                 check=False).text.strip()
            info["cmdline"] = guest.run("cat /proc/cmdline", check=False).text.strip()
            info["capture_image"] = guest.run(
                "ls -l /var/lib/kdumpy/ && cat /var/lib/kdumpy/capture-$(uname -r).json",
                check=False).lines
            info["crash_setup"] = [guest.run(command, 300).lines
                                   for command in self.options.crash_setup]
            if info["crash_kernel_loaded"] != "1":
                if not self.options.expect_dump:
                    # the failure came at load time: nothing to crash into
                    info["crashed"] = False
                    return
                raise guest.fail(f"no capture kernel loaded after kdumpy.service "
                                 f"(rc {svc.rc}):\n{svc.text}\n{st.text}")
            info["crashed"] = True
            guest.send_detached(f"{KDUMPY} test --yes")
            deadline = self.options.capture_deadline * float(
                os.environ.get("KDUMPY_LAB_TIMEOUT_SCALE", "1"))
            self._watch_capture(guest, info, deadline)

    def _watch_capture(self, guest: GuestBoot, info: dict[str, Any], limit: float) -> None:
        panic = guest.wait_for(PANIC, 120, "the panic")
        info["panic"] = PANIC.search(panic.text).group(1).strip()
        info["panic_t"] = panic.t
        events: list[dict[str, Any]] = []
        end = time.monotonic() + limit
        capture_release = None
        try:
            while True:
                line = guest.next_line("the capture to end (QEMU exit)", end)
                for rx, kind in ((LINUX_VERSION, "linux_version"), (INIT_STARTED, "init_started"),
                                 (INIT_EXIT, "capture_exit"), (INIT_ACTION, "action"),
                                 (INIT_FAILED, "failed"), (PANIC, "panic")):
                    m = rx.search(line.text)
                    if m:
                        events.append({"kind": kind, "t": round(line.t, 3),
                                       "value": m.group(1)})
                        if kind == "linux_version":
                            capture_release = m.group(1)
                if "KDUMPY-LAB value raw_copy_rc" in line.text:
                    events.append({"kind": "raw_copy_rc", "t": round(line.t, 3),
                                   "value": line.text.rsplit(" ", 1)[-1]})
        except GuestError:
            if guest.proc.poll() is None:
                info["capture_events"] = events
                raise
        guest.capture.join(5)
        info["exit_seconds"] = guest.exited_at or guest.now()
        info["capture_events"] = events
        info["capture_release"] = capture_release
        info["capture_lines"] = [ln.text for ln in guest.capture.transcript.lines
                                 if ln.t >= panic.t]
        info["wall_exit"] = time.time()

    # -- boot 3: the report -------------------------------------------------------------------

    def _boot3(self) -> None:
        # the reservation stays on the command line, as a boot loader's setting would
        append = f"crashkernel={self.meta['crashkernel']} {self.options.boot3_append}".strip()
        with self.boot("boot3", append) as guest:
            info = self.meta["boots"]["boot3"]
            info["login_seconds"] = guest.login(timeout("boot") + 60)
            info["boot_to_login_wall"] = round(time.time() - self.meta["boots"]["boot2"]
                                               .get("wall_exit", time.time()), 1)
            st = guest.run(f"{KDUMPY} status --json", 300, check=False)
            info["status_rc"] = st.rc
            try:
                info["status"] = json.loads(st.text[st.text.index("{"):])
            except ValueError:
                info["status_text"] = st.lines
            info["status_text_output"] = guest.run(f"{KDUMPY} status", 300, check=False).lines
            self.mount_shares(guest)
            guest.run("mkdir -p /mnt/labout/crash /mnt/labout/state && "
                      "cp -a /var/crash/. /mnt/labout/crash/ && "
                      "cp -a /var/lib/kdumpy/. /mnt/labout/state/ && sync", 600)
            info["crash_listing"] = guest.run("ls -lR /var/crash", check=False).lines
            info["record"] = [guest.run(command, 300, check=False).lines
                              for command in self.options.boot3_record]
            guest.send_detached("systemctl poweroff")
            info["exit_seconds"] = guest.wait_exit(timeout("boot"))
        raw = self.directory / "vmcore.raw"
        if raw.exists():
            try:
                size = elf_end(raw)
            except ValueError:
                size = 0
            if size:
                os.truncate(raw, size)
            self.meta["vmcore_size"] = size
