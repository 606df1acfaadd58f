"""The fuzz harness shared by the CI test and ``bench/fuzz_long.py``: cases (a mutation, a
command) run in forked children under limits, and classified."""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks import check_cut_info, check_stdout, compare_copy  # noqa: E402
from forkrun import run_forked  # noqa: E402
from mutations import CLASSES, BaseFacts, Mutation, mutate  # noqa: E402

#: imported once here, so that no forked child spends its time importing them
PREIMPORT = ("kdumpy.cli", "kdumpy.cli.dump_commands", "kdumpy.cli.analysis_commands",
             "kdumpy.analysis", "kdumpy.analysis.report", "kdumpy.analysis.kernel_log",
             "kdumpy.analysis.kallsyms", "kdumpy.capture.pipeline", "kdumpy.capture.policy",
             "kdumpy.capture.filter", "kdumpy.capture.progress", "kdumpy.capture.targets",
             "kdumpy.dump", "kdumpy.formats.flattened", "kdumpy.capture.elf_gdb")
for _m in PREIMPORT:
    __import__(_m)

TIMEOUT = 120.0
AS_LIMIT = 6 << 30


@dataclass
class Failure:
    cls: str
    seed: int
    cmd: str
    what: str
    why: str

    def reproducer(self) -> str:
        return (f"tests/fuzz/harness.py: mutate({self.cls!r}, {self.seed}) [{self.what}] | "
                f"kdumpy {self.cmd}: {self.why}")


@dataclass
class Tally:
    runs: int = 0
    outcomes: Counter = field(default_factory=Counter)   # (cmd, rc) -> count
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


def commands(m: Mutation, seed: int, path: str, out: str) -> list[tuple[str, list[str]]]:
    """The commands a case runs: info and dmesg always, report on one case in three, a
    conversion and a save on one in twelve (they read every page)."""
    cmds = [("info", ["info", "--json", path]), ("dmesg", ["dmesg", path])]
    if seed % 3 == 0:
        cmds.append(("report", ["report", "--no-backtrace", "--json", path]))
    if seed % 12 == 5:
        fmt = ("kdump", "elf", "flat")[seed // 12 % 3]
        cmds.append(("convert", ["convert", "-q", "-f", fmt, path, out + ".conv"]))
    if seed % 12 == 11:
        cmds.append(("save", ["save", "-q", "--no-dmesg", "-d", "31", path, out + ".save"]))
    return cmds


def _child(argv: list[str], cmd: str, out_file: str | None, facts_paths: tuple[str, str],
           m: Mutation, mutated: str, max_bytes: int) -> dict[str, Any]:
    sys.stdout = open(1, "w", closefd=False)   # noqa: SIM115 - the child's own fds
    sys.stderr = open(2, "w", closefd=False)   # noqa: SIM115
    from kdumpy.cli import main
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    sys.stdout.flush()
    sys.stderr.flush()
    verdict: dict[str, Any] = {"rc": rc, "problems": []}
    if rc == 0 and out_file is not None and os.path.exists(out_file):
        base = facts_paths[0] if m.base == "kdump" else facts_paths[1]
        try:
            verdict["problems"] = compare_copy(out_file, base, mutated, m.explained,
                                               max_bytes=max_bytes)
        except Exception as exc:  # noqa: BLE001 - a copy kdumpy cannot read back
            verdict["problems"] = [f"the copy cannot be read back: {type(exc).__name__}: "
                                   f"{exc}"]
    return verdict


def run_case(facts: BaseFacts, facts_paths: tuple[str, str], cls: str, seed: int,
             work: Path, tally: Tally) -> None:
    m = mutate(cls, seed, facts)
    src = work / f"{cls}-{seed}.{'flat' if m.base == 'flat' else 'kdump'}"
    src.write_bytes(m.data)
    out = str(work / f"{cls}-{seed}-out")
    max_bytes = 2 * max(len(facts.kdump), len(facts.flat)) + (4 << 20)
    try:
        for cmd, argv in commands(m, seed, str(src), out):
            out_file = argv[-1] if cmd in ("convert", "save") else None
            so, se = out + ".stdout", out + ".stderr"
            res = run_forked(lambda: _child(argv, cmd, out_file, facts_paths, m, str(src),
                                            max_bytes),
                             timeout=TIMEOUT, as_bytes=AS_LIMIT, fsize_bytes=max_bytes,
                             stdout=so, stderr=se)
            tally.runs += 1
            tally.seconds += res.seconds
            stderr = Path(se).read_bytes().decode("utf-8", "replace")
            stdout = Path(so).read_bytes()
            why = None
            if res.timed_out:
                why = f"no answer in {TIMEOUT:.0f} s"
            elif res.signal is not None:
                why = f"killed by signal {res.signal}"
            elif res.verdict is None or "harness_error" in (res.verdict or {}):
                why = f"harness: {(res.verdict or {}).get('harness_error', 'no verdict')}"
            elif "internal error" in stderr or "Traceback" in stderr:
                why = "internal error: " + stderr.strip().splitlines()[-1][:300]
            else:
                rc = res.verdict["rc"]
                tally.outcomes[(cmd, rc)] += 1
                problems = list(res.verdict["problems"])
                if rc == 0 and cmd in ("info", "dmesg", "report"):
                    problems += check_stdout(cmd, stdout)
                if rc == 0 and cmd == "info" and "cut at" in m.what:
                    problems += check_cut_info(stdout)
                if rc not in (0, 1, 3):
                    problems.append(f"exit status {rc}")
                if len(stdout) > (64 << 20):
                    problems.append(f"{len(stdout)} bytes on stdout")
                if problems:
                    why = "; ".join(problems)
            if why is not None:
                tally.failures.append(Failure(cls, seed, cmd, m.what, why))
            for p in (so, se, out + ".conv", out + ".save", out + ".conv.incomplete",
                      out + ".save.incomplete"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
    finally:
        src.unlink()


def run_many(facts: BaseFacts, facts_paths: tuple[str, str], cases: list[tuple[str, int]],
             work: Path, workers: int = 2) -> Tally:
    """Run ``cases`` with ``workers`` processes (each a fork of this one, which forks again
    per command); the tallies are merged."""
    import json
    import multiprocessing
    tally = Tally()
    if workers <= 1:
        for cls, seed in cases:
            run_case(facts, facts_paths, cls, seed, work, tally)
        return tally
    chunks = [cases[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def worker(chunk: list[tuple[str, int]]) -> None:
        t = Tally()
        for cls, seed in chunk:
            run_case(facts, facts_paths, cls, seed, work, t)
        results.put(json.dumps({"runs": t.runs, "seconds": t.seconds,
                                "outcomes": [[k[0], k[1], v] for k, v in t.outcomes.items()],
                                "failures": [f.__dict__ for f in t.failures]}))
    procs = [ctx.Process(target=worker, args=(c,)) for c in chunks]
    for p in procs:
        p.start()
    for _ in procs:
        r = json.loads(results.get(timeout=7200))
        tally.runs += r["runs"]
        tally.seconds += r["seconds"]
        for cmd, rc, v in r["outcomes"]:
            tally.outcomes[(cmd, rc)] += v
        tally.failures += [Failure(**f) for f in r["failures"]]
    for p in procs:
        p.join()
    return tally


__all__ = ["CLASSES", "BaseFacts", "Tally", "run_many", "run_case"]
