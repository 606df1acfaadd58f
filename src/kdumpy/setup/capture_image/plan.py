"""What goes into the capture image for this system and this config: the plan that both
the build and the staleness check start from.

The target decides the rest. For a local target (``[target] path``) the filesystem holding
the path (``/proc/self/mountinfo``) is mounted by UUID in the capture boot, with its block
devices' drivers and its filesystem module; the target directory and, when it lives on the
same filesystem, kdumpy's state directory (the pending test id, ``last-capture.json``) are
bound at their usual paths, so ``kdumpy capture`` runs exactly as it would on the system.
Network targets (ssh, nfs) mount nothing; their NIC modules, tools and network stage come
from the planner registered for the target kind in :data:`NETWORK_PLANNERS`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from kdumpy.errors import KdumpyError
from kdumpy.setup.capture_image.init import Bind, InitPlan
from kdumpy.setup.capture_image.modules import (
    MountInfo,
    ModuleTree,
    block_chain,
    filesystem_module,
    mount_of,
)
from kdumpy.setup.capture_image.userspace import find_fsck
from kdumpy.setup.config import Config
from kdumpy.setup.paths import SystemPaths


class PlanError(KdumpyError):
    """The target cannot be captured to from an initramfs; the message says why."""


#: Filesystems that are not a block device's (the target would vanish with the memory).
VIRTUAL_FS = {"tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "overlay", "9p", "virtiofs",
              "nfs", "nfs4", "cifs", "fuse", "squashfs"}


@dataclass
class TargetDevice:
    mount: MountInfo
    uuid: str
    devices: list[str]
    stacked: list[str]


@dataclass
class ImagePlan:
    release: str
    module_dir: str                    # host /lib/modules/RELEASE
    modules: list[str]                 # paths relative to module_dir, in load order
    wanted: list[str]                  # module names/aliases the closure started from
    target: TargetDevice | None
    init: InitPlan
    config_path: str | None            # host config file (None: defaults)
    config_text: bytes
    #: the parsed config's values (comments and layout do not make the image stale)
    config_values: str = ""
    files: dict[str, str] = field(default_factory=dict)   # image path -> host path
    #: host executables copied at their own paths with their libraries (ldd)
    binaries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: [target] kind -> planner(paths, config, plan) for network targets: it adds the NIC's
#: driver modules (``plan.wanted``, names or modaliases), the tools (``plan.binaries``),
#: files such as the ssh key (``plan.files``) and an init stage bringing the network up
#: (``plan.init.stages``: sourced after the modules load, before the capture). The network
#: support registers its planners here.
NETWORK_PLANNERS: dict[str, Callable[[SystemPaths, Config, ImagePlan], None]] = {}


def filesystem_uuid(paths: SystemPaths, devno: str) -> str | None:
    """The filesystem UUID of block device ``MAJ:MIN``: the ``/dev/disk/by-uuid`` link
    udev made for it (``60-persistent-storage.rules``, from blkid's ID_FS_UUID)."""
    byuuid = paths.path("/dev/disk/by-uuid")
    uevent = paths.path(f"/sys/dev/block/{devno}/uevent")
    devname = None
    try:
        with open(uevent, encoding="utf-8") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    devname = line.strip().split("=", 1)[1]
    except OSError:
        return None
    if devname is None or not os.path.isdir(byuuid):
        return None
    for u in sorted(os.listdir(byuuid)):
        link = os.path.join(byuuid, u)
        if os.path.basename(os.readlink(link)) == os.path.basename(devname):
            return u
    return None


def local_target(paths: SystemPaths, target_path: str) -> TargetDevice:
    m = mount_of(paths, target_path)
    if m is None:
        raise PlanError(f"{target_path}: no mount holds it (is /proc mounted?)")
    if m.fstype in VIRTUAL_FS or m.devno.startswith("0:"):
        raise PlanError(f"{target_path} is on {m.fstype} ({m.source}), not on a local block "
                        "device: the capture kernel cannot reach it; set [target] path to "
                        "a directory on a disk")
    uuid = filesystem_uuid(paths, m.devno)
    if uuid is None:
        raise PlanError(f"{target_path}: the {m.fstype} filesystem on {m.source} has no UUID "
                        "in /dev/disk/by-uuid (is udev running?)")
    chain = block_chain(paths, m.devno)
    return TargetDevice(m, uuid, chain.devices, chain.stacked)


def make_plan(paths: SystemPaths, cfg: Config, release: str, *, python: str,
              config_path: str | None, deadline: int | None = None) -> ImagePlan:
    """Everything the image for ``release`` holds, from sysfs, the module index and the
    config; reads only (fast enough for ``status``)."""
    from kdumpy.setup.capture_image.init import DEFAULT_DEADLINE
    module_dir = paths.path(f"/lib/modules/{release}")
    tree = ModuleTree.load(module_dir)
    text = b""
    if config_path and os.path.exists(config_path):
        with open(config_path, "rb") as f:
            text = f.read()
    init = InitPlan(python=python, config="/etc/kdumpy.toml", final=cfg.actions.final,
                    failure=cfg.actions.failure,
                    deadline=deadline or cfg.dump.deadline or DEFAULT_DEADLINE,
                    codec=cfg.dump.compression)
    plan = ImagePlan(release, module_dir, [], [], None, init, config_path, text,
                     json.dumps(dataclasses.asdict(cfg) | {"source": None}, sort_keys=True))
    if cfg.target.kind == "path":
        t = local_target(paths, cfg.target.path)
        plan.target = t
        chain = block_chain(paths, t.mount.devno)
        plan.wanted += chain.modules + filesystem_module(tree, t.mount.fstype)
        init.fs_uuid = t.uuid
        init.fstype = t.mount.fstype
        init.fsck = find_fsck(t.mount.fstype)
        rel = os.path.relpath(cfg.target.path, t.mount.mountpoint)
        init.binds.append(Bind("" if rel == "." else rel, cfg.target.path))
        state = "/var/lib/kdumpy"
        sm = mount_of(paths, state)
        if sm is not None and sm.devno == t.mount.devno and not (
                state + "/").startswith(cfg.target.path.rstrip("/") + "/"):
            srel = os.path.relpath(state, t.mount.mountpoint)
            init.binds.append(Bind(srel, state))
        else:
            plan.notes.append("kdumpy's state directory is not on the target's filesystem: "
                              "`kdumpy test` outcomes are not recorded")
        if any(s.startswith("md:") for s in t.stacked):
            init.mdadm = "/usr/sbin/mdadm"
            for conf in ("/etc/mdadm/mdadm.conf", "/etc/mdadm.conf"):
                if os.path.isfile(paths.path(conf)):
                    plan.files[conf] = paths.path(conf)
        if any(s.startswith("dm:LVM-") for s in t.stacked):
            init.lvm = "/usr/sbin/lvm"
            conf = paths.path("/etc/lvm/lvm.conf")
            if os.path.isfile(conf):        # the admin's device filters
                plan.files["/etc/lvm/lvm.conf"] = conf
    elif cfg.target.kind in NETWORK_PLANNERS:
        NETWORK_PLANNERS[cfg.target.kind](paths, cfg, plan)
    else:
        plan.notes.append(f"{cfg.target.kind} target: no network support in the capture "
                          "image yet")
    plan.modules = tree.load_order(plan.wanted)
    for d in (cfg.hooks.pre_dir, cfg.hooks.post_dir):
        host = paths.path(d)
        if os.path.isdir(host):
            for name in sorted(os.listdir(host)):
                p = os.path.join(host, name)
                if os.path.isfile(p):
                    plan.files[os.path.join(d, name)] = p
    hn = paths.etc_hostname
    if os.path.isfile(hn):
        plan.files["/etc/hostname"] = hn
    return plan
