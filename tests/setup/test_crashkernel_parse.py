"""crashkernel= as the kernel parses it (kernel/crash_reserve.c, lib/cmdline.c memparse).

The first table is Documentation/admin-guide/kdump/kdump.rst's own example
(``crashkernel=512M-2G:64M,2G-:128M``); the rest walks ``parse_crashkernel`` and its helpers
branch by branch, each malformed value with the kernel's own warning text.
"""

from __future__ import annotations

import json

import pytest

from kdumpy.cli import main
from kdumpy.setup.crashkernel import KernelRules, evaluate, normalise_spec
from kdumpy.setup.sizes import format_size, memparse, parse_size, simple_strtoull

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40
NEW = KernelRules.for_kernel("6.12.48+deb13-amd64", "x86_64")
OLD61 = KernelRules.for_kernel("6.1.0-27-amd64", "x86_64")
PRE60 = KernelRules.for_kernel("5.10.0-30-amd64", "x86_64")
ARM64 = KernelRules.for_kernel("6.12.0", "aarch64")
PPC = KernelRules.for_kernel("6.12.0", "ppc64le")


# -- memparse --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value, end", [
    ("1", 1, 1), ("1K", K, 2), ("1k", K, 2), ("64M", 64 * M, 3), ("2G", 2 * G, 2),
    ("3g", 3 * G, 2), ("1T", T, 2), ("1P", 1 << 50, 2), ("2E", 2 << 60, 2),
    ("1024K", M, 5), ("0x10000000", 256 * M, 10), ("0x100M", 256 * M, 6), ("0X1f", 31, 4),
    ("010M", 8 * M, 4),                  # a leading 0 means octal
    ("08", 0, 1),                        # 8 is no octal digit: "0" is read, "8" is left
    ("0x", 0, 1), ("0xg", 0, 1),         # no hex digit after 0x: the 0 alone, octal
    ("1KB", K, 2),                       # one suffix letter only
    ("M", 0, 1),                         # no digits, but the suffix is still consumed
    ("", 0, 0), ("-1", 0, 0), ("x", 0, 0),
    ("16E", 0, 3),                       # 16 << 60 wraps to 0 in unsigned long long
    ("18446744073709551617", 1, 20),     # wraps modulo 2**64
])
def test_memparse(text, value, end):
    assert memparse(text) == (value, end)


def test_simple_strtoull_ignores_unicode_digits():
    assert simple_strtoull("٣", 0) == (0, 0)


def test_parse_size_rejects_trailing_junk():
    assert parse_size("512M") == 512 * M
    assert parse_size(4096) == 4096
    for bad in ("512Mx", "M", "", "abc", "1.5G"):
        with pytest.raises(Exception, match="is not a size"):
            parse_size(bad)


def test_format_size_round_trips():
    for n in (0, 1, K, 1536 * K, 256 * M, 3 * G, 5 * T, 12345):
        assert memparse(format_size(n))[0] == n


# -- the documentation's example -------------------------------------------------------------

DOC = "crashkernel=512M-2G:64M,2G-:128M"


@pytest.mark.parametrize("ram, size", [
    (256 * M, 0),         # "if the RAM is smaller than 512M, then don't reserve anything"
    (512 * M, 64 * M),    # start is inclusive
    (1 * G, 64 * M),      # "between 512M and 2G (exclusive), then reserve 64M"
    (2 * G, 128 * M),     # end is exclusive: 2G falls into 2G-
    (3 * G, 128 * M),
    (1 << 50, 128 * M),   # no end
])
def test_documentation_example(ram, size):
    res = evaluate(DOC, ram, NEW)
    assert res.reserved == bool(size)
    assert res.size == size
    assert res.error is None
    if not size:
        assert "crashkernel size resulted in zero bytes" in res.kernel_messages


def test_ram_is_rounded_up_to_128m_since_6_0():
    """The patch's own example: a 2 GiB KVM guest sees 0x7ff7cc00 bytes of RAM."""
    ram = 0x7FF7CC00
    assert evaluate(DOC, ram, NEW).size == 128 * M
    assert evaluate(DOC, ram, OLD61).size == 128 * M
    assert evaluate(DOC, ram, PRE60).size == 64 * M
    assert evaluate("crashkernel=1G-2G:128M,2G-:256M", ram, NEW).size == 256 * M


def test_matched_range_reported():
    res = evaluate(DOC, 4 * G, NEW)
    assert res.matched_range == (2 * G, None)
    assert res.syntax == "ranges"
    assert json.loads(json.dumps(res.to_json()))["matched_range"] == {"start": 2 * G, "end": None}


