"""The capture image's ``/init``: a busybox ``sh`` script that saves the dump and ends in
the final or failure action, never in a prompt.

Facts relied on:

* The kernel runs ``/init`` from the initramfs as PID 1 with ``/dev/console`` as stdin,
  stdout and stderr when that node exists in the archive (``init/main.c``
  ``console_on_rootfs``); ``devtmpfs`` is not mounted automatically on an initramfs. If
  PID 1 exits the kernel panics ("Attempted to kill init"), and ``panic=10`` on the capture
  command line turns that into a reboot after 10 s.
* ``echo b > /proc/sysrq-trigger`` reboots at once whatever ``kernel.sysrq`` says
  (Documentation/admin-guide/sysrq.rst); busybox ``reboot -f`` / ``poweroff -f`` /
  ``halt -f`` call reboot(2) without an init to talk to.
* busybox ``findfs UUID=...`` prints the device holding that filesystem UUID (its own
  blkid probe, no udev needed); ``timeout -s KILL SECS PROG`` kills PROG after SECS.
* ``e2fsck -p`` ("preen") never asks; exit status bits: 1 errors corrected, 2 reboot
  advised (only matters for a mounted root), 4 errors left uncorrected, 8 operational error
  (e2fsck(8)). ``mdadm --assemble --scan`` assembles the arrays its ``mdadm.conf`` (or
  the superblocks) describe. ``lvm vgchange -ay`` with ``activation { udev_sync = 0 udev_rules = 0 }``
  creates the /dev/mapper nodes itself, for an initramfs without udev (lvm.conf(5)).
* No sysctl is applied here: there is no systemd-sysctl and no /etc/sysctl.d in the image,
  so ``kernel.panic_on_warn`` and friends keep the capture kernel's defaults.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

#: Lines on the console the lab (and an admin reading a serial log) can wait for.
MSG_START = "kdumpy-init: capture image started"
MSG_MOUNTED = "kdumpy-init: target mounted"
MSG_CAPTURE_EXIT = "kdumpy-init: capture exit"
MSG_ACTION = "kdumpy-init: action"
SYSROOT = "/sysroot"
MODULE_LIST = "/kdumpy/modules"
STAGE_DIR = "/kdumpy/stages"
#: Seconds to wait for the target's filesystem to appear after the drivers load.
DEVICE_WAIT = 60
#: The capture's deadline when the config does not set one.
DEFAULT_DEADLINE = 3600



def import_check(codec: str) -> str:
    """Python that loads what a capture runs on: numpy, kdumpy's capture code, and the
    configured codec (its library is imported at the first compressed page)."""
    return ("import numpy, kdumpy.service, kdumpy.dump, kdumpy.capture.pipeline\n"
            "from kdumpy.formats.codecs import CODECS\n"
            f"CODECS[{codec!r}].compress(bytes(4096))\n")

ACTION_COMMANDS = {"reboot": "reboot -f", "poweroff": "poweroff -f", "halt": "halt -f",
                   # no shell in the capture image: a shell waits for a human
                   "shell": "reboot -f"}


@dataclass
class Bind:
    """Bind ``source`` (relative to the target filesystem's root) at ``dest``."""
    source: str
    dest: str


@dataclass
class InitPlan:
    python: str                        # interpreter path inside the image
    config: str                        # config path inside the image
    final: str = "reboot"
    failure: str = "reboot"
    deadline: int = DEFAULT_DEADLINE
    codec: str = "lzo"                 # [dump] compression
    fs_uuid: str | None = None         # None: no local filesystem to mount (network target)
    fstype: str | None = None
    fsck: str | None = None            # e.g. /usr/sbin/e2fsck
    binds: list[Bind] = field(default_factory=list)
    lvm: str | None = None             # path of the lvm tool when the target is on LVM
    mdadm: str | None = None           # path of mdadm when the target is on md RAID
    #: (name, sh text) run after the modules load, before the target is mounted (e.g. the
    #: network for an ssh/nfs target); each is a file under STAGE_DIR, sourced in order.
    stages: list[tuple[str, str]] = field(default_factory=list)


def q(s: str) -> str:
    return shlex.quote(s)


def render(plan: InitPlan) -> str:
    """The /init script for ``plan``."""
    final = ACTION_COMMANDS[plan.final]
    failure = ACTION_COMMANDS[plan.failure]
    lines = [f"""#!/bin/sh
# kdumpy capture image /init, written by `kdumpy rebuild`. Saves /proc/vmcore, then the
# final action ({plan.final}) or the failure action ({plan.failure}). Never a shell.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 TERM=dumb
# less memory: one OpenBLAS thread (its buffers are per thread), few malloc arenas
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=2
# less memory: one OpenBLAS thread (its buffers are per thread), few malloc arenas
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=2
MOUNTED=""

log() {{
    echo "kdumpy-init: $*"
}}

finish() {{
    # $1: the action's command line; never returns
    log "action $2"
    cd /
    sync
    for m in $MOUNTED; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    sync
    $1
    sleep 10
    echo b > /proc/sysrq-trigger
    exit 1
}}

fail() {{
    log "FAILED: $*"
    finish {q(failure)} {q(plan.failure)}
}}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp /var/lib
mount -t tmpfs -o mode=1777 tmpfs /tmp
log "{MSG_START[len('kdumpy-init: '):]} on $(uname -r)"

R=$(uname -r)
if [ -f {MODULE_LIST} ]; then
    while read -r m; do
        [ -n "$m" ] || continue
        insmod "/lib/modules/$R/$m" 2>/tmp/insmod.err || \\
            grep -q 'File exists' /tmp/insmod.err || log "insmod $m: $(cat /tmp/insmod.err)"
    done < {MODULE_LIST}
fi

for s in {STAGE_DIR}/*.sh; do
    [ -f "$s" ] || continue
    log "stage $(basename "$s")"
    . "$s"
done
"""]
    if plan.fs_uuid:
        lines.append(f"""
UUID={q(plan.fs_uuid)}
i=0
while ! dev=$(findfs "UUID=$UUID" 2>/dev/null); do
""")
        if plan.mdadm:
            lines.append(f"""    {q(plan.mdadm)} --assemble --scan --run >/dev/null 2>&1
""")
        if plan.lvm:
            lines.append(f"""    {q(plan.lvm)} vgchange -ay --sysinit --config \\
        'activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}' >/dev/null 2>&1
""")
        lines.append(f"""    i=$((i + 1))
    [ $i -le {DEVICE_WAIT} ] || fail "no filesystem with UUID $UUID after {DEVICE_WAIT}s"
    sleep 1
done
log "target filesystem $UUID on $dev"
""")
        if plan.fsck:
            lines.append(f"""{q(plan.fsck)} -p "$dev"
rc=$?
[ $((rc & 4)) = 0 ] || log "fsck left errors on $dev (exit $rc); mounting it anyway"
""")
        lines.append(f"""mkdir -p {SYSROOT}
mount -t {q(plan.fstype or "auto")} -o rw "$dev" {SYSROOT} || fail "cannot mount $dev"
MOUNTED="{SYSROOT}"
""")
        for b in plan.binds:
            src = f"{SYSROOT}/{b.source}".rstrip("/")
            lines.append(f"""mkdir -p {q(src)} {q(b.dest)}
mount --bind {q(src)} {q(b.dest)} || fail "cannot bind {b.dest}"
MOUNTED={q(b.dest)}" $MOUNTED"
""")
        lines.append(f'log "{MSG_MOUNTED[len("kdumpy-init: "):]}"\n')
    lines.append(f"""
log "$(grep -m1 MemTotal /proc/meminfo | tr -s ' '), $(grep -m1 MemAvailable /proc/meminfo | tr -s ' ')"
if [ ! -e /proc/vmcore ]; then
    # booted by hand or by a test: prove the interpreter, numpy, the codecs and kdumpy's
    # capture code load, then give up
    {q(plan.python)} -c {q(import_check(plan.codec))} && ok=ok || ok="cannot start"
    fail "no /proc/vmcore: not a capture kernel's boot (kdumpy: $ok)"
fi
t0=$(cut -d. -f1 /proc/uptime)
timeout -s KILL {int(plan.deadline)} {q(plan.python)} -m kdumpy capture --no-action --quiet \\
    --config {q(plan.config)}
rc=$?
log "{MSG_CAPTURE_EXIT[len('kdumpy-init: '):]} $rc"
if [ $rc != 0 ] && [ $rc != 4 ]; then
    # killed before it could record anything: say why where the next boot's status reads it
    took=$(( $(cut -d. -f1 /proc/uptime) - t0 ))
    if [ $rc = 137 ] && [ $took -ge {int(plan.deadline)} ]; then
        why="killed at the {int(plan.deadline)}s deadline (dump.deadline)"
    elif [ $rc = 137 ]; then
        why="killed after ${{took}}s (out of memory: raise crashkernel=)"
    else
        why="kdumpy capture exit $rc"
    fi
    if [ -d /var/lib/kdumpy ] && [ -n "$MOUNTED" ]; then
        tid=$(cat /var/lib/kdumpy/test-id 2>/dev/null)
        [ -n "$tid" ] && tid="\\"$tid\\"" || tid=null
        printf '{{"status": "failed", "error": "%s", "test_id": %s}}\\n' \\
            "capture image: $why" "$tid" > /var/lib/kdumpy/last-capture.json
        rm -f /var/lib/kdumpy/test-id
        sync
    fi
    fail "$why"
fi
[ $rc = 0 ] || fail "kdumpy capture exit $rc (the dump failed)"
finish {q(final)} {q(plan.final)}
""")
    return "".join(lines)
