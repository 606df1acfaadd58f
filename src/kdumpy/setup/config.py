"""``/etc/kdumpy.toml``: what to load, how to save, where to, and what to do afterwards.

Every key is optional; an absent file means the defaults (a local ``/var/crash``, dump level
31, lzo, reboot afterwards: kdump-utils' defaults). Validation stops at the first problem
with one line naming the file and the key. Example::

    [load]
    kernel = "/boot/vmlinuz-6.1.0-27-amd64"   # default: /boot/vmlinuz-$(uname -r)
    initrd = "/boot/initrd.img-6.1.0-27-amd64"
    cmdline_append = "console=ttyS0,115200"  # words added to the capture command line
    cmdline_remove = ["nosmt"]               # parameters dropped from /proc/cmdline
    method = "auto"                          # auto | kexec_file_load | kexec_load

    [dump]
    level = [31, 11]          # makedumpfile -d; a list is tried in turn when space runs out
    compression = "zstd"      # lzo | zlib | snappy | zstd | none
    format = "kdump"          # kdump | elf
    keep = 3                  # keep the 3 newest dumps in a local/NFS target (0: all)
    min_free = "1G"           # refuse to start with less free space than this
    deadline = 3600           # seconds the whole capture may take, then the failure action

    [target]                  # exactly one of path, ssh, nfs, s3
    path = "/var/crash"
    # ssh = "ssh://kdump@backup.example.com:22/srv/crash"
    # ssh_key = "/etc/kdumpy/ssh/id_ed25519"   # default; created by kdumpy propagate
    # ssh_options = ["StrictHostKeyChecking=yes"]
    # ssh_known_hosts = "/etc/kdumpy/ssh/known_hosts"   # default; written by kdumpy propagate
    # nfs = "nfs://filer.example.com/export/crash"
    # nfs_options = "vers=4.2,timeo=600"   # default nolock,tcp,soft,timeo=600,retrans=3
    # s3 = "s3://crash-bucket/fleet"
    # s3_endpoint = "https://objects.example.com"
    # s3_region = "us-east-1"
    # s3_credentials = "/etc/kdumpy/s3-credentials"   # AWS credentials format, mode 0600
    # fallback_path = "/var/crash"   # when the ssh/nfs/s3 target fails, save here instead

    [actions]
    failure = "reboot"        # reboot | poweroff | halt | shell
    final = "reboot"

    [hooks]                   # executables run in name order, argv only, never a shell
    pre_dir = "/etc/kdumpy/pre.d"
    post_dir = "/etc/kdumpy/post.d"
    timeout = 300

    [triggers]                # /proc/sys/kernel knobs set by `kdumpy load` and `kdumpy install`
    panic_on_oops = 1         # an oops panics (and so is dumped)
    panic_on_warn = 0         # every WARN() panics
    panic_on_taint = ["MACHINE_CHECK", "BAD_PAGE"]   # taint names, letters or a mask
    # panic_on_taint_nousertaint = 1
    # softlockup_panic = 1
    # hardlockup_panic = 1
    # unknown_nmi_panic = 1
    # panic_on_unrecovered_nmi = 1
    # sysrq = 1               # bit mask of allowed SysRq functions (1: all)
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from kdumpy.capture.pipeline import MAX_DUMP_LEVEL
from kdumpy.errors import KdumpyError
from kdumpy.setup.sizes import parse_size
from kdumpy.setup.triggers import KNOBS as TRIGGER_KNOBS
from kdumpy.setup.triggers import BadValue, parse_value

ACTIONS = ("reboot", "poweroff", "halt", "shell")
COMPRESSIONS = ("lzo", "zlib", "snappy", "zstd", "none")
FORMATS = ("kdump", "elf")
LOAD_METHODS = ("auto", "kexec_file_load", "kexec_load")


class ConfigError(KdumpyError):
    """The configuration file is not valid; the message names the file and the key."""


@dataclass
class LoadConfig:
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None        # replaces /proc/cmdline as the base
    cmdline_append: list[str] = field(default_factory=list)
    cmdline_remove: list[str] = field(default_factory=list)
    method: str = "auto"


@dataclass
class DumpConfig:
    levels: list[int] = field(default_factory=lambda: [31])
    compression: str = "lzo"
    format: str = "kdump"
    threads: int = 0                  # 0: every usable CPU
    keep: int = 0                     # 0: keep every dump
    min_free: int = 0
    allow_partial_filter: bool = True
    deadline: int = 3600              # seconds for the whole capture in the capture image


@dataclass
class TargetConfig:
    kind: str = "path"                # path | ssh | nfs
    path: str = "/var/crash"          # local dir; remote dir (ssh); dir on the export (nfs)
    user: str | None = None
    host: str | None = None
    port: int | None = None
    ssh_key: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    ssh_known_hosts: str | None = None  # pinned host keys (kdumpy propagate)
    nfs_source: str | None = None     # host:/export/dir as mount(8) takes it
    nfs_options: str | None = None
    s3_url: str | None = None         # s3://bucket/prefix
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_credentials: str | None = None
    fallback_path: str | None = None  # local directory used when a network target fails

    def describe(self) -> str:
        if self.kind == "s3":
            return f"{self.s3_url} at {self.s3_endpoint}"
        if self.kind == "ssh":
            port = f":{self.port}" if self.port else ""
            return f"ssh://{self.user + '@' if self.user else ''}{self.host}{port}{self.path}"
        if self.kind == "nfs":
            return f"nfs://{self.nfs_source}"
        return self.path


@dataclass
class ActionsConfig:
    failure: str = "reboot"
    final: str = "reboot"


@dataclass
class HooksConfig:
    pre_dir: str = "/etc/kdumpy/pre.d"
    post_dir: str = "/etc/kdumpy/post.d"
    timeout: int = 300


@dataclass
class Config:
    load: LoadConfig = field(default_factory=LoadConfig)
    dump: DumpConfig = field(default_factory=DumpConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    #: [triggers]: /proc/sys/kernel knob -> value to write (only the configured ones)
    triggers: dict[str, int] = field(default_factory=dict)
    source: str | None = None         # the file it came from (None: defaults)


# -- value checkers: (value, key) -> typed value, or raise _Bad ----------------------------

class _Bad(Exception):
    pass


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, not {_kind(v)}")
    if "\0" in v or "\n" in v:
        raise _Bad("must not contain NUL or newline characters")
    return v


def _abs_path(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/"):
        raise _Bad(f"{s!r} is not an absolute path")
    return os.path.normpath(s)


def _words(v: Any) -> list[str]:
    if isinstance(v, str):
        return [_str(v)] if v.strip() else []
    if isinstance(v, list):
        return [_str(x) for x in v]
    raise _Bad(f"expected a string or a list of strings, not {_kind(v)}")


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        s = _str(v)
        if s not in choices:
            raise _Bad(f"{s!r} is not one of {', '.join(choices)}")
        return s
    return check


def _int_range(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected a whole number, not {_kind(v)}")
        if v < lo or (hi is not None and v > hi):
            raise _Bad(f"{v} is out of range ({lo}-{hi if hi is not None else ''})")
        return v
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, not {_kind(v)}")
    return v


def _size(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _Bad(f"expected a size such as \"512M\" or a number of bytes, not {_kind(v)}")
    try:
        return parse_size(v)
    except KdumpyError:
        raise _Bad(f"{v!r} is not a size (a number with an optional K/M/G/T suffix, "
                   "e.g. \"512M\")") from None


def _levels(v: Any) -> list[int]:
    if isinstance(v, str):
        parts: list[Any] = v.split(",")
        try:
            parts = [int(p) for p in parts]
        except ValueError:
            raise _Bad(f"{v!r} is not a level or a comma list of levels") from None
    elif isinstance(v, list):
        parts = v
    else:
        parts = [v]
    if not parts:
        raise _Bad("the list is empty")
    out = []
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, int):
            raise _Bad(f"expected dump levels (0-{MAX_DUMP_LEVEL}), not {_kind(p)}")
        if not 0 <= p <= MAX_DUMP_LEVEL:
            raise _Bad(f"{p} is out of range (0-{MAX_DUMP_LEVEL})")
        out.append(p)
    return out


def _ssh_options(v: Any) -> list[str]:
    opts = _words(v)
    for o in opts:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*[= ]\S.*", o):
            raise _Bad(f"{o!r} is not an ssh option (Name=value, as for ssh -o)")
    return opts


def _trigger(name: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        try:
            return parse_value(name, v)
        except BadValue as exc:
            raise _Bad(str(exc)) from None
    return check


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


SCHEMA: dict[str, dict[str, Callable[[Any], Any]]] = {
    "load": {"kernel": _abs_path, "initrd": _abs_path, "cmdline": _str,
             "cmdline_append": _words, "cmdline_remove": _words,
             "method": _choice(LOAD_METHODS)},
    "dump": {"level": _levels, "compression": _choice(COMPRESSIONS),
             "format": _choice(FORMATS), "threads": _int_range(0, 1024),
             "keep": _int_range(0), "min_free": _size, "allow_partial_filter": _bool,
             "deadline": _int_range(60, 7 * 86400)},
    "target": {"path": _abs_path, "ssh": _str, "ssh_key": _abs_path,
               "ssh_options": _ssh_options, "ssh_known_hosts": _abs_path,
               "nfs": _str, "nfs_options": _str,
               "s3": _str, "s3_endpoint": _str, "s3_region": _str,
               "s3_credentials": _abs_path, "fallback_path": _abs_path},
    "actions": {"failure": _choice(ACTIONS), "final": _choice(ACTIONS)},
    "hooks": {"pre_dir": _abs_path, "post_dir": _abs_path, "timeout": _int_range(1, 86400)},
    "triggers": {name: _trigger(name) for name in TRIGGER_KNOBS},
}
TARGET_KINDS = ("path", "ssh", "nfs", "s3")


def parse_ssh_url(url: str) -> tuple[str | None, str, int | None, str]:
    """``ssh://user@host[:port]/dir`` -> (user, host, port, dir)."""
    if not url.startswith("ssh://"):
        raise _Bad(f"{url!r} is not an ssh://[user@]host[:port]/directory URL")
    parts = urlsplit(url)
    if not parts.hostname:
        raise _Bad(f"{url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        raise _Bad(f"{url!r} has a bad port") from None
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise _Bad(f"{url!r} names no directory (ssh://host/dir)")
    if parts.query or parts.fragment:
        raise _Bad(f"{url!r}: no query or fragment allowed")
    user = unquote(parts.username) if parts.username else None
    if user is not None and (user.startswith("-") or not user):
        raise _Bad(f"{url!r}: bad user name")
    if parts.hostname.startswith("-"):
        raise _Bad(f"{url!r}: bad host name")
    return user, parts.hostname, port, os.path.normpath(path)


def parse_nfs_url(url: str) -> str:
    """``nfs://host/export/dir`` -> ``host:/export/dir`` (what mount.nfs takes)."""
    if not url.startswith("nfs://"):
        raise _Bad(f"{url!r} is not an nfs://host/export/directory URL")
    parts = urlsplit(url)
    if not parts.hostname or parts.hostname.startswith("-"):
        raise _Bad(f"{url!r} names no host")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise _Bad(f"{url!r} names no export path")
    if parts.username or parts.port or parts.query or parts.fragment:
        raise _Bad(f"{url!r}: only nfs://host/path is supported (options go in nfs_options)")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{host}:{os.path.normpath(path)}"


def _s3_target(tc: TargetConfig, t: dict[str, Any]) -> None:
    from kdumpy.capture.s3 import parse_s3_url
    try:
        parse_s3_url(t["s3"])
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    for key in ("s3_endpoint", "s3_credentials"):
        if key not in t:
            raise _Bad(f"an s3 target needs target.{key}")
    endpoint = t["s3_endpoint"]
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or \
            parts.path not in ("", "/") or parts.query or parts.username:
        raise _Bad(f"s3_endpoint {endpoint!r} is not http[s]://host[:port]")
    tc.s3_url = t["s3"]
    tc.s3_endpoint = endpoint.rstrip("/")
    tc.s3_region = t.get("s3_region")
    tc.s3_credentials = t["s3_credentials"]
    tc.path = "/"


def load_config(path: str | None, *, must_exist: bool = False) -> Config:
    """Read and validate ``path``; a missing file gives the defaults unless ``must_exist``."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"{path}: no such configuration file") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_config(raw, path)


def parse_config(raw: bytes | str, source: str = "<config>") -> Config:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    # Editors on other systems save UTF-8 with a byte order mark; TOML text is UTF-8 and the
    # mark carries nothing
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{source}: not valid TOML: values nested too deeply") from None
    values: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}] (known: "
                              f"{', '.join(SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section}: expected a [{section}] table, not "
                              f"{_kind(body)}")
        values[section] = {}
        for key, v in body.items():
            check = SCHEMA[section].get(key)
            if check is None:
                raise ConfigError(f"{source}: unknown key {section}.{key} (known in "
                                  f"[{section}]: {', '.join(SCHEMA[section])})")
            try:
                values[section][key] = check(v)
            except _Bad as exc:
                raise ConfigError(f"{source}: {section}.{key}: {exc}") from None
    cfg = Config(source=source)
    load = values.get("load", {})
    cfg.load = LoadConfig(kernel=load.get("kernel"), initrd=load.get("initrd"),
                          cmdline=load.get("cmdline"),
                          cmdline_append=load.get("cmdline_append", []),
                          cmdline_remove=load.get("cmdline_remove", []),
                          method=load.get("method", "auto"))
    dump = values.get("dump", {})
    cfg.dump = DumpConfig(levels=dump.get("level", [31]),
                          compression=dump.get("compression", "lzo"),
                          format=dump.get("format", "kdump"), threads=dump.get("threads", 0),
                          keep=dump.get("keep", 0), min_free=dump.get("min_free", 0),
                          allow_partial_filter=dump.get("allow_partial_filter", True),
                          deadline=dump.get("deadline", 3600))
    if cfg.dump.format == "elf" and "compression" in dump and cfg.dump.compression != "none":
        raise ConfigError(f"{source}: dump.compression: ELF dumps are not compressed; use "
                          "format = \"kdump\" or compression = \"none\"")
    if cfg.dump.format == "elf":
        cfg.dump.compression = "none"
    cfg.target = _target(values.get("target", {}), source)
    acts = values.get("actions", {})
    cfg.actions = ActionsConfig(failure=acts.get("failure", "reboot"),
                                final=acts.get("final", "reboot"))
    hooks = values.get("hooks", {})
    cfg.hooks = HooksConfig(pre_dir=hooks.get("pre_dir", "/etc/kdumpy/pre.d"),
                            post_dir=hooks.get("post_dir", "/etc/kdumpy/post.d"),
                            timeout=hooks.get("timeout", 300))
    cfg.triggers = dict(values.get("triggers", {}))
    return cfg


def _target(t: dict[str, Any], source: str) -> TargetConfig:
    kinds = [k for k in TARGET_KINDS if k in t]
    if len(kinds) > 1:
        raise ConfigError(f"{source}: target: more than one target ({', '.join(kinds)}); "
                          "set exactly one of path, ssh, nfs, s3")
    kind = kinds[0] if kinds else "path"
    for key, needs in (("ssh_key", "ssh"), ("ssh_options", "ssh"), ("ssh_known_hosts", "ssh"),
                       ("nfs_options", "nfs"),
                       ("s3_endpoint", "s3"), ("s3_region", "s3"), ("s3_credentials", "s3")):
        if key in t and kind != needs:
            raise ConfigError(f"{source}: target.{key}: only applies to an {needs} target")
    if "fallback_path" in t and kind == "path":
        raise ConfigError(f"{source}: target.fallback_path: only applies to an ssh, nfs or "
                          "s3 target")
    tc = TargetConfig(kind=kind, fallback_path=t.get("fallback_path"))
    try:
        if kind == "path":
            tc.path = t.get("path", "/var/crash")
        elif kind == "ssh":
            tc.user, tc.host, tc.port, tc.path = parse_ssh_url(t["ssh"])
            tc.ssh_key = t.get("ssh_key")
            tc.ssh_options = t.get("ssh_options", [])
            tc.ssh_known_hosts = t.get("ssh_known_hosts")
        elif kind == "nfs":
            tc.nfs_source = parse_nfs_url(t["nfs"])
            tc.nfs_options = t.get("nfs_options")
            tc.path = "/"
        else:
            _s3_target(tc, t)
    except _Bad as exc:
        raise ConfigError(f"{source}: target.{kind}: {exc}") from None
    return tc
