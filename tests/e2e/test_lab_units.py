"""Fast tests of the lab's host-side pieces (no QEMU): cpio writer, modules.dep closure,
serial-console parser, guest config quoting, QEMU command line, raw vmcore reader."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from lab import cpio, guest_init, kernels, modules, qemu, run, serial, verify
from lab.vmcore import RawVmcore


# ----------------------------------------------------------------------------- cpio
def _sample_archive() -> cpio.CpioWriter:
    w = cpio.CpioWriter()
    w.mkdir("dev")
    w.mkdir("usr/bin")
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, mode=0o666)
    w.blockdev("dev/vda", 254, 0)
    w.file("init", b"#!/bin/sh\necho hi\n", mode=0o755)
    w.file("odd", b"x" * 5)
    w.symlink("usr/bin/sh", "/bin/busybox")
    return w


def test_cpio_roundtrip_and_alignment():
    data = _sample_archive().finish()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    entries = {e.name: e for e in cpio.read_newc(data)}
    assert set(entries) == {"dev", "usr", "usr/bin", "dev/console", "dev/null", "dev/vda",
                            "init", "odd", "usr/bin/sh"}
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1) and console.data == b""
    assert stat.S_ISBLK(entries["dev/vda"].mode) and entries["dev/vda"].rdev == (254, 0)
    assert stat.S_IMODE(entries["dev/null"].mode) == 0o666
    assert entries["init"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(entries["init"].mode) == 0o755
    assert entries["odd"].data == b"xxxxx"
    assert stat.S_ISLNK(entries["usr/bin/sh"].mode)
    assert entries["usr/bin/sh"].data == b"/bin/busybox"
    assert stat.S_ISDIR(entries["usr"].mode)


def test_cpio_is_deterministic_and_gzip_has_no_timestamp():
    a = _sample_archive().finish_gzip()
    time.sleep(0.01)
    b = _sample_archive().finish_gzip()
    assert a == b
    assert a[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert gzip.decompress(a) == _sample_archive().finish()


def test_cpio_rejects_duplicates_and_writes_after_finish():
    w = cpio.CpioWriter()
    w.file("a", b"")
    with pytest.raises(ValueError):
        w.file("/a", b"")
    w.finish()
    with pytest.raises(ValueError):
        w.file("b", b"")


def test_cpio_readable_by_gnu_cpio(tmp_path):
    tool = shutil.which("cpio")
    if tool is None:
        pytest.fail("cpio not installed (apt-get install cpio)", pytrace=False)
    out = subprocess.run([tool, "-itv"], input=_sample_archive().finish(),
                         capture_output=True, check=True).stdout
    rows = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()
            for line in out.decode().splitlines()}
    assert rows["dev/console"][0].startswith("c") and rows["dev/console"][4:6] == ["5,", "1"]
    assert rows["dev/vda"][0].startswith("b") and rows["dev/vda"][4:6] == ["254,", "0"]
    assert rows["init"][0] == "-rwxr-xr-x" and rows["init"][4] == "18"
    assert rows["usr/bin/sh"][-3:] == ["usr/bin/sh", "->", "/bin/busybox"]


# ----------------------------------------------------------------------------- modules
MODULES_DEP = """\
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/block/virtio-blk.ko.zst: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
"""


def test_module_name_normalises():
    assert modules.module_name("kernel/net/9p/9pnet_virtio.ko.xz") == "9pnet_virtio"
    assert modules.module_name("kernel/drivers/block/virtio-blk.ko.zst") == "virtio_blk"
    assert modules.module_name("x/qemu_fw_cfg.ko") == "qemu_fw_cfg"
    assert modules.module_name("x/foo.ko.gz") == "foo"


def test_load_order_dependencies_first_each_once():
    table = modules.parse_modules_dep(MODULES_DEP)
    order = modules.load_order(["9pnet_virtio", "9p", "virtio-blk", "virtio_pci"], table,
                               builtin={"virtio_pci", "virtio"})
    names = [modules.module_name(p) for p in order]
    assert sorted(names) == sorted(set(names))
    assert names.index("9pnet") < names.index("9pnet_virtio")
    assert names.index("virtio_ring") < names.index("9pnet_virtio")
    assert names.index("netfs") < names.index("9p")
    assert names.index("virtio_ring") < names.index("virtio_blk")
    assert "virtio_pci" not in names
    assert order[names.index("virtio_blk")] == "kernel/drivers/block/virtio-blk.ko.zst"


def test_load_order_missing_and_cycle():
    table = modules.parse_modules_dep(MODULES_DEP)
    with pytest.raises(modules.MissingModule, match="nosuch"):
        modules.load_order(["nosuch"], table, builtin=set())
    with pytest.raises(ValueError, match="cycle"):
        modules.load_order(["a"], table, builtin=set())


def test_parse_modules_builtin():
    assert modules.parse_modules_builtin("kernel/drivers/virtio/virtio_pci.ko\n\n") == \
        {"virtio_pci"}


def test_decompress_module_formats():
    elf = b"\x7fELF" + b"\x02\x01" + b"\0" * 100
    assert modules.decompress_module(lzma.compress(elf), "m.ko.xz") == elf
    assert modules.decompress_module(gzip.compress(elf), "m.ko.gz") == elf
    assert modules.decompress_module(elf, "m.ko") == elf
    if shutil.which("zstd"):
        packed = subprocess.run(["zstd", "-q", "-c"], input=elf, stdout=subprocess.PIPE,
                                check=True).stdout
        assert modules.decompress_module(packed, "m.ko.zst") == elf
    with pytest.raises(ValueError):
        modules.decompress_module(b"not elf", "m.ko")


def test_depmod_on_fake_tree(tmp_path):
    """kmod's depmod runs on an unpacked tree and collect_modules decompresses the closure."""
    if not (shutil.which("depmod") or Path("/usr/sbin/depmod").exists()):
        pytest.fail("depmod not installed (apt-get install kmod)", pytrace=False)
    release = "0.0.0-test"
    mdir = tmp_path / "lib" / "modules" / release
    (mdir / "kernel").mkdir(parents=True)
    (mdir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    (mdir / "modules.order").write_text("")
    modules.run_depmod(tmp_path, release)
    assert (mdir / "modules.dep").exists()
    with pytest.raises(modules.MissingModule):
        modules.collect_modules(tmp_path, release, ["virtio_pci", "virtio_blk"])
    assert modules.collect_modules(tmp_path, release, ["virtio_pci"]).modules == ()


# ----------------------------------------------------------------------------- serial
def _lines(*texts: str) -> list[serial.Line]:
    return [serial.Line(float(i), t) for i, t in enumerate(texts)]


def test_parse_event_kinds():
    ev = serial.parse_event(serial.Line(1.0, "KDUMPY-LAB end raw_copy rc=0 up=11.33"))
    assert ev and ev.kind == "end" and ev.name == "raw_copy"
    assert ev.fields == {"rc": "0", "up": "11.33"}
    ev = serial.parse_event(serial.Line(2.0, "[    3.1] noise KDUMPY-LAB crash-now up=7.31"))
    assert ev and ev.kind == "crash-now" and ev.name == "" and ev.fields["up"] == "7.31"
    ev = serial.parse_event(serial.Line(3.0, "KDUMPY-LAB value crash_kernel x : Crash kernel"))
    assert ev and ev.kind == "value" and ev.name == "crash_kernel"
    assert ev.rest == "x : Crash kernel"
    ev = serial.parse_event(serial.Line(4.0, "KDUMPY-LAB role capture up=1.90"))
    assert ev and ev.name == "capture"
    assert serial.parse_event(serial.Line(5.0, "Linux version 6.1.0")) is None


def test_transcript_blocks_values_versions():
    t = serial.Transcript(_lines(
        "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)",
        "KDUMPY-LAB block-begin free",
        "              total        used        free      shared  buff/cache   available",
        "[   12.000000] a kernel message that slipped through",
        "Mem:            203          19         173           3          12         177",
        "KDUMPY-LAB block-end free rc=0",
        "KDUMPY-LAB value vmcore_size 858845184",
        "KDUMPY-LAB value vmcore_size 858845185",
        "KDUMPY-LAB output kdumpy_save hello world",
        "[    0.000000] Linux version 6.1.0-56-amd64 (again)",
    ))
    blocks = t.blocks()
    assert len(blocks["free"]) == 2
    assert serial.parse_free(blocks["free"]) == {"total": 203, "used": 19, "free": 173,
                                                 "shared": 3, "buff/cache": 12,
                                                 "available": 177}
    assert t.values()["vmcore_size"] == "858845185"
    assert t.outputs("kdumpy_save") == ["hello world"]
    assert [r for _, r in t.linux_versions()] == ["6.1.0-56-amd64"] * 2


def test_parse_meminfo():
    info = serial.parse_meminfo(["MemTotal:         719320 kB", "HugePages_Total:       0",
                                 "garbage"])
    assert info == {"MemTotal": 719320, "HugePages_Total": 0}


def test_serial_capture_splits_lines_with_timestamps(tmp_path):
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(read_fd, "rb")
    cap = serial.SerialCapture(stream, tmp_path / "serial.log", time.monotonic(),
                               raw_path=tmp_path / "serial.raw")
    os.write(write_fd, b"first line\r\nKDUMPY-LAB begin x up=1\r\npart")
    os.write(write_fd, b"ial\r\nno newline at end")
    os.close(write_fd)
    got = []
    while (item := cap.queue.get(timeout=5)) is not None:
        got.append(item.text)
    cap.join(5)
    assert got == ["first line", "KDUMPY-LAB begin x up=1", "partial", "no newline at end"]
    assert (tmp_path / "serial.raw").read_bytes().endswith(b"no newline at end")
    assert " | KDUMPY-LAB begin x up=1" in (tmp_path / "serial.log").read_text()


def test_steps_from_transcript():
    t = serial.Transcript([
        serial.Line(1.0, "KDUMPY-LAB role first up=1.0"),
        serial.Line(2.0, "KDUMPY-LAB begin fill up=2.0"),
        serial.Line(5.5, "KDUMPY-LAB end fill rc=0 up=5.0"),
        serial.Line(9.0, "KDUMPY-LAB role capture up=1.0"),
        serial.Line(10.0, "KDUMPY-LAB begin kdumpy_save up=2.0"),
        serial.Line(22.0, "KDUMPY-LAB end kdumpy_save rc=3 up=13.5"),
    ])
    steps = run._steps(t)
    assert steps["first.fill"] == {"host_seconds": 3.5, "rc": 0, "guest_seconds": 3.0}
    assert steps["capture.kdumpy_save"]["rc"] == 3
    assert steps["capture.kdumpy_save"]["host_seconds"] == 12.0


# ----------------------------------------------------------------------------- guest init
def _busybox() -> str:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    pytest.fail("busybox not installed (apt-get install busybox-static)", pytrace=False)


def test_init_script_parses_in_busybox_sh(tmp_path):
    script = tmp_path / "init"
    script.write_text(guest_init.INIT_SCRIPT)
    proc = subprocess.run([_busybox(), "sh", "-n", str(script)], stderr=subprocess.PIPE,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_render_config_survives_shell_sourcing(tmp_path):
    values = {"LAB_A": "plain", "LAB_B": "with space and 'quotes' \"double\" $HOME `x` \\",
              "LAB_N": 42, "LAB_ARGV": "a 'b c' d"}
    cfg = tmp_path / "cfg.sh"
    cfg.write_text(guest_init.render_config(values))
    for key, value in values.items():
        proc = subprocess.run([_busybox(), "sh", "-c", f'. "$1"; printf %s "${key}"', "sh",
                               str(cfg)], stdout=subprocess.PIPE, text=True, check=True)
        assert proc.stdout == str(value)
    # the save argv survives `eval "set -- $LAB_SAVE_ARGV"` as in /init
    import shlex

    argv = ["/usr/bin/env", "PYTHONPATH=/a b/src", "python", "-m", "kdumpy", "save", "x y"]
    cfg.write_text(guest_init.render_config({"LAB_SAVE_ARGV": shlex.join(argv)}))
    proc = subprocess.run([_busybox(), "sh", "-c",
                           '. "$1"; eval "set -- $LAB_SAVE_ARGV"; for a; do echo "[$a]"; done',
                           "sh", str(cfg)], stdout=subprocess.PIPE, text=True, check=True)
    assert proc.stdout.splitlines() == [f"[{a}]" for a in argv]
    with pytest.raises(ValueError):
        guest_init.render_config({"bad-key": "x"})


# ----------------------------------------------------------------------------- qemu
def test_build_command_escapes_and_shares(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "qemu_binary", lambda: "/usr/bin/qemu-system-x86_64")
    machine = qemu.Machine(
        kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"), append="console=ttyS0 a=b,c",
        shares=(qemu.Share("hostroot", Path("/"), True),
                qemu.Share("labout", Path("/tmp/run,1"), False)),
        disks=(qemu.Disk(Path("/tmp/a,b.raw"), "kdumpy-vmcore"),))
    argv = qemu.build_command(machine)
    assert argv[:5] == ["/usr/bin/qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu",
                        "max"]
    assert argv[argv.index("-append") + 1] == "console=ttyS0 a=b,c"
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert "readonly=on" in fsdevs[0] and "path=/," in fsdevs[0]
    assert "path=/tmp/run,,1," in fsdevs[1] and "readonly" not in fsdevs[1]
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith("file=/tmp/a,,b.raw,format=raw")
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_accelerator_choice(monkeypatch):
    assert qemu.choose_accelerator("tcg") == ("tcg", "requested")
    monkeypatch.setattr(qemu, "kvm_status", lambda: (False, "no vmx"))
    assert qemu.choose_accelerator("auto") == ("tcg", "no vmx")
    monkeypatch.setattr(qemu, "kvm_status", lambda: (True, "ok"))
    assert qemu.choose_accelerator("auto") == ("kvm", "ok")


def test_parse_size():
    assert qemu.parse_size("256M") == 256 << 20
    assert qemu.parse_size("1G") == 1 << 30
    assert qemu.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        qemu.parse_size("12Q")


# ----------------------------------------------------------------------------- kernels
def test_parse_policy_and_release_key():
    text = """linux-image-6.1.0-56-amd64-unsigned:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
linux-image-6.1.0-48-amd64-unsigned:
  Installed: (none)
  Candidate: (none)
"""
    assert kernels.parse_policy(text) == {"linux-image-6.1.0-56-amd64-unsigned": "6.1.192-2"}
    assert kernels.release_key("6.12.117+deb12-amd64") > kernels.release_key("6.12.57+deb12-amd64")
    assert kernels.release_key("6.1.0-56-amd64") > kernels.release_key("6.1.0-9-amd64")
    assert kernels.series_of("6.12.117+deb12-amd64") == "6.12"
    assert kernels.series_of("6.1.0-56-amd64") == "6.1"
    assert kernels.series_of("6.12.117+deb13-amd64") is None


def test_requested_specs_env(monkeypatch):
    monkeypatch.setenv("KDUMPY_LAB_KERNELS", "6.1.0-56-amd64, 6.12")
    assert kernels.requested_specs() == ["6.1.0-56-amd64", "6.12"]
    monkeypatch.delenv("KDUMPY_LAB_KERNELS")
    assert kernels.requested_specs() == ["6.1", "6.12"]


# ----------------------------------------------------------------------------- raw vmcore
def _fake_vmcore(path: Path) -> bytes:
    """ELF64 core: one note, a RAM PT_LOAD at 1 MiB (3 pages) and a text alias of page 1."""
    ps = 4096
    desc = b"OSRELEASE=9.9.9-test\nPAGESIZE=4096\n"
    name = b"VMCOREINFO\0"
    note = struct.pack("<III", len(name), len(desc), 0) + name + b"\0" * (-len(name) % 4)
    note += desc + b"\0" * (-len(desc) % 4)
    phnum = 3
    data_off = 64 + 56 * phnum
    note_off = data_off
    ram_off = (note_off + len(note) + ps - 1) // ps * ps
    ram = bytes(range(256)) * 16 + b"\0" * ps + b"NEEDLE" + b"\x01" * (ps - 6)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 0)
    phdrs += struct.pack("<IIQQQQQQ", 1, 7, ram_off + ps, 0xFFFFFFFF81000000, 0x101000, ps,
                         ps, 0)
    phdrs += struct.pack("<IIQQQQQQ", 1, 7, ram_off, 0xFFFF888000100000, 0x100000, len(ram),
                         len(ram), 0)
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    blob = bytearray(ram_off + len(ram))
    blob[:64] = ehdr
    blob[64:64 + len(phdrs)] = phdrs
    blob[note_off:note_off + len(note)] = note
    blob[ram_off:] = ram
    path.write_bytes(bytes(blob))
    return ram


def test_raw_vmcore_reader(tmp_path):
    ram = _fake_vmcore(tmp_path / "core")
    with RawVmcore(tmp_path / "core") as core:
        assert core.vmcoreinfo["OSRELEASE"] == "9.9.9-test"
        assert core.page_ranges() == [(0x100, 0x103)]
        assert core.read_phys(0x100000, 8192 + 6) == ram[:8192 + 6]
        assert bytes(core.read_pages(0x100, 3)) == ram
        assert core.find(b"NEEDLE") == [0x102000]
        with pytest.raises(KeyError):
            core.read_phys(0x103000, 1)


def test_raw_vmcore_partial_pages(tmp_path):
    """A RAM segment ending mid-page (as kexec_load's 0x1000-0x9fc00) yields a partial page."""
    ram = _fake_vmcore(tmp_path / "core")
    data = bytearray((tmp_path / "core").read_bytes())
    # shrink the RAM PT_LOAD (third phdr) by 0x400 bytes: page 0x102 becomes partial
    off = 64 + 2 * 56 + 32
    filesz, = struct.unpack_from("<Q", data, off)
    struct.pack_into("<QQ", data, off, filesz - 0x400, filesz - 0x400)
    (tmp_path / "core").write_bytes(bytes(data))
    with RawVmcore(tmp_path / "core") as core:
        assert core.full_page_ranges() == [(0x100, 0x102)]
        assert core.page_ranges() == [(0x100, 0x103)]
        assert core.partial_pages() == [0x102]
        assert core.covered(0x102) == [(0, 0xC00)]
        assert core.read_phys(0x102000, 0xC00) == ram[0x2000:0x2C00]


def test_verify_bit_helpers():
    import numpy as np

    bm = np.packbits(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1, 1], dtype=np.uint8),
                     bitorder="little")
    assert verify._unpack(bm, 0, 10).tolist() == [True, False, True, True, False, False, False,
                                                  False, True, True]
    assert verify._unpack(bm, 8, 4).tolist() == [True, True, False, False]
    assert verify._ranges_minus([(0, 10), (20, 30)], [(5, 25)]) == [(0, 5), (25, 30)]
    assert verify._ranges_minus([(0, 10)], []) == [(0, 10)]


def test_check_visible_rejects_overlaid_dirs(tmp_path):
    run.check_visible([tmp_path, Path("/usr/bin")])
    for bad in ("/sys/lab", "/dev/shm/x", "/proc"):
        with pytest.raises(run.LabError):
            run.check_visible([Path(bad)])
