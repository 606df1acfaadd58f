"""Shared pytest fixtures.

Real-kernel crash corpus (``lab``; every test using these is marked ``lab``). Runs are
built on demand (Debian kernel download, initramfs, QEMU boot, sysrq crash, capture) and
cached under ``~/.cache/kdumpy/lab`` (``KDUMPY_LAB_CACHE``); a cached run is reused while
kdumpy's sources are unchanged (``KDUMPY_LAB_REUSE=any`` reuses it regardless).

``lab_release``
    Session-scoped parameter: each kernel release the lab covers (the newest Debian 12
    ``6.1.0-*-amd64`` and ``6.12.*+deb12-amd64`` by default; ``KDUMPY_LAB_KERNELS`` pins
    others). Test ids are the release: ``test_crash_capture[6.12.117+deb12-amd64]``.
``lab_crash``
    :class:`lab.corpus.LabCrash` for ``lab_release`` with ``crashkernel=256M``:
    ``raw_vmcore`` (byte copy of /proc/vmcore, ELF), ``kdumpy_dump`` (``kdumpy save -d 1
    --compress lzo`` run inside the capture kernel), ``makedumpfile_flat`` (``makedumpfile -F
    -l -d 31``, flattened), ``serial_log``, ``meta`` (the run's meta.json as a dict: marker,
    meminfo, reserved range, guest clock at crash, phase timings, exit statuses) and
    ``marker`` (string planted in the kernel log just before the crash).
``lab_crash_small``
    The same with the smaller reservation (``lab.corpus.SMALL_CRASHKERNEL``).
``lab_service_crash``
    A crash loaded with ``kdumpy load`` (kexec_file_load) and saved by ``kdumpy capture
    --config`` (the capture service): ``directory / "service" / <host>-<time>/``.
``lab_taint_crash`` / ``lab_warn_crash``
    Service crashes whose first kernel dies by ``panic_on_taint`` / a WARN() with
    ``panic_on_warn`` set through kdumpy's ``[triggers]`` config.
``lab_early_crash``
    Early kdump: the capture kernel loaded by kdumpy's initramfs-tools hook, the first kernel
    dead inside that initramfs (a WARN() with ``panic_on_warn=1``), captured by the service.
    ``lab_early_dracut_crash``: the same with dracut's image, dead because dracut's /init
    exits without a root (``rd.shell=0``).
``lab_raw``
    :class:`lab.vmcore.RawVmcore` over ``lab_crash.raw_vmcore`` (an ELF reader that
    shares no code with kdumpy, for use as an oracle).
``lab_crashes``
    ``{release: LabCrash}`` for every release (256M), for cross-kernel tests.

If QEMU or another tool is missing, or a run fails, the fixture fails (never skips) with the
reason and the tail of the guest's serial console.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

LAB_FIXTURES = {"lab_release", "lab_crash", "lab_crash_small", "lab_raw", "lab_crashes",
                "lab_service_crash", "lab_taint_crash", "lab_warn_crash",
                "lab_early_crash", "lab_early_dracut_crash", "lab_vmlinux"}

_releases: list[str] | None = None


def lab_releases() -> list[str]:
    """Kernel releases the lab covers (resolved once per session through apt-cache)."""
    global _releases
    if _releases is None:
        from lab.corpus import releases

        _releases = releases()
    return _releases


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab: boots real Debian kernels in QEMU (slow, cached under "
                   "~/.cache/kdumpy/lab)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lab_release" in metafunc.fixturenames:
        releases = lab_releases()
        metafunc.parametrize("lab_release", releases, ids=releases, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def _lab_crash(release: str, crashkernel: str, **options):  # -> LabCrash
    from lab.corpus import crash_for
    from lab.run import LabError

    if release.startswith("unresolved-"):
        pytest.fail(f"the lab could not resolve kernel series {release[len('unresolved-'):]} "
                    "through apt-cache (run `apt-get update`; the lab needs Debian 12 apt "
                    "sources)", pytrace=False)
    try:
        return crash_for(release, crashkernel, **options)
    except (LabError, RuntimeError, LookupError, OSError,
            subprocess.CalledProcessError) as exc:
        pytest.fail(f"lab run for {release} crashkernel={crashkernel} failed:\n{exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def lab_crash(lab_release: str):
    """The 256M-reservation crash of ``lab_release`` (see module docstring)."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return _lab_crash(lab_release, DEFAULT_CRASHKERNEL)


