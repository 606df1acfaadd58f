"""Kernel-module selection for the lab initramfs: modules.dep closure and decompression.

Facts relied on:

* ``depmod -b ROOT RELEASE`` (kmod) writes ``ROOT/lib/modules/RELEASE/modules.dep``; each line
  is ``path: dep1 dep2 ...`` with paths relative to that directory. Debian's kernel packages
  ship ``modules.builtin`` and ``modules.order`` but not ``modules.dep``.
* A module's name is its file name without ``.ko`` and any compression suffix (``.xz``,
  ``.zst``, ``.gz``), with ``-`` and ``_`` equivalent (``kmod`` normalises ``-`` to ``_``).
* Modules listed in ``modules.builtin`` are compiled into the kernel and need no loading
  (Debian 6.12 has ``virtio_pci`` built in; 6.1 has it as a module).
* A module's dependencies must be loaded before it. busybox ``insmod`` does not resolve
  dependencies, and whether it (or the kernel, ``CONFIG_MODULE_DECOMPRESS``) can decompress
  depends on build options, so the lab decompresses ``.ko.xz``/``.ko.zst``/``.ko.gz`` on the
  host and loads plain ELF objects in dependency order.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kdumpy.setup.capture_image.modules import COMPRESSION_SUFFIXES, module_name



def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Map module name -> (its path, names of its direct dependencies) from modules.dep text."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise ValueError(f"malformed modules.dep line: {line!r}")
        table[module_name(path)] = (path, [module_name(d) for d in deps.split()])
    return table


def parse_modules_builtin(text: str) -> set[str]:
    """Names of built-in modules from modules.builtin (one path per line)."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


class MissingModule(LookupError):
    """A requested module is neither a loadable module nor built in."""


def load_order(wanted: list[str], dep_table: dict[str, tuple[str, list[str]]],
               builtin: set[str]) -> list[str]:
    """Paths to insmod, dependencies first, for the closure of ``wanted``.

    Built-in names are skipped; a name found in neither table raises :class:`MissingModule`.
    Each module appears once, after every module it depends on (depth-first post-order,
    stable with respect to the order of ``wanted`` and of each dependency list).
    """
    order: list[str] = []
    done: set[str] = set()
    active: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done:
            return
        if name in active:
            raise ValueError("dependency cycle: " + " -> ".join(chain + (name,)))
        if name not in dep_table:
            if name in builtin:
                done.add(name)
                return
            raise MissingModule(f"module {name!r} is neither in modules.dep nor built in"
                                + (f" (needed by {chain[-1]})" if chain else ""))
        active.add(name)
        path, deps = dep_table[name]
        for dep in deps:
            visit(dep, chain + (name,))
        active.discard(name)
        done.add(name)
        order.append(path)

    for name in wanted:
        visit(name, ())
    return order


def decompress_module(data: bytes, path: str) -> bytes:
    """Plain ELF bytes of a module file given its (possibly compressed) contents.

    ``.xz`` and ``.gz`` use the standard library; ``.zst`` uses the ``zstd`` command (Python
    3.11 has no zstd module), reading stdin and writing stdout.
    """
    if path.endswith(".xz"):
        out = lzma.decompress(data)
    elif path.endswith(".gz"):
        out = gzip.decompress(data)
    elif path.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise RuntimeError(f"{path} is zstd-compressed and the zstd command is missing"
                               " (apt-get install zstd)")
        out = subprocess.run([zstd, "-d", "-c", "-q"], input=data, stdout=subprocess.PIPE,
                             check=True).stdout
    else:
        out = data
    if out[:4] != b"\x7fELF":
        raise ValueError(f"{path} did not decompress to an ELF object")
    return out


@dataclass(frozen=True)
class ModuleSet:
    """The modules to put in an initramfs: (name, ELF bytes) in load order."""

    modules: tuple[tuple[str, bytes], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.modules]


def run_depmod(root: Path, release: str) -> Path:
    """Run ``depmod -b ROOT RELEASE`` (kmod) and return the modules.dep path it wrote."""
    depmod = shutil.which("depmod") or "/usr/sbin/depmod"
    if not Path(depmod).exists():
        raise RuntimeError("depmod not found (apt-get install kmod)")
    subprocess.run([depmod, "-b", str(root), release], check=True)
    return module_dir(root, release) / "modules.dep"


def module_dir(root: Path, release: str) -> Path:
    """``ROOT/lib/modules/RELEASE`` (Debian 12 packages use /lib, later ones /usr/lib)."""
    for candidate in (root / "lib" / "modules" / release,
                      root / "usr" / "lib" / "modules" / release):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no lib/modules/{release} under {root}")


def collect_modules(root: Path, release: str, wanted: list[str]) -> ModuleSet:
    """Resolve ``wanted`` against the unpacked kernel at ``root`` (depmod must have run)."""
    mdir = module_dir(root, release)
    dep_file = mdir / "modules.dep"
    if not dep_file.exists():
        run_depmod(root, release)
    table = parse_modules_dep(dep_file.read_text())
    builtin_file = mdir / "modules.builtin"
    builtin = parse_modules_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    out = []
    for path in load_order(wanted, table, builtin):
        out.append((module_name(path), decompress_module((mdir / path).read_bytes(), path)))
    return ModuleSet(tuple(out))
