"""The capture image's /init text, its archive, and its digest."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zstandard
from fake_block import ROOT_UUID, fake_target_system, mount, virtio_disk
from fake_system import RELEASE, make_fake_system

from kdumpy.setup.capture_image import digest
from kdumpy.setup.capture_image.init import ACTION_COMMANDS, Bind, InitPlan, render
from kdumpy.setup.capture_image.plan import make_plan
from kdumpy.setup.capture_image.tree import ImageTree, write_image
from kdumpy.setup.config import parse_config
from kdumpy.setup.paths import SystemPaths
from lab.cpio import read_newc

BUSYBOX = "/bin/busybox"


def full_plan() -> InitPlan:
    return InitPlan(python="/opt/kdumpy/venv/bin/python", config="/etc/kdumpy.toml",
                    final="poweroff", failure="shell", deadline=900, fs_uuid=ROOT_UUID,
                    fstype="ext4", fsck="/usr/sbin/e2fsck",
                    binds=[Bind("var/crash", "/var/crash"),
                           Bind("var/lib/kdumpy", "/var/lib/kdumpy")],
                    lvm="/usr/sbin/lvm", mdadm="/usr/sbin/mdadm",
                    stages=[("net", "ip link set lo up\n")])


def test_init_is_valid_busybox_sh():
    for plan in (full_plan(), InitPlan(python="/usr/bin/python3", config="/etc/kdumpy.toml")):
        text = render(plan)
        r = subprocess.run([BUSYBOX, "sh", "-n"], input=text, text=True, capture_output=True)
        assert r.returncode == 0, r.stderr


def test_init_never_waits_for_a_human():
    text = render(full_plan())
    for word in ("sulogin", "sh -i", "read -p", "getty", "emergency", "sysctl"):
        assert word not in text, word
    # the failure action "shell" reboots: no shell in the capture image
    assert ACTION_COMMANDS["shell"] == "reboot -f"
    assert "fail() {\n    log \"FAILED: $*\"\n    finish 'reboot -f' shell\n}" in text
    assert "finish 'poweroff -f' poweroff\n" in text
    # bounded waits and a deadline around the whole capture
    assert "[ $i -le 60 ] ||" in text
    assert "timeout -s KILL 900 /opt/kdumpy/venv/bin/python -m kdumpy capture" in text
    # PID 1 never just exits: after the action, sysrq-b, then exit (panic=10 reboots)
    assert text.rstrip().endswith("finish 'poweroff -f' poweroff")
    assert "echo b > /proc/sysrq-trigger\n    exit 1" in text


def test_init_mounts_only_the_target():
    text = render(full_plan())
    assert text.count("mount -t ext4 ") == 1
    assert '/usr/sbin/e2fsck -p "$dev"' in text
    assert "mount --bind /sysroot/var/crash /var/crash" in text
    assert "mount --bind /sysroot/var/lib/kdumpy /var/lib/kdumpy" in text
    assert "vgchange -ay --sysinit" in text and "udev_rules = 0" in text
    assert "/usr/sbin/mdadm --assemble --scan --run" in text
    assert text.index("mdadm --assemble") < text.index("vgchange")   # LVM on md works
    # the stages run after the modules load and before the target is looked for
    assert text.index("/kdumpy/modules") < text.index("/kdumpy/stages") < text.index("findfs")
    net = render(InitPlan(python="/usr/bin/python3", config="/etc/kdumpy.toml"))
    assert "findfs" not in net and "mount -t ext4" not in net


def test_archive_round_trip(tmp_path: Path):
    tree = ImageTree()
    tree.symlink("/lib", "usr/lib")
    tree.add_bytes("/lib/x/a.so", b"abc", 0o755)
    tree.chardev("/dev/console", 5, 1)
    tree.add_bytes("/init", b"#!/bin/sh\n", 0o755)
    out = tmp_path / "img"
    write_image(tree, str(out), "zstd")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes())
    entries = {e.name: e for e in read_newc(raw)}
    assert entries["lib"].data == b"usr/lib" and stat.S_ISLNK(entries["lib"].mode)
    assert entries["usr/lib/x/a.so"].data == b"abc"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    names = list(entries)
    assert names.index("usr") < names.index("usr/lib") < names.index("usr/lib/x/a.so")


def test_host_paths_keep_their_symlinks(tmp_path: Path):
    tree = ImageTree()
    (tmp_path / "real").mkdir()
    (tmp_path / "real/libfoo.so.1.2").write_bytes(b"lib")
    os.symlink("libfoo.so.1.2", tmp_path / "real/libfoo.so.1")
    os.symlink("real", tmp_path / "lnk")
    tree.copy_host_path(str(tmp_path / "lnk/libfoo.so.1"))
    e = tree.entries
    assert e[str(tmp_path / "lnk")].data == b"real"
    assert e[str(tmp_path / "real/libfoo.so.1")].data == b"libfoo.so.1.2"
    assert e[str(tmp_path / "real/libfoo.so.1.2")].source == str(tmp_path / "real/libfoo.so.1.2")


def test_digest_names_what_changed(tmp_path: Path):
    fs = make_fake_system(tmp_path)
    fake_target_system(fs.root, RELEASE)
    paths = SystemPaths(str(fs.root))

    def parts(cfg_text: str = "") -> dict[str, str]:
        fs.write("/etc/kdumpy.toml", cfg_text)
        plan = make_plan(paths, parse_config(cfg_text), RELEASE, python="/usr/bin/python3",
                         config_path=paths.config)
        return digest.parts(plan)

    base = parts()
    assert digest.changed(base, parts()) == []
    assert digest.changed(base, parts('[actions]\nfinal = "halt"\n')) == [
        "the config or its hooks", "the capture steps (actions, deadline, mounts)"]
    fs.write(f"/lib/modules/{RELEASE}/kernel/fs/ext4/ext4.ko", b"new ext4")
    assert digest.changed(base, parts()) == ["the kernel or its modules"]
    base = parts()
    devno = virtio_disk(fs.root, pci="0000:00:05.0", virtio="virtio2", disk="vdb", part=None,
                        major=254, minor=16)
    mount(fs.root, devno, "/var/crash", uuid="0b1c2d3e-0000-4000-8000-000000000001")
    assert "the dump target's devices" in digest.changed(base, parts())
    assert digest.changed(None, base) == ["no manifest"]


def test_plan_from_config(tmp_path: Path):
    fs = make_fake_system(tmp_path)
    fake_target_system(fs.root, RELEASE)
    fs.write("/etc/kdumpy/pre.d/10-copy", "#!/bin/sh\n", 0o755)
    paths = SystemPaths(str(fs.root))
    cfg = parse_config('[dump]\ndeadline = 600\n[actions]\nfailure = "halt"\n')
    plan = make_plan(paths, cfg, RELEASE, python="/usr/bin/python3", config_path=paths.config)
    text = render(plan.init)
    assert "timeout -s KILL 600 /usr/bin/python3 -m kdumpy capture" in text
    assert "finish 'halt -f' halt" in text
    assert plan.init.fs_uuid == ROOT_UUID and plan.init.fsck.endswith("e2fsck")
    assert [(b.source, b.dest) for b in plan.init.binds] == [
        ("var/crash", "/var/crash"), ("var/lib/kdumpy", "/var/lib/kdumpy")]
    assert plan.files["/etc/kdumpy/pre.d/10-copy"] == str(fs.root / "etc/kdumpy/pre.d/10-copy")
    assert plan.files["/etc/hostname"] == str(fs.root / "etc/hostname")
    assert plan.wanted == ["virtio_blk", "virtio_pci", "ext4"]


def test_network_planner_hook(tmp_path: Path, monkeypatch):
    from kdumpy.setup.capture_image import plan as plan_mod
    fs = make_fake_system(tmp_path)
    fake_target_system(fs.root, RELEASE)
    paths = SystemPaths(str(fs.root))
    cfg = parse_config('[target]\nssh = "ssh://kdump@10.0.2.2/srv/crash"\n')
    p = make_plan(paths, cfg, RELEASE, python="/usr/bin/python3", config_path=None)
    assert p.target is None and p.modules == [] and "no network support" in p.notes[0]
    assert "findfs" not in render(p.init)

    def planner(paths, cfg, plan):
        plan.wanted.append("virtio_blk")             # stands for the NIC driver here
        plan.binaries.append("/usr/bin/ssh")
        plan.init.stages.append(("network", "ip link set eth0 up\n"))

    monkeypatch.setitem(plan_mod.NETWORK_PLANNERS, "ssh", planner)
    p = make_plan(paths, cfg, RELEASE, python="/usr/bin/python3", config_path=None)
    assert [m.rsplit("/", 1)[-1] for m in p.modules] == [
        "virtio_ring.ko", "virtio.ko", "virtio_blk.ko.xz"]
    assert p.binaries == ["/usr/bin/ssh"] and p.init.stages[0][0] == "network"
    base = digest.parts(p)
    p.binaries.append("/usr/bin/scp")
    assert digest.changed(base, digest.parts(p)) == ["the config or its hooks"]