# -- simple syntax ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, size, offset", [
    ("crashkernel=64M@16M", 64 * M, 16 * M),          # kdump.rst: "x86 and x86_64"
    ("crashkernel=128M@32M", 128 * M, 32 * M),        # kdump.rst: ppc64
    ("crashkernel=256M@0", 256 * M, 0),               # kdump.rst: 0 = placed automatically
    ("crashkernel=256M", 256 * M, 0),
    ("crashkernel=0x10000000", 256 * M, 0),
    ("crashkernel=256M@", 256 * M, 0),                # '@' with nothing: offset 0
    ("crashkernel=256M@16Mjunk", 256 * M, 16 * M),    # after the offset nothing is checked
    ("root=/dev/sda crashkernel=256M quiet", 256 * M, 0),
    ("crashkernel=256M foo=a:b", 256 * M, 0),         # a ':' after the first space: simple
    ("crashkernel=128M crashkernel=256M", 256 * M, 0),   # the last one wins
    ("foo_crashkernel=96M", 96 * M, 0),               # strstr() finds it inside a word too
])
def test_simple(spec, size, offset):
    res = evaluate(spec, 16 * G, NEW)
    assert (res.reserved, res.size, res.offset) == (True, size, offset)
    assert res.syntax == "simple"


@pytest.mark.parametrize("spec, message", [
    ("crashkernel=", "crashkernel: memory value expected"),
    ("crashkernel=abc", "crashkernel: memory value expected"),
    ("crashkernel=256Mx", "crashkernel: unrecognized char: x"),
    ("crashkernel=256M,foo", "crashkernel: unrecognized char: ,"),
    ("crashkernel=256M-", "crashkernel: unrecognized char: -"),
])
def test_simple_malformed(spec, message):
    res = evaluate(spec, 16 * G, NEW)
    assert not res.reserved
    assert res.error == message
    assert message in res.kernel_messages


@pytest.mark.parametrize("spec, ram", [
    ("crashkernel=M", 16 * G),        # memparse consumes "M": size 0, no warning
    ("crashkernel=16E", 16 * G),      # wraps to 0
    ("crashkernel=4G", 4 * G),        # not below the RAM size
    ("crashkernel=5G", 4 * G),
])
def test_simple_reserving_nothing_without_a_warning(spec, ram):
    res = evaluate(spec, ram, NEW)
    assert not res.reserved and res.error is None


# -- range syntax -----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, ram, size, offset", [
    ("crashkernel=0-2G:128M", 1 * G, 128 * M, 0),
    ("crashkernel=512M-2G:64M,2G-:128M@16M", 1 * G, 64 * M, 16 * M),
    ("crashkernel=512M-2G:64M,2G-:128M@16M", 4 * G, 128 * M, 16 * M),
    # after a match the rest of the list is skipped up to '@' unchecked
    ("crashkernel=512M-2G:64M,junk@16M", 1 * G, 64 * M, 16 * M),
    ("crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M", 16 * G, 256 * M, 0),
    ("crashkernel=2G-64G:256M,64G-:512M", 64 * G, 512 * M, 0),
    ("crashkernel=1P-:512M,0-1P:64M", 16 * G, 64 * M, 0),
    ("crashkernel=0x80000000-:0x10000000", 4 * G, 256 * M, 0),
])
def test_ranges(spec, ram, size, offset):
    res = evaluate(spec, ram, NEW)
    assert (res.reserved, res.size, res.offset) == (True, size, offset)


@pytest.mark.parametrize("spec, ram, message", [
    ("crashkernel=1G:256M", 4 * G, "crashkernel: '-' expected"),
    ("crashkernel=-2G:256M", 4 * G, "crashkernel: Memory value expected"),
    ("crashkernel=1G-x:256M", 4 * G, "crashkernel: Memory value expected"),
    ("crashkernel=2G-1G:256M", 4 * G, "crashkernel: end <= start"),
    ("crashkernel=1G-1G:256M", 4 * G, "crashkernel: end <= start"),
    ("crashkernel=1G-2G256M:x", 4 * G, "crashkernel: ':' expected"),
    ("crashkernel=1G-:", 4 * G, "crashkernel: Memory value expected"),
    ("crashkernel=1G-:x", 4 * G, "crashkernel: Memory value expected"),
    # sizes are checked against the RAM for every range visited, before matching
    ("crashkernel=512M-2G:4G", 1 * G, "crashkernel: invalid size"),
    ("crashkernel=0-1G:1G,1G-:256M", 512 * M, "crashkernel: invalid size"),
    ("crashkernel=512M-2G:64M,2G-:128M@", 1 * G,
     "crashkernel: Memory value expected after '@'"),
    # no match yet, ',' continues: the junk is parsed as the next range
    ("crashkernel=512M-2G:64M,junk", 4 * G, "crashkernel: Memory value expected"),
])
def test_ranges_malformed(spec, ram, message):
    res = evaluate(spec, ram, NEW)
    assert not res.reserved
    assert res.error == message


def test_ranges_junk_after_a_size_ends_the_list_silently():
    res = evaluate("crashkernel=512M-2G:64Mjunk,2G-:128M", 4 * G, NEW)
    assert not res.reserved and res.error is None
    assert res.kernel_messages == ["crashkernel size resulted in zero bytes"]
    assert evaluate("crashkernel=512M-2G:64Mjunk", 1 * G, NEW).size == 64 * M


