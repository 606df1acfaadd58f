"""Debian's kdump-tools on the systemd guest, for comparing kdumpy with it (bench only).

The same systemd Debian 12 guest image as :mod:`.systemd_life` (:func:`.systemd_guest.ensure_guest`)
gets Debian's own kdump stack, kdump-tools 1:1.8.1 + makedumpfile 1:1.7.2, from ``.deb`` files
the host fetched with ``apt-get download`` (the guest has no network) and shared over 9p::

    install boot (no crashkernel=)   dpkg -i the debs (with a policy-rc.d that stops the
                                     postinst starting kdump-tools.service and a no-op
                                     update-initramfs shim: the lab boots the host's copies of
                                     /boot's initrds; without both, dpkg hung >15 min once,
                                     cause not pinned down);
                                     /etc/default/kdump-tools written; latest_sysctls-R
                                     recorded as the first `kdump-config load` would (else
                                     every trial boot rebuilds the initrd);
                                     ``kdump-config symlinks $(uname -r)`` (builds the kdump
                                     initrd /var/lib/kdump/initrd.img-R with the package's kernel
                                     postinst hook); an optional drop-in on
                                     kdump-tools-dump.service; poweroff. The disk is kept
                                     read-only as ``kt-installed.qcow2``.
    trial boot (crashkernel=X)       a qcow2 overlay of the installed disk; kdump-tools.service
                                     loads the capture kernel at boot (``kdump-config load``);
                                     ``kdump-config status``; ``echo c > /proc/sysrq-trigger``;
                                     the capture kernel boots the root file system with
                                     ``systemd.unit=kdump-tools-dump.service``, which runs
                                     ``kdump-config savecore`` then ``reboot -f`` (QEMU exits)
    after boot (optional)            the same crashkernel=X; time to the serial login;
                                     ``ls -lR /var/crash``; poweroff

Console lines watched after the panic: ``Linux version`` (the capture kernel starts),
``kdump-tools: saved vmcore in`` (makedumpfile's output renamed into place: the dump is
complete), ``failed to save vmcore``/``makedumpfile failed`` (failure), a second
``Kernel panic`` or systemd's emergency mode (failure, ends the wait early).

Nothing here touches :mod:`.systemd_life`'s cache keys; results live under
``<lab cache>/<release>/bench-kdump-tools/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache import locked, release_dir
from .guest_shell import GuestBoot, GuestError
from .qemu import Disk, Machine, Share, choose_accelerator
from .run import timeout
from .systemd_guest import GuestImage, ensure_guest, overlay
from .systemd_life import LINUX_VERSION, PANIC

Log = Callable[[str], None]

#: What the host downloads; dpkg --skip-same-version installs only what the guest lacks.
DEBS = ("kdump-tools", "makedumpfile", "bsdextrautils", "file", "libmagic1", "libmagic-mgc",
        "linux-base", "ucf", "libdw1", "libelf1", "liblzo2-2", "sysvinit-utils", "lsb-base",
        "perl", "perl-base", "perl-modules-5.36", "libperl5.36", "sensible-utils")
KDUMP_TOOLS_VERSION = "1:1.8.1"
MAKEDUMPFILE_VERSION = "1:1.7.2-1"
INSTALLED = "kt-installed.qcow2"

SAVED = re.compile(r"kdump-tools: saved vmcore in (\S+)")
SAVE_FAILED = re.compile(r"failed to save vmcore|makedumpfile failed")
RUNNING_MAKEDUMPFILE = re.compile(r"running makedumpfile (?!--dump-dmesg)(.*)")
EMERGENCY = re.compile(r"You are in emergency mode|Entering emergency mode|"
                       r"Give root password for maintenance")
OOM = re.compile(r"Out of memory|invoked oom-killer")
MEMAVAIL = re.compile(r"BENCH-MEMAVAIL (\w+) (\d+)")


def bench_dir(release: str) -> Path:
    return release_dir(release) / "bench-kdump-tools"


def download_debs(directory: Path, log: Log = print) -> Path:
    """The kdump-tools stack's .debs (``apt-get download``), once."""
    debs = directory / "debs"
    with locked(directory / "debs.lock"):
        if debs.is_dir() and any(debs.glob("kdump-tools_*.deb")):
            return debs
        partial = directory / "debs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        log(f"bench: apt-get download {' '.join(DEBS)}")
        subprocess.run(["apt-get", "download", f"kdump-tools={KDUMP_TOOLS_VERSION}",
                        f"makedumpfile={MAKEDUMPFILE_VERSION}", *DEBS[2:]], cwd=partial,
                       check=True, capture_output=True, timeout=600)
        partial.rename(debs)
    return debs


