"""The public API's static types: mypy passes on tests/estimates/typecheck/usage_ok.py and reports exactly the
errors marked on tests/estimates/typecheck/usage_bad.py (a misspelled option, a wrong type, a wrong return
type), so the signatures a type checker sees cannot rot; the typed mirror of EstimatorOptions
(EstimatorKwargs) lists the same fields, and every entry point takes them through it."""

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import tcvae_kernels as tk

HERE = Path(__file__).resolve().parent


def _mypy(paths: list[Path], cache: Path) -> dict[str, dict[int, set[str]]]:
    """{file name: {line: {error codes}}} mypy reports for ``paths``, checked in one run (errors in
    imported modules are not its business)."""
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--show-error-codes", "--no-error-summary",
         "--python-version=3.11", f"--cache-dir={cache}", *map(str, paths)],
        capture_output=True, text=True, cwd=HERE.parents[1], timeout=600,
        env={**os.environ, "MYPYPATH": str(HERE.parents[1])})
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
    errors: dict[str, dict[int, set[str]]] = {p.name: {} for p in paths}
    for m in re.finditer(r"^(?:.*/)?([\w.]+\.py):(\d+): error: .*\[([\w-]+)\]$", run.stdout, re.M):
        if m.group(1) in errors:
            errors[m.group(1)].setdefault(int(m.group(2)), set()).add(m.group(3))
    assert any(errors.values()) or run.returncode == 0, run.stdout[-3000:]  # mypy failed but no line was parsed
    return errors


USAGE = [HERE / "typecheck" / "usage_ok.py", HERE / "typecheck" / "usage_bad.py"]


@pytest.fixture(scope="session")
def mypy_errors(run_once, tmp_path_factory):
    """Both usage files in one mypy run, once per test run for every xdist worker (conftest.run_once)."""
    pytest.importorskip("mypy")
    cache = tmp_path_factory.mktemp("mypy-cache")
    got = run_once("mypy", lambda: {f: {str(n): sorted(c) for n, c in e.items()} for f, e in _mypy(USAGE, cache).items()})
    return {f: {int(n): set(c) for n, c in e.items()} for f, e in got.items()}


# mypy reads torch's stubs cold on a fresh clone (~35 s): the slow tier
@pytest.mark.slow
def test_the_usage_file_type_checks(mypy_errors):
    assert mypy_errors["usage_ok.py"] == {}


@pytest.mark.slow
def test_misuse_is_caught(mypy_errors):
    path = HERE / "typecheck" / "usage_bad.py"
    want = {n: {m.group(1)} for n, line in enumerate(path.read_text().splitlines(), 1)
            if (m := re.search(r"# E: ([\w-]+)$", line))}
    assert len(want) >= 8
    assert mypy_errors["usage_bad.py"] == want


@pytest.mark.slow
def test_the_development_install_resolves_for_type_checkers(tmp_path):
    """mypy, run outside the source tree with no MYPYPATH, finds tcvae_kernels in this environment and
    its types (the Makefile's editable install is a path entry, not an import hook it cannot follow)."""
    pytest.importorskip("mypy")
    (tmp_path / "use.py").write_text("import tcvae_kernels as tk\nreveal_type(tk.BetaTCVAELoss().last)\n")
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    run = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--python-version=3.11",
                          f"--cache-dir={tmp_path / 'cache'}", "use.py"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0 and "tcvae_kernels.loss.BetaTCVAETerms" in run.stdout, run.stdout[-2000:]


def test_typed_mirrors_list_the_options():
    fields = {f.name: f.type for f in dataclasses.fields(tk.EstimatorOptions)}
    kwargs = {k: getattr(v, "__forward_arg__", v) for k, v in tk.EstimatorKwargs.__annotations__.items()}
    assert kwargs == fields  # same names, same annotations (as written), same order
    assert not tk.EstimatorKwargs.__required_keys__  # every option has a default
    for fn in (tk.log_qz, tk.decompose, tk.self_share, tk.total_correlation, tk.grouped_decompose,
               tk.BetaTCVAELoss.__init__, tk.HFVAELoss.__init__):  # every entry point: options= and **Unpack
        params = inspect.signature(fn).parameters
        var = [p for p in params.values() if p.kind is p.VAR_KEYWORD]
        assert len(var) == 1 and "options" in params, fn
        assert typing.get_type_hints(fn)[var[0].name] == typing.Unpack[tk.EstimatorKwargs], fn
        assert not set(fields) & set(params), fn  # no option re-typed as its own parameter


def test_the_grouped_loss_takes_the_tc_loss_arguments():
    """HFVAELoss forwards BetaTCVAELoss's arguments: the same names, defaults and types, plus its own
    (groups, beta_within); all keyword-only."""
    tc, hf = (inspect.signature(c.__init__).parameters for c in (tk.BetaTCVAELoss, tk.HFVAELoss))
    own = {"groups", "beta_within"}
    assert {n: (p.default, p.annotation) for n, p in hf.items() if n not in own} == \
        {n: (p.default, p.annotation) for n, p in tc.items()}
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for n, p in hf.items() if n != "self")


def test_the_value_types_are_the_runtime_lists():
    """``estimator=`` and ``family=`` are typed by the one list each (Literal types whose values are
    the runtime tuples), so a type checker rejects a misspelled value (usage_bad.py)."""
    from tcvae_kernels._validation import FAMILIES, Family
    from tcvae_kernels.estimators import ESTIMATORS, Estimator

    assert typing.get_args(Estimator) == ESTIMATORS == ("mss", "mws", "uniform")
    assert typing.get_args(Family) == FAMILIES == ("normal", "laplace")
