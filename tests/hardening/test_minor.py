"""Small inputs that used to be accepted wrongly or to fail with an internal error."""

from __future__ import annotations

import pytest

from kdumpy.cli import main
from kdumpy.setup.config import ConfigError, parse_config
from kdumpy.setup.crashkernel import evaluate


def test_crashkernel_offset_beyond_physical_memory(capsys):
    """memparse keeps 64 bits of 99999999999999999999999G; no RAM is there, and the kernel's
    fixed-base allocation fails with its own message."""
    res = evaluate("crashkernel=256M@99999999999999999999999G", 4 << 30)
    assert not res.reserved
    assert res.error == "crashkernel reservation failed - memory is in use."
    assert main(["crashkernel", "--ram", "4G", "256M@99999999999999999999999G"]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("crashkernel reservation failed - memory is in use.")
    assert evaluate("crashkernel=256M@16M", 4 << 30).reserved


def test_config_with_a_byte_order_mark():
    cfg = parse_config(b"\xef\xbb\xbf[dump]\nlevel = [31, 1]\n", "bom.toml")
    assert cfg.dump.levels == [31, 1]


@pytest.mark.parametrize("text", ["[dump]\nlevel = " + "[" * 5000 + "]" * 5000,
                                  "[dump]\nx = " + "{a=" * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml_is_a_clean_error(text, tmp_path, capsys):
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config(text, "deep.toml")
    p = tmp_path / "deep.toml"
    p.write_text(text)
    rc = main(["status", "--config", str(p), "--root", str(tmp_path / "root")])
    out = capsys.readouterr()
    assert rc == 3 and "nested too deeply" in out.out
    assert "RecursionError" not in out.out + out.err
