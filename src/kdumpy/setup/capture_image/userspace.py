"""The capture image's userspace: static busybox, fsck, and the Python kdumpy runs in.

Facts relied on:

* Debian's ``busybox-static`` installs a statically linked ``/bin/busybox``; ``busybox
  --list`` names its applets, and it runs the applet named by ``argv[0]``, so one symlink
  per applet is a complete ``/bin``.
* ``ldd FILE`` (glibc) prints ``name => /path (addr)`` per shared library and the dynamic
  loader as ``/path (addr)``; statically linked files print ``not a dynamic executable``.
  The loader and the libraries must sit at the absolute paths recorded in the binary and in
  ``ld.so``'s search path, so they are copied to the same paths, symlinks included.
* CPython finds its standard library relative to the real executable (``sys.base_prefix``,
  ``lib/pythonX.Y``); a venv's ``bin/python`` is a symlink next to ``pyvenv.cfg``, whose
  ``home`` names the base interpreter's directory, and adds the venv's ``site-packages``.
  A ``.pyc`` file in place of a ``.py`` (no ``__pycache__``) is imported without its source
  (the "sourceless" loader, PEP 3147), with a header of the magic number, a flags word, and
  the source's mtime and size.
* ``modulefinder`` follows every ``import`` statement in the bytecode, including imports
  inside functions, so the standard-library modules it finds from kdumpy's own modules are
  all the ones kdumpy can import (plus a few named dynamically, such as the ``encodings``
  codecs, which are added whole).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import marshal
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field

from kdumpy.errors import KdumpyError
from kdumpy.setup.capture_image.tree import ImageTree

BUSYBOX = "/bin/busybox"
#: kdumpy's own dependencies (pyproject ``dependencies``); their import names
DIST_IMPORTS = {"numpy": ["numpy"], "zstandard": ["zstandard"], "cramjam": ["cramjam"],
                "python-lzo": ["lzo"], "tqdm": ["tqdm"]}
#: The codec library each ``[dump] compression`` needs (kdumpy.formats.codecs imports them
#: only when used); numpy always. tqdm (optional) stays out: on the capture kernel's console
#: kdumpy logs plain progress lines.
CODEC_DISTS = {"lzo": "python-lzo", "snappy": "cramjam", "zstd": "zstandard"}


def dists_for(compression: str) -> list[str]:
    return ["numpy", *([CODEC_DISTS[compression]] if compression in CODEC_DISTS else [])]


#: Never needed by a capture: tests, type stubs, build helpers, alternative backends.
SKIP_PARTS = {"tests", "test", "testing", "__pycache__", "f2py", "distutils", "_pyinstaller",
              "doc", "benchmarks", "include"}
SKIP_SUFFIXES = (".pyi", ".pxd", ".c", ".h", ".typed", ".txt", ".md", ".cfg", ".pc")
SKIP_FILES = {"zstandard/_cffi.cpython", "zstandard/backend_cffi.py"}
#: numpy subpackages neither ``import numpy`` nor kdumpy imports (numpy 2 loads them lazily)
SKIP_FILES |= {f"numpy/{p}/" for p in ("random", "fft", "polynomial", "ma", "testing",
                                       "typing", "f2py", "distutils", "_pyinstaller",
                                       "doc")}
#: Imported by name at run time (codecs lookups), not by an import statement.
STDLIB_WHOLE = ("encodings",)
#: Packages outside a capture's reach that modulefinder meets through optional imports.
STDLIB_EXCLUDE = ("tkinter", "test", "idlelib", "turtledemo", "lib2to3", "ensurepip",
                  "pydoc_data", "unittest", "doctest", "pdb", "pydoc", "xmlrpc",
                  "webbrowser", "http", "asyncio", "multiprocessing", "email", "html",
                  "sqlite3", "curses", "dbm", "venv", "distutils", "xml",
                  # OpenSSL (libcrypto, ~5 MiB): hashlib falls back to its built-in
                  # _md5/_sha* modules, and no capture speaks TLS
                  "_hashlib", "_ssl", "ssl", "_pydecimal")


class UserspaceError(KdumpyError):
    """A file the image needs is not on this system; the message says what to install."""


@dataclass
class PythonLayout:
    executable: str                    # sys.executable as kdumpy runs (venv's bin/python)
    real: str                          # the interpreter binary
    stdlib: str
    site_packages: str
    venv_cfg: str | None
    version: str = field(default_factory=lambda: sys.version.split()[0])

    @classmethod
    def current(cls) -> PythonLayout:
        exe = os.path.abspath(sys.executable)
        cfg = os.path.join(sys.prefix, "pyvenv.cfg")
        return cls(exe, os.path.realpath(exe), sysconfig.get_paths()["stdlib"],
                   sysconfig.get_paths()["purelib"],
                   cfg if sys.prefix != sys.base_prefix and os.path.isfile(cfg) else None)


def ldd(path: str) -> list[str]:
    """Absolute paths of the shared libraries and loader ``path`` needs (none if static)."""
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False,
                             timeout=60)
    except FileNotFoundError:
        raise UserspaceError("ldd not found (libc-bin)") from None
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
        elif "=> not found" in line:
            raise UserspaceError(f"{path}: needs {line.split()[0]}, which is not installed")
    return libs


def strippable(path: str) -> bool:
    """Whether ``strip --strip-debug`` may rewrite ``path``: not the libraries of a wheel
    (``site-packages``, auditwheel's ``*.libs``), which patchelf edited and strip would
    leave with LOAD segments ld.so rejects ("ELF load command address/offset not
    page-aligned")."""
    return "/site-packages/" not in path and "/dist-packages/" not in path and \
        ".libs/" not in path


def add_binary(tree: ImageTree, path: str, seen: set[str] | None = None) -> None:
    """A host executable or shared object and, through ldd, every library it needs."""
    seen = seen if seen is not None else set()
    tree.copy_host_path(path, strip=strippable(path))
    for lib in ldd(path):
        if lib not in seen:
            seen.add(lib)
            tree.copy_host_path(lib, strip=strippable(lib))


def add_busybox(tree: ImageTree, busybox: str = BUSYBOX) -> list[str]:
    """Static busybox at /bin/busybox and a symlink per applet in /bin (never over a
    real file). Returns the applets."""
    if not os.path.isfile(busybox):
        raise UserspaceError(f"{busybox} not found: apt-get install busybox-static")
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=False)
    applets = out.stdout.split()
    if "sh" not in applets:
        raise UserspaceError(f"{busybox} has no sh applet")
    if ldd(busybox):
        raise UserspaceError(f"{busybox} is not statically linked: apt-get install "
                             "busybox-static")
    tree.mkdir("/bin")
    tree.add_file("/bin/busybox", busybox, 0o755)
    for a in applets:
        if a != "busybox" and not tree.exists(f"/bin/{a}"):
            tree.symlink(f"/bin/{a}", "busybox")
    return applets


FSCK = {"ext2": "e2fsck", "ext3": "e2fsck", "ext4": "e2fsck"}


def find_fsck(fstype: str) -> str | None:
    """The filesystem's checker (e2fsck for ext2/3/4); None for filesystems checked at
    mount time (xfs, btrfs) or without one."""
    name = FSCK.get(fstype)
    if name is None:
        return None
    exe = shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if exe is None:
        raise UserspaceError(f"{name} not found: apt-get install e2fsprogs")
    return exe


def add_fsck(tree: ImageTree, exe: str) -> str:
    """The checker with its libraries and its configuration."""
    add_binary(tree, exe)
    # e2fsck must not refuse over a clock it cannot trust (no RTC sync in the capture boot)
    tree.add_bytes("/etc/e2fsck.conf", b"[options]\n\tbroken_system_clock = 1\n")
    return exe


def compile_pyc(source_path: str, image_path: str) -> bytes:
    """A timestamp ``.pyc`` for ``source_path`` that names ``image_path`` in tracebacks."""
    with open(source_path, "rb") as f:
        src = f.read()
    code = compile(src, image_path, "exec", dont_inherit=True)
    st = os.stat(source_path)
    return (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
            + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
            + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code))


