"""The lab's cache key follows what ``kdumpy save`` really imports (lab/save_imports.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from lab.run import kdumpy_digest
from lab.save_imports import save_modules

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

RUN_SAVE = """
import sys
from kdumpy.cli import main
rc = main(["save", "-q", "-d", "1", sys.argv[1], sys.argv[2]])
assert rc == 0, rc
print("\\n".join(sorted(m for m in sys.modules if m == "kdumpy" or m.startswith("kdumpy."))))
"""


def test_every_module_save_imports_is_in_the_key(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from synth import make_vmcore
    core = make_vmcore(str(tmp_path / "vmcore"))
    r = subprocess.run([sys.executable, "-c", RUN_SAVE, core.path, str(tmp_path / "out")],
                       capture_output=True, text=True, check=True, env={"PYTHONPATH": str(SRC)})
    imported = set(r.stdout.split())
    static = save_modules(SRC)
    assert imported <= static, imported - static
    # the log and report modules are part of save (the log is written first) ...
    assert {"kdumpy.analysis.report", "kdumpy.kallsyms", "kdumpy.kernel_log",
            "kdumpy.capture.pipeline", "kdumpy.dump"} <= static
    # ... the setup side, the service and the library's entry points are not
    assert not {m for m in static if m.startswith("kdumpy.setup")}
    assert not {"kdumpy.service", "kdumpy.capture.save"} & static


def test_digest_moves_only_with_modules_save_imports(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SRC / "kdumpy", src / "kdumpy")
    before = kdumpy_digest(src=src)
    whole = kdumpy_digest(whole=True, src=src)
    (src / "kdumpy" / "setup" / "units.py").write_text("# edited\n", encoding="utf-8")
    assert kdumpy_digest(src=src) == before
    assert kdumpy_digest(whole=True, src=src) != whole
    with open(src / "kdumpy" / "analysis" / "report.py", "a") as f:
        f.write("# edited\n")
    assert kdumpy_digest(src=src) != before
