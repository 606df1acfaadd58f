"""Module resolution for the capture image, against the module trees of the Debian kernels
the lab covers (depmod's modules.dep/alias/softdep/builtin) and fake sysfs trees."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_block import fake_module_tree, lvm_volume, mount, virtio_disk

from kdumpy.setup.capture_image.modules import (
    ModuleError,
    ModuleTree,
    block_chain,
    decompress,
    filesystem_module,
    module_name,
    mount_of,
    plain_path,
)
from kdumpy.setup.paths import SystemPaths

@pytest.fixture(scope="module")
def tree(lab_release: str) -> ModuleTree:
    from lab.kernels import ensure_kernel
    if lab_release.startswith("unresolved-"):
        pytest.fail(f"kernel series {lab_release} could not be resolved (apt-get update)")
    kernel = ensure_kernel(lab_release, log=lambda _m: None)
    return ModuleTree.load(str(kernel.modules))


def names(paths: list[str]) -> list[str]:
    return [module_name(p) for p in paths]


@pytest.mark.lab
def test_virtio_ext4_load_order(tree: ModuleTree, tmp_path: Path):
    root = tmp_path
    devno = virtio_disk(root)
    chain = block_chain(SystemPaths(str(root)), devno)
    assert chain.devices == ["vda1"]
    assert chain.modules == ["virtio_blk", "virtio_pci"]
    order = names(tree.load_order(chain.modules + filesystem_module(tree, "ext4")))
    # every module after its dependencies, each once
    assert len(order) == len(set(order))
    for name in order:
        path, deps = tree.deps[name]
        for d in deps:
            assert order.index(d) < order.index(name), (d, name)
    assert order[-1] == "ext4"
    assert {"jbd2", "mbcache", "crc16", "virtio_blk"} <= set(order)
    # ext4's softdep "pre: crypto-crc32c" resolved through modules.alias, before ext4
    crc = [n for n in order if n.startswith("crc32c")]
    assert crc and all(order.index(c) < order.index("jbd2") for c in crc)
    # Debian 6.12 builds virtio_pci in; 6.1 has it as a module
    assert ("virtio_pci" in order) == (not tree.is_builtin("virtio_pci"))


@pytest.mark.lab
def test_compressed_modules_decompress(tree: ModuleTree):
    path = tree.deps["ext4"][0]
    with open(os.path.join(tree.directory, path), "rb") as f:
        data = decompress(f.read(), path)
    assert data[:4] == b"\x7fELF"
    assert plain_path(path).endswith("ext4.ko")


@pytest.mark.lab
def test_aliases_of_real_controllers(tree: ModuleTree):
    # an NVMe controller (class 01 subclass 08 prog-if 02) and an AHCI one (01 06 01)
    assert tree.lookup("pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02") == ["nvme"]
    assert "ahci" in tree.lookup("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01")
    assert filesystem_module(tree, "xfs") == ["xfs"]
    assert tree.lookup("fs-ext4") == ["ext4"]
    order = names(tree.load_order(["nvme"]))
    assert order[-1] == "nvme" and "nvme_core" in order


@pytest.mark.lab
def test_lvm_adds_dm_mod(tree: ModuleTree, tmp_path: Path):
    part = virtio_disk(tmp_path)
    dm = lvm_volume(tmp_path, part)
    chain = block_chain(SystemPaths(str(tmp_path)), dm)
    assert chain.devices == ["dm-0", "vda1"]
    assert chain.stacked == [f"dm:LVM-{'A' * 32}{'B' * 32}"]
    assert chain.modules[0] == "dm_mod" and "virtio_blk" in chain.modules
    assert "dm_mod" in names(tree.load_order(chain.modules))


@pytest.mark.lab
def test_unknown_module_is_an_error(tree: ModuleTree):
    with pytest.raises(ModuleError, match="'no_such_driver' is neither in .*modules.dep"):
        tree.load_order(["no_such_driver"])


def test_fake_tree_and_mountinfo(tmp_path: Path):
    d = fake_module_tree(tmp_path, "6.1.0-99-amd64")
    t = ModuleTree.load(str(d))
    assert names(t.load_order(["virtio_blk", "ext4"])) == [
        "virtio_ring", "virtio", "virtio_blk", "crc32c_generic", "jbd2", "mbcache", "crc16",
        "ext4"]
    assert decompress((d / "kernel/drivers/block/virtio_blk.ko.xz").read_bytes(),
                      "virtio_blk.ko.xz") == b"module kernel/drivers/block/virtio_blk.ko.xz\n"
    assert t.is_builtin("sd_mod") and t.lookup("sd_mod") == []
    devno = virtio_disk(tmp_path)
    mount(tmp_path, devno, "/")
    mount(tmp_path, "0:50", "/var/crash\\040dumps", "tmpfs", "tmpfs")
    paths = SystemPaths(str(tmp_path))
    assert mount_of(paths, "/var/crash").mountpoint == "/"
    m = mount_of(paths, "/var/crash dumps/x")
    assert (m.mountpoint, m.fstype) == ("/var/crash dumps", "tmpfs")


def test_md_raid_chain(tmp_path: Path):
    a = virtio_disk(tmp_path)
    b = virtio_disk(tmp_path, pci="0000:00:05.0", virtio="virtio2", disk="vdb", minor=17)
    md = tmp_path / "sys/devices/virtual/block/md0"
    (md / "md").mkdir(parents=True)
    (md / "md/level").write_text("raid1\n")
    (md / "slaves").mkdir()
    for devno in (a, b):
        slave = os.path.realpath(tmp_path / "sys/dev/block" / devno)
        os.symlink(os.path.relpath(slave, md / "slaves"), md / "slaves" / os.path.basename(slave))
    os.symlink("../../devices/virtual/block/md0", tmp_path / "sys/dev/block/9:0")
    chain = block_chain(SystemPaths(str(tmp_path)), "9:0")
    assert chain.devices == ["md0", "vda1", "vdb1"]
    assert chain.stacked == ["md:raid1"]
    assert chain.modules == ["md_mod", "raid1", "virtio_blk", "virtio_pci"]
