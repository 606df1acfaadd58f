"""/etc/kdumpy.toml validation: every error one by one, each a single line naming the key."""

from __future__ import annotations

import pytest

from kdumpy.setup.config import ConfigError, load_config, parse_config
from kdumpy.setup.units import example_config


def err(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "/etc/kdumpy.toml")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("/etc/kdumpy.toml: ")
    return msg


def test_defaults_without_a_file(tmp_path):
    cfg = load_config(str(tmp_path / "absent.toml"))
    assert cfg.dump.levels == [31]
    assert cfg.dump.compression == "lzo"
    assert (cfg.target.kind, cfg.target.path) == ("path", "/var/crash")
    assert (cfg.actions.failure, cfg.actions.final) == ("reboot", "reboot")
    assert cfg.hooks.pre_dir == "/etc/kdumpy/pre.d"
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "absent.toml"), must_exist=True)


def test_full_config():
    cfg = parse_config("""
[load]
kernel = "/boot/vmlinuz-x"
initrd = "/boot/initrd.img-x"
cmdline_append = ["console=ttyS0", "loglevel=7"]
cmdline_remove = "nosmt"
method = "kexec_file_load"
[dump]
level = [31, 11, 1]
compression = "zstd"
keep = 3
min_free = "1G"
threads = 2
[target]
ssh = "ssh://kdump@backup.example.com:2222/srv/crash%20dir"
ssh_key = "/root/.ssh/id"
ssh_options = ["StrictHostKeyChecking=yes"]
[actions]
failure = "shell"
final = "poweroff"
[hooks]
pre_dir = "/etc/x/pre"
timeout = 10
""")
    assert cfg.load.cmdline_append == ["console=ttyS0", "loglevel=7"]
    assert cfg.load.cmdline_remove == ["nosmt"]
    assert cfg.dump.levels == [31, 11, 1]
    assert cfg.dump.min_free == 1 << 30
    t = cfg.target
    assert (t.kind, t.user, t.host, t.port, t.path) == ("ssh", "kdump", "backup.example.com",
                                                        2222, "/srv/crash dir")
    assert t.describe() == "ssh://kdump@backup.example.com:2222/srv/crash dir"
    assert (cfg.actions.failure, cfg.actions.final) == ("shell", "poweroff")


def test_level_forms():
    assert parse_config("[dump]\nlevel = 17\n").dump.levels == [17]
    assert parse_config('[dump]\nlevel = "31,11"\n').dump.levels == [31, 11]


def test_nfs_target():
    t = parse_config('[target]\nnfs = "nfs://filer/export/crash"\nnfs_options = "vers=4"\n').target
    assert (t.kind, t.nfs_source, t.nfs_options) == ("nfs", "filer:/export/crash", "vers=4")


def test_example_config_is_valid():
    parse_config(example_config())


