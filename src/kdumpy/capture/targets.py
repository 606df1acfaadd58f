"""Where a dump is written, and how it is finished.

A local dump is written to ``DEST.incomplete`` (mode 0600, created exclusively so nothing
is ever overwritten), fsynced and renamed to ``DEST`` only when whole; an existing
``DEST`` is kept unless the caller forces. A dump that fails part-way stays as
``DEST.incomplete`` with the format's incomplete mark set, as makedumpfile does.

Directories for the capture session (:mod:`kdumpy.service`):

* :class:`LocalDirectory`: a local (or NFS-mounted, see :class:`NfsMount`) directory.
* :class:`SshDirectory`: a directory on an SSH server, reached with the OpenSSH client
  (``ssh -o BatchMode=yes ... -- HOST 'COMMAND'``) through argv only. ssh joins the remote
  command into one string for the remote user's shell, so every remote path in it is
  quoted with :func:`shlex.quote`. A dump streams makedumpfile's flattened format into
  ``umask 077 && cat > FILE.incomplete``; only after the local side has sent the end
  marker and ssh has exited 0 does a second connection ``sync`` and rename it. A broken
  connection therefore leaves ``.incomplete`` (and a stream without the end marker, which
  reassembly rejects), never a file that looks complete. All commands of a session share
  one authenticated connection (OpenSSH ControlMaster), and the control commands are
  retried a bounded number of times when ssh itself fails (exit 255).
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Protocol

from kdumpy.errors import KdumpyError, TargetExistsError
from kdumpy.formats.sink import FileSink, FlatSink, Sink

INCOMPLETE_SUFFIX = ".incomplete"

#: a local dump starts writeback of its page data every this many bytes (see
#: :class:`~kdumpy.formats.sink.FileSink`), so the fsync at the end has little left to wait for
WRITEBACK_EVERY = 16 << 20


class DumpTarget(Protocol):
    """One dump file being written (:class:`LocalTarget`, :class:`SshTarget`,
    :class:`~kdumpy.capture.s3.S3Target`, :class:`StdoutTarget`).

    The pipeline writes the dump through ``sink``. ``commit`` makes the file whole under its
    final name and returns that name. ``abandon`` leaves it unfinished (an ``.incomplete``
    name, the format's incomplete mark where one can still be written) and returns where it
    was left, or None when nothing is left.
    """

    @property
    def sink(self) -> Sink: ...

    def commit(self) -> str: ...

    def abandon(self) -> str | None: ...


class DumpDirectory(Protocol):
    """Where the capture session puts a crash's directory (:class:`LocalDirectory`,
    :class:`SshDirectory`, :class:`~kdumpy.capture.s3.S3Directory`). ``rel`` names are
    relative to the configured path; ``remote`` says whether the files are on another
    machine (a dump to it streams in the flattened format)."""

    @property
    def remote(self) -> bool: ...

    def describe(self, rel: str = "") -> str: ...

    def check(self) -> None: ...

    def free_bytes(self) -> int | None: ...

    def exists(self, rel: str) -> bool: ...

    def make_dir(self, rel: str) -> None: ...

    def put(self, rel: str, data: bytes) -> str: ...

    def discard(self, rel: str) -> None: ...

    def dump_target(self, rel: str, *, flattened: bool = ...) -> DumpTarget: ...

    def list_dirs(self) -> list[str]: ...

    def remove_tree(self, rel: str) -> None: ...


def create_incomplete(final: str, *, unique: bool) -> tuple[int, str]:
    """Create ``FINAL.incomplete`` for writing and return ``(fd, name)``.

    The file is opened ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode 0600): nothing that is already
    there, a symlink planted at the name included, is followed, truncated or reused. When
    the name is taken and ``unique`` is set, ``FINAL.<random>.incomplete`` is created
    instead, so two savers of the same ``FINAL`` each own their temporary file and never
    rename each other's.
    """
    flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    name = final + INCOMPLETE_SUFFIX
    for _ in range(100):
        try:
            fd = os.open(name, flags, 0o600)
        except FileExistsError:
            if not unique:
                raise
            name = f"{final}.{secrets.token_hex(4)}{INCOMPLETE_SUFFIX}"
            continue
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
        return fd, name
    raise FileExistsError(errno.EEXIST, "no free temporary name", final + INCOMPLETE_SUFFIX)


def check_replaceable(dest: str, *, force: bool, display: str | None = None) -> None:
    """Refuse a ``dest`` that must not be replaced: any existing one without ``force``;
    with ``force``, anything but a regular file (``lstat``: a symlink is refused, never
    followed; a directory gives ``IsADirectoryError``; device nodes and FIFOs are refused)."""
    shown = display or dest
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", shown)
    if not force:
        raise TargetExistsError(f"{shown}: exists; kdumpy never overwrites a dump "
                                "(remove it or pass --force)")
    if not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise TargetExistsError(f"{shown}: {what}; --force replaces only regular files")


def install(tmp: str, dest: str, *, force: bool, display: str | None = None) -> None:
    """Rename the finished ``tmp`` to ``dest``.

    Without ``force`` an existing ``dest`` is never replaced, even one created since the
    start: ``renameat2(RENAME_NOREPLACE)``, or where the filesystem lacks it (NFS) a hard
    link then unlink, which also fails on an existing name. With ``force`` only a regular
    file is replaced (see :func:`check_replaceable`).
    """
    check_replaceable(dest, force=force, display=display)
    if force:
        os.replace(tmp, dest)
        return
    if _rename_noreplace(tmp, dest):
        return
    try:
        os.link(tmp, dest, follow_symlinks=False)
    except FileExistsError:
        raise TargetExistsError(f"{display or dest}: exists; kdumpy never overwrites a dump "
                                "(remove it or pass --force)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
            raise
        check_replaceable(dest, force=False, display=display)  # no hard links here (vfat)
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2: Any = None


def _rename_noreplace(src: str, dst: str) -> bool:
    """``renameat2(..., RENAME_NOREPLACE)`` (Linux 3.15, glibc 2.28); False where the
    system or the filesystem does not offer it. EEXIST becomes :class:`TargetExistsError`."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    import ctypes
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                  _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise TargetExistsError(f"{dst}: exists; kdumpy never overwrites a dump "
                                "(remove it or pass --force)")
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), src)


