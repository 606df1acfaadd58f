"""Every file kdumpy creates is new (O_CREAT|O_EXCL|O_NOFOLLOW under a temporary name), is
renamed into place only when whole, and ``--force`` replaces nothing but a regular file."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from subproc import kdumpy  # noqa: E402
from synth import make_vmcore  # noqa: E402

from kdumpy.capture.targets import LocalTarget, write_file_atomic  # noqa: E402
from kdumpy.errors import TargetExistsError  # noqa: E402
from kdumpy.dump import open_dump  # noqa: E402


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return make_vmcore(str(d / "vmcore")).path


def test_symlink_at_the_temporary_name_is_not_followed(core, tmp_path):
    """A symlink planted at ``dmesg.txt.incomplete`` or ``vmcore.incomplete``: the target it
    points at keeps its bytes and its mode; kdumpy writes its own files beside it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    d = tmp_path / "d"
    d.mkdir()
    (d / "dmesg.txt.incomplete").symlink_to(victim)
    p = kdumpy("save", "-q", "-d", "1", core, d / "vmcore")
    # the synthetic core has no kernel log: dmesg.txt is skipped with a warning
    assert p.returncode == 0, p.stderr
    assert victim.read_bytes() == b"precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert (d / "dmesg.txt.incomplete").is_symlink()
    # write_file_atomic (dmesg.txt, report.json) with the link in the way
    write_file_atomic(str(d / "dmesg.txt"), b"log\n")
    assert (d / "dmesg.txt").read_bytes() == b"log\n"
    assert victim.read_bytes() == b"precious\n"
    # a symlink at vmcore.incomplete: refused without --force, a private name with it
    (d / "v2.incomplete").symlink_to(victim)
    p = kdumpy("save", "-q", "-d", "1", core, d / "v2")
    assert p.returncode == 1 and "unfinished dump" in p.stderr
    p = kdumpy("save", "-q", "--force", "-d", "1", core, d / "v2")
    assert p.returncode == 0, p.stderr
    assert victim.read_bytes() == b"precious\n"
    assert (d / "v2").is_file() and not (d / "v2").is_symlink()


def test_dmesg_path_symlink_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    link = tmp_path / "log"
    link.symlink_to(victim)
    with pytest.raises(TargetExistsError):
        write_file_atomic(str(link), b"new")
    with pytest.raises(TargetExistsError, match="symbolic link"):
        write_file_atomic(str(link), b"new", replace=True)
    assert victim.read_bytes() == b"x" and link.is_symlink()


@pytest.mark.parametrize("kind", ["device", "symlink", "fifo"])
def test_force_replaces_only_regular_files(core, tmp_path, kind):
    dest = tmp_path / "dest"
    if kind == "device":
        os.mknod(dest, 0o600 | stat.S_IFCHR, os.makedev(1, 7))   # what /dev/full is
    elif kind == "symlink":
        (tmp_path / "t").write_bytes(b"keep")
        dest.symlink_to(tmp_path / "t")
    else:
        os.mkfifo(dest)
    before = os.lstat(dest)
    p = kdumpy("save", "-q", "--force", "--no-dmesg", "-d", "1", core, dest, timeout=60)
    assert p.returncode == 1
    assert "--force replaces only regular files" in p.stderr
    after = os.lstat(dest)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino,
                                                          before.st_rdev)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(
        ["dest"] + (["t"] if kind == "symlink" else []))


def test_force_replaces_a_regular_file(core, tmp_path):
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    p = kdumpy("save", "-q", "--force", "--no-dmesg", "-d", "1", core, dest)
    assert p.returncode == 0, p.stderr
    with open_dump(str(dest)) as mem:
        assert not mem.incomplete


def test_dest_is_a_directory(core, tmp_path):
    """The error is the real one (IsADirectoryError), and nothing is left behind."""
    dest = tmp_path / "dir"
    dest.mkdir()
    for force in ([], ["--force"]):
        p = kdumpy("save", "-q", "--no-dmesg", *force, "-d", "1", core, dest)
        assert p.returncode == 1
        assert "Is a directory" in p.stderr and "Bad file descriptor" not in p.stderr
        assert sorted(x.name for x in tmp_path.iterdir()) == ["dir"]
        assert list(dest.iterdir()) == []


def test_concurrent_force_saves_keep_their_own_files(tmp_path):
    """Two ``--force`` savers of one DEST each write their own temporary file: neither can
    rename (or delete) the other's half-written one."""
    dest = str(tmp_path / "vmcore")
    a = LocalTarget(dest, force=True)
    b = LocalTarget(dest, force=True)
    assert a.tmp != b.tmp and a.tmp.endswith(".incomplete") and b.tmp.endswith(".incomplete")
    a.sink.pwrite(0, b"A" * 100)
    b.sink.pwrite(0, b"B" * 200)
    assert a.commit() == os.path.abspath(dest)
    assert open(dest, "rb").read() == b"A" * 100
    assert os.path.exists(b.tmp)                  # b's file is untouched by a's rename
    b.commit()
    assert open(dest, "rb").read() == b"B" * 200
    assert sorted(os.listdir(tmp_path)) == ["vmcore"]


def test_no_overwrite_even_when_dest_appears_late(tmp_path):
    """Without --force, a DEST created while the dump was written is not replaced."""
    dest = tmp_path / "vmcore"
    t = LocalTarget(str(dest))
    t.sink.pwrite(0, b"dump")
    dest.write_bytes(b"someone else's")
    with pytest.raises(TargetExistsError):
        t.commit()
    assert dest.read_bytes() == b"someone else's"


def test_threads_racing_one_dest(tmp_path):
    """Many savers of one DEST at once: every rename moves a whole file, never another's."""
    dest = str(tmp_path / "v")
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            t = LocalTarget(dest, force=True)
            t.sink.pwrite(0, bytes([i]) * 4096)
            t.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    data = open(dest, "rb").read()
    assert len(data) == 4096 and len(set(data)) == 1
    assert os.listdir(tmp_path) == ["v"]
