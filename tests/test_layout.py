"""The package's layout: one path per module, no import hooks, no import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tcvae_kernels

ROOT = Path(tcvae_kernels.__file__).parent


EXTENSIONS = {"tcvae_kernels._C": None}  # compiled (setup.py): a leaf of the import graph


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    out = dict(EXTENSIONS)
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
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


def test_no_import_cycle():
    """No module of tcvae_kernels reaches itself through imports (deferred imports inside functions
    count too: they are how cycles used to be hidden). The parent packages a submodule import runs
    are not edges (every module would then reach tcvae_kernels/__init__.py)."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) if path else set() for name, path in modules.items()}
    assert graph["tcvae_kernels.dispatch"], "the graph is empty: the import parser is broken"
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail():
    """The parser sees an edge that would close a cycle (dispatch -> testing, testing -> backends)."""
    modules = _modules()
    assert "tcvae_kernels.testing" in _imports("tcvae_kernels.dispatch", modules["tcvae_kernels.dispatch"], modules)
    assert "tcvae_kernels.backends.base" in _imports("tcvae_kernels.testing", modules["tcvae_kernels.testing"], modules)


def test_no_module_getattr_hook():
    """No module resolves names lazily (``def __getattr__`` at module level): each name lives in
    one module and is imported from there."""
    hooks = [str(p.relative_to(ROOT)) for p in _modules().values()
             if p and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
    assert not hooks


def test_import_leaves_meta_path_untouched():
    code = ("import sys; before = list(sys.meta_path); import tcvae_kernels, tcvae_kernels.evaluation.metrics; "
            "assert sys.meta_path == before, sys.meta_path")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("old", ["tcvae_kernels.ops", "tcvae_kernels.metrics", "tcvae_kernels.check"])
def test_one_path_per_module(old):
    """Paths from before the backends/, evaluation/, tools/ layout are gone (the package was never
    released with them); ``tk.metrics``, ``tk.data``, ``tk.evaluate`` are attributes of the package."""
    with pytest.raises(ModuleNotFoundError):
        __import__(old)


def test_make_help_names_real_targets():
    """Every target `make help` lists is a rule of the Makefile, and every phony target is listed."""
    import re

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    helped = re.findall(r'@echo "make ([\w-]+)', makefile)
    rules = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, flags=re.M).group(1).split())
    assert helped and set(helped) <= rules, set(helped) - rules
    assert phony - {"all", "help", "venv"} <= set(helped), phony - set(helped)


def test_every_result_type_of_the_public_api_is_exported():
    """The types that public functions return and that the losses keep in ``.last`` (read from
    their ``self.last: T | None`` annotations) are all in ``tcvae_kernels.__all__``."""
    import inspect
    import typing

    import tcvae_kernels as tk

    results = set()
    for name in tk.__all__:
        obj = getattr(tk, name)
        if inspect.isfunction(obj):
            ret = typing.get_type_hints(obj).get("return")
            results.update(t.__name__ for t in (typing.get_args(ret) or (ret,))
                           if isinstance(t, type) and t.__module__.startswith("tcvae_kernels"))
    for node in ast.walk(ast.parse((ROOT / "loss.py").read_text())):
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "self.last":
            results.add(ast.unparse(node.annotation).split(" | ")[0])
    assert {"Decomposition", "BetaTCVAETerms", "BetaVAETerms", "FactorVAETerms"} <= results  # the scan works
    assert results <= set(tk.__all__), results - set(tk.__all__)
