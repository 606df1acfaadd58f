"""Which kernel modules the capture image needs, and in which order to load them.

Facts relied on:

* ``/lib/modules/RELEASE/modules.dep`` (depmod(8)): ``path: dep1 dep2 ...`` with paths
  relative to that directory, each module's direct and indirect dependencies (kmod loads
  them right to left). ``modules.alias``: ``alias PATTERN MODULE`` with fnmatch(3) patterns
  matched against a device's ``modalias`` or a name passed to ``request_module()``
  (``fs-ext4``, ``crypto-crc32c``). ``modules.softdep``: ``softdep MOD pre: A B post: C``,
  modules modprobe loads around MOD although no symbol links them (ext4 and jbd2 want
  ``crypto-crc32c`` before them). ``modules.builtin``: paths of modules built into the
  kernel, which need no loading; ``modules.builtin.modinfo`` holds their ``NAME.alias=...``
  strings, NUL-separated.
* A module's name is its file name without ``.ko`` and a compression suffix (``.xz``,
  ``.zst``, ``.gz``), with ``-`` and ``_`` equivalent (kmod normalises to ``_``).
* sysfs (Documentation/ABI/testing/sysfs-block, sysfs-bus-*): ``/sys/dev/block/MAJ:MIN``
  links to the block device's directory under ``/sys/devices``; a partition's directory
  sits in its disk's; each ancestor that a driver bound has a ``driver`` link, whose
  ``module`` link names the module (absent for built-in drivers without one); devices
  carry a ``modalias``. Device-mapper and md devices list the devices below them in
  ``slaves/``; a dm device has ``dm/uuid`` (``LVM-...`` for LVM, ``CRYPT-...`` for
  dm-crypt), an md device ``md/level`` (``raid1``, ...).
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import os
from dataclasses import dataclass, field

from kdumpy.errors import KdumpyError
from kdumpy.setup.paths import SystemPaths

COMPRESSION_SUFFIXES = (".xz", ".zst", ".gz")


class ModuleError(KdumpyError):
    """A module the target needs is missing from the kernel's module tree."""


def module_name(path: str) -> str:
    """``kernel/fs/ext4/ext4.ko.xz`` -> ``ext4``; ``dm-mod`` -> ``dm_mod``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in COMPRESSION_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = base.removesuffix(".ko")
    return base.replace("-", "_")


def plain_path(path: str) -> str:
    """The module's path with the compression suffix dropped (the image holds plain ELF)."""
    for suffix in COMPRESSION_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def decompress(data: bytes, path: str) -> bytes:
    """Plain ELF bytes of a module file, whatever its compression (busybox ``insmod``
    passes the bytes to init_module(2), and only kernels with CONFIG_MODULE_DECOMPRESS
    take compressed ones through finit_module(2))."""
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


@dataclass
class ModuleTree:
    """One kernel release's module index (``/lib/modules/RELEASE``)."""

    directory: str
    deps: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    builtin: set[str] = field(default_factory=set)
    builtin_aliases: list[tuple[str, str]] = field(default_factory=list)
    softdeps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str) -> ModuleTree:
        dep_text = _read(os.path.join(directory, "modules.dep"))
        if not dep_text.strip():
            raise ModuleError(f"{directory}/modules.dep is missing or empty (run depmod)")
        t = cls(directory)
        for line in dep_text.splitlines():
            path, sep, rest = line.partition(":")
            if sep:
                t.deps[module_name(path)] = (path.strip(), [module_name(d) for d in rest.split()])
        for line in _read(os.path.join(directory, "modules.alias")).splitlines():
            w = line.split()
            if len(w) == 3 and w[0] == "alias":
                t.aliases.append((w[1], w[2].replace("-", "_")))
        t.builtin = {module_name(ln.strip()) for ln in
                     _read(os.path.join(directory, "modules.builtin")).splitlines()
                     if ln.strip()}
        for item in _read(os.path.join(directory, "modules.builtin.modinfo")).split("\0"):
            name, _, rest = item.partition(".")
            if rest.startswith("alias="):
                t.builtin_aliases.append((rest[6:], name.replace("-", "_")))
        for line in _read(os.path.join(directory, "modules.softdep")).splitlines():
            w = line.split()
            if len(w) < 2 or w[0] != "softdep":
                continue
            pre: list[str] = []
            post: list[str] = []
            cur = pre
            for word in w[2:]:
                if word == "pre:":
                    cur = pre
                elif word == "post:":
                    cur = post
                else:
                    cur.append(word)
            old = t.softdeps.setdefault(w[1].replace("-", "_"), ([], []))
            old[0].extend(pre)
            old[1].extend(post)
        return t

    def is_builtin(self, name: str) -> bool:
        return name.replace("-", "_") in self.builtin

    def lookup(self, name_or_alias: str) -> list[str]:
        """Module names for a name, an alias (``fs-ext4``) or a modalias; [] when only
        built-in code answers it (or nothing does)."""
        name = name_or_alias.replace("-", "_")
        if name in self.deps:
            return [name]
        if name in self.builtin:
            return []
        for pattern, mod in self.builtin_aliases:
            if fnmatch.fnmatchcase(name_or_alias, pattern):
                return []
        found: list[str] = []
        for pattern, mod in self.aliases:
            if mod not in found and fnmatch.fnmatchcase(name_or_alias, pattern):
                found.append(mod)
        return found

    def load_order(self, wanted: list[str]) -> list[str]:
        """Paths (relative to the tree) to load, each after its dependencies and its
        softdep ``pre:`` modules, for the closure of ``wanted`` (names or aliases)."""
        order: list[str] = []
        done: set[str] = set()

        def visit(name: str, chain: tuple[str, ...], required: bool) -> None:
            mods = self.lookup(name)
            if not mods:
                if required and not self.is_builtin(name) and not any(
                        fnmatch.fnmatchcase(name, p) for p, _m in self.builtin_aliases):
                    raise ModuleError(f"module {name!r} is neither in {self.directory}/"
                                      "modules.dep nor built in"
                                      + (f" (needed by {chain[-1]})" if chain else ""))
                return
            for mod in mods:
                if mod in done or mod in chain:
                    continue
                pre, post = self.softdeps.get(mod, ([], []))
                for soft in pre:
                    visit(soft, chain + (mod,), False)
                path, deps = self.deps[mod]
                # modules.dep lists the whole closure; load the last ones first
                for dep in reversed(deps):
                    visit(dep, chain + (mod,), True)
                if mod not in done:
                    done.add(mod)
                    order.append(path)
                for soft in post:
                    visit(soft, chain + (mod,), False)

        for name in wanted:
            visit(name, (), True)
        return order


