"""Wheels of this checkout and its dependencies, for installing kdumpy into lab guests.

The guest has no network, so kdumpy goes in the documented way from local files:
``python3 -m venv /opt/kdumpy/venv`` and ``pip install --no-index --find-links DIR kdumpy``.

Facts relied on:

* The systemd guest's python3 is Debian 12's 3.11, the same interpreter the host runs, so
  wheels built here (cp311, manylinux or linux_x86_64) install there.
* python-lzo has no wheel on PyPI for Linux; ``pip wheel`` builds it against the host's
  liblzo2-dev, and the built extension links ``liblzo2.so.2``, which the guest's liblzo2-2
  provides.

Two cache directories under ``<lab cache>/wheels/``: ``deps-<key>`` (the dependencies,
keyed on pyproject's dependency list) and ``kdumpy-<digest>`` (this checkout, keyed on its
sources and pyproject), so an edit to kdumpy rebuilds one small wheel only.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from .cache import cache_root, locked
from .run import kdumpy_digest, project_src


def checkout() -> Path:
    return project_src().parent


def _pyproject() -> dict:
    return tomllib.loads((checkout() / "pyproject.toml").read_text())


def _pip_wheel(args: list[str], out: Path) -> None:
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                           "--disable-pip-version-check", "-w", str(partial), *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(args)} failed:\n{proc.stdout[-1500:]}"
                           f"{proc.stderr[-1500:]}")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def dependency_wheels() -> Path:
    """A directory of wheels for every runtime dependency of kdumpy (built once)."""
    deps = list(_pyproject()["project"]["dependencies"])
    key = hashlib.sha256(("\n".join(deps) + sys.version).encode()).hexdigest()[:16]
    out = cache_root() / "wheels" / f"deps-{key}"
    with locked(out.with_name(out.name + ".lock")):
        if not (out.is_dir() and any(out.glob("*.whl"))):
            _pip_wheel(deps, out)
    return out


def kdumpy_wheel() -> Path:
    """A directory holding the wheel of this checkout (rebuilt when its sources change)."""
    digest = hashlib.sha256((kdumpy_digest(whole=True) +
                             (checkout() / "pyproject.toml").read_text()).encode())
    out = cache_root() / "wheels" / f"kdumpy-{digest.hexdigest()[:16]}"
    with locked(out.with_name(out.name + ".lock")):
        if not (out.is_dir() and any(out.glob("kdumpy-*.whl"))):
            _pip_wheel(["--no-deps", str(checkout())], out)
    return out


def wheel_dirs() -> tuple[Path, Path]:
    """(dependency wheels, kdumpy wheel) directories."""
    return dependency_wheels(), kdumpy_wheel()
