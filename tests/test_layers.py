"""The package's imports go down the layers of docs/design.md and close no circle.

Every ``import`` and ``from ... import`` of a factordiff module counts, those inside functions
included (an import hidden in a function is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import factordiff

PACKAGE = Path(factordiff.__file__).parent

# bottom up; a module may import from its own layer or a lower one
LAYERS = [
    {"errors", "factors", "config", "checkpoint", "chem"},
    {"data"},
    {"encoders", "diffusion"},
    {"models", "train"},
    {"fit", "edit", "regenerate", "probe", "translate"},
    {"evaluate"},
    {"report", "quickstart"},
    {"cli", "commands", "__main__"},
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The factordiff modules that ``path`` imports, wherever the import stands."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t not in modules and "." in t:
                t = t.rpartition(".")[0]
            if t in modules and t != name and t.startswith("factordiff"):
                found.add(t)
    return found


def layer(module: str) -> int:
    """The layer of ``factordiff.X...`` by X; the package root (the public door) stands on top."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module}: in no layer; add it to LAYERS here and in docs/design.md")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports(p, set(paths)) for m, p in paths.items()}


def test_imports_go_down_the_layers(graph):
    upward = [f"{m} -> {t}" for m, ts in graph.items() for t in ts if layer(t) > layer(m)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_circle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t) :] + [t]
            if t not in state and (circle := visit(t)):
                return circle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            circle = visit(m)
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A circle closed by an import inside a function is found (the checker is not blind to it)."""
    pkg = tmp_path / "factordiff"
    pkg.mkdir()
    (pkg / "a.py").write_text("from factordiff.b import x\n")
    (pkg / "b.py").write_text("def x():\n    from factordiff.a import y\n")
    mods = {"factordiff.a", "factordiff.b"}
    assert imports(pkg / "b.py", mods, pkg) == {"factordiff.a"}
    assert imports(pkg / "a.py", mods, pkg) == {"factordiff.b"}