def add_module_file(tree: ImageTree, host: str, image: str, seen: set[str]) -> None:
    """A .py as a sourceless .pyc, a .so with its libraries, anything else as is."""
    if host.endswith(".py"):
        tree.add_bytes(image[:-3] + ".pyc", compile_pyc(host, image))
    elif host.endswith(".so"):
        tree.add_file(image, host, 0o755, strip=strippable(host))
        for lib in ldd(host):
            if lib not in seen:
                seen.add(lib)
                tree.copy_host_path(lib, strip=strippable(lib))
    else:
        tree.add_file(image, host)


def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    return (any(p in SKIP_PARTS for p in parts[:-1]) or rel.endswith(SKIP_SUFFIXES)
            or any(rel.startswith(s) for s in SKIP_FILES) or parts[-1].endswith(".pyc"))


_STDLIB_CACHE: dict[tuple[str, str, tuple[tuple[str, int, int], ...]], list[str]] = {}


def stdlib_modules(py: PythonLayout, kdumpy_dir: str) -> list[str]:
    """Files of the standard library kdumpy's modules import (modulefinder), run in a
    child of the same interpreter so nothing is imported here; remembered per process
    while kdumpy's sources are unchanged."""
    key = (py.executable, kdumpy_dir, tuple(
        (f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in kdumpy_sources(kdumpy_dir)))
    if key not in _STDLIB_CACHE:
        _STDLIB_CACHE[key] = _find_stdlib_modules(py, kdumpy_dir)
    return list(_STDLIB_CACHE[key])


def _find_stdlib_modules(py: PythonLayout, kdumpy_dir: str) -> list[str]:
    script = (
        "import modulefinder, pkgutil, sys, os\n"
        f"excl = {list(STDLIB_EXCLUDE) + ['numpy', 'zstandard', 'cramjam', 'lzo', 'tqdm', 'drgn', '_drgn', 'lab']!r}\n"
        "mf = modulefinder.ModuleFinder(path=[sys.argv[1]] + sys.path, excludes=excl)\n"
        "import kdumpy\n"
        "for m in pkgutil.walk_packages([sys.argv[1] + '/kdumpy'], 'kdumpy.'):\n"
        "    if '.capture_image' in m.name or m.name.startswith('kdumpy.cli.analysis'):\n"
        "        continue\n"
        "    try:\n"
        "        mf.import_hook(m.name)\n"
        "    except Exception:\n"
        "        pass  # modulefinder fails on some third-party layouts (namespace packages)\n"
        "for dist in sys.argv[2:]:\n"
        "    try:\n"
        "        __import__(dist)\n"
        "    except ImportError:\n"
        "        pass\n"
        "files = {m.__file__ for m in mf.modules.values() if m.__file__}\n"
        "files |= {getattr(m, '__file__', None) for m in list(sys.modules.values())}\n"
        "print('\\n'.join(sorted(f for f in files if f)))\n")
    imports = [i for d in DIST_IMPORTS.values() for i in d]
    out = subprocess.run([py.executable, "-I", "-c", script, os.path.dirname(kdumpy_dir),
                          *imports], capture_output=True, text=True, check=False, timeout=300,
                         cwd="/")
    if out.returncode != 0:
        raise UserspaceError(f"cannot list the modules kdumpy imports: {out.stderr.strip()}")
    std = os.path.realpath(py.stdlib)
    def excluded(f: str) -> bool:
        rel = os.path.relpath(os.path.realpath(f), std).removeprefix("lib-dynload/")
        return rel.split("/")[0].split(".")[0] in STDLIB_EXCLUDE

    found = [f for f in out.stdout.splitlines()
             if os.path.realpath(f).startswith(std + "/") and not excluded(f)
             and "/site-packages/" not in f and "/dist-packages/" not in f]
    for pkg in STDLIB_WHOLE:
        base = os.path.join(py.stdlib, pkg)
        for dirpath, _dirs, files in os.walk(base):
            found += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(set(found))


def dist_files(name: str) -> list[tuple[str, str]]:
    """(host path, path relative to site-packages) of an installed distribution's files
    (its RECORD), minus tests, stubs and build leftovers."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise UserspaceError(f"Python package {name} is not installed for "
                             f"{sys.executable}") from None
    out = []
    for f in dist.files or []:
        rel = str(f)
        if rel.startswith("..") or ".dist-info/" in rel or _skipped(rel):
            continue
        host = str(dist.locate_file(f))
        if os.path.isfile(host):
            out.append((host, rel))
    return out


def add_python(tree: ImageTree, py: PythonLayout, kdumpy_dir: str,
               dists: list[str]) -> dict[str, int]:
    """The interpreter at its own path (venv symlink and pyvenv.cfg included), the
    standard-library modules kdumpy imports, kdumpy's dependencies and kdumpy itself, all
    byte-compiled. Returns bytes per part."""
    seen: set[str] = set()
    before = tree.total_size()
    tree.copy_host_path(py.executable)
    add_binary(tree, py.real, seen)
    if py.venv_cfg:
        tree.copy_host_path(py.venv_cfg)
    sizes = {"interpreter": tree.total_size() - before}
    before = tree.total_size()
    std = py.stdlib
    # CPython's prefix landmarks (Modules/getpath.py): lib/pythonX.Y/os.py or os.pyc,
    # and lib/pythonX.Y/lib-dynload for the extension modules
    for f in stdlib_modules(py, kdumpy_dir):
        add_module_file(tree, f, f, seen)
    tree.mkdir(os.path.join(std, "lib-dynload"))
    sizes["stdlib"] = tree.total_size() - before
    before = tree.total_size()
    site = py.site_packages
    for dist in dists:
        for host, rel in dist_files(dist):
            add_module_file(tree, host, os.path.join(site, rel), seen)
    sizes["site-packages"] = tree.total_size() - before
    before = tree.total_size()
    for dirpath, dirs, files in os.walk(kdumpy_dir):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "tests"))
        for f in sorted(files):
            if f.endswith(".py"):
                host = os.path.join(dirpath, f)
                rel = os.path.relpath(host, os.path.dirname(kdumpy_dir))
                add_module_file(tree, host, os.path.join(site, rel), seen)
    sizes["kdumpy"] = tree.total_size() - before
    return sizes


def kdumpy_sources(kdumpy_dir: str) -> Iterable[str]:
    for dirpath, dirs, files in os.walk(kdumpy_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)
