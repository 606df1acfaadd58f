"""Which of kdumpy's modules ``python -m kdumpy save`` imports: what keys a cached lab run.

A run whose guest runs only ``kdumpy save`` stays valid while no module that command can
import changes. The set is found from the sources, not kept by hand: starting at
``kdumpy.__main__``, every module's imports are followed (Python runs a module's body,
and its packages' ``__init__``, when it is first imported), with three rules:

- ``import`` statements inside functions count too (kdumpy imports heavy modules lazily),
  except in the command modules of ``kdumpy.cli``, where only the functions that run
  ``save`` (:data:`SAVE_FUNCTIONS`) count: ``info``'s or ``load``'s lazy imports never
  run during a save;
- ``if TYPE_CHECKING:`` blocks do not run;
- ``kdumpy.cli`` imports its command modules by name (``importlib``, from
  ``COMMAND_MODULES``), which is read from its source.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: The functions of the command modules that ``kdumpy save`` runs.
SAVE_FUNCTIONS = {"kdumpy.cli.dump_commands": {"cmd_save", "_run_save", "_save_dmesg",
                                               "_target", "_progress"}}
ENTRY = "kdumpy.__main__"


def module_file(src: Path, name: str) -> Path | None:
    """The source file of module ``name`` under ``src`` (a package's ``__init__.py``)."""
    base = src.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports_in(nodes: list[ast.stmt], module: str, is_package: bool, src: Path, *,
                into_functions: bool) -> set[str]:
    """Modules named by the import statements among ``nodes`` (and, with
    ``into_functions``, inside the functions they define)."""
    found: set[str] = set()
    stack: list[ast.AST] = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not into_functions:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            found.add(base)
            for a in node.names:        # "from pkg import mod" imports pkg.mod
                if module_file(src, f"{base}.{a.name}") is not None:
                    found.add(f"{base}.{a.name}")
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in found if m == "kdumpy" or m.startswith("kdumpy.")}


def _command_modules(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMMAND_MODULES"
                                                 for t in node.targets)):
            return {f"kdumpy.cli.{n}" for n in ast.literal_eval(node.value)}
    return set()


def save_modules(src: Path) -> set[str]:
    """Names of the kdumpy modules ``python -m kdumpy save`` can import, under ``src``."""
    seen: set[str] = set()
    todo = [ENTRY]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(src, name)
        if path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))   # parent packages
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        command_module = name.startswith("kdumpy.cli.") and name in _command_modules_of(src)
        deps = _imports_in(tree.body, name, is_package, src, into_functions=not command_module)
        if command_module:
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name in SAVE_FUNCTIONS.get(name, ()):
                    deps |= _imports_in(node.body, name, is_package, src, into_functions=True)
        if name == "kdumpy.cli":
            deps |= _command_modules(tree)
        todo.extend(deps - seen)
    return seen


def _command_modules_of(src: Path) -> set[str]:
    path = module_file(src, "kdumpy.cli")
    return _command_modules(ast.parse(path.read_text())) if path is not None else set()


def save_files(src: Path) -> list[Path]:
    """The source files of :func:`save_modules`, sorted."""
    files = (module_file(src, m) for m in save_modules(src))
    return sorted(p for p in files if p is not None)
