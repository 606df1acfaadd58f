"""Other distributions' layouts: Arch's kernel and initramfs names, Fedora's BLS entries for
``estimate --apply`` (``--root`` fixtures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_system import RELEASE, bzimage, make_fake_system

from kdumpy.cli import main
from kdumpy.setup import early
from kdumpy.setup.bootloader import with_param
from kdumpy.setup.paths import SystemPaths
from kdumpy.setup.status import default_images
from kdumpy.setup.config import Config

ARCH_RELEASE = "6.12.9-arch1-1"


def test_arch_names(tmp_path: Path):
    fs = make_fake_system(tmp_path)
    for p in (f"/boot/vmlinuz-{RELEASE}", f"/boot/initrd.img-{RELEASE}"):
        (fs.root / p.lstrip("/")).unlink()
    fs.write(f"/usr/lib/modules/{ARCH_RELEASE}/pkgbase", "linux\n")
    fs.write("/boot/vmlinuz-linux", bzimage())
    fs.write("/boot/initramfs-linux.img", b"\x1f\x8b")
    paths = SystemPaths(str(fs.root))
    kernel, initrd = default_images(paths, Config(), ARCH_RELEASE)
    assert kernel == str(fs.root / "boot/vmlinuz-linux")
    assert initrd == str(fs.root / "boot/initramfs-linux.img")
    # linux-lts keeps its image only beside its modules
    (fs.root / "boot/vmlinuz-linux").unlink()
    fs.write(f"/usr/lib/modules/{ARCH_RELEASE}/vmlinuz", bzimage())
    assert default_images(paths, Config(), ARCH_RELEASE)[0] == str(
        fs.root / f"usr/lib/modules/{ARCH_RELEASE}/vmlinuz")


def test_mkinitcpio_hook_does_not_hard_code_linux():
    text = early.mkinitcpio_install(["/opt/kdumpy/venv/bin/python", "-m", "kdumpy"])
    assert "vmlinuz-linux" not in text and "initramfs-linux" not in text
    assert '"/usr/lib/modules/$KERNELVERSION/vmlinuz"' in text
    assert 'pkgbase' in text and '/var/lib/kdumpy/capture-"$KERNELVERSION".img' in text


BLS = """title Fedora Linux (6.11.4-301.fc41.x86_64) 41 (Workstation Edition)
version 6.11.4-301.fc41.x86_64
linux /vmlinuz-6.11.4-301.fc41.x86_64
initrd /initramfs-6.11.4-301.fc41.x86_64.img
options root=UUID=0a1b rhgb quiet crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M
grub_users $grub_users
grub_arg --unrestricted
grub_class fedora
"""


def test_fedora_bls_entries_and_grub(tmp_path: Path, capsys):
    fs = make_fake_system(tmp_path)
    fs.write("/boot/loader/entries/abc-6.11.4-301.fc41.x86_64.conf", BLS)
    fs.write("/boot/loader/entries/abc-0-rescue.conf", BLS.replace(
        "options root=UUID=0a1b rhgb quiet crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M",
        "options root=UUID=0a1b"))
    fs.write("/etc/default/grub", 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="rhgb quiet"\n'
                                  "GRUB_ENABLE_BLSCFG=true\n")
    fs.write("/etc/kernel/cmdline", "root=UUID=0a1b rhgb quiet\n")
    assert main(["estimate", "--root", str(fs.root), "--arch", "x86_64", "--apply",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rec = d["recommended"]
    for name in ("abc-6.11.4-301.fc41.x86_64.conf", "abc-0-rescue.conf"):
        text = fs.read(f"/boot/loader/entries/{name}")
        opts = [ln for ln in text.splitlines() if ln.startswith("options ")]
        assert opts == [f"options root=UUID=0a1b{' rhgb quiet' if 'rescue' not in name else ''}"
                        f" crashkernel={rec}"], text
        assert "grub_class fedora" in text           # the rest of the entry is kept
    assert fs.read("/etc/default/grub") == ('GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="rhgb quiet '
                                            f'crashkernel={rec}"\nGRUB_ENABLE_BLSCFG=true\n')
    assert fs.read("/etc/kernel/cmdline") == f"root=UUID=0a1b rhgb quiet crashkernel={rec}\n"
    assert not fs.exists("/etc/default/grub.d/kdumpy.cfg")   # Fedora's GRUB has no grub.d
    assert "abc-0-rescue.conf" in d["applied"]
    # applying again changes nothing
    assert main(["estimate", "--root", str(fs.root), "--arch", "x86_64", "--apply"]) == 0
    assert "updated nothing (already set); reboot" in capsys.readouterr().out


def test_with_param():
    assert with_param("a crashkernel=1G b", "crashkernel=256M") == "a b crashkernel=256M"
    assert with_param("", "crashkernel=256M") == "crashkernel=256M"