@pytest.mark.parametrize("text, expected", [
    ("[dump\n", "not valid TOML"),
    ("[bogus]\nx = 1\n", "unknown section [bogus]"),
    ("dump = 3\n", "dump: expected a [dump] table, not a number"),
    ("[dump]\nlevels = 31\n", "unknown key dump.levels (known in [dump]: level,"),
    ("[target]\npaht = \"/x\"\n", "unknown key target.paht"),
    ("[dump]\nlevel = 32\n", "dump.level: 32 is out of range (0-31)"),
    ("[dump]\nlevel = -1\n", "dump.level: -1 is out of range (0-31)"),
    ("[dump]\nlevel = []\n", "dump.level: the list is empty"),
    ("[dump]\nlevel = [31, \"x\"]\n", "dump.level: expected dump levels (0-31), not a string"),
    ("[dump]\nlevel = \"31,x\"\n", "dump.level: '31,x' is not a level or a comma list"),
    ("[dump]\nlevel = true\n", "dump.level: expected dump levels (0-31), not a boolean"),
    ("[dump]\ncompression = \"gzip\"\n",
     "dump.compression: 'gzip' is not one of lzo, zlib, snappy, zstd, none"),
    ("[dump]\nformat = \"raw\"\n", "dump.format: 'raw' is not one of kdump, elf"),
    ("[dump]\nformat = \"elf\"\ncompression = \"zstd\"\n",
     "dump.compression: ELF dumps are not compressed"),
    ("[dump]\nkeep = -2\n", "dump.keep: -2 is out of range (0-)"),
    ("[dump]\nkeep = 1.5\n", "dump.keep: expected a whole number, not a number"),
    ("[dump]\nmin_free = \"lots\"\n", "dump.min_free: 'lots' is not a size"),
    ("[dump]\nmin_free = [1]\n", "dump.min_free: expected a size such as \"512M\""),
    ("[dump]\nthreads = 5000\n", "dump.threads: 5000 is out of range (0-1024)"),
    ("[dump]\nallow_partial_filter = \"yes\"\n",
     "dump.allow_partial_filter: expected true or false, not a string"),
    ("[actions]\nfailure = \"explode\"\n",
     "actions.failure: 'explode' is not one of reboot, poweroff, halt, shell"),
    ("[actions]\nfinal = \"dump_to_rootfs\"\n", "actions.final: 'dump_to_rootfs' is not one of"),
    ("[hooks]\npre_dir = \"relative/dir\"\n", "hooks.pre_dir: 'relative/dir' is not an absolute"),
    ("[hooks]\ntimeout = 0\n", "hooks.timeout: 0 is out of range (1-86400)"),
    ("[load]\nmethod = \"kexec -s\"\n", "load.method: 'kexec -s' is not one of auto,"),
    ("[load]\nkernel = 5\n", "load.kernel: expected a string, not a number"),
    ("[load]\ncmdline_append = [1]\n", "load.cmdline_append: expected a string, not a number"),
    ("[load]\ncmdline = \"a\\nb\"\n", "load.cmdline: must not contain NUL or newline"),
    ("[target]\npath = \"/var/crash\"\nssh = \"ssh://h/d\"\n",
     "target: more than one target (path, ssh); set exactly one of path, ssh, nfs"),
    ("[target]\nssh = \"ssh://h/d\"\nnfs = \"nfs://h/e\"\n",
     "target: more than one target (ssh, nfs)"),
    ("[target]\npath = \"/a\"\nssh = \"ssh://h/d\"\nnfs = \"nfs://h/e\"\n",
     "target: more than one target (path, ssh, nfs)"),
    ("[target]\npath = \"var/crash\"\n", "target.path: 'var/crash' is not an absolute path"),
    ("[target]\nssh = \"kdump@host:/dir\"\n",
     "target.ssh: 'kdump@host:/dir' is not an ssh://[user@]host[:port]/directory URL"),
    ("[target]\nssh = \"ssh://host\"\n", "target.ssh: 'ssh://host' names no directory"),
    ("[target]\nssh = \"ssh:///dir\"\n", "target.ssh: 'ssh:///dir' names no host"),
    ("[target]\nssh = \"ssh://h:99999/d\"\n", "target.ssh: 'ssh://h:99999/d' has a bad port"),
    ("[target]\nssh = \"ssh://-oProxyCommand=x/d\"\n", "target.ssh:"),
    ("[target]\nssh = \"ssh://h/d\"\nssh_options = [\"-v\"]\n",
     "target.ssh_options: '-v' is not an ssh option"),
    ("[target]\npath = \"/a\"\nssh_key = \"/k\"\n",
     "target.ssh_key: only applies to an ssh target"),
    ("[target]\nnfs = \"filer:/export\"\n",
     "target.nfs: 'filer:/export' is not an nfs://host/export/directory URL"),
    ("[target]\nnfs = \"nfs://filer\"\n", "target.nfs: 'nfs://filer' names no export path"),
    ("[target]\nnfs = \"nfs://u@filer/e\"\n", "target.nfs: 'nfs://u@filer/e': only nfs://host/path"),
])
def test_errors_one_by_one(text, expected):
    assert expected in err(text)


def test_unreadable_file(tmp_path):
    d = tmp_path / "dir.toml"
    d.mkdir()
    with pytest.raises(ConfigError, match="dir.toml: Is a directory"):
        load_config(str(d))
