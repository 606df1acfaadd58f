"""Real Debian kernels for the lab: find the newest in apt, download, unpack, run depmod.

Facts relied on (Debian 12 "bookworm" archive, checked with apt-cache):

* Debian 12's own kernel is ``linux-image-6.1.0-<ABI>-amd64`` (release ``6.1.0-<ABI>-amd64``);
  the 6.12 series served to bookworm (from bookworm-backports/-security) is
  ``linux-image-6.12.<N>+deb12-amd64`` (release ``6.12.<N>+deb12-amd64``).
* Each has a ``-unsigned`` twin with the same files but no Secure Boot signature; its vmlinuz
  boots without shim under QEMU's ``-kernel``. We prefer it and fall back to the signed name.
* ``apt-cache search`` also lists names whose only versions are gone from the index; a name is
  installable only if ``apt-cache policy`` shows a ``Candidate`` other than ``(none)``.
* ``apt-get download PKG=VERSION`` writes ``PKG_VERSION_amd64.deb`` (``:`` in the version
  escaped as ``%3a``) to the current directory; ``dpkg-deb -x`` unpacks it without installing.
* The package holds ``boot/vmlinuz-R``, ``boot/System.map-R``, ``boot/config-R`` and
  ``lib/modules/R`` (no modules.dep; see :mod:`lab.modules`).

Pinning: ``KDUMPY_LAB_KERNELS="6.1.0-56-amd64 6.12.117+deb12-amd64"`` (or the ``--kernel``
option) replaces resolution; entries may also be a series name (``6.1``, ``6.12``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, locked, release_dir
from .modules import module_dir, run_depmod

Log = Callable[[str], None]


@dataclass(frozen=True)
class Series:
    """A family of kernel packages of which the lab uses the newest available."""

    name: str
    release_re: re.Pattern[str]
    apt_regex: str  # POSIX extended regex for ``apt-cache search --names-only`` (no \\d)


SERIES: dict[str, Series] = {
    "6.1": Series("6.1", re.compile(r"6\.1\.0-\d+-amd64"),
                  r"^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$"),
    "6.12": Series("6.12", re.compile(r"6\.12\.\d+\+deb12-amd64"),
                   r"^linux-image-6\.12\.[0-9]+\+deb12-amd64(-unsigned)?$"),
}
DEFAULT_SERIES = ("6.1", "6.12")


def release_key(release: str) -> tuple[int, ...]:
    """Sort key: the numbers in a release string (``6.1.0-56-amd64`` -> (6, 1, 0, 56, 64))."""
    return tuple(int(n) for n in re.findall(r"\d+", release))


def series_of(release: str) -> str | None:
    """The series name whose pattern matches ``release`` exactly, if any."""
    for series in SERIES.values():
        if series.release_re.fullmatch(release):
            return series.name
    return None


@dataclass(frozen=True)
class Candidate:
    """An installable kernel package."""

    release: str
    package: str
    version: str


def _apt_cache(args: list[str]) -> str:
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return ""
    proc = subprocess.run([apt_cache, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, check=False)
    return proc.stdout


def parse_policy(text: str) -> dict[str, str]:
    """Package -> candidate version from ``apt-cache policy P1 P2 ...`` output."""
    result: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                result[current] = version
    return result


@functools.cache
def apt_candidates(series: Series) -> list[Candidate]:
    """Installable packages of ``series`` known to apt, newest release first.

    For each release the ``-unsigned`` package is listed before the signed one. Cached per
    process (each apt-cache call costs ~0.4 s).
    """
    names = [line.split(" - ", 1)[0].strip()
             for line in _apt_cache(["search", "--names-only", series.apt_regex]).splitlines()]
    names = [n for n in names if n]
    if not names:
        return []
    policy = parse_policy(_apt_cache(["policy", *names]))
    found: list[Candidate] = []
    for name, version in policy.items():
        release = name[len("linux-image-"):]
        release = release.removesuffix("-unsigned")
        if series.release_re.fullmatch(release):
            found.append(Candidate(release, name, version))
    found.sort(key=lambda c: (release_key(c.release), c.package.endswith("-unsigned")),
               reverse=True)
    return found


def cached_releases(root: Path | None = None) -> list[str]:
    """Releases that have a complete unpacked kernel in the cache."""
    base = root or cache_root()
    if not base.is_dir():
        return []
    return sorted((p.parent.name for p in base.glob("*/kernel.json")), key=release_key)


def resolve(spec: str) -> str:
    """A full kernel release for ``spec`` (a series name like ``6.12`` or a full release).

    A series resolves to the newest installable release apt knows, or if apt knows none (no
    ``apt-get update`` yet, offline) the newest one already in the cache.
    """
    if spec in SERIES:
        series = SERIES[spec]
        candidates = apt_candidates(series)
        if candidates:
            return candidates[0].release
        cached = [r for r in cached_releases() if series.release_re.fullmatch(r)]
        if cached:
            return cached[-1]
        raise LookupError(f"no installable linux-image package for series {spec} "
                          "(run apt-get update; is this a Debian 12 apt source?)")
    return spec


def requested_specs() -> list[str]:
    """Kernel specs from ``KDUMPY_LAB_KERNELS`` or the default series (6.1 and 6.12)."""
    env = os.environ.get("KDUMPY_LAB_KERNELS", "").replace(",", " ").split()
    return env or list(DEFAULT_SERIES)


def default_releases() -> list[str]:
    """The releases the lab and its tests use: resolved from :func:`requested_specs`.

    A spec that cannot be resolved is returned as ``unresolved-<spec>`` so that test ids still
    exist and the fixture fails with the reason instead of the test silently vanishing.
    """
    out = []
    for spec in requested_specs():
        try:
            out.append(resolve(spec))
        except LookupError:
            out.append(f"unresolved-{spec}")
    return out


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package in the cache."""

    release: str
    package: str
    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def system_map(self) -> Path:
        return self.root / "boot" / f"System.map-{self.release}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules(self) -> Path:
        return module_dir(self.root, self.release)


