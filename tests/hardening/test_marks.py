"""Marks that cannot lie: a dump is marked incomplete from its first byte until it is whole;
a stopped save leaves the mark; conversions carry it and the lost pages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from subproc import kdumpy  # noqa: E402

from kdumpy.formats import codecs  # noqa: E402
from kdumpy.formats.kdump import ARCH64_LE, DiskDumpHeader, KdumpFile  # noqa: E402
from kdumpy.dump import open_dump  # noqa: E402


#: real lab dumps (cached under ~/.cache/kdumpy/lab)
pytestmark = pytest.mark.lab

def _info(path) -> dict:
    p = kdumpy("info", "--json", path)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _start_slow_save(raw: Path, dest: Path, fmt: str) -> subprocess.Popen:
    """A save of the whole raw vmcore, one thread, zlib (tens of seconds under TCG-free
    CPython): long enough to be stopped part-way."""
    args = ["save", "-q", "--no-dmesg", "-d", "0", "--threads", "1", "-f", fmt]
    if fmt != "elf":
        args += ["-c", "zlib"]
    return subprocess.Popen([sys.executable, "-m", "kdumpy", *args, str(raw), str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_data(tmp: Path, proc: subprocess.Popen, size: int = 8 << 20) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if tmp.exists() and tmp.stat().st_size > size:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the save wrote nothing in 120 s")


@pytest.mark.parametrize("sig,fmt", [(signal.SIGTERM, "kdump"), (signal.SIGHUP, "elf"),
                                     (signal.SIGKILL, "kdump"), (signal.SIGKILL, "elf")])
def test_stopped_save_leaves_a_marked_file(hard_base, tmp_path, sig, fmt):
    dest = tmp_path / "vmcore"
    tmp = tmp_path / "vmcore.incomplete"
    proc = _start_slow_save(hard_base.raw, dest, fmt)
    _wait_for_data(tmp, proc)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig, err
        assert signal.Signals(sig).name in err and "Traceback" not in err
    assert not dest.exists() and tmp.exists()
    # the mark is in the header whatever stopped the save (set before any page)
    head = tmp.read_bytes()[:4096]
    if fmt == "elf":
        assert head[:4] == b"\x7fELF"
        assert int.from_bytes(head[48:52], "little") & 1          # e_flags
    else:
        assert head[:8] == b"KDUMP   "
        assert DiskDumpHeader.parse(head, ARCH64_LE).status & \
            codecs.DUMP_DH_COMPRESSED_INCOMPLETE
        assert _info(tmp)["incomplete"] is True


def _make_incomplete(src: Path, dst: Path, lost: slice) -> int:
    """An incomplete dump as makedumpfile leaves it after ENOSPC: the status bit set and the
    descriptors of pages whose data did not land all zero. Returns how many are lost."""
    data = bytearray(src.read_bytes())
    k = KdumpFile(bytes(data), path=str(src))
    descs = np.frombuffer(data, dtype=k.arch.desc_dtype, count=k.num_dumpable,
                          offset=k.desc_offset)
    idx = np.arange(k.num_dumpable)[lost]
    descs[idx] = 0
    head = DiskDumpHeader.parse(bytes(data[:4096]), k.arch)
    head.status |= codecs.DUMP_DH_COMPRESSED_INCOMPLETE
    packed = head.pack(k.arch)
    data[:len(packed)] = packed
    dst.write_bytes(bytes(data))
    return len(idx)


@pytest.mark.parametrize("fmt", ["kdump", "elf", "flat"])
def test_convert_carries_the_mark_and_lost_pages(hard_base, tmp_path, fmt):
    src = tmp_path / "src.kdump"
    nlost = _make_incomplete(hard_base.kdump, src, slice(1000, 3000))
    info = _info(src)
    assert info["incomplete"] is True and info["pages_lost"] == nlost == 2000
    out = tmp_path / f"out.{fmt}"
    p = kdumpy("convert", "-f", fmt, src, out)
    assert p.returncode == 0, p.stderr
    got = _info(out)
    assert got["incomplete"] is True
    with open_dump(str(src)) as a, open_dump(str(out)) as b:
        ka = a.files[0]
        bits, idx = ka.ranks(0, a.max_pfn)
        pfns = np.flatnonzero(bits)
        lost_pfns = pfns[ka.descs["offset"][idx[pfns]] == 0]
        assert len(lost_pfns) == nlost
        if fmt in ("kdump", "flat"):
            assert got["pages_lost"] == nlost
            kb = b.files[0]
            bb, ib = kb.ranks(0, b.max_pfn)
            assert (kb.descs["offset"][ib[lost_pfns]] == 0).all()
        else:
            # ELF has no lost page: they are left out, never written as data
            for pfn in lost_pfns[::97].tolist():
                assert not b.is_dumpable(int(pfn))
        # every page that was not lost is the same (ELF leaves zero pages out: zero_fill)
        keep = pfns[ka.descs["offset"][idx[pfns]] != 0]
        for pfn in keep[::211].tolist():
            assert b.read_pfn(int(pfn), zero_fill=True) == a.read_pfn(int(pfn))


def test_convert_of_a_complete_dump_is_complete(hard_base, tmp_path):
    out = tmp_path / "o.elf"
    p = kdumpy("convert", "-f", "elf", hard_base.kdump, out)
    assert p.returncode == 0, p.stderr
    assert _info(out)["incomplete"] is False


def test_convert_refuses_its_own_source(hard_base, tmp_path):
    """``convert --force X.incomplete X`` used to delete its source (the temporary name)."""
    x = tmp_path / "X"
    src = tmp_path / "X.incomplete"
    src.write_bytes(hard_base.kdump.read_bytes())
    for args in (["--force", src, x], ["--force", "-f", "elf", src, x], ["--force", src, src]):
        p = kdumpy("convert", *args)
        assert p.returncode == 1 and "is the source" in p.stderr, p.stderr
        assert src.exists() and src.stat().st_size == hard_base.kdump.stat().st_size
    os.link(src, tmp_path / "hard")
    p = kdumpy("convert", "--force", src, tmp_path / "hard")
    assert p.returncode == 1 and "is the source" in p.stderr


def test_pipes(hard_base, tmp_path):
    flat = hard_base.flat
    want = tmp_path / "want"
    assert kdumpy("convert", flat, want).returncode == 0
    # DEST '-' is standard output: into a file, the reassembled dump...
    with open(tmp_path / "o1", "wb") as f:
        p = subprocess.run([sys.executable, "-m", "kdumpy", "convert", str(flat), "-"],
                           stdout=f, stderr=subprocess.PIPE, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o1").read_bytes() == want.read_bytes()
    assert not (tmp_path / "-").exists()
    # ...into a pipe, the flattened stream unchanged
    p = subprocess.run(f"{sys.executable} -m kdumpy convert {flat} - | cat > {tmp_path}/o2",
                       shell=True, stderr=subprocess.PIPE, timeout=300)
    assert p.returncode == 0
    assert (tmp_path / "o2").read_bytes() == flat.read_bytes()
    # <(cat X.flat): read once, from the start
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m kdumpy convert <(cat {flat}) "
                        f"{tmp_path}/o3"], stderr=subprocess.PIPE, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o3").read_bytes() == want.read_bytes()
    # a named FIFO: streamed by convert; refused (not opened) by the readers
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {flat} > {fifo}"])
    p = kdumpy("convert", fifo, tmp_path / "o4", timeout=300)
    writer.wait(timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o4").read_bytes() == want.read_bytes()
    for cmd in ("info", "dmesg", "report"):
        p = kdumpy(cmd, fifo, timeout=30)
        assert p.returncode == 1 and "random access" in p.stderr
    # a FIFO with no writer does not hang convert either
    p = kdumpy("convert", fifo, tmp_path / "o5", timeout=30)
    assert p.returncode == 1 and not (tmp_path / "o5").exists()
    # a kdump file (not flattened) through a pipe: refused clearly
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m kdumpy convert -f elf "
                        f"<(cat {hard_base.kdump}) {tmp_path}/o6"], stderr=subprocess.PIPE,
                       text=True, timeout=60)
    assert p.returncode == 1 and "random access" in p.stderr
