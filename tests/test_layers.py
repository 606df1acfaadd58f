"""The package's layers: nothing imports a layer above it, and no module imports one that
imports it back (counting imports inside functions, which run later but run)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: layer of each top-level part of the package, lowest first
LAYERS = [{"errors", "taint", "formats"}, {"arch"}, {"dump"},
          {"kallsyms", "kernel_log", "kernel"}, {"capture", "analysis"}, {"setup"},
          {"service"}, {"cli", "__main__", "__init__"}]


def _modules() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in (SRC / "kdumpy").rglob("*.py"):
        rel = p.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        name = ".".join(parts)
        package = parts if rel.name == "__init__" else parts[:-1]
        deps: set[str] = set()
        stack: list[ast.AST] = [ast.parse(p.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                stack.extend(node.orelse)          # type-only imports never run
                continue
            stack.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(list(package[:len(package) - node.level + 1]) + ([base] if base else []))
                deps.add(base)
                deps.update(f"{base}.{a.name}" for a in node.names)
        out[name] = {d for d in deps if d.startswith("kdumpy.") and d != name}
    known = set(out)
    return {m: {d for d in ds if d in known and not m.startswith(d + ".")} for m, ds in out.items()}


def _layer(name: str) -> int:
    top = name.split(".")[1] if name.count(".") else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_no_module_imports_one_that_imports_it_back():
    mods = _modules()
    for start in mods:
        seen: set[str] = set()
        todo = list(mods[start])
        while todo:
            m = todo.pop()
            assert m != start, f"{start} imports itself back"
            if m not in seen:
                seen.add(m)
                todo.extend(mods.get(m, ()))


def test_nothing_imports_from_a_layer_above():
    bad = [(m, d) for m, deps in _modules().items() for d in deps
           if _layer(d) > _layer(m)]
    assert not bad, bad
