"""The package's import graph, read from its source (no import runs): test_layout (no cycles) and
test_packaging (the wheel ships only what the package's entry points import)."""

from __future__ import annotations

import ast
from pathlib import Path

import tcvae_kernels

ROOT = Path(tcvae_kernels.__file__).parent
EXTENSIONS = {"tcvae_kernels._C": None}  # compiled (setup.py): a leaf of the import graph


def package_modules(root: Path = ROOT, extensions=EXTENSIONS) -> dict[str, Path | None]:
    """Dotted name -> file of every module of the package at ``root`` (a package is its __init__.py)."""
    out = dict(extensions)
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, modules: dict[str, Path | None]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its code (module level or inside a
    function): ``import a.b``, ``from a import b`` (b a module, else a), relative forms resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph(modules: dict[str, Path | None]) -> dict[str, set[str]]:
    """Module -> the modules it imports (every import, deferred ones too)."""
    return {name: imports(name, path, modules) if path else set() for name, path in modules.items()}


def reached(graph: dict[str, set[str]], roots) -> set[str]:
    """The modules importing ``roots`` can load: the roots, what they import, and so on (with the
    packages above each, which a submodule's import runs first)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)]
        todo += [m for m in [*graph.get(name, ()), *parents] if m in graph]
    return seen
