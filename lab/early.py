"""Early kdump in the lab: first-kernel initramfs images made by the real generators.

The lab's usual first kernel runs the lab's busybox ``/init``. For the early-kdump cases the
first kernel boots instead the initramfs an admin gets from ``kdumpy install --initramfs``
followed by the generator: kdumpy's hook files (:mod:`kdumpy.setup.early`) run by the real
tool, on the real kernel package. Two generators, two ways to die before any root is
mounted (:data:`GENERATORS`):

* initramfs-tools (Debian's): the image also carries the lab's ``kdumpy_warn.ko``
  (:mod:`.warn_module`) in ``/conf/modules``; with ``panic_on_warn=1`` the kernel dies while
  the initramfs loads that module, after kdumpy's init-top script loaded the capture kernel.
* dracut (Fedora/RHEL/SUSE's; Debian's ``dracut-core`` package, unpacked, not installed):
  booted without ``root=`` and with ``rd.shell=0``, dracut's init gives up ("No or empty
  root= argument") and exits, and the kernel panics "Attempted to kill init!": the classic
  early-boot death, after kdumpy's cmdline hook loaded the capture kernel.

The capture kernel boots the lab's usual initramfs (installed as the early-kdump capture
initrd) and saves the dump as in every other run.

Facts relied on:

* mkinitramfs reads ``/boot/config-<release>`` (which compressors the kernel takes),
  ``/lib/modules/<release>`` (it runs depmod there when ``modules.dep`` is missing) and its
  configuration directory ``/etc/initramfs-tools`` (``hooks/``, ``scripts/``, ``modules``,
  ``conf.d/``); ``MODULES=list`` puts only the listed modules (and their dependencies) in the
  image; ``SOURCE_DATE_EPOCH`` makes it use ``gzip -n`` (initramfs-tools 0.142).
* initramfs-tools' ``/init`` runs ``scripts/init-top``, then loads ``/conf/modules``, then
  ``scripts/init-premount``, then mounts the root (``/usr/share/initramfs-tools/init``).
* dracut runs the ``cmdline`` hooks first; with no ``root=`` its ``10-parse-root-opts.sh``
  calls ``die``, which with ``rd.shell=0`` ends ``/init`` (dracut-lib.sh); PID 1 exiting
  panics the kernel (kernel/exit.c). ``-m "base kdumpy-early"`` builds an image of just
  dracut's base and kdumpy's module; Debian ships the files under ``/lib``, which a
  merged-/usr host has as a symlink to ``usr/lib``, so they are staged under ``usr/``.
* The build must not touch the host: it runs in a private mount namespace (``unshare -m``)
  and a ``chroot`` into an overlay whose lower layer is the host's ``/`` and whose upper layer
  is a tmpfs (the kernel refuses an upper layer that lies inside the lower one, hence tmpfs).
  The kernel package's module tree is overlaid the same way at ``/lib/modules/<release>``, so
  depmod's output for the added module stays in the tmpfs. Both need root (the lab's QEMU
  runs do not; CI runs as root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, locked, release_dir
from .initramfs import Initramfs, which_or_fail
from .kernels import Kernel
from .warn_module import MODULE_NAME


@dataclass(frozen=True)
class Generator:
    """One initramfs generator and how the lab's first kernel dies in its image."""

    name: str
    append: str                 # kernel command line words (besides crashkernel=)
    trigger: str                # the lab trigger name of that death
    panic_text: str             # in the first kernel's "Kernel panic - not syncing:" line
    build: str                  # run in the chroot (sh), writes /kdumpy-early.img
    expected: tuple[str, ...]   # files the image must hold (lsinitramfs names)


COMMON_FILES = ("kdumpy/vmlinuz", "kdumpy/initrd.img", "etc/kdumpy/early.conf")
GENERATORS = {
    "initramfs-tools": Generator(
        "initramfs-tools", "rd.earlykdump panic_on_warn=1", "warn", "panic_on_warn set",
        'SOURCE_DATE_EPOCH=1 mkinitramfs -o /kdumpy-early.img "$VER"',
        COMMON_FILES + ("scripts/init-top/kdumpy", "conf/modules")),
    "dracut": Generator(
        "dracut", "rd.earlykdump rd.shell=0", "no-root", "Attempted to kill init!",
        'dracut --no-hostonly --no-hostonly-cmdline -m "base kdumpy-early" --kver "$VER" '
        '-f /kdumpy-early.img',
        COMMON_FILES + ("usr/lib/dracut/hooks/cmdline/00-kdumpy-early.sh",)),
}
#: What the base of the capture command line is in the installed early.conf (``[load] cmdline``).
BASE_CMDLINE = "console=ttyS0 panic=1"
#: Lines kdumpy's init-top script writes to /dev/kmsg (kdumpy.setup.early.LOAD_SCRIPT).
LOADED_LINE = "kdumpy: early kdump: kexec_file_load exit"
#: Bumped when the recipe below changes in a way the staged tree's digest does not show.
EARLY_FORMAT = 2

