"""Fault cases on the systemd guest: each ends in a dump or in the configured failure action
within its deadline, never in a hang.

Each scenario starts from the plain life run's disk right after kdumpy was installed
(:data:`lab.systemd_life.LifeOptions.from_life`), configures itself in the next boot, restarts
kdumpy.service (rebuild + load), crashes with ``kdumpy test --yes`` and reads the boot after.
Their outcome does not depend on the kernel, so they run on Debian 12's own 6.1 only.
The deadline of each is ``capture_deadline`` (from the panic to QEMU's exit on the guest's
reboot); :mod:`lab.systemd_life` fails the run past it.

* broken fstab: an fstab entry for a filesystem that does not exist (no ``nofail``). A capture
  that booted the real root would stop in emergency.target; kdumpy's image never reads fstab.
  The boot after the crash runs with ``fstab=no`` (systemd-fstab-generator(8)) so the lab gets
  its shell back.
* panic_on_warn: ``[triggers] panic_on_warn = true`` applied in the first kernel, and a pre
  hook loads a module whose init does WARN() in the capture kernel: the sysctl must not apply
  there, so the WARN is logged and the capture goes on.
* fsck: the target filesystem (the root, holding /var/crash) is past its maximum mount count,
  so ``e2fsck -p`` in the capture image runs a full check ("check forced") before mounting it.
* root on LVM: the installed system is moved into a logical volume (``root_lvm``), so the
  target is a device-mapper device: the image must carry dm_mod and lvm, and its ``/init``
  must activate the volume group itself (there is no udev in it) before the UUID appears.
* reservation too small: ``crashkernel=128M``, below what ``estimate`` asks for; the capture
  fails, the capture kernel reboots, and the next boot's ``status`` says why.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from kdumpy.dump import open_dump
from lab.corpus import releases
from lab.verify import compare_dump
from lab.vmcore import RawVmcore

pytestmark = pytest.mark.lab

RELEASE = releases()[0]          # Debian 12's own 6.1 (the first series the lab resolves)
BROKEN_FSTAB = "UUID=0badf00d-0000-4000-8000-00000000dead /srv/gone ext4 defaults 0 2"
WARN_TEXT = "KDUMPY-LAB-WARN"


def _scenario(name: str, **options):
    from lab.guest_shell import GuestError
    from lab.run import LabError
    from lab.systemd_life import LifeOptions, ensure_life

    if RELEASE.startswith("unresolved-"):
        pytest.fail(f"kernel series {RELEASE} could not be resolved via apt-cache",
                    pytrace=False)
    try:
        return ensure_life(RELEASE, LifeOptions(name=name, from_life=True, **options))
    except (GuestError, LabError, RuntimeError, LookupError, OSError,
            subprocess.CalledProcessError) as exc:
        pytest.fail(f"systemd fault case {name} on {RELEASE} failed:\n{exc}", pytrace=False)


def _events(run) -> dict:
    return {e["kind"]: e for e in run.meta["boots"]["boot2"]["capture_events"]}


def _arrived(run) -> dict:
    test = run.meta["boots"]["boot3"]["status"]["facts"]["test"]
    assert test["arrived"] is True, test
    assert run.dumps(), run.meta["boots"]["boot3"]["crash_listing"]
    return test


@pytest.fixture(scope="module", params=[RELEASE], ids=[f"systemd-{RELEASE}"])
def fstab_run(request):
    return _scenario("fault-fstab", crash_setup=(f"echo '{BROKEN_FSTAB}' >> /etc/fstab",
                                                 "mkdir -p /srv/gone"),
                     boot3_append="fstab=no", capture_deadline=600)


@pytest.fixture(scope="module", params=[RELEASE], ids=[f"systemd-{RELEASE}"])
def warn_run(request):
    return _scenario("fault-warn", config="[triggers]\npanic_on_warn = true\n",
                     warn_hook=True, crash_setup=("cat /proc/sys/kernel/panic_on_warn",),
                     capture_deadline=600)


@pytest.fixture(scope="module", params=[RELEASE], ids=[f"systemd-{RELEASE}"])
def fsck_run(request):
    return _scenario("fault-fsck", crash_setup=("tune2fs -c 1 -C 5 /dev/vda",
                                                "tune2fs -l /dev/vda | grep -i 'mount count'"),
                     capture_deadline=600)


def test_systemd_fault_broken_fstab(fstab_run):
    boot2 = fstab_run.meta["boots"]["boot2"]
    events = _events(fstab_run)
    assert events["capture_exit"]["value"] == "0", boot2["capture_events"]
    assert events["action"]["value"] == "reboot"
    assert "failed" not in events
    _arrived(fstab_run)


def test_systemd_fault_panic_on_warn_in_capture(warn_run):
    boot2 = warn_run.meta["boots"]["boot2"]
    assert boot2["crash_setup"][0] == ["1"], "panic_on_warn was not set in the first kernel"
    lines = boot2["capture_lines"]
    assert any(WARN_TEXT in line for line in lines), "the WARN() did not fire in the capture"
    assert any("warn_insmod_rc 0" in line for line in lines)
    assert any("capture_panic_on_warn 0" in line for line in lines)
    events = _events(warn_run)
    assert events["capture_exit"]["value"] == "0", boot2["capture_events"]
    assert [e for e in boot2["capture_events"] if e["kind"] == "panic"] == [], \
        "the capture kernel panicked"
    _arrived(warn_run)


def test_systemd_fault_target_needs_fsck(fsck_run):
    boot2 = fsck_run.meta["boots"]["boot2"]
    assert any("Maximum mount count:      1" in line for line in boot2["crash_setup"][1])
    lines = boot2["capture_lines"]
    assert any("check forced" in line for line in lines), "e2fsck did not check the target"
    events = _events(fsck_run)
    assert events["capture_exit"]["value"] == "0", boot2["capture_events"]
    _arrived(fsck_run)


#: Below what the capture image needs on a 1 GiB guest (kdumpy estimate recommends more), yet
#: enough for kexec_file_load to place the kernel and the image.
SMALL_CRASHKERNEL = "128M"


@pytest.fixture(scope="module", params=[RELEASE], ids=[f"systemd-{RELEASE}"])
def small_run(request):
    return _scenario("fault-small", crashkernel=SMALL_CRASHKERNEL, expect_dump=False,
                     capture_deadline=600)


def test_systemd_fault_reservation_too_small(small_run):
    """The capture fails cleanly and the guest reboots within the deadline (no hang); the
    next boot's ``kdumpy status`` says no dump arrived and that the reservation is below
    what the capture boot needs."""
    boot2 = small_run.meta["boots"]["boot2"]
    assert boot2["cmdline"].split().count(f"crashkernel={SMALL_CRASHKERNEL}") == 1
    findings = boot2.get("status_output", [])
    if not boot2["crashed"]:
        # kexec_file_load refused the image: status exits 3 and says so before any crash
        assert boot2["status_rc"] == 3, findings
        return
    events = _events(small_run)
    assert "capture_exit" not in events or events["capture_exit"]["value"] != "0", \
        boot2["capture_events"]
    boot3 = small_run.meta["boots"]["boot3"]
    test = boot3["status"]["facts"]["test"]
    assert test["arrived"] is False and test["status"] in ("lost", "failed"), test
    whats = {f["what"] for f in boot3["status"]["findings"]}
    assert "reservation size" in whats, boot3["status"]["findings"]
    assert not small_run.dumps() or all(
        "incomplete" in p.name for p in small_run.dumps()), small_run.dumps()


@pytest.fixture(scope="module", params=[RELEASE], ids=[f"systemd-{RELEASE}"])
def lvm_run(request):
    return _scenario("fault-lvm", root_lvm=True,
                     crash_setup=("findmnt -no SOURCE /", "lsblk -rno NAME,TYPE",
                                  "cat /proc/cmdline"),
                     capture_deadline=600)


def test_systemd_fault_root_on_lvm(lvm_run):
    """The root (and /var/crash on it) is an LVM logical volume: the image holds dm_mod and
    lvm, activates the volume group without udev, checks and mounts the LV, and the dump's
    pages equal the raw /proc/vmcore."""
    from lab.systemd_life import LVM_ROOT, LVM_VG

    boot2 = lvm_run.meta["boots"]["boot2"]
    source, blocks, cmdline = boot2["crash_setup"]
    assert source == [LVM_ROOT], source
    assert f"{LVM_VG}-root lvm" in blocks, blocks
    assert f"root={LVM_ROOT}" in cmdline[0].split()
    (plan_file,) = (lvm_run.directory / "state").glob("capture-*.json")
    plan = json.loads(plan_file.read_text())
    assert plan["target"]["mountpoint"] == "/"
    assert any(s.startswith("dm:LVM-") for s in plan["target"]["stacked"]), plan["target"]
    assert any(m.endswith("/dm-mod.ko") or "/dm-mod.ko." in m for m in plan["modules"]), \
        plan["modules"]
    lines = boot2["capture_lines"]
    mounted = [line for line in lines if "kdumpy-init: target filesystem" in line]
    assert mounted and ("/dev/dm-" in mounted[0] or "/dev/mapper/" in mounted[0]), mounted
    events = _events(lvm_run)
    assert events["capture_exit"]["value"] == "0", boot2["capture_events"]
    assert events["action"]["value"] == "reboot"
    _arrived(lvm_run)
    (dump,) = [p for p in lvm_run.dumps() if p.name == "vmcore"]
    with open_dump(dump) as mem:
        assert mem.vmcoreinfo.osrelease == RELEASE
    with RawVmcore(lvm_run.raw_vmcore) as raw:
        result = compare_dump(dump, raw, level1=False)
    assert result.pages_compared > 10_000
    assert result.ok, result.describe()
