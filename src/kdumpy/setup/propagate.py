"""``kdumpy propagate``: make an SSH target usable from the capture kernel, and check it.

The capture kernel cannot ask anyone anything, so everything its ssh needs is prepared here
while an administrator is present (kdump-utils' ``kdumpctl propagate`` does the same):

1. a dedicated key pair, ed25519, no passphrase (``ssh-keygen``), private key mode 0600 in a
   0700 directory, by default ``/etc/kdumpy/ssh/id_ed25519``;
2. the target's host key pinned in kdumpy's own ``known_hosts`` (default
   ``/etc/kdumpy/ssh/known_hosts``): copied from the administrator's ``~/.ssh/known_hosts``
   when it already knows the host (``ssh-keygen -F``), else read with ``ssh-keyscan`` and
   its fingerprints printed for the administrator to compare. The capture session runs
   ssh with ``StrictHostKeyChecking=yes`` and only this file, so a host key that changed
   is refused, never learned (no trust on first use in the capture kernel);
3. the public key appended to the target user's ``~/.ssh/authorized_keys`` over an ssh
   session the administrator authenticates (password, agent or ``--identity``), as
   ``ssh-copy-id`` does, unless it is already there;
4. a check as the capture kernel will run it: ``BatchMode=yes``, only the new key, only the
   pinned host key, then ``mkdir -p`` and a write test of the dump directory.

:func:`ssh_target_findings` is the same check for ``kdumpy status`` (no crash needed).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kdumpy.capture.targets import SshDirectory, make_private_dirs
from kdumpy.errors import KdumpyError
from kdumpy.setup.config import TargetConfig

DEFAULT_KEY = "/etc/kdumpy/ssh/id_ed25519"
DEFAULT_KNOWN_HOSTS = "/etc/kdumpy/ssh/known_hosts"
KEYSCAN_TIMEOUT = 10


def known_hosts_name(host: str, port: int | None) -> str:
    """The host's name as ssh writes it in known_hosts: ``host`` on port 22, else
    ``[host]:port``."""
    return host if not port or port == 22 else f"[{host}]:{port}"


def ensure_key(key: str, *, comment: str = "kdumpy") -> bool:
    """Create the ed25519 key pair ``key``/``key.pub`` unless it exists; return whether it
    was created. The private key ends up 0600 either way; its directory is 0700."""
    make_private_dirs(os.path.dirname(key))
    if os.path.exists(key):
        os.chmod(key, 0o600)
        if not os.path.exists(key + ".pub"):
            pub = subprocess.run(["ssh-keygen", "-y", "-f", key], capture_output=True,
                                 text=True, check=False)
            if pub.returncode != 0:
                raise KdumpyError(f"{key}: not a usable private key: {pub.stderr.strip()}")
            with open(key + ".pub", "w", encoding="ascii") as f:
                f.write(pub.stdout)
        return False
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                           "-f", key], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KdumpyError(f"ssh-keygen -f {key} failed: {proc.stderr.strip()}")
    os.chmod(key, 0o600)
    return True


def public_key(key: str) -> str:
    with open(key + ".pub", encoding="ascii") as f:
        parts = f.read().split()
    if len(parts) < 2:
        raise KdumpyError(f"{key}.pub: not an OpenSSH public key")
    return " ".join(parts[:3])


def _lines_for(known_hosts: str, name: str) -> list[str]:
    """Lines of ``known_hosts`` that match ``name`` (hashed entries too), via ssh-keygen -F."""
    if not os.path.exists(known_hosts):
        return []
    proc = subprocess.run(["ssh-keygen", "-F", name, "-f", known_hosts], capture_output=True,
                          text=True, check=False)
    return [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]


def scan_host_keys(host: str, port: int | None, *, timeout: int = KEYSCAN_TIMEOUT) -> list[str]:
    """``ssh-keyscan`` lines (``name TYPE BASE64``) for the host."""
    argv = ["ssh-keyscan", "-T", str(timeout), "-t", "ed25519,ecdsa,rsa"]
    if port:
        argv += ["-p", str(port)]
    proc = subprocess.run(argv + ["--", host], capture_output=True, text=True,
                          timeout=timeout * 4, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
    if not lines:
        raise KdumpyError(f"ssh-keyscan {host}: no host key received "
                          f"({(proc.stderr.strip().splitlines() or ['no answer'])[-1]})")
    return lines


def fingerprints(lines: Sequence[str]) -> list[str]:
    proc = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip().splitlines()


def pin_host_key(known_hosts: str, host: str, port: int | None, *,
                 admin_known_hosts: str | None = None,
                 log: Callable[[str], None] = print) -> list[str]:
    """Write the host's keys into kdumpy's ``known_hosts`` (replacing older entries for the
    same name); return the lines pinned."""
    name = known_hosts_name(host, port)
    lines = _lines_for(admin_known_hosts, name) if admin_known_hosts else []
    if lines:
        log(f"host key of {name} taken from {admin_known_hosts}")
    else:
        lines = scan_host_keys(host, port)
        log(f"host key of {name} read with ssh-keyscan; compare with the server's own "
            "(ssh-keygen -l -f /etc/ssh/ssh_host_*_key.pub on it):")
        for fp in fingerprints(lines):
            log(f"  {fp}")
    keep: list[str] = []
    if os.path.exists(known_hosts):
        stale = set(_lines_for(known_hosts, name))
        with open(known_hosts, encoding="utf-8") as f:
            keep = [ln.rstrip("\n") for ln in f if ln.rstrip("\n") not in stale]
    from kdumpy.capture.targets import write_file_atomic
    write_file_atomic(known_hosts, ("\n".join(keep + lines) + "\n").encode(), replace=True)
    return lines


def capture_directory(target: TargetConfig, key: str, known_hosts: str, *,
                      timeout: float = 30.0, attempts: int = 1) -> SshDirectory:
    """The :class:`SshDirectory` exactly as the capture session builds it."""
    assert target.host is not None
    return SshDirectory(target.host, target.path, user=target.user, port=target.port,
                        key=key, known_hosts=known_hosts, options=target.ssh_options,
                        timeout=timeout, attempts=attempts)


def install_public_key(target: TargetConfig, key: str, known_hosts: str, *,
                       identity: str | None = None, options: Sequence[str] = (),
                       authorized_keys: str | None = None,
                       run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Append ``key.pub`` to the target user's ``~/.ssh/authorized_keys`` (or the server's
    ``AuthorizedKeysFile``, an absolute path) unless present, over an ssh session the
    administrator authenticates (stdin stays the terminal, so a password prompt works),
    checking the host against the pinned key."""
    pub = public_key(key)
    ak = shlex.quote(authorized_keys) if authorized_keys else "~/.ssh/authorized_keys"
    parent = shlex.quote(os.path.dirname(authorized_keys)) if authorized_keys else "~/.ssh"
    remote = (f"umask 077 && mkdir -p {parent} && touch {ak} && "
              f"{{ grep -qxF {shlex.quote(pub)} {ak} || "
              f"printf '%s\\n' {shlex.quote(pub)} >> {ak}; }}")
    argv = ["ssh"]
    for o in options:
        argv += ["-o", o]
    argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30"]
    if identity:
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    assert target.host is not None
    proc = run(argv + ["--", target.host, remote], check=False)
    if proc.returncode != 0:
        raise KdumpyError(f"installing the key on {target.describe()} failed (ssh exit "
                          f"{proc.returncode})")


