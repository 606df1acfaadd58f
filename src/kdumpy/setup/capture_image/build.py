"""``kdumpy rebuild``: build the capture image for one kernel release, and tell whether the
one on disk is current.

Output, under ``/var/lib/kdumpy``: ``capture-RELEASE.img`` (zstd- or gzip-compressed newc
cpio, whichever the kernel's config can unpack) and ``capture-RELEASE.json`` (the manifest:
digest, its parts, the modules, the sizes). Both are written through a temporary name and
renamed, mode 0600.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import kdumpy
from kdumpy.errors import KdumpyError
from kdumpy.setup import sysfs
from kdumpy.setup.capture_image import digest
from kdumpy.setup.capture_image.init import MODULE_LIST, STAGE_DIR, render
from kdumpy.setup.capture_image.modules import decompress, plain_path
from kdumpy.setup.capture_image.plan import ImagePlan, make_plan
from kdumpy.setup.capture_image.tree import ImageTree, write_image
from kdumpy.setup.capture_image.userspace import (
    PythonLayout,
    add_binary,
    add_busybox,
    add_fsck,
    add_python,
    dists_for,
)
from kdumpy.setup.config import Config
from kdumpy.setup.paths import SystemPaths


def image_path(paths: SystemPaths, release: str) -> str:
    return os.path.join(paths.state_dir, f"capture-{release}.img")


def manifest_path(paths: SystemPaths, release: str) -> str:
    return os.path.join(paths.state_dir, f"capture-{release}.json")


def read_manifest(paths: SystemPaths, release: str) -> dict[str, Any] | None:
    try:
        with open(manifest_path(paths, release), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def compression_for(paths: SystemPaths, release: str) -> str:
    """zstd when the kernel unpacks it (CONFIG_RD_ZSTD), else gzip (CONFIG_RD_GZIP)."""
    kc = sysfs.kernel_config(paths, release)
    if kc.source is None or kc.enabled("CONFIG_RD_ZSTD"):
        return "zstd"
    return "gzip"


@dataclass
class Freshness:
    release: str
    image: str
    exists: bool
    stale: list[str]                   # what changed; [] when current
    error: str | None = None           # the plan could not be made

    @property
    def current(self) -> bool:
        return self.exists and not self.stale and self.error is None


def plan_for(paths: SystemPaths, cfg: Config, release: str, config_path: str | None,
             python: str | None = None) -> ImagePlan:
    return make_plan(paths, cfg, release, python=python or os.path.abspath(sys.executable),
                     config_path=config_path)


def freshness(paths: SystemPaths, cfg: Config, release: str,
              config_path: str | None) -> Freshness:
    img = image_path(paths, release)
    exists = os.path.isfile(img)
    try:
        plan = plan_for(paths, cfg, release, config_path)
    except KdumpyError as exc:
        return Freshness(release, img, exists, [], str(exc))
    man = read_manifest(paths, release)
    stale = digest.changed(man.get("parts") if man else None, digest.parts(plan))
    return Freshness(release, img, exists, stale if exists else ["no image"])


def build(paths: SystemPaths, cfg: Config, release: str, config_path: str | None, *,
          log: Any = None) -> dict[str, Any]:
    """Build the image and its manifest; returns the manifest."""
    t0 = time.monotonic()
    plan = plan_for(paths, cfg, release, config_path)
    tree = ImageTree()
    # a merged-/usr system's /bin, /lib, ... symlinks first, so every path below lands
    # where the host's binaries and ld.so expect it
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            tree.symlink(d, os.readlink(d))
    for d in ("/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/sysroot", "/var/lib",
              "/etc"):
        tree.mkdir(d, 0o755)
    tree.chardev("/dev/console", 5, 1)
    tree.chardev("/dev/null", 1, 3, 0o666)
    tree.chardev("/dev/kmsg", 1, 11, 0o644)
    applets = add_busybox(tree)
    sizes: dict[str, int] = {"busybox": tree.total_size()}
    before = tree.total_size()
    for rel in plan.modules:
        host = os.path.join(plan.module_dir, rel)
        with open(host, "rb") as f:
            data = decompress(f.read(), rel)
        tree.add_bytes(f"/lib/modules/{release}/{plain_path(rel)}", data)
    tree.add_bytes(MODULE_LIST, "".join(plain_path(m) + "\n" for m in plan.modules).encode())
    tree.add_bytes(f"/lib/modules/{release}/modules.dep", _modules_dep(plan).encode())
    sizes["modules"] = tree.total_size() - before
    before = tree.total_size()
    fsck = add_fsck(tree, plan.init.fsck) if plan.init.fsck else None
    for tool, pkg, what in ((plan.init.lvm, "lvm2", "LVM"), (plan.init.mdadm, "mdadm", "md")):
        if tool:
            if not os.path.exists(tool):
                raise KdumpyError(f"the target is on {what} but {tool} is missing: "
                                  f"apt-get install {pkg}")
            add_binary(tree, tool)
    for exe in plan.binaries:
        add_binary(tree, exe)
    sizes["tools"] = tree.total_size() - before
    py = PythonLayout.current()
    sizes.update(add_python(tree, py, os.path.dirname(kdumpy.__file__),
                            dists_for(cfg.dump.compression)))
    tree.add_bytes(plan.init.config, plan.config_text, 0o600)
    for image, host in plan.files.items():
        tree.add_file(image, host)
    tree.symlink("/etc/mtab", "/proc/mounts")
    for i, (name, text) in enumerate(plan.init.stages):
        tree.add_bytes(f"{STAGE_DIR}/{i:02d}-{name}.sh", text.encode(), 0o755)
    tree.add_bytes("/init", render(plan.init).encode(), 0o755)
    parts = digest.parts(plan)
    os.makedirs(paths.state_dir, mode=0o700, exist_ok=True)
    out = image_path(paths, release)
    comp = compression_for(paths, release)
    size = write_image(tree, out, comp)
    manifest: dict[str, Any] = {
        "release": release, "image": out, "compression": comp, "compressed_size": size,
        "unpacked_size": tree.total_size(), "sizes": sizes, "digest": digest.combined(parts),
        "parts": parts, "modules": plan.modules, "wanted": plan.wanted,
        "python": plan.init.python, "kdumpy_version": kdumpy.__version__,
        "target": ({"uuid": plan.target.uuid, "fstype": plan.target.mount.fstype,
                    "mountpoint": plan.target.mount.mountpoint,
                    "devices": plan.target.devices, "stacked": plan.target.stacked}
                   if plan.target else None),
        "fsck": fsck, "applets": len(applets), "notes": plan.notes,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - t0, 1)}
    from kdumpy.setup.state import write_private
    write_private(manifest_path(paths, release),
                  json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return manifest


def _modules_dep(plan: ImagePlan) -> str:
    """A modules.dep for the modules in the image (busybox modprobe, and the kernel's
    request_module through /sbin/modprobe), in depmod's format with plain paths."""
    from kdumpy.setup.capture_image.modules import ModuleTree, module_name
    tree = ModuleTree.load(plan.module_dir)
    inside = {module_name(m) for m in plan.modules}
    lines = []
    for m in plan.modules:
        _path, deps = tree.deps[module_name(m)]
        dep_paths = [plain_path(tree.deps[d][0]) for d in deps if d in inside]
        lines.append(f"{plain_path(m)}: {' '.join(dep_paths)}".rstrip() + "\n")
    return "".join(lines)


def ensure(paths: SystemPaths, cfg: Config, release: str, config_path: str | None, *,
           force: bool = False) -> tuple[str, dict[str, Any] | None]:
    """The image for ``release``, rebuilt first when missing or stale (or ``force``).
    Returns (image path, the new manifest or None when it was current)."""
    if not force:
        f = freshness(paths, cfg, release, config_path)
        if f.error:
            raise KdumpyError(f.error)
        if f.current:
            return f.image, None
    man = build(paths, cfg, release, config_path)
    return man["image"], man

