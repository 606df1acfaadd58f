"""Loading and unloading the capture kernel: ``kexec_file_load(2)`` first, kexec-tools after.

Facts relied on (``kernel/kexec_file.c`` ``SYSCALL_DEFINE5(kexec_file_load, ...)``,
``include/uapi/linux/kexec.h``, kexec-tools ``kexec/kexec.c``):

* ``kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)``; syscall numbers:
  x86_64 320, aarch64/riscv64/loongarch64 294, ppc64 382, s390x 381.
* ``KEXEC_FILE_UNLOAD`` 1, ``KEXEC_FILE_ON_CRASH`` 2 (the panic slot), ``KEXEC_FILE_NO_INITRAMFS``
  4 (``initrd_fd`` ignored). ``cmdline_len`` counts the terminating NUL, and the byte at
  ``cmdline_len - 1`` must be NUL (else EINVAL). Unloading passes ``-1, -1, 0, NULL`` with
  ``UNLOAD|ON_CRASH``. A new load replaces a loaded image.
* Errors: ENOSYS without CONFIG_KEXEC_FILE; ENOEXEC when no file loader knows the image;
  EPERM without CAP_SYS_BOOT, with ``kernel.kexec_load_disabled``, or for an unsigned image
  under lockdown; EKEYREJECTED/EBADMSG/ENOKEY/ENOPKG when a required signature does not
  verify (CONFIG_KEXEC_SIG_FORCE); EADDRNOTAVAIL/ENOMEM when nothing is reserved or the
  images do not fit; EBUSY while another kexec operation runs.
* Under lockdown ``kexec_load`` (what ``kexec -p -c`` uses) is refused outright
  (``LOCKDOWN_KEXEC``), so falling back to kexec-tools only helps on an unlocked kernel.
  An image loaded through one syscall is unloaded through the same one (Secure Boot makes
  the other fail; openSUSE/kdump #10).
* kexec-tools: ``-p`` loads into the panic slot, ``-c``/``--kexec-syscall`` forces
  ``kexec_load``, ``-u`` unloads; ``--initrd=``, ``--append=``; it computes ``elfcorehdr=``.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kdumpy import arch as arches
from kdumpy.errors import KdumpyError
from kdumpy.setup import state
from kdumpy.setup.paths import SystemPaths

SYS_KEXEC_FILE_LOAD = {**{name: mod.SYS_KEXEC_FILE_LOAD for name, mod in arches.ARCHES.items()},
                       "aarch64": 294, "riscv64": 294, "loongarch64": 294,
                       "ppc64le": 382, "ppc64": 382, "s390x": 381}
KEXEC_FILE_UNLOAD = 1
KEXEC_FILE_ON_CRASH = 2
KEXEC_FILE_NO_INITRAMFS = 4

METHOD_FILE = "kexec_file_load"
METHOD_KEXEC = "kexec_load"
METHODS = ("auto", METHOD_FILE, METHOD_KEXEC)

#: kexec_file_load errors after which kexec-tools' kexec_load may still succeed.
FALLBACK_ERRNOS = {E.ENOSYS, E.ENOEXEC, E.EPERM, E.EKEYREJECTED, E.EBADMSG, E.ENOKEY,
                   E.ENOPKG}

#: (nr, kernel_fd, initrd_fd, cmdline_len, cmdline, flags) -> None; raises OSError.
SyscallFn = Callable[[int, int, int, int, bytes | None, int], None]
#: argv -> CompletedProcess (stdout/stderr text)
RunFn = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class KexecError(KdumpyError):
    """Loading or unloading failed; the message says why and what to do."""


def libc_syscall() -> SyscallFn:
    """The C library's ``syscall(2)`` wrapped to raise OSError with errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long

    def call(nr: int, kernel_fd: int, initrd_fd: int, cmdline_len: int, cmdline: bytes | None,
             flags: int) -> None:
        buf = ctypes.c_char_p(cmdline) if cmdline is not None else None
        r = fn(ctypes.c_long(nr), ctypes.c_int(kernel_fd), ctypes.c_int(initrd_fd),
               ctypes.c_ulong(cmdline_len), buf, ctypes.c_ulong(flags))
        if r == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return call