@dataclass
class PropagateResult:
    key: str
    key_created: bool
    known_hosts: str
    pinned: list[str]
    target: str


def propagate(target: TargetConfig, *, key: str = DEFAULT_KEY,
              known_hosts: str = DEFAULT_KNOWN_HOSTS, identity: str | None = None,
              options: Sequence[str] = (), admin_known_hosts: str | None = None,
              authorized_keys: str | None = None,
              log: Callable[[str], None] = print) -> PropagateResult:
    """Steps 1-4 of the module docstring for an ``ssh`` ``[target]``."""
    if target.kind != "ssh" or not target.host:
        raise KdumpyError("propagate: the config's [target] is not an ssh target")
    created = ensure_key(key, comment=f"kdumpy@{os.uname().nodename}")
    log(f"{'created' if created else 'using'} key {key}")
    pinned = pin_host_key(known_hosts, target.host, target.port,
                          admin_known_hosts=admin_known_hosts, log=log)
    log(f"pinned {len(pinned)} host key(s) in {known_hosts}")
    install_public_key(target, key, known_hosts, identity=identity, options=options,
                       authorized_keys=authorized_keys)
    log(f"key installed for {target.describe()}")
    d = capture_directory(target, key, known_hosts)
    try:
        d.check()
    except OSError as exc:
        raise KdumpyError(f"{target.describe()}: the capture kernel's login does not work: "
                          f"{exc.strerror or exc}") from None
    log(f"checked: {d.describe()} is writable with {key} and the pinned host key")
    return PropagateResult(key, created, known_hosts, pinned, target.describe())


def ssh_target_findings(target: TargetConfig, *, key: str | None = None,
                        known_hosts: str | None = None, timeout: float = 15.0
                        ) -> list[tuple[str, str, str | None]]:
    """``kdumpy status``'s check of an ssh target, without a crash: the key (present, 0600),
    the pinned host key, then a login exactly as the capture kernel's (``BatchMode``, the
    key, the pinned host key) that creates and write-tests the dump directory.

    Returns ``(severity, detail, fix)`` triples, severity ``ok`` / ``warning`` / ``error``.
    """
    out: list[tuple[str, str, str | None]] = []
    if target.kind != "ssh" or not target.host:
        return out
    key = key or target.ssh_key or DEFAULT_KEY
    known_hosts = known_hosts or target.ssh_known_hosts or DEFAULT_KNOWN_HOSTS
    fix = "kdumpy propagate"
    try:
        mode = os.stat(key).st_mode & 0o777
    except OSError:
        return [("error", f"ssh key {key} missing", fix)]
    if mode & 0o077:
        out.append(("error", f"ssh key {key} is mode {mode:04o}; ssh refuses it", f"chmod 600 {key}"))
        return out
    name = known_hosts_name(target.host, target.port)
    if not _lines_for(known_hosts, name):
        return out + [("error", f"no host key for {name} pinned in {known_hosts}", fix)]
    d = capture_directory(target, key, known_hosts, timeout=timeout)
    try:
        d.check()
    except (OSError, KdumpyError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return out + [("error", f"{d.describe()}: {why}", fix)]
    out.append(("ok", f"{d.describe()} reachable and writable with {key}", None))
    return out
