"""The capture image's digest: one hash per input, so a stale image says what changed.

As ``kdumpctl`` rebuilds its initramfs when the kernel, ``kdump.conf`` or the dump target's
devices change, the image is stale when any of these differ from the build's:

* ``kernel``: the release, its ``modules.dep`` and the bytes of every module put in;
* ``config``: the config's values (not its comments) and the files copied with it (hooks,
  hostname);
* ``target``: the target filesystem's UUID, type, mount and the devices under it;
* ``kdumpy``: kdumpy's version and the bytes of its sources;
* ``python``: the interpreter's path and version and the versions of kdumpy's dependencies;
* ``init``: the /init text (actions, deadline, binds, stages).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import sys
from typing import Any

import kdumpy
from kdumpy.setup.capture_image.init import render
from kdumpy.setup.capture_image.plan import ImagePlan
from kdumpy.setup.capture_image.userspace import DIST_IMPORTS, kdumpy_sources

#: Bumped when the image layout changes in a way the parts below do not show.
FORMAT = 1


def _h(*chunks: bytes | str) -> str:
    h = hashlib.sha256()
    for c in chunks:
        b = c.encode() if isinstance(c, str) else c
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""




def parts(plan: ImagePlan, kdumpy_dir: str | None = None) -> dict[str, str]:
    kdumpy_dir = kdumpy_dir or os.path.dirname(kdumpy.__file__)
    kernel = _h(plan.release, _file(os.path.join(plan.module_dir, "modules.dep")),
                *[m + "\0" for m in plan.modules],
                *[_file(os.path.join(plan.module_dir, m)) for m in plan.modules])
    config = _h(plan.config_values, *[f"{k}\0" for k in sorted(plan.files)],
                *[_file(plan.files[k]) for k in sorted(plan.files)],
                *[f"{b}\0" for b in plan.binaries])
    t = plan.target
    target = _h(json.dumps({"uuid": t.uuid, "fstype": t.mount.fstype,
                            "mountpoint": t.mount.mountpoint, "devno": t.mount.devno,
                            "devices": t.devices, "stacked": t.stacked} if t else None,
                           sort_keys=True), json.dumps(plan.wanted))
    srcs = list(kdumpy_sources(kdumpy_dir))
    code = _h(kdumpy.__version__, *[os.path.relpath(s, kdumpy_dir) + "\0" for s in srcs],
              *[_file(s) for s in srcs])
    versions = []
    for d in DIST_IMPORTS:
        try:
            versions.append(f"{d}=={md.version(d)}")
        except md.PackageNotFoundError:
            versions.append(f"{d}:missing")
    python = _h(plan.init.python, sys.version, *versions)
    return {"format": str(FORMAT), "kernel": kernel, "config": config, "target": target,
            "kdumpy": code, "python": python, "init": _h(render(plan.init))}


def combined(p: dict[str, str]) -> str:
    return _h(json.dumps(p, sort_keys=True))


WHAT = {"format": "kdumpy's image layout", "kernel": "the kernel or its modules",
        "config": "the config or its hooks", "target": "the dump target's devices",
        "kdumpy": "kdumpy itself", "python": "the Python environment",
        "init": "the capture steps (actions, deadline, mounts)"}


def changed(old: dict[str, Any] | None, new: dict[str, str]) -> list[str]:
    """What differs between a manifest's parts and fresh ones, in words."""
    if not old:
        return ["no manifest"]
    return [WHAT.get(k, k) for k in new if old.get(k) != new[k]]
