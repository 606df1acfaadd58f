"""A real capture with nothing but the capture image: the image is unpacked, and inside a
chroot of it (private mount namespace) its own Python, standard-library subset, numpy and
codec save a real kernel's /proc/vmcore copy from the lab, as /init would run it. A module
or library the trim dropped shows up here as a failed capture."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_system import RELEASE, _image_template

from kdumpy.dump import open_dump
from lab.cpio import read_newc

pytestmark = pytest.mark.lab


def unpack(image: Path, compression: str, dest: Path) -> None:
    data = image.read_bytes()
    raw = (zstandard.ZstdDecompressor().decompressobj().decompress(data)
           if compression == "zstd" else gzip.decompress(data))
    for e in read_newc(raw):
        p = dest / e.name
        kind = e.mode & 0o170000
        if kind == 0o040000:
            p.mkdir(parents=True, exist_ok=True)
        elif kind == 0o120000:
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e.data.decode(), p)
        elif kind == 0o100000:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(e.data)
            os.chmod(p, e.mode & 0o7777)


def test_capture_inside_the_image(lab_crash, tmp_path: Path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("this test needs root and unshare(1) (util-linux) for its chroot")
    tpl = _image_template()
    man = json.loads((tpl / f"var/lib/kdumpy/capture-{RELEASE}.json").read_text())
    root = tmp_path / "image"
    unpack(Path(man["image"]), man["compression"], root)
    (root / "vmcore").write_bytes(b"")
    (root / "var/crash").mkdir(parents=True)
    inner = (f"mount --bind {lab_crash.raw_vmcore} {root}/vmcore && "
             f"mount -t proc proc {root}/proc && mount -t tmpfs tmpfs {root}/tmp && "
             f"exec chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
             f"LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 {man['python']} -m kdumpy capture "
             "--vmcore /vmcore --no-action --quiet --json --config /etc/kdumpy.toml")
    proc = subprocess.run(["nice", "-n", "10", "unshare", "--mount", "sh", "-c", inner],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["status"] == "complete", res
    dump = root / res["dump_dir"].lstrip("/") / "vmcore"
    with open_dump(dump) as mem, open_dump(lab_crash.raw_vmcore) as raw:
        assert dict(mem.vmcoreinfo) == dict(raw.vmcoreinfo)
    assert (dump.parent / "dmesg.txt").stat().st_size > 0
    # nothing of the host leaked in: the interpreter ran from the image's own files
    assert not (root / "usr/lib/python3/dist-packages").exists()