class LocalTarget:
    """A dump file on a local (or NFS-mounted) filesystem, finished atomically."""

    def __init__(self, dest: str, *, force: bool = False, flattened: bool = False) -> None:
        self.dest = os.path.abspath(dest)
        self.force = force
        self.flattened = flattened
        check_replaceable(self.dest, force=force, display=dest)
        make_private_dirs(os.path.dirname(self.dest))
        try:
            self.fd, self.tmp = create_incomplete(self.dest, unique=force)
        except FileExistsError:
            raise TargetExistsError(
                f"{self.dest}{INCOMPLETE_SUFFIX}: an unfinished dump is already there; move "
                "it away or pass --force") from None
        self._stream: BinaryIO | None = None
        if flattened:
            self._stream = os.fdopen(os.dup(self.fd), "wb", buffering=1 << 20)
            self.sink: FileSink | FlatSink = FlatSink(self._stream)
        else:
            self.sink = FileSink(self.fd, writeback_every=WRITEBACK_EVERY)

    def _close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def commit(self) -> str:
        """Flush, fsync, rename into place and fsync the directory; return the final path."""
        self.sink.close()
        if self._stream is not None:
            self._stream.flush()
        os.fsync(self.fd)
        self._close()
        install(self.tmp, self.dest, force=self.force)
        _fsync_dir(os.path.dirname(self.dest))
        return self.dest

    def abandon(self) -> str | None:
        """Leave the unfinished file in place under its ``.incomplete`` name and return that
        name; None when nothing had been written (the empty file is removed)."""
        try:
            if self._stream is not None:
                self._stream.close()
        except OSError:
            pass
        self._stream = None
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            except OSError:
                pass
        try:
            empty = os.lstat(self.tmp).st_size == 0
        except OSError:
            empty = False
        try:
            self._close()
        except OSError:
            pass
        if empty:  # nothing was written: there is no partial dump to keep
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            return None
        return self.tmp


class StdoutTarget:
    """A flattened stream on standard output (``kdumpy save ... -``)."""

    def __init__(self) -> None:
        if sys.stdout.isatty():
            raise KdumpyError("-: refusing to write a dump to a terminal; redirect stdout")
        self.stream = sys.stdout.buffer
        self.sink = FlatSink(self.stream)
        self.dest = "-"

    def commit(self) -> str:
        self.sink.close()
        return "-"

    def abandon(self) -> str | None:
        return None  # a stream cannot be marked afterwards; the reader sees no end marker


