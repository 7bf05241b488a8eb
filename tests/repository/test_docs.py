"""The documentation cannot drift from the code: every ```python block of README.md and docs/*.md
runs (a block that cannot run here starts with ``# not run: <why>``), the docstrings' ``>>>``
examples pass doctest, and every public name has a docstring for the API reference (`make docs`
builds the site with warnings as errors; CI runs it)."""

import dataclasses
import doctest
import inspect
import importlib
import re
from pathlib import Path

import pytest

import tcvae_kernels as tk

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _blocks():
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in _FENCE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            out.append(pytest.param(m.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = _blocks()


def test_the_pages_have_code_blocks():
    assert len(BLOCKS) >= 5, [b.id for b in BLOCKS]


@pytest.mark.parametrize("code", [b for b in BLOCKS if not b.values[0].startswith("# not run:")])
def test_code_block_runs(code):
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


def test_blocks_not_run_say_why():
    for b in BLOCKS:
        first = b.values[0].splitlines()[0]
        if first.startswith("# not run"):
            assert re.match(r"# not run: \S.{10,}", first), b.id


@pytest.mark.parametrize("module", ["tcvae_kernels.api", "tcvae_kernels.loss", "tcvae_kernels.options", "tcvae_kernels.dataset_estimates",
                                    "tcvae_kernels.estimators"])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0


def test_docstring_examples_exist():
    finder = doctest.DocTestFinder()
    found = sum(len(t.examples) for m in ("tcvae_kernels.api", "tcvae_kernels.loss")
                for t in finder.find(importlib.import_module(m)))
    assert found >= 4


def test_every_public_name_has_a_docstring():
    missing = [n for n in tk.__all__ if not (getattr(tk, n).__doc__ or "").strip()]
    missing = [n for n in missing if n != "ESTIMATORS"]  # a tuple: documented by its #: comment
    assert not missing
    assert "#: Names of the estimators" in (ROOT / "tcvae_kernels" / "estimators.py").read_text()


def _public_functions():
    from tcvae_kernels import distributed
    from tcvae_kernels import data, dataset_estimates, metrics
    from tcvae_kernels.integrations import pythae

    out = [(f"tk.{n}", getattr(tk, n)) for n in tk.__all__ if inspect.isfunction(getattr(tk, n))]
    for mod in (dataset_estimates, metrics, data, distributed, pythae):
        out += [(f"{mod.__name__}.{n}", f) for n, f in vars(mod).items()
                if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == mod.__name__]
    return out


PUBLIC_FUNCTIONS = _public_functions()


@pytest.mark.parametrize("name,fn", PUBLIC_FUNCTIONS, ids=[n for n, _ in PUBLIC_FUNCTIONS])
def test_public_function_documents_its_arguments_and_result(name, fn):
    """Every public function's docstring has an Args section naming each parameter (the estimator
    options through their filled-in block) and a Returns section."""
    doc = inspect.getdoc(fn) or ""
    sig = inspect.signature(fn).parameters
    params = [n for n, p in sig.items() if p.kind is not p.VAR_KEYWORD]
    if any(p.kind is p.VAR_KEYWORD for p in sig.values()):  # **estimator_options: each option by name
        params += [f.name for f in dataclasses.fields(tk.EstimatorOptions)]
    if params:
        assert "Args:" in doc, name
        args = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
        missing = [p for p in params if not re.search(rf"(^|[\s,]){p}[,:]", args)]
        assert not missing, f"{name}: {missing} not documented"
    assert "Returns:" in doc, name


def test_the_front_page_performance_table_is_the_guide_s():
    """README's performance table is an excerpt of docs/performance.md's (both from bench/RESULTS.md):
    the same rows, so the two cannot drift."""
    def rows(text):
        return [l for l in text.splitlines() if re.match(r"\| \d+ × \d+ \|", l)]

    readme, guide = rows((ROOT / "README.md").read_text()), rows((ROOT / "docs" / "performance.md").read_text())
    assert len(readme) >= 3 and readme == guide
