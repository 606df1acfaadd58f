"""The systemd guest's host-side helpers, without booting anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synth import make_vmcore  # noqa: E402

from lab.systemd_guest import AUTOLOGIN_DROPIN, _customise, overlay  # noqa: E402
from lab.systemd_life import elf_end  # noqa: E402


def test_elf_end_is_the_core_size(tmp_path):
    """The raw disk holds /proc/vmcore followed by zeros: the ELF's own end trims it."""
    core = tmp_path / "core"
    make_vmcore(str(core))
    size = core.stat().st_size
    with open(core, "ab") as f:
        f.write(bytes(1 << 20))
    assert elf_end(core) == size


def test_elf_end_rejects_non_elf(tmp_path):
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(4096))
    with pytest.raises(ValueError, match="offset 0"):
        elf_end(blank)


def test_overlay_never_writes_the_base(tmp_path):
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.truncate(1 << 20)
    before = base.read_bytes()
    top = overlay(base, tmp_path / "top.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(top)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(base)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(top)],
                   capture_output=True, check=True)
    assert base.read_bytes() == before
    second = overlay(top, tmp_path / "second.qcow2", "qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(second)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename-format"] == "qcow2"


def test_customise_gives_root_autologin_and_fstab(tmp_path):
    tree = tmp_path / "tree"
    for d in ("etc/systemd/system", "etc/apt/apt.conf.d", "var"):
        (tree / d).mkdir(parents=True)
    (tree / "etc/shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    _customise(tree, "4698751b-7ff1-4e4a-9fd6-4e7014ff98f6")
    assert (tree / "etc/fstab").read_text().startswith(
        "UUID=4698751b-7ff1-4e4a-9fd6-4e7014ff98f6 / ext4 ")
    assert (tree / "etc/shadow").read_text().splitlines()[0].split(":")[1] == ""
    assert (tree / "etc/shadow").read_text().splitlines()[1].split(":")[1] == "*"
    dropin = tree / "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
    assert dropin.read_text() == AUTOLOGIN_DROPIN
    assert "--autologin root" in AUTOLOGIN_DROPIN
    assert os.readlink(tree / "etc/systemd/system/apt-daily.timer") == "/dev/null"
    assert (tree / "var/crash").stat().st_mode & 0o777 == 0o700