def make_private_dirs(path: str) -> None:
    """Create ``path`` and missing parents, each new one mode 0700 (dumps hold secrets)."""
    missing = []
    p = path
    while p and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)


# -- small files and local directories ------------------------------------------------------

def write_file_atomic(path: str, data: bytes, *, replace: bool = False) -> str:
    """Write a small file (``dmesg.txt``, ``report.json``, kdumpy's state) atomically.

    A new ``PATH.incomplete`` (or ``PATH.<random>.incomplete`` when that name is taken; see
    :func:`create_incomplete`: never an existing file or a symlink) is written, fsynced and
    renamed to ``PATH``, then the directory is fsynced. An existing ``PATH`` is replaced only
    with ``replace`` and only if it is a regular file (:func:`install`).
    """
    path = os.path.abspath(path)
    check_replaceable(path, force=replace)
    make_private_dirs(os.path.dirname(path))
    fd, tmp = create_incomplete(path, unique=True)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    try:
        install(tmp, path, force=replace)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))
    return path


def dmesg_path_for(dest: str) -> str:
    """``dmesg.txt`` beside a dump, as kdumpctl keeps ``vmcore-dmesg.txt`` beside ``vmcore``;
    ``DEST-dmesg.txt`` when the directory already holds another dump's ``dmesg.txt``."""
    d = os.path.dirname(os.path.abspath(dest))
    plain = os.path.join(d, "dmesg.txt")
    return plain if not os.path.lexists(plain) else os.path.abspath(dest) + "-dmesg.txt"


class LocalDirectory:
    """A dump directory tree on a local or mounted filesystem."""

    remote = False

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def describe(self, rel: str = "") -> str:
        return os.path.join(self.path, rel) if rel else self.path

    def check(self) -> None:
        make_private_dirs(self.path)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "not writable", self.path)

    def free_bytes(self) -> int | None:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def exists(self, rel: str) -> bool:
        return os.path.lexists(os.path.join(self.path, rel))

    def make_dir(self, rel: str) -> None:
        """Create ``rel`` (0700); it must not exist yet."""
        os.mkdir(os.path.join(self.path, rel), 0o700)
        os.chmod(os.path.join(self.path, rel), 0o700)

    def put(self, rel: str, data: bytes) -> str:
        return write_file_atomic(os.path.join(self.path, rel), data)

    def dump_target(self, rel: str, *, flattened: bool = False) -> LocalTarget:
        return LocalTarget(os.path.join(self.path, rel), flattened=flattened)

    def discard(self, rel: str) -> None:
        try:
            os.unlink(os.path.join(self.path, rel))
        except FileNotFoundError:
            pass

    def list_dirs(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.path)
                          if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(os.path.join(self.path, rel))


# -- NFS ------------------------------------------------------------------------------------

RunFn = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_argv(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=NFS_MOUNT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: no answer in "
                                                                  f"{NFS_MOUNT_TIMEOUT:.0f} s")
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")


#: kdump-tools' mount options for the capture kernel (``kdump-config``: ``-o nolock -o tcp
#: -o soft -o timeo=${NFS_TIMEO:=600} -o retrans=${NFS_RETRANS:=3}``): no lock daemon is
#: running there (nolock); a server that stops answering fails the write after
#: retrans x 60 s instead of hanging the capture kernel forever (soft, timeo in 0.1 s)
NFS_DEFAULT_OPTIONS = "nolock,tcp,soft,timeo=600,retrans=3"
#: mount attempts (kdump-tools: NFS_MOUNT_RETRY=4, 3 s apart) and the time one may take
NFS_MOUNT_ATTEMPTS = 4
NFS_MOUNT_WAIT = 3.0
NFS_MOUNT_TIMEOUT = 120.0