# -- the devices behind a mount --------------------------------------------------------------

@dataclass
class MountInfo:
    mountpoint: str
    devno: str                         # "MAJ:MIN"
    fstype: str
    source: str


def mount_of(paths: SystemPaths, path: str) -> MountInfo | None:
    """The mount holding ``path`` (longest mount point prefix in
    ``/proc/self/mountinfo``, proc(5): field 5 the mount point, 3 ``MAJ:MIN``, then after
    ``-`` the type and the source; octal escapes ``\\040`` in paths)."""
    text = _read(paths.path("/proc/self/mountinfo"))
    best: MountInfo | None = None
    path = os.path.normpath(path)
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if not sep or len(f) < 5 or len(r) < 2:
            continue
        mp = _unescape(f[4])
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = MountInfo(mp, f[2], r[0], _unescape(r[1]))
    return best


def _unescape(s: str) -> str:
    out = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) + 0 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@dataclass
class BlockChain:
    """What sysfs says about the devices under one block device."""

    devices: list[str] = field(default_factory=list)        # kernel names: vda1, dm-0, ...
    modules: list[str] = field(default_factory=list)        # driver modules, outermost last
    modaliases: list[str] = field(default_factory=list)     # of devices without a driver link
    stacked: list[str] = field(default_factory=list)        # "dm:LVM-..." / "md:raid1"


def block_chain(paths: SystemPaths, devno: str) -> BlockChain:
    """Walk sysfs from block device ``MAJ:MIN`` down through ``slaves/`` and up through
    each device's ancestors, collecting the modules of the drivers bound on the way."""
    chain = BlockChain()
    sysdev = paths.path("/sys/devices")

    def add_mod(name: str) -> None:
        name = name.replace("-", "_")
        if name not in chain.modules:
            chain.modules.append(name)

    def visit(devdir: str, depth: int) -> None:
        if depth > 16:
            return
        devdir = os.path.realpath(devdir)
        name = os.path.basename(devdir)
        if name in chain.devices:
            return
        chain.devices.append(name)
        disk = devdir
        if os.path.exists(os.path.join(devdir, "partition")):
            disk = os.path.dirname(devdir)
        if os.path.isdir(os.path.join(disk, "dm")):
            uuid = (_read(os.path.join(disk, "dm", "uuid")).strip())
            chain.stacked.append(f"dm:{uuid}")
            add_mod("dm_mod")
            if uuid.startswith("CRYPT-"):
                add_mod("dm_crypt")
        if os.path.isdir(os.path.join(disk, "md")):
            level = _read(os.path.join(disk, "md", "level")).strip()
            chain.stacked.append(f"md:{level}")
            add_mod("md_mod")
            if level:
                add_mod({"raid4": "raid456", "raid5": "raid456", "raid6": "raid456"}
                        .get(level, level))
        slaves = os.path.join(disk, "slaves")
        if os.path.isdir(slaves):
            for s in sorted(os.listdir(slaves)):
                visit(os.path.join(slaves, s), depth + 1)
        # up through the physical ancestors: device/ of the disk and its parents
        d = os.path.dirname(disk)
        while d.startswith(sysdev + "/"):
            drv = os.path.join(d, "driver")
            if os.path.islink(drv):
                mod = os.path.join(drv, "module")
                if os.path.islink(mod):
                    add_mod(os.path.basename(os.path.realpath(mod)))
            elif os.path.isfile(os.path.join(d, "modalias")):
                alias = _read(os.path.join(d, "modalias")).strip()
                if alias and alias not in chain.modaliases:
                    chain.modaliases.append(alias)
            d = os.path.dirname(d)

    start = paths.path(f"/sys/dev/block/{devno}")
    if not os.path.exists(start):
        raise ModuleError(f"{start}: no such block device in sysfs")
    visit(start, 0)
    return chain


def filesystem_module(tree: ModuleTree, fstype: str) -> list[str]:
    """The module(s) for a filesystem type: its own name, else the ``fs-TYPE`` alias
    (``MODULE_ALIAS_FS``); [] when built in."""
    names = tree.lookup(fstype)
    return names or tree.lookup(f"fs-{fstype}")
