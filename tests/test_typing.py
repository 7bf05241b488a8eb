"""The public API's static types: mypy passes on tests/typecheck/usage_ok.py and reports exactly the
errors marked on tests/typecheck/usage_bad.py (a misspelled option, a wrong type, a wrong return
type), so the signatures a type checker sees cannot rot; the typed mirrors of EstimatorOptions
(EstimatorKwargs, the losses' option fields) list the same fields."""

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import tcvae_kernels as tk
from tcvae_kernels.loss import _OptionField

HERE = Path(__file__).resolve().parent


def _mypy(path: Path, cache: Path) -> dict[int, set[str]]:
    """{line: {error codes}} mypy reports for ``path`` (errors in imported modules are not its business)."""
    pytest.importorskip("mypy")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--show-error-codes", "--no-error-summary",
         "--python-version=3.11", f"--cache-dir={cache}", str(path)],
        capture_output=True, text=True, cwd=HERE.parent, timeout=600,
        env={**os.environ, "MYPYPATH": str(HERE.parent)})
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
    errors: dict[int, set[str]] = {}
    for m in re.finditer(rf"^(?:.*/)?{re.escape(path.name)}:(\d+): error: .*\[([\w-]+)\]$", run.stdout, re.M):
        errors.setdefault(int(m.group(1)), set()).add(m.group(2))
    assert errors or run.returncode == 0, run.stdout[-3000:]  # mypy failed but no line was parsed
    return errors


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mypy-cache")


# mypy reads torch's stubs cold on a fresh clone (~35 s): the slow tier, one worker for the shared cache
@pytest.mark.slow
@pytest.mark.xdist_group("mypy")
def test_the_usage_file_type_checks(mypy_cache):
    assert _mypy(HERE / "typecheck" / "usage_ok.py", mypy_cache) == {}


@pytest.mark.slow
@pytest.mark.xdist_group("mypy")
def test_misuse_is_caught(mypy_cache):
    path = HERE / "typecheck" / "usage_bad.py"
    want = {n: {m.group(1)} for n, line in enumerate(path.read_text().splitlines(), 1)
            if (m := re.search(r"# E: ([\w-]+)$", line))}
    assert len(want) >= 8
    assert _mypy(path, mypy_cache) == want


def test_typed_mirrors_list_the_options():
    fields = {f.name: f.type for f in dataclasses.fields(tk.EstimatorOptions)}
    kwargs = {k: getattr(v, "__forward_arg__", v) for k, v in tk.EstimatorKwargs.__annotations__.items()}
    assert kwargs == fields  # same names, same annotations (as written), same order
    assert not tk.EstimatorKwargs.__required_keys__  # every option has a default
    on_loss = [n for n, v in vars(tk.BetaTCVAELoss).items() if isinstance(v, _OptionField)]
    assert on_loss == list(fields)
    hints = typing.get_type_hints(tk.BetaTCVAELoss.__init__)
    assert set(fields) <= set(hints)
