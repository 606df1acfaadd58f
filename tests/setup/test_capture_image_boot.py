"""The capture image boots: each Debian kernel the lab covers starts kdumpy's image in QEMU
with an ext4 virtio disk that needs a check. Its /init loads the modules resolved from
sysfs, finds the filesystem by UUID, runs ``e2fsck -p``, mounts it read-write with the
target bound at /var/crash, starts the Python and kdumpy in the image, and (no
/proc/vmcore: this is not a crash) runs the failure action. The crash itself, through
systemd, is the systemd lab's (tests/e2e/test_systemd_*)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_block import ROOT_UUID, link_modules, mount, virtio_disk

from kdumpy.setup.capture_image.build import build
from kdumpy.setup.config import load_config
from kdumpy.setup.paths import SystemPaths

pytestmark = pytest.mark.lab
BOOT_TIMEOUT = 300


def test_image_boots_mounts_the_target_and_starts_kdumpy(lab_release: str, tmp_path: Path):
    from lab.kernels import ensure_kernel
    from lab.qemu import choose_accelerator, qemu_binary
    if lab_release.startswith("unresolved-"):
        pytest.fail(f"kernel series {lab_release} could not be resolved (apt-get update)")
    kernel = ensure_kernel(lab_release, log=lambda _m: None)
    root = tmp_path / "root"
    devno = virtio_disk(root)
    mount(root, devno, "/", "ext4", "/dev/vda1")
    link_modules(root, kernel.release, kernel.modules)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/kdumpy.toml").write_text('[actions]\nfailure = "poweroff"\n')
    paths = SystemPaths(str(root))
    man = build(paths, load_config(paths.config), kernel.release, paths.config)
    assert man["target"]["uuid"] == ROOT_UUID
    wanted = {m.rsplit("/", 1)[-1].split(".ko")[0] for m in man["modules"]}
    assert {"virtio_blk", "ext4", "jbd2"} <= wanted

    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    for argv in (["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, str(disk)],
                 ["tune2fs", "-E", "force_fsck", str(disk)]):     # the fs needs a check
        subprocess.run(argv, check=True, capture_output=True)
    accel, _why = choose_accelerator(os.environ.get("KDUMPY_LAB_ACCEL", "auto"))
    argv = ["nice", "-n", "10", qemu_binary(),
            *(["-accel", "kvm", "-cpu", "host"] if accel == "kvm"
              else ["-accel", "tcg", "-cpu", "max"]),
            "-m", "512M", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", str(kernel.vmlinuz), "-initrd", man["image"],
            "-append", "console=ttyS0 panic=10 nr_cpus=1 reset_devices",
            "-drive", f"file={disk},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BOOT_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    lines = [ln for ln in log.splitlines() if ln.startswith("kdumpy-init: ")]
    tail = "\n".join(log.splitlines()[-40:])
    assert lines[:1] == [f"kdumpy-init: capture image started on {kernel.release}"], tail
    assert f"kdumpy-init: target filesystem {ROOT_UUID} on /dev/vda" in lines, tail
    assert "kdumpy-init: target mounted" in lines, tail
    assert ("kdumpy-init: FAILED: no /proc/vmcore: not a capture kernel's boot (kdumpy: ok)"
            in lines), tail
    assert lines[-1] == "kdumpy-init: action poweroff", tail
    assert "reboot: Power down" in log
    assert "insmod" not in log, tail                 # every module loaded
    assert "check forced" in log, tail               # e2fsck -p ran and checked it
    # the target was mounted read-write and its directory made
    out = subprocess.run(["debugfs", "-R", "ls -l /var", str(disk)], capture_output=True,
                         text=True, check=True).stdout
    assert " crash" in out and " lib" in out, out
    assert shutil.which("busybox") or os.path.exists("/bin/busybox")