def _candidate_for_release(release: str) -> Candidate:
    series = series_of(release)
    if series is not None:
        for cand in apt_candidates(SERIES[series]):
            if cand.release == release:
                return cand
    names = [f"linux-image-{release}-unsigned", f"linux-image-{release}"]
    policy = parse_policy(_apt_cache(["policy", *names]))
    for name in names:
        if name in policy:
            return Candidate(release, name, policy[name])
    raise LookupError(f"apt has no installable package for kernel {release} "
                      f"(tried {', '.join(names)}; run apt-get update?)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_cached(release: str) -> Kernel | None:
    """The cached kernel for ``release`` if its unpacking completed, else None."""
    rdir = release_dir(release)
    info_file = rdir / "kernel.json"
    if not info_file.exists():
        return None
    info = json.loads(info_file.read_text())
    kernel = Kernel(info["release"], info["package"], info["version"], rdir / "kernel")
    if not kernel.vmlinuz.exists() or not (kernel.modules / "modules.dep").exists():
        return None
    return kernel


def ensure_kernel(spec: str, log: Log = print) -> Kernel:
    """Download and unpack the kernel for ``spec`` unless the cache already has it."""
    release = resolve(spec)
    if release.startswith("unresolved-"):
        raise LookupError(f"kernel {release[len('unresolved-'):]} could not be resolved via "
                          "apt-cache (run apt-get update)")
    kernel = load_cached(release)
    if kernel is not None:
        return kernel
    rdir = release_dir(release)
    with locked(rdir.with_name(rdir.name + ".lock")):
        kernel = load_cached(release)
        if kernel is not None:
            return kernel
        cand = _candidate_for_release(release)
        downloads = cache_root() / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        apt_get = shutil.which("apt-get")
        if apt_get is None:
            raise RuntimeError("apt-get not found: the lab needs a Debian host")
        log(f"lab: downloading {cand.package}={cand.version}")
        before = set(downloads.glob("*.deb"))
        subprocess.run([apt_get, "download", "-q", f"{cand.package}={cand.version}"],
                       cwd=downloads, check=True, stdout=subprocess.DEVNULL)
        debs = [p for p in downloads.glob(f"{cand.package}_*.deb")]
        new = [p for p in debs if p not in before] or debs
        if len(new) != 1:
            raise RuntimeError(f"expected one downloaded .deb for {cand.package}, found {new}")
        deb = new[0]
        sha = _sha256(deb)
        target = rdir / "kernel"
        partial = rdir / "kernel.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.mkdir(parents=True)
        log(f"lab: unpacking {deb.name}")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        log(f"lab: depmod for {release}")
        run_depmod(partial, release)
        partial.rename(target)
        deb.unlink()
        kernel = Kernel(release, cand.package, cand.version, target)
        if not kernel.vmlinuz.exists():
            raise RuntimeError(f"{cand.package} has no boot/vmlinuz-{release}")
        (rdir / "kernel.json").write_text(json.dumps({
            "release": release, "package": cand.package, "version": cand.version,
            "deb_sha256": sha,
        }, indent=2) + "\n")
        return kernel