def run_argv(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def explain_errno(err: int) -> str:
    """What a kexec_file_load errno means for the user, and the fix."""
    return {
        E.ENOSYS: "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE is off)",
        E.ENOEXEC: "no kexec_file_load loader accepts this kernel image (x86_64 needs a "
                   "bzImage/vmlinuz, not a vmlinux ELF)",
        E.EPERM: "not permitted: kdumpy needs root (CAP_SYS_BOOT); or "
                 "kernel.kexec_load_disabled is 1; or the image is unsigned and the kernel "
                 "is locked down (Secure Boot): use a kernel signed by a key the kernel trusts",
        E.EKEYREJECTED: "the image's signature was rejected: sign it with a key in the "
                        "kernel's keyrings (the distribution's own kernels are)",
        E.EBADMSG: "the image's signature is malformed",
        E.ENOKEY: "the image is signed by a key the kernel does not know",
        E.ENOPKG: "the signature's algorithm is not built into this kernel",
        E.EADDRNOTAVAIL: "no room in the crashkernel= reservation (is memory reserved? see "
                         "`kdumpy status`)",
        E.ENOMEM: "the kernel and initramfs do not fit in the crashkernel= reservation: "
                  "increase it (`kdumpy estimate`) or use a smaller initramfs",
        E.EBUSY: "another kexec load or unload is running; try again",
        E.EINVAL: "the kernel rejected the arguments (command line too long, or the image "
                  "is not a kernel)",
        E.ENOENT: "file not found",
    }.get(err, os.strerror(err))


@dataclass
class LoadResult:
    method: str                       # METHOD_FILE or METHOD_KEXEC
    kernel: str
    initrd: str | None
    cmdline: str
    notes: list[str] = field(default_factory=list)


class Kexec:
    """Load and unload the panic kernel; ``syscall`` and ``run`` are injectable for tests."""

    def __init__(self, paths: SystemPaths, *, arch: str | None = None,
                 syscall: SyscallFn | None = None, run: RunFn | None = None,
                 kexec_binary: str = "kexec") -> None:
        self.paths = paths
        self.arch = arch or os.uname().machine
        self._syscall = syscall
        self.run = run or run_argv
        self.kexec_binary = kexec_binary

    @property
    def syscall(self) -> SyscallFn:
        if self._syscall is None:
            self._syscall = libc_syscall()
        return self._syscall

    # -- load -------------------------------------------------------------------------------
    def load(self, kernel: str, initrd: str | None, cmdline: str, *,
             method: str = "auto", lockdown: str | None = None) -> LoadResult:
        """Load ``kernel`` (+ ``initrd``) with ``cmdline`` into the panic slot.

        ``method`` ``auto`` tries kexec_file_load, then kexec-tools' kexec_load when the
        error is one kexec_load can get past (and the kernel is not locked down).
        """
        if method not in METHODS:
            raise KexecError(f"unknown load method {method!r} ({', '.join(METHODS)})")
        for path, what in ((kernel, "kernel"), (initrd, "initrd")):
            if path is not None and not os.path.isfile(path):
                raise KexecError(f"{path}: {what} image not found")
        notes: list[str] = []
        if method in ("auto", METHOD_FILE):
            try:
                self.file_load(kernel, initrd, cmdline)
                return self._loaded(LoadResult(METHOD_FILE, kernel, initrd, cmdline, notes))
            except OSError as exc:
                why = f"kexec_file_load: {os.strerror(exc.errno or 0)}: {explain_errno(exc.errno or 0)}"
                locked = lockdown not in (None, "none")
                if method == METHOD_FILE or exc.errno not in FALLBACK_ERRNOS:
                    raise KexecError(why) from None
                if locked:
                    raise KexecError(f"{why}; kexec_load is no fallback under lockdown "
                                     f"({lockdown})") from None
                notes.append(f"{why}; falling back to kexec-tools (kexec_load)")
        self.kexec_tools_load(kernel, initrd, cmdline)
        return self._loaded(LoadResult(METHOD_KEXEC, kernel, initrd, cmdline, notes))

    def file_load(self, kernel: str, initrd: str | None, cmdline: str) -> None:
        nr = SYS_KEXEC_FILE_LOAD.get(self.arch)
        if nr is None:
            raise OSError(E.ENOSYS, f"no kexec_file_load syscall number known for {self.arch}")
        raw = cmdline.encode() + b"\0"
        flags = KEXEC_FILE_ON_CRASH | (0 if initrd else KEXEC_FILE_NO_INITRAMFS)
        kfd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC)
        ifd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC) if initrd else -1
        try:
            self.syscall(nr, kfd, ifd, len(raw), raw, flags)
        finally:
            os.close(kfd)
            if ifd >= 0:
                os.close(ifd)

    def kexec_tools_load(self, kernel: str, initrd: str | None, cmdline: str) -> None:
        argv = [self.kexec_binary, "-p", "--kexec-syscall"]
        if initrd:
            argv.append(f"--initrd={initrd}")
        argv += [f"--append={cmdline}", kernel]
        self._run_kexec(argv, "load")

    def _run_kexec(self, argv: list[str], what: str) -> None:
        try:
            proc = self.run(argv)
        except FileNotFoundError:
            raise KexecError(f"{argv[0]}: not found; install kexec-tools for the kexec_load "
                             "fallback") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise KexecError(f"kexec-tools {what} failed (exit {proc.returncode})"
                             + (f": {detail[-1]}" if detail else ""))

    def _loaded(self, res: LoadResult) -> LoadResult:
        try:
            state.write_load_record(self.paths, {"method": res.method, "kernel": res.kernel,
                                                 "initrd": res.initrd, "cmdline": res.cmdline})
        except OSError as exc:
            res.notes.append(f"could not record how it was loaded ({exc.strerror}); unload "
                             "will try kexec_file_load first")
        return res

    # -- unload -----------------------------------------------------------------------------
    def unload(self, method: str | None = None) -> str:
        """Unload the panic kernel the way it was loaded (recorded at load time); returns
        the method used."""
        if method in (None, "auto"):
            rec = state.read_load_record(self.paths)
            method = rec.get("method") if rec else None
        if method == METHOD_KEXEC:
            self._run_kexec([self.kexec_binary, "-p", "-u", "--kexec-syscall"], "unload")
        else:
            nr = SYS_KEXEC_FILE_LOAD.get(self.arch)
            try:
                if nr is None:
                    raise OSError(E.ENOSYS, "no syscall number")
                self.syscall(nr, -1, -1, 0, None, KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH)
                method = METHOD_FILE
            except OSError as exc:
                if method == METHOD_FILE or exc.errno not in (E.ENOSYS,):
                    raise KexecError(f"kexec_file_load unload: {os.strerror(exc.errno or 0)}: "
                                     f"{explain_errno(exc.errno or 0)}") from None
                self._run_kexec([self.kexec_binary, "-p", "-u", "--kexec-syscall"], "unload")
                method = METHOD_KEXEC
        state.clear_load_record(self.paths)
        return method
