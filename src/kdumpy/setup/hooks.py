"""Pre- and post-save hooks: the executables of a directory, run in name order.

Like ``run-parts`` (and kdump-utils' ``/etc/kdump/pre.d``): each regular, executable file
whose name does not start with ``.`` and is not an editor or package-manager leftover
(``~``, ``.dpkg-*``, ``.rpmnew``, ``.rpmsave``, ``.disabled``) runs with an argv list, never
through a shell, with a timeout; information goes in through arguments and ``KDUMPY_*``
environment variables.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

SKIP_SUFFIXES = ("~", ".rpmnew", ".rpmsave", ".rpmorig", ".disabled", ".swp")


@dataclass
class HookResult:
    path: str
    returncode: int | None            # None: could not run or timed out
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def hook_programs(directory: str) -> tuple[list[str], list[str]]:
    """(programs to run in order, notes about skipped files)."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"{directory}: {exc.strerror}"]
    progs, notes = [], []
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(".") or name.endswith(SKIP_SUFFIXES) or ".dpkg-" in name:
            continue
        if not os.path.isfile(path):
            continue
        if not os.access(path, os.X_OK):
            notes.append(f"{path}: not executable, skipped")
            continue
        progs.append(path)
    return progs, notes


def run_hooks(directory: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
              timeout: float = 300, log: Callable[[str], None] = lambda s: None,
              stop_on_failure: bool = False) -> list[HookResult]:
    """Run every hook of ``directory`` as ``[hook, *args]``; returns each one's result."""
    progs, notes = hook_programs(directory)
    for n in notes:
        log(n)
    full_env = dict(os.environ)
    full_env.update(env or {})
    results = []
    for prog in progs:
        log(f"running hook {prog}")
        try:
            proc = subprocess.run([prog, *args], env=full_env, timeout=timeout,
                                  stdin=subprocess.DEVNULL, check=False)
            res = HookResult(prog, proc.returncode,
                             None if proc.returncode == 0 else f"exit status {proc.returncode}")
        except subprocess.TimeoutExpired:
            res = HookResult(prog, None, f"timed out after {timeout:.0f} s")
        except OSError as exc:
            res = HookResult(prog, None, exc.strerror or str(exc))
        if not res.ok:
            log(f"hook {prog} failed: {res.error}")
        results.append(res)
        if stop_on_failure and not res.ok:
            break
    return results