#: initramfs-tools settings for the lab image: only the listed module, no resume device
#: probing (the build host has none worth finding), gzip (every kernel takes it).
LAB_CONF = "MODULES=list\nRESUME=none\nCOMPRESS=gzip\n"

# Runs as root in a new mount namespace; everything it mounts vanishes with it.
NAMESPACE_SCRIPT = r"""
set -eu
mount -t tmpfs -o mode=0755 tmpfs "$NS"
mkdir "$NS/upper" "$NS/work" "$NS/merged" "$NS/mupper" "$NS/mwork"
cp -a "$STAGE/root/." "$NS/upper/"
cp -a "$STAGE/modules/." "$NS/mupper/"
mount -t overlay overlay -o "lowerdir=/,upperdir=$NS/upper,workdir=$NS/work" "$NS/merged"
for d in proc sys dev; do mount --rbind "/$d" "$NS/merged/$d"; done
mount -t tmpfs tmpfs "$NS/merged/tmp"
mkdir -p "$NS/merged/lib/modules/$VER"
mount -t overlay overlay -o "lowerdir=$KMODS,upperdir=$NS/mupper,workdir=$NS/mwork" \
    "$NS/merged/lib/modules/$VER"
chroot "$NS/merged" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin depmod "$VER"
chroot "$NS/merged" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=/tmp \
    VER="$VER" /bin/sh -ec "$BUILD"
cp "$NS/merged/kdumpy-early.img" "$OUT"
"""


class EarlyBuildError(RuntimeError):
    """The early-kdump image could not be built; the message carries the tool's output."""


@dataclass(frozen=True)
class EarlyImage:
    """A built early-kdump first-kernel initramfs in the cache."""

    path: Path
    digest: str          # of everything staged for it (its cache key)
    files: tuple[str, ...]
    early_conf: str      # the /etc/kdumpy/early.conf kdumpy install wrote into it
    generator: Generator


