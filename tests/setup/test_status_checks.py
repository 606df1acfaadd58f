"""status tells the truth: the capture image, the units, the target, each with its fix."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_block import fake_module_tree, mount, virtio_disk
from fake_system import RELEASE, make_fake_system, with_capture_image

from kdumpy.cli import main
from kdumpy.setup.status import CHECKS


def status(root, capsys, *extra):
    rc = main(["status", "--root", str(root), "--arch", "x86_64", *extra])
    return rc, capsys.readouterr().out


def test_one_function_per_check():
    names = [c.__name__ for c in CHECKS]
    assert len(names) == len(set(names)) >= 12
    assert {"check_capture_image", "check_target", "check_units"} <= set(names)


def test_image_missing_then_current_then_stale(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    rc, out = status(fs.root, capsys)
    assert rc == 0, out
    assert f"[ok] capture image: {fs.root}/var/lib/kdumpy/capture-{RELEASE}.img is current" \
        in out
    # the config changes: the image no longer matches
    fs.write("/etc/kdumpy.toml", '[actions]\nfinal = "poweroff"\n')
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "[ERROR] capture image:" in out and "is stale: the config or its hooks" in out
    assert "fix: kdumpy rebuild && kdumpy load" in out
    # a hook is added: stale for that too (hooks are copied into the image)
    fs.write("/etc/kdumpy.toml", "")
    rc, out = status(fs.root, capsys)
    assert rc == 0, out
    fs.write("/etc/kdumpy/pre.d/10-note", "#!/bin/sh\necho hi\n", 0o755)
    rc, out = status(fs.root, capsys)
    assert rc == 3 and "is stale: the config or its hooks" in out
    os.unlink(fs.root / "etc/kdumpy/pre.d/10-note")
    # the image goes away
    os.unlink(fs.root / f"var/lib/kdumpy/capture-{RELEASE}.img")
    rc, out = status(fs.root, capsys, "--json")
    d = json.loads(out)
    assert rc == 3 and d["facts"]["capture_image"]["exists"] is False
    f = [x for x in d["findings"] if x["what"] == "capture image"][0]
    assert f["severity"] == "error" and "is missing" in f["detail"]
    assert f["fix"].startswith("kdumpy rebuild")
    # the fix works
    assert main(["rebuild", "--root", str(fs.root)]) == 0
    assert "built " in capsys.readouterr().out
    assert main(["rebuild", "--root", str(fs.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rebuilt"] is False
    rc, out = status(fs.root, capsys)
    assert rc == 0, out


def test_image_stale_when_the_target_moves(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    # /var/crash is now its own filesystem on a second disk
    devno = virtio_disk(fs.root, pci="0000:00:05.0", virtio="virtio2", disk="vdb", part=None,
                        major=254, minor=16)
    mount(fs.root, devno, "/var/crash", "ext4", "/dev/vdb",
          uuid="0b1c2d3e-0000-4000-8000-000000000001")
    rc, out = status(fs.root, capsys)
    assert rc == 3 and "is stale: the dump target's devices" in out


def test_target_on_tmpfs_cannot_be_captured_to(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    mount(fs.root, "0:41", "/var/crash", "tmpfs", "tmpfs")
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert ("[ERROR] capture image: cannot be built: /var/crash is on tmpfs (tmpfs), not on "
            "a local block device") in out


def test_image_needs_the_module_index(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    os.unlink(fs.root / f"lib/modules/{RELEASE}/modules.dep")
    rc, out = status(fs.root, capsys)
    assert rc == 3 and "modules.dep is missing or empty (run depmod)" in out
    fake_module_tree(fs.root, RELEASE)
    assert status(fs.root, capsys)[0] == 0


def test_units_checked_under_systemd(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    (fs.root / "run/systemd/system").mkdir(parents=True)
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "[ERROR] units: kdumpy.service is not installed" in out
    assert "fix: kdumpy install && systemctl daemon-reload && systemctl enable --now " \
           "kdumpy.service" in out
    assert main(["install", "--root", str(fs.root)]) == 0
    capsys.readouterr()
    rc, out = status(fs.root, capsys)
    assert rc == 3 and "[ERROR] units: kdumpy.service is not enabled" in out
    assert "fix: systemctl enable --now kdumpy.service" in out
    wants = fs.root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    os.symlink("/etc/systemd/system/kdumpy.service", wants / "kdumpy.service")
    # install wrote the example config, all comments: the image stays current
    assert (fs.root / "etc/kdumpy.toml").read_text().startswith("# kdumpy configuration")
    rc, out = status(fs.root, capsys)
    assert rc == 0, out
    assert "[ok] units: kdumpy.service is enabled" in out


def test_target_space_and_writability(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    with_capture_image(fs)
    rc, out = status(fs.root, capsys)
    assert "[ok] target: /var/crash (created at the first dump):" in out and " free" in out
    fs.write("/etc/kdumpy.toml", '[dump]\nmin_free = "1000000T"\n')
    rc, out = status(fs.root, capsys)
    assert rc == 3
    assert "free, dump.min_free asks for" in out and "the capture would refuse to start" in out
    fs.write("/etc/kdumpy.toml", "")
    fs.write("/var/crash", "not a directory")
    rc, out = status(fs.root, capsys)
    assert rc == 3 and "[ERROR] target: /var/crash exists and is not a directory" in out


def test_system_initrd_is_reported_not_checked(tmp_path, capsys):
    fs = make_fake_system(tmp_path)
    fs.write("/etc/kdumpy.toml", f'[load]\ninitrd = "/boot/initrd.img-{RELEASE}"\n')
    (fs.root / "var/crash").mkdir(parents=True)
    rc, out = status(fs.root, capsys)
    assert rc == 0, out
    assert "load.initrd is set: the capture kernel boots" in out
