"""The package's layout: no import hooks, no import cycles."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from import_graph import ROOT, import_graph
from import_graph import package_modules as _modules


def _cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The import cycles among ``modules``, each as the list of modules around it."""
    graph = import_graph(modules)
    assert any(graph.values()), "the graph is empty: the import parser is broken"
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
    return cycles


def test_no_import_cycle():
    """No module of tcvae_kernels reaches itself through imports (deferred imports inside functions
    count too: they are how cycles used to be hidden). The parent packages a submodule import runs
    are not edges (every module would then reach tcvae_kernels/__init__.py)."""
    cycles = _cycles(_modules())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail(tmp_path):
    """A package whose cycle is hidden in a deferred, relative import (a -> sub.b at module level,
    sub.b -> a inside a function) is caught; without that import it is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    assert _cycles(_modules(pkg, {})) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert _cycles(_modules(pkg, {})) == []


def test_no_module_getattr_hook():
    """No module resolves names lazily (``def __getattr__`` at module level): each name lives in
    one module and is imported from there."""
    hooks = [str(p.relative_to(ROOT)) for p in _modules().values()
             if p and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
    assert not hooks


def test_import_leaves_meta_path_untouched():
    code = ("import sys; before = list(sys.meta_path); import tcvae_kernels; tcvae_kernels.metrics; "
            "assert sys.meta_path == before, sys.meta_path")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_make_help_names_real_targets():
    """Every target `make help` lists is a rule of the Makefile, and every phony target is listed."""
    import re

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
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
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) in ("self.last", "last"):
            results.add(ast.unparse(node.annotation).split(" | ")[0])
    assert {"Decomposition", "BetaTCVAETerms", "BetaVAETerms", "FactorVAETerms"} <= results  # the scan works
    assert results <= set(tk.__all__), results - set(tk.__all__)


def _layout_block() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "contributing.md").read_text()
    return re.search(r"## Layout\n\n```\n(.*?)```", text, re.S).group(1)


def test_the_layout_map_is_the_tree():
    """docs/contributing.md's layout map names every module of the package, every script of python/
    and bench/ and every folder of tests/, and every file or folder it names exists (under the
    top-level folder it is listed in)."""
    repo = Path(__file__).resolve().parents[2]
    block = _layout_block()
    named = set(re.findall(r"[\w.]+\.(?:py|h|cu|cpp|sh|md)\b|\w+/", block))
    for mod in [*(repo / "tcvae_kernels").rglob("*.py"), *(repo / "python").glob("*.py"), *(repo / "bench").glob("*.py"),
                *(repo / "bench").glob("*.sh")]:
        assert mod.name in named, f"{mod.relative_to(repo)} is missing from the layout map"
    for d in (repo / "tests").iterdir():
        if d.is_dir() and not d.name.startswith((".", "_")):
            assert f"{d.name}/" in named, f"tests/{d.name}/ is missing from the layout map"
    top = None
    for line in block.splitlines():
        head = re.match(r"([\w./]+)/\s", line)
        if head and not line.startswith(" "):
            top = repo / head.group(1)
            assert top.is_dir(), head.group(1)
        for name in re.findall(r"(?<![\w/.])([\w]+\.(?:py|h|cu|cpp|sh|md))\b", line):
            where = top if top is not None else repo
            assert list(where.rglob(name)) or (repo / name).exists(), f"the layout map names {name}, which is not there"