class NfsMount:
    """``mount -t nfs -o OPTIONS HOST:/EXPORT MOUNTPOINT`` and its ``umount``, as argv.

    OPTIONS are :data:`NFS_DEFAULT_OPTIONS` followed by the configured ones (mount.nfs
    takes the last value of an option given twice, so ``hard`` or ``timeo=100`` in the
    config win). A failed mount is tried :data:`NFS_MOUNT_ATTEMPTS` times in all,
    :data:`NFS_MOUNT_WAIT` s apart, each bounded by :data:`NFS_MOUNT_TIMEOUT`.
    """

    def __init__(self, source: str, mountpoint: str, options: str | None = None, *,
                 run: RunFn = run_argv, attempts: int = NFS_MOUNT_ATTEMPTS,
                 wait: float = NFS_MOUNT_WAIT) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.options = ",".join(o for o in (NFS_DEFAULT_OPTIONS, options) if o)
        self.run = run
        self.attempts = max(1, attempts)
        self.wait = wait
        self.sleep: Callable[[float], None] = time.sleep
        self.mounted_here = False

    def argv(self) -> list[str]:
        return ["mount", "-t", "nfs", "-o", self.options, "--", self.source, self.mountpoint]

    def mount(self) -> None:
        make_private_dirs(self.mountpoint)
        if os.path.ismount(self.mountpoint):
            return
        last = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                self.sleep(self.wait)
            proc = self.run(self.argv())
            if proc.returncode == 0:
                self.mounted_here = True
                return
            msg = (proc.stderr or proc.stdout or "").strip().splitlines()
            last = f"exit {proc.returncode}{': ' + msg[-1] if msg else ''}"
        raise KdumpyError(f"mount {self.source} on {self.mountpoint} failed {self.attempts} "
                          f"times ({last})")

    def umount(self) -> None:
        if self.mounted_here:
            self.run(["umount", "--", self.mountpoint])
            self.mounted_here = False


# -- SSH ------------------------------------------------------------------------------------

q = shlex.quote

#: control commands (mkdir, df, rename) over ssh: attempts and the time they may take
SSH_ATTEMPTS = 5
SSH_RETRY_FOR = 60.0
#: seconds an idle shared connection stays open
SSH_MASTER_PERSIST = 60


def _close_master(argv: list[str], control_dir: str) -> None:
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
    shutil.rmtree(control_dir, ignore_errors=True)


