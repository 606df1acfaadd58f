"""kdumpy's whole life on a real systemd Debian 12 guest, on both Debian kernels.

The guest (:mod:`lab.systemd_guest`) is mmdebstrap's minbase bookworm with systemd, udev, the
Debian kernel and initramfs-tools, booted from its own /boot with its root on /dev/vda. kdumpy
goes into a venv at /opt/kdumpy/venv from wheels of this checkout. The run
(:mod:`lab.systemd_life`): install, enable kdumpy.service, crashkernel= from ``kdumpy
estimate`` (passed on QEMU's -append of the next boot: the guest boots without a boot loader,
so there is no update-grub to run), reboot, ``kdumpy status``, ``kdumpy test --yes``; the
capture kernel boots kdumpy's own capture image, saves into /var/crash on the guest's disk and
reboots; the next boot's ``kdumpy status --json`` reports the dump, and the host compares the
dump's pages with a raw copy of /proc/vmcore that a lab-only pre hook wrote to a second disk.

Test ids: ``test_systemd_*[systemd-<release>]``.
"""

from __future__ import annotations

import subprocess

import pytest

from kdumpy.dump import open_dump
from lab.corpus import releases
from lab.qemu import parse_size
from lab.verify import compare_dump
from lab.vmcore import RawVmcore

pytestmark = pytest.mark.lab

RELEASES = releases()


@pytest.fixture(scope="session", params=RELEASES, ids=[f"systemd-{r}" for r in RELEASES])
def systemd_life(request):
    from lab.guest_shell import GuestError
    from lab.run import LabError
    from lab.systemd_life import ensure_life

    release = request.param
    if release.startswith("unresolved-"):
        pytest.fail(f"kernel series {release} could not be resolved via apt-cache",
                    pytrace=False)
    try:
        return ensure_life(release)
    except (GuestError, LabError, RuntimeError, LookupError, OSError,
            subprocess.CalledProcessError) as exc:
        pytest.fail(f"systemd life cycle on {release} failed:\n{exc}", pytrace=False)


def test_systemd_install_reserve_status(systemd_life):
    meta = systemd_life.meta
    boot2 = meta["boots"]["boot2"]
    assert meta["kdumpy_version"].startswith("kdumpy"), meta["kdumpy_version"]
    # the reservation is the one `kdumpy estimate` recommended, and the kernel made it
    assert meta["crashkernel"] == meta["estimate"]["recommended"]
    assert f"crashkernel={meta['crashkernel']}" in boot2["cmdline"].split()
    assert int(boot2["kexec_crash_size"]) == parse_size(meta["crashkernel"]) or \
        ":" in meta["crashkernel"]
    assert boot2["service_rc"] == 0, "\n".join(boot2["service_output"])
    assert boot2["crash_kernel_loaded"] == "1"
    assert boot2["status_rc"] == 0, "\n".join(boot2["status_output"])


def test_systemd_capture_runs_kdumpy_image(systemd_life):
    boot2 = systemd_life.meta["boots"]["boot2"]
    release = systemd_life.meta["release"]
    kinds = {e["kind"]: e for e in boot2["capture_events"]}
    assert boot2["panic"] == "sysrq triggered crash"
    assert boot2["capture_release"] == release
    assert kinds["init_started"]["value"] == release, boot2["capture_events"]
    assert kinds["capture_exit"]["value"] == "0", boot2["capture_events"]
    assert kinds["action"]["value"] == "reboot"
    assert "failed" not in kinds
    assert kinds["raw_copy_rc"]["value"] == "0"


def test_systemd_next_boot_reports_dump(systemd_life):
    boot3 = systemd_life.meta["boots"]["boot3"]
    status = boot3["status"]
    test = status["facts"]["test"]
    assert test["arrived"] is True, test
    assert test["status"] == "complete"
    dumps = systemd_life.dumps()
    assert dumps, boot3["crash_listing"]
    assert any(test["vmcore"].endswith(p.relative_to(systemd_life.crash_dir).as_posix())
               for p in dumps), (test["vmcore"], dumps)


def test_systemd_dump_pages_match_raw_vmcore(systemd_life):
    (dump,) = [p for p in systemd_life.dumps() if p.name == "vmcore"]
    with open_dump(dump) as mem:
        assert mem.vmcoreinfo.osrelease == systemd_life.meta["release"]
    with RawVmcore(systemd_life.raw_vmcore) as raw:
        result = compare_dump(dump, raw, level1=False)
    assert result.pages_compared > 10_000
    assert result.ok, result.describe()