def _kdumpy_install(root: Path, config: Path) -> str:
    """``kdumpy install --initramfs --root ROOT`` from this checkout, as an admin runs it."""
    from .run import project_src
    env = dict(os.environ, PYTHONPATH=str(project_src()), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "kdumpy", "install", "--root", str(root),
                           "--config", str(config), "--kdumpy", "/usr/bin/kdumpy",
                           "--initramfs", "--arch", "x86_64"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EarlyBuildError(f"kdumpy install --initramfs failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def stage(kernel: Kernel, capture: Initramfs, generator: Generator, directory: Path) -> str:
    """Fill ``directory/root`` (files the overlay adds to the host's /) and
    ``directory/modules`` (added to the kernel's module tree); return their digest."""
    root = directory / "root"
    (root / "proc").mkdir(parents=True)
    config = directory / "kdumpy.toml"
    config.write_text(f'[load]\ncmdline = "{BASE_CMDLINE}"\n')
    _kdumpy_install(root, config)
    shutil.rmtree(root / "proc")
    boot = root / "boot"
    boot.mkdir(exist_ok=True)
    for src in (kernel.vmlinuz, kernel.config, kernel.system_map):
        shutil.copy2(src, boot / src.name)
    from kdumpy.setup import early
    initrd = root / early.EARLY_INITRD.lstrip("/")
    initrd.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(capture.path, initrd)
    (directory / "modules").mkdir()
    if generator.name == "initramfs-tools":
        conf = root / "etc/initramfs-tools"
        (conf / "conf.d").mkdir(parents=True, exist_ok=True)
        (conf / "conf.d" / "kdumpy-lab").write_text(LAB_CONF)
        (conf / "modules").write_text(f"{MODULE_NAME}\n")
        from .warn_module import ensure_warn_module
        warn_ko = ensure_warn_module(kernel)
        updates = directory / "modules" / "updates"
        updates.mkdir()
        shutil.copy2(warn_ko, updates / warn_ko.name)
        version = _installed_version("initramfs-tools")
    else:
        version = _unpack_dracut(root)
    digest = hashlib.sha256(f"early-format {EARLY_FORMAT}\n{version}\n".encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path == config:
            continue
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    (directory / "generator").write_text(version)
    return digest.hexdigest()


def _installed_version(package: str) -> str:
    """``package`` and its installed version (a different generator is a different recipe)."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise EarlyBuildError(f"{package} is not installed: apt-get install {package} "
                              "(scripts/install-deps does)")
    return f"{package} {proc.stdout.strip()}"


def _unpack_dracut(root: Path) -> str:
    """Debian's dracut-core, downloaded once into the lab cache and unpacked into ``root``
    (it conflicts with initramfs-tools, so it is never installed on the host)."""
    downloads = cache_root() / "downloads" / "dracut"
    with locked(downloads.with_name("dracut.lock")):
        debs = sorted(downloads.glob("dracut-core_*.deb"))
        if not debs:
            downloads.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(["apt-get", "download", "dracut-core"], cwd=downloads,
                                  capture_output=True, text=True)
            debs = sorted(downloads.glob("dracut-core_*.deb"))
            if proc.returncode != 0 or not debs:
                raise EarlyBuildError(f"apt-get download dracut-core failed: "
                                      f"{proc.stderr.strip()}")
    deb = debs[-1]
    unpacked = root.parent / "dracut-core"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    for top in sorted(unpacked.iterdir()):
        # /lib, /bin, /sbin are symlinks into /usr on a merged-/usr host: stage under usr/
        merged = top.name in ("lib", "bin", "sbin") and Path("/" + top.name).is_symlink()
        dest = root / ("usr/" + top.name if merged else top.name)
        shutil.copytree(top, dest, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(unpacked)
    return "dracut-core " + deb.name.split("_")[1]


def list_image(path: Path) -> tuple[str, ...]:
    """The image's file names, by initramfs-tools' ``lsinitramfs`` (it reads dracut's too)."""
    proc = subprocess.run([which_or_fail("lsinitramfs", "initramfs-tools"), str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EarlyBuildError(f"lsinitramfs {path} failed: {proc.stderr.strip()}")
    return tuple(line.strip() for line in proc.stdout.splitlines() if line.strip())


def check_image(files: tuple[str, ...], release: str, generator: Generator) -> None:
    """Raise unless the image holds kdumpy's early-kdump files, kexec (and the lab module)."""
    names = set(files)
    missing = [f for f in generator.expected if f not in names]
    if not any(f.endswith("bin/kexec") for f in names):
        missing.append("kexec")
    if generator.name == "initramfs-tools" and not any(
            f.split("/modules/", 1)[-1].startswith(f"{release}/")
            and f.endswith(f"/{MODULE_NAME}.ko") for f in names):
        missing.append(f"{MODULE_NAME}.ko")
    if missing:
        raise EarlyBuildError(f"the {generator.name} early-kdump initramfs lacks "
                              + ", ".join(missing))


def build(kernel: Kernel, generator: Generator, stage_dir: Path, out: Path) -> str:
    """Run the generator over the staged files (see :data:`NAMESPACE_SCRIPT`); its output."""
    if os.geteuid() != 0:
        raise EarlyBuildError("building the early-kdump initramfs needs root (a mount "
                              "namespace with an overlay of /)")
    ns = stage_dir.parent / (stage_dir.name + ".ns")
    ns.mkdir()
    env = dict(os.environ, NS=str(ns), STAGE=str(stage_dir), OUT=str(out),
               VER=kernel.release, KMODS=str(kernel.modules), BUILD=generator.build)
    proc = subprocess.run([which_or_fail("unshare", "util-linux"), "--mount",
                           "--propagation", "private", "/bin/sh", "-c", NAMESPACE_SCRIPT],
                          env=env, capture_output=True, text=True)
    ns.rmdir()
    if proc.returncode != 0 or not out.is_file():
        raise EarlyBuildError(f"{generator.name} for {kernel.release} failed (exit "
                              f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def ensure_early_image(kernel: Kernel, capture: Initramfs,
                       generator: str = "initramfs-tools") -> EarlyImage:
    """The early-kdump first-kernel initramfs for ``kernel`` made by ``generator``, built
    unless the cached one was made from the same staged files."""
    gen = GENERATORS[generator]
    out_dir = release_dir(kernel.release) / f"early-{gen.name}"
    image = out_dir / "initrd.img"
    info_file = out_dir / "early.json"
    from kdumpy.setup.early import EARLY_CONF
    with locked(out_dir.with_name(out_dir.name + ".lock")):
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".stage-") as tmp:
            stage_dir = Path(tmp) / "stage"
            stage_dir.mkdir()
            digest = stage(kernel, capture, gen, stage_dir)
            conf = (stage_dir / "root" / EARLY_CONF.lstrip("/")).read_text()
            version = (stage_dir / "generator").read_text()
            if image.is_file() and info_file.is_file():
                info = json.loads(info_file.read_text())
                if info.get("digest") == digest:
                    return EarlyImage(image, digest, tuple(info["files"]), conf, gen)
            new = out_dir / ".initrd.img.new"
            log = build(kernel, gen, stage_dir, new)
        files = list_image(new)
        check_image(files, kernel.release, gen)
        new.replace(image)
        info_file.write_text(json.dumps({"digest": digest, "release": kernel.release,
                                         "generator": version, "files": files,
                                         "early_conf": conf,
                                         "output": log[-4000:]}, indent=1) + "\n")
        return EarlyImage(image, digest, files, conf, gen)