class SshDirectory:
    """A dump directory tree on an SSH server (OpenSSH client, argv only).

    ``ssh`` is the client binary; ``options`` extra ``-o`` values (e.g.
    ``StrictHostKeyChecking=yes``). Remote commands assume a POSIX shell and coreutils or
    busybox on the server (``mkdir -p``, ``cat``, ``mv``, ``df -P``, ``sync``).
    """

    remote = True

    def __init__(self, host: str, path: str, *, user: str | None = None,
                 port: int | None = None, key: str | None = None,
                 options: Sequence[str] = (), ssh: str = "ssh", timeout: float = 120.0,
                 known_hosts: str | None = None, attempts: int = SSH_ATTEMPTS,
                 retry_for: float = SSH_RETRY_FOR, multiplex: bool = True) -> None:
        if host.startswith("-") or (user or "").startswith("-"):
            raise KdumpyError(f"ssh: bad host or user name {host!r}")
        self.host = host
        self.path = path.rstrip("/") or "/"
        self.user = user
        self.port = port
        self.key = key
        self.options = list(options)
        if known_hosts:         # the pinned host key only; a changed one is refused
            self.options += [f"UserKnownHostsFile={known_hosts}",
                             "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes"]
        self.ssh = ssh
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.retry_for = retry_for
        self.sleep: Callable[[float], None] = time.sleep
        self.multiplex = multiplex
        self._control: str | None = None

    def describe(self, rel: str = "") -> str:
        who = f"{self.user}@{self.host}" if self.user else self.host
        port = f":{self.port}" if self.port else ""
        return f"ssh://{who}{port}{self.remote_path(rel)}"

    def remote_path(self, rel: str = "") -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def _options_argv(self) -> list[str]:
        argv = [self.ssh]
        for opt in self.options:         # ssh keeps the first value given: the user's win
            argv += ["-o", opt]
        argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                 "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return argv

    def argv(self, command: str) -> list[str]:
        """The ssh argv running ``command`` (already quoted) on the server, over the shared
        connection when one is open."""
        argv = self._options_argv()
        if self._control:
            argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={self._control}"]
        return argv + ["--", self.host, command]

    def open_master(self) -> None:
        """Open one authenticated connection that later commands share (OpenSSH's
        ControlMaster): each command then costs a channel, not a key exchange and a login.
        ``ssh -f`` returns once authenticated and leaves the master in the background; it
        exits when the server goes away, after :data:`SSH_MASTER_PERSIST` s idle, or when
        this object is collected (``ssh -O exit``). Raises like :meth:`run` when the
        connection cannot be made."""
        if self._control or not self.multiplex:
            return
        d = tempfile.mkdtemp(prefix="kdumpy-ssh-")
        path = os.path.join(d, "master")
        argv = self._options_argv() + ["-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                                       "-o", f"ControlPersist={SSH_MASTER_PERSIST}", "-N",
                                       "-f", "--", self.host]
        with tempfile.TemporaryFile() as err:   # a file, not a pipe: the master keeps it
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=self.timeout, check=False)
            except FileNotFoundError:
                shutil.rmtree(d, ignore_errors=True)
                raise KdumpyError(f"{self.ssh}: not found (install openssh-client)") from None
            except subprocess.TimeoutExpired:
                shutil.rmtree(d, ignore_errors=True)
                raise OSError(errno.ETIMEDOUT, f"ssh: no answer from {self.host} in "
                                               f"{self.timeout:.0f} s") from None
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if proc.returncode != 0 or not os.path.exists(path):
            shutil.rmtree(d, ignore_errors=True)
            raise _ssh_error(proc.returncode or 255, stderr, f"{self.describe()}: connect")
        self._control = path
        weakref.finalize(self, _close_master,
                         self._options_argv() + ["-o", f"ControlPath={path}", "-O", "exit",
                                                 "--", self.host], d)

    def run(self, command: str, what: str) -> str:
        """Run a remote command; a failure of ssh itself (exit 255: no route, refused,
        reset, timeout) is retried up to ``attempts`` times within ``retry_for`` seconds,
        waiting 1, 2, 4... s between (kdump-tools retries its ssh 16 times)."""
        deadline = time.monotonic() + self.retry_for
        delay = 1.0
        for attempt in range(1, self.attempts + 1):
            try:
                self.open_master()
                return self._run_once(command, what)
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.ETIMEDOUT) or \
                        attempt == self.attempts or time.monotonic() + delay > deadline:
                    raise
            self.sleep(delay)
            delay = min(delay * 2, 16.0)
        raise AssertionError("unreachable")

    def _run_once(self, command: str, what: str) -> str:
        try:
            proc = subprocess.run(self.argv(command), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except FileNotFoundError:
            raise KdumpyError(f"{self.ssh}: not found (install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise OSError(errno.ETIMEDOUT, f"ssh {what}: no answer from {self.host} in "
                                           f"{self.timeout:.0f} s") from None
        if proc.returncode != 0:
            raise _ssh_error(proc.returncode, proc.stderr, f"{self.describe()}: {what}")
        return proc.stdout

    def check(self) -> None:
        p = q(self.remote_path())
        self.run(f"umask 077 && mkdir -p -- {p} && test -w {p}", "mkdir")

    def free_bytes(self) -> int | None:
        try:
            out = self.run(f"df -Pk -- {q(self.remote_path())}", "df")
        except (OSError, KdumpyError):
            return None
        lines = out.strip().splitlines()
        fields = lines[-1].split() if len(lines) >= 2 else []
        return int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None

    def exists(self, rel: str) -> bool:
        try:
            self.run(f"test -e {q(self.remote_path(rel))}", "test")
        except OSError:
            return False
        return True

    def make_dir(self, rel: str) -> None:
        self.run(f"umask 077 && mkdir -- {q(self.remote_path(rel))}", "mkdir")

    def put(self, rel: str, data: bytes) -> str:
        final = self.remote_path(rel)
        tmp = final + INCOMPLETE_SUFFIX
        try:
            proc = subprocess.run(self.argv(f"umask 077 && cat > {q(tmp)}"), input=data,
                                  capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OSError(errno.ETIMEDOUT, f"ssh: writing {tmp} timed out") from None
        if proc.returncode != 0:
            raise _ssh_error(proc.returncode, proc.stderr.decode("utf-8", "replace"),
                             f"{self.describe(rel)}")
        self.finish(tmp, final)
        return self.describe(rel)

    def finish(self, tmp: str, final: str) -> None:
        """fsync and rename a completed remote file into place."""
        self.run(f"{{ sync -- {q(tmp)} 2>/dev/null || sync; }} && mv -- {q(tmp)} {q(final)}",
                 "rename")

    def dump_target(self, rel: str, *, flattened: bool = True) -> SshTarget:
        return SshTarget(self, rel)

    def discard(self, rel: str) -> None:
        try:
            self.run(f"rm -f -- {q(self.remote_path(rel))}", "rm")
        except (OSError, KdumpyError):
            pass

    def list_dirs(self) -> list[str]:
        return []   # retention is for local and NFS targets only

    def remove_tree(self, rel: str) -> None:
        raise KdumpyError("ssh: removing remote dumps is not supported")

    def list_files(self, depth: int = 4) -> list[str]:
        """Regular files below the directory (``find -maxdepth``), relative to it, for the
        crash index; names with a newline are skipped."""
        out = self.run(f"cd -- {q(self.remote_path())} && find . -maxdepth {int(depth)} "
                       "-type f", "find")
        return [ln[2:] for ln in out.splitlines() if ln.startswith("./")]

    def get(self, rel: str) -> bytes:
        """One small remote file's bytes (``cat``)."""
        try:
            proc = subprocess.run(self.argv(f"cat -- {q(self.remote_path(rel))}"),
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OSError(errno.ETIMEDOUT, f"ssh: reading {rel} timed out") from None
        if proc.returncode != 0:
            raise _ssh_error(proc.returncode, proc.stderr.decode("utf-8", "replace"),
                             self.describe(rel))
        return proc.stdout


def _ssh_error(rc: int, stderr: str, what: str) -> OSError:
    """An OSError for a failed remote command: ENOSPC when the server said so."""
    lines = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if "No space left on device" in (stderr or ""):
        return OSError(errno.ENOSPC, f"{what}: no space left on the server ({last})")
    if rc < 0:
        return OSError(errno.ECONNABORTED, f"{what}: ssh was killed by signal {-rc}")
    if rc == 255 and ("Host key verification failed" in (stderr or "") or
                      "Permission denied" in (stderr or "") or
                      "REMOTE HOST IDENTIFICATION HAS CHANGED" in (stderr or "")):
        # authentication or the pinned host key refused: retrying cannot help
        return OSError(errno.EACCES, f"{what}: ssh refused: {last}")
    if rc == 255:
        return OSError(errno.ECONNABORTED, f"{what}: ssh failed: {last or 'connection lost'}")
    return OSError(errno.EIO, f"{what}: remote command failed (exit {rc}){': ' + last if last else ''}")


class _SshPipe:
    """The ssh client's stdin as a stream for :class:`FlatSink`; a broken pipe becomes the
    remote side's reason (ENOSPC, lost connection)."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self.target.proc.stdin.write(data)  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            raise self.target.failure() from None

    def flush(self) -> None:
        try:
            self.target.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            raise self.target.failure() from None


class SshTarget:
    """One flattened dump streamed to ``REL.incomplete`` on the server, renamed on commit."""

    def __init__(self, directory: SshDirectory, rel: str) -> None:
        self.directory = directory
        self.final = directory.remote_path(rel)
        self.tmp = self.final + INCOMPLETE_SUFFIX
        self.dest = directory.describe(rel)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the ssh process
        try:
            self.proc = subprocess.Popen(
                directory.argv(f"umask 077 && cat > {q(self.tmp)}"), stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=self._stderr, bufsize=1 << 20)
        except FileNotFoundError:
            self._stderr.close()
            raise KdumpyError(f"{directory.ssh}: not found (install openssh-client)") from None
        self.sink = FlatSink(_SshPipe(self))  # type: ignore[arg-type]

    def failure(self) -> OSError:
        """Why the stream broke, once ssh has exited (killed after 30 s if it hangs)."""
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._stderr.seek(0)
        err = self._stderr.read().decode("utf-8", "replace")
        return _ssh_error(rc if rc is not None else 255, err or "connection lost",
                          self.directory.describe())

    def commit(self) -> str:
        """End marker, close, wait for ssh; rename remotely only if all of that succeeded."""
        self.sink.close()
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise self.failure() from None
        try:
            rc = self.proc.wait(timeout=self.directory.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise OSError(errno.ETIMEDOUT, f"{self.dest}: ssh did not finish") from None
        if rc != 0:
            raise self.failure()
        self._stderr.close()
        self.directory.finish(self.tmp, self.final)
        return self.dest

    def abandon(self) -> str | None:
        """Stop the stream; the server keeps ``.incomplete`` (no end marker)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.directory.describe() + self.tmp[len(self.directory.path):]