@pytest.fixture(scope="session")
def lab_crash_small(lab_release: str):
    """The small-reservation crash of ``lab_release``."""
    from lab.corpus import SMALL_CRASHKERNEL

    return _lab_crash(lab_release, SMALL_CRASHKERNEL)


@pytest.fixture(scope="session")
def lab_service_crash(lab_release: str):
    """A crash loaded by ``kdumpy load`` (kexec_file_load, no kexec-tools) and captured by
    ``kdumpy capture --config`` (the service path) into the run directory's ``service/``."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return _lab_crash(lab_release, DEFAULT_CRASHKERNEL, loader="kdumpy",
                      capture_steps=("raw", "service"))


@pytest.fixture(scope="session")
def lab_taint_crash(lab_release: str):
    """Like ``lab_service_crash``, but ``kdumpy load --config`` also sets every ``[triggers]``
    knob and the first kernel panics through ``panic_on_taint`` instead of sysrq-c."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return _lab_crash(lab_release, DEFAULT_CRASHKERNEL, loader="kdumpy",
                      capture_steps=("raw", "service"), trigger="taint")


@pytest.fixture(scope="session")
def lab_warn_crash(lab_release: str):
    """``panic_on_warn=1`` set by ``kdumpy load --config``, then a WARN() (a tiny module built
    against Debian's headers, :mod:`lab.warn_module`) panics the first kernel."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return _lab_crash(lab_release, DEFAULT_CRASHKERNEL, loader="kdumpy",
                      capture_steps=("raw", "service"), trigger="warn")


@pytest.fixture(scope="session")
def lab_early_crash(lab_release: str):
    """Early kdump: the first kernel boots an initramfs that Debian's initramfs-tools built
    with ``kdumpy install --initramfs``'s hooks (:mod:`lab.early`); kdumpy's init-top
    script loads the capture kernel, then a WARN() in a module loaded from the initramfs
    panics the kernel (``panic_on_warn=1``) before any root is mounted. The capture kernel
    runs the capture service into ``directory / "service"``."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return _lab_crash(lab_release, DEFAULT_CRASHKERNEL, loader="early",
                      capture_steps=("raw", "service"), trigger="warn")


@pytest.fixture(scope="session")
def lab_early_dracut_crash(lab_release: str):
    """Early kdump with dracut: Debian's dracut-core (unpacked, not installed) builds the
    first kernel's initramfs with kdumpy's dracut module; booted with no ``root=`` and
    ``rd.shell=0``, dracut's /init gives up and exits, and the kernel panics ("Attempted to
    kill init!") after kdumpy's cmdline hook loaded the capture kernel."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return _lab_crash(lab_release, DEFAULT_CRASHKERNEL, loader="early-dracut",
                      capture_steps=("raw", "service"), trigger="no-root")


@pytest.fixture(scope="session")
def lab_vmlinux(lab_release: str):
    """Debian's debug vmlinux for ``lab_release`` (only the vmlinux of the -dbg package,
    :func:`lab.debuginfo.debug_vmlinux`, cached)."""
    from lab.debuginfo import debug_vmlinux

    return debug_vmlinux(lab_release)


@pytest.fixture(scope="session")
def lab_raw(lab_crash) -> Iterator:
    """Independent ELF reader over ``lab_crash.raw_vmcore``."""
    from lab.vmcore import RawVmcore

    with RawVmcore(lab_crash.raw_vmcore) as raw:
        yield raw


@pytest.fixture(scope="session")
def lab_crashes() -> dict:
    """Every release's 256M crash."""
    from lab.corpus import DEFAULT_CRASHKERNEL

    return {release: _lab_crash(release, DEFAULT_CRASHKERNEL) for release in lab_releases()}