# -- ,high / ,low / ,cma ----------------------------------------------------------------------

def test_high_with_default_low():
    res = evaluate("crashkernel=512M,high", 16 * G, NEW)
    assert (res.reserved, res.size, res.high, res.low) == (True, 512 * M, True, 256 * M)
    assert res.syntax == "high"
    assert evaluate("crashkernel=512M,high", 16 * G, ARM64).low == 128 * M


def test_high_with_explicit_low():
    res = evaluate("crashkernel=512M,high crashkernel=128M,low", 16 * G, NEW)
    assert (res.size, res.low) == (512 * M, 128 * M)
    res = evaluate("crashkernel=512M,high crashkernel=0,low", 16 * G, NEW)
    assert (res.size, res.low) == (512 * M, 0)
    assert "no low memory (crashkernel=0,low)" in res.explanation


def test_plain_wins_over_high():
    res = evaluate("crashkernel=512M,high crashkernel=256M", 16 * G, NEW)
    assert (res.size, res.high, res.syntax) == (256 * M, False, "simple")


@pytest.mark.parametrize("spec, message", [
    ("crashkernel=512Mx,high", "crashkernel: unrecognized char: x"),
    ("crashkernel=,high", "crashkernel: memory value expected"),
])
def test_high_malformed(spec, message):
    res = evaluate(spec, 16 * G, NEW)
    assert not res.reserved and res.error == message


def test_high_zero_reserves_nothing():
    assert not evaluate("crashkernel=0,high", 16 * G, NEW).reserved


def test_malformed_low_generic_vs_before_6_7():
    spec = "crashkernel=512M,high crashkernel=xx,low"
    new = evaluate(spec, 16 * G, NEW)
    assert not new.reserved and new.error == "crashkernel: memory value expected"
    old = evaluate(spec, 16 * G, OLD61)      # x86 before 6.7: the default low size instead
    assert old.reserved and old.low == 256 * M
    assert "malformed" in (old.low_when or "")


def test_malformed_plain_falls_back_to_high_only_before_6_7():
    spec = "crashkernel=bad crashkernel=512M,high"
    assert not evaluate(spec, 16 * G, NEW).reserved
    old = evaluate(spec, 16 * G, OLD61)
    assert old.reserved and old.high and old.size == 512 * M


def test_no_high_low_on_powerpc():
    assert not evaluate("crashkernel=512M,high", 16 * G, PPC).reserved
    assert evaluate("crashkernel=512M", 16 * G, PPC).low == 0


def test_cma_suffix_is_new_in_6_16():
    # 6.12 does not know ",cma": "crashkernel=64M,cma" is the last plain word, and bad
    res = evaluate("crashkernel=256M crashkernel=64M,cma", 16 * G, NEW)
    assert not res.reserved
    assert (res.word, res.error) == ("crashkernel=64M,cma", "crashkernel: unrecognized char: ,")
    newest = KernelRules()
    res = evaluate("crashkernel=256M crashkernel=64M,cma", 16 * G, newest)
    assert (res.size, res.cma) == (256 * M, 64 * M)
    # the kernel ignores the ,cma parse's return value, so the memparse'd size stays
    assert evaluate("crashkernel=256M crashkernel=100Mx,cma", 16 * G, newest).cma == 100 * M


def test_no_parameter():
    res = evaluate("root=/dev/sda quiet", 16 * G, NEW)
    assert not res.reserved and res.error is None
    assert "no crashkernel= parameter" in res.explanation[0]


def test_normalise_spec():
    assert normalise_spec(["512M,high", "128M,low"]) == \
        "crashkernel=512M,high crashkernel=128M,low"
    assert normalise_spec(["crashkernel=256M"]) == "crashkernel=256M"


# -- the command ------------------------------------------------------------------------------

def test_cli_exit_codes(capsys, tmp_path):
    assert main(["crashkernel", "512M-2G:64M,2G-:128M", "--ram", "1G",
                 "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reserves 64 MiB" in out and "512M <= RAM < 2G" in out
    assert main(["crashkernel", "512M-2G:64M,2G-:128M", "--ram", "256M",
                 "--root", str(tmp_path)]) == 3
    assert main(["crashkernel", "1G-2G256M:x", "--ram", "4G", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "crashkernel: ':' expected" in err
    assert main(["crashkernel", "512M,high", "128M,low", "--ram", "16G", "--json",
                 "--root", str(tmp_path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["size"], d["low"], d["high"]) == (512 * M, 128 * M, True)


def test_cli_uses_the_fake_machines_ram(capsys, tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/iomem").write_text("00100000-3fffffff : System RAM\n")   # 1 GiB
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.1.0-27-amd64\n")
    assert main(["crashkernel", DOC, "--root", str(tmp_path), "--arch", "x86_64"]) == 0
    assert "reserves 64 MiB" in capsys.readouterr().out