def defaults_text(makedump_args: str, cmdline_append: str) -> str:
    """/etc/default/kdump-tools: the package's file with the bench's settings."""
    return ("USE_KDUMP=1\n"
            "KDUMP_KERNEL=/var/lib/kdump/vmlinuz\n"
            "KDUMP_INITRD=/var/lib/kdump/initrd.img\n"
            'KDUMP_COREDIR="/var/crash"\n'
            f'MAKEDUMP_ARGS="{makedump_args}"\n'
            f'KDUMP_CMDLINE_APPEND="{cmdline_append}"\n')


class KdumpToolsGuest:
    """kdump-tools installed on an overlay of the systemd guest, then crashed per trial."""

    def __init__(self, release: str, *, makedump_args: str, cmdline_append: str,
                 sampler: str = "", log: Log = print) -> None:
        self.release, self.log = release, log
        self.image: GuestImage = ensure_guest(log=log)
        if release not in self.image.releases:
            raise LookupError(f"the systemd guest has kernels {self.image.releases}")
        self.accel = choose_accelerator("auto")[0]
        self.directory = bench_dir(release)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.makedump_args, self.cmdline_append = makedump_args, cmdline_append
        self.sampler = sampler

    # -- machines -----------------------------------------------------------------------------

    def machine(self, disk: Path, append: str, memory_mib: int,
                shares: tuple[Share, ...] = ()) -> Machine:
        return Machine(kernel=self.image.vmlinuz(self.release),
                       initrd=self.image.initrd(self.release),
                       append=f"{self.image.root_append()} {append}".strip(),
                       memory_mib=memory_mib, smp=2, accel=self.accel, shares=shares,
                       disks=(Disk(disk, "kdumpy-root", format="qcow2"),))

    # -- install ------------------------------------------------------------------------------

    def recipe(self) -> dict[str, Any]:
        return {"guest": self.image.meta["key"], "release": self.release,
                "defaults": defaults_text(self.makedump_args, self.cmdline_append),
                "sampler": self.sampler, "debs": list(DEBS), "format": 2}

    def ensure_installed(self) -> tuple[Path, dict[str, Any]]:
        """The read-only disk with kdump-tools installed and configured (built once)."""
        disk = self.directory / INSTALLED
        meta_file = self.directory / "kt-installed.json"
        with locked(self.directory / "kt-installed.lock"):
            if disk.is_file() and meta_file.is_file():
                meta = json.loads(meta_file.read_text())
                if meta.get("recipe") == self.recipe():
                    return disk, meta
            debs = download_debs(self.directory, self.log)
            partial = self.directory / "kt-installed.partial.qcow2"
            partial.unlink(missing_ok=True)
            overlay(self.image.base, partial)
            meta: dict[str, Any] = {"recipe": self.recipe()}
            work = self.directory / "install"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            (work / "kdump-tools.defaults").write_text(self.recipe()["defaults"])
            if self.sampler:
                (work / "bench-memavail").write_text(self.sampler)
            shares = (Share("ktdebs", debs, True), Share("ktwork", work, True))
            with GuestBoot(self.machine(partial, "", 1024, shares), work / "install.log",
                           self.log, "kt-install") as guest:
                guest.login(timeout("boot") + 60)
                guest.run("mkdir -p /mnt/debs /mnt/work && mount -t 9p -o trans=virtio,"
                          "version=9p2000.L,ro ktdebs /mnt/debs && mount -t 9p -o "
                          "trans=virtio,version=9p2000.L,ro ktwork /mnt/work", 60)
                t0 = time.monotonic()
                # no service starts during dpkg (policy-rc.d: kdump-tools.service wants
                # network-online.target), and no rebuild of /boot's initrds by the
                # update-initramfs trigger (QEMU boots the host's copy; the kdump initrd is
                # built below by the package's own hook, which calls mkinitramfs itself)
                guest.run("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && "
                          "chmod 755 /usr/sbin/policy-rc.d && printf '#!/bin/sh\\nexit 0\\n' "
                          "> /usr/local/sbin/update-initramfs && chmod 755 "
                          "/usr/local/sbin/update-initramfs", 60)
                meta["dpkg"] = guest.run(
                    "DEBIAN_FRONTEND=noninteractive dpkg -i --skip-same-version "
                    "/mnt/debs/*.deb", 1500).lines
                guest.run("rm -f /usr/sbin/policy-rc.d /usr/local/sbin/update-initramfs", 60)
                guest.run("dpkg-query -W kdump-tools makedumpfile", 60)
                meta["versions"] = guest.run("dpkg-query -W kdump-tools makedumpfile",
                                             60).lines
                guest.run("cp /mnt/work/kdump-tools.defaults /etc/default/kdump-tools", 60)
                if self.sampler:
                    guest.run("install -m 755 /mnt/work/bench-memavail "
                              "/usr/local/sbin/bench-memavail && mkdir -p "
                              "/etc/systemd/system/kdump-tools-dump.service.d && printf "
                              "'[Service]\\nExecStartPre=/usr/local/sbin/bench-memavail\\n' > "
                              "/etc/systemd/system/kdump-tools-dump.service.d/"
                              "bench-memavail.conf", 60)
                # what the first `kdump-config load` records (check_sysctl_change); without
                # it every trial boot's load would rebuild the initrd (~3 min under TCG)
                guest.run("mkdir -p /var/lib/kdump && cp /etc/kdump/sysctl.conf "
                          "/var/lib/kdump/latest_sysctls-$(uname -r)",
                          60)
                meta["symlinks"] = guest.run("kdump-config symlinks $(uname -r) 2>&1 | "
                                             "tail -n 20", 1500).lines
                meta["install_seconds"] = round(time.monotonic() - t0, 1)
                meta["initrd"] = guest.run("ls -lL /var/lib/kdump/", 60).lines
                guest.run("systemctl daemon-reload && systemctl enable kdump-tools.service"
                          " && systemctl is-enabled kdump-tools.service", 120)
                meta["show"] = guest.run("kdump-config show", 120, check=False).lines
                guest.run("umount /mnt/debs /mnt/work; sync", 60)
                guest.send_detached("systemctl poweroff")
                guest.wait_exit(timeout("boot"))
            partial.chmod(0o444)
            partial.rename(disk)
            meta_file.write_text(json.dumps(meta, indent=2) + "\n")
            return disk, meta

    # -- one crash ----------------------------------------------------------------------------

    def crash(self, name: str, memory_mib: int, crashkernel: str, *, after_boot: bool,
              deadline: float) -> dict[str, Any]:
        """One trial: boot with crashkernel=, crash, watch the capture; optionally the next
        boot. Returns the trial's record (also written to <dir>/<name>/result.json)."""
        installed, _ = self.ensure_installed()
        directory = self.directory / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        disk = directory / "disk.qcow2"
        overlay(installed, disk, "qcow2")
        append = f"crashkernel={crashkernel}"
        res: dict[str, Any] = {"tool": "kdump-tools", "memory_mib": memory_mib,
                               "crashkernel": crashkernel, "name": name}
        try:
            self._crash_boot(disk, directory, append, memory_mib, deadline, res)
            if after_boot and res.get("captured"):
                self._after_boot(disk, directory, append, memory_mib, res)
        except GuestError as exc:
            res["error"] = str(exc)[-4000:]
        finally:
            disk.unlink(missing_ok=True)   # dumps are big; the record is what is kept
        (directory / "result.json").write_text(json.dumps(res, indent=2) + "\n")
        return res

    def _crash_boot(self, disk: Path, directory: Path, append: str, memory_mib: int,
                    deadline: float, res: dict[str, Any]) -> None:
        self.log(f"bench: kdump-tools {res['name']}: booting ({append}, {memory_mib} MiB)")
        with GuestBoot(self.machine(disk, append, memory_mib), directory / "crash-boot.log",
                       self.log, "kt-crash") as guest:
            res["login_seconds"] = guest.login(timeout("boot") + 120)
            # kdump-tools.service (Before=basic.target... it is oneshot) has loaded by login
            res["service"] = guest.run("systemctl is-active kdump-tools.service; "
                                       "systemctl --no-pager status kdump-tools.service | "
                                       "tail -n 12", 300, check=False).lines
            res["status"] = guest.run("kdump-config status", 300, check=False).lines
            res["kexec_crash_loaded"] = guest.run("cat /sys/kernel/kexec_crash_loaded",
                                                  check=False).text.strip()
            res["kexec_crash_size"] = guest.run("cat /sys/kernel/kexec_crash_size",
                                                check=False).text.strip()
            res["image"] = guest.run("ls -lL /var/lib/kdump/", check=False).lines
            res["image_bytes"] = int(guest.run(
                f"stat -L -c %s /var/lib/kdump/initrd.img-{self.release}",
                check=False).text.strip() or 0)
            if res["kexec_crash_loaded"] != "1":
                res["captured"] = False
                res["failure"] = "capture kernel not loaded"
                return
            guest.run("sync", 120)
            guest.send_detached("echo c > /proc/sysrq-trigger")
            panic = guest.wait_for(PANIC, 120, "the panic")
            res["panic_t"] = panic.t
            events: list[dict[str, Any]] = []
            end = time.monotonic() + deadline
            try:
                while True:
                    line = guest.next_line("the capture to end (QEMU exit)", end)
                    kind = value = None
                    for rx, k in ((LINUX_VERSION, "linux_version"), (SAVED, "saved"),
                                  (SAVE_FAILED, "save_failed"), (PANIC, "panic"),
                                  (EMERGENCY, "emergency"), (OOM, "oom"),
                                  (RUNNING_MAKEDUMPFILE, "makedumpfile_start")):
                        m = rx.search(line.text)
                        if m:
                            kind, value = k, m.group(m.lastindex or 0)
                            break
                    m = MEMAVAIL.search(line.text)
                    if m:
                        kind, value = f"memavail_{m.group(1)}", int(m.group(2))
                    if kind:
                        events.append({"kind": kind, "t": round(line.t, 3), "value": value})
                    if kind in ("panic", "emergency", "save_failed"):
                        res["failure"] = f"{kind}: {line.text.strip()}"
                        break
            except GuestError as exc:
                if guest.proc.poll() is None:
                    res["failure"] = f"deadline: {str(exc).splitlines()[0]}"
            res["events"] = events
            res["exit_seconds"] = guest.exited_at
            res["capture_lines"] = [ln.text for ln in guest.capture.transcript.lines
                                    if ln.t >= panic.t][-400:]
            saved = [e for e in events if e["kind"] == "saved"]
            res["captured"] = bool(saved) and "failure" not in res
            if saved:
                res["dump_seconds"] = round(saved[0]["t"] - panic.t, 1)
            mins = [e["value"] for e in events if e["kind"] == "memavail_min"]
            if mins:
                res["memavail_min_kb"] = min(mins)
            for e in events:
                if e["kind"] == "memavail_start":
                    res["memavail_start_kb"] = e["value"]
                if e["kind"] == "memavail_total":
                    res["memtotal_kb"] = e["value"]
            if res["captured"] and guest.exited_at is not None:
                res["panic_to_exit_seconds"] = round(guest.exited_at - panic.t, 1)

    def _after_boot(self, disk: Path, directory: Path, append: str, memory_mib: int,
                    res: dict[str, Any]) -> None:
        with GuestBoot(self.machine(disk, append, memory_mib), directory / "after-boot.log",
                       self.log, "kt-after") as guest:
            res["after_login_seconds"] = guest.login(timeout("boot") + 120)
            res["crash_listing"] = guest.run("ls -lR /var/crash", 120, check=False).lines
            res["dump_bytes"] = int(guest.run(
                "stat -c %s /var/crash/2*/dump.* | head -n 1", 120, check=False).text.strip()
                or 0)
            res["journal_prev"] = guest.run(
                "journalctl -b -1 --no-pager -o short-monotonic -u kdump-tools-dump.service "
                "| tail -n 30", 120, check=False).lines
            guest.send_detached("systemctl poweroff")
            guest.wait_exit(timeout("boot"))
        if "panic_to_exit_seconds" in res:
            res["panic_to_login_seconds"] = round(res["panic_to_exit_seconds"] +
                                                  res["after_login_seconds"], 1)

