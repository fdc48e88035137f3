"""The packages import one way (models <- analysis <- reports <- ui <- dashboard.py) and no
module imports itself back through others, counting imports inside functions too (a cycle
hidden by a local import is still a cycle)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "analysis", "reports", "ui")
# a package may import only the packages before it in this order
RANK = {name: i for i, name in enumerate(PACKAGES)}


def project_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_packages_import_downwards_only():
    wrong = []
    for name, deps in graph().items():
        for dep in deps:
            a, b = name.split(".")[0], dep.split(".")[0]
            if RANK[b] > RANK[a]:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    g = graph()
    seen, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for dep in sorted(g.get(node, ())):
            if dep in g:
                visit(dep)
        on_path.pop()

    for node in sorted(g):
        visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
