"""The command-line entry points run and report what they measured."""

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.tools.check import main as check_main


@pytest.mark.parametrize("backends", [
    [n for n in tk.backend_names() if n != "triton"],  # the registry's list, less the interpreter
    pytest.param(None, id="every-available", marks=pytest.mark.slow),  # + the Triton interpreter
])
def test_check_command_passes_and_prints_a_table(capsys, backends):
    # one dtype: the command's loop is the same for each (every dtype's checks: test_backends,
    # test_groups); the same loop for every backend (Triton's checks at interpreter sizes:
    # test_backends, test_groups). Under the interpreter the Triton kernels run here with
    # CONFIGS[2]'s tiles (64 x 32; still several tiles each way at the command's sizes, up to 129):
    # the interpreter's cost is per operation and tile, and its 8 x 8 tiles took this test 4.4 min.
    with _interpreter_tiles():
        assert check_main(["--seed", "3", "--dtypes", "float32"] + (["--backends", *backends] if backends else [])) == 0
    out = capsys.readouterr().out
    assert re.search(r"torch +\| cpu +\| float32 +\| 7/7", out) and "all checks passed" in out
    assert re.search(r"torch +\| cpu +\| float32 laplace +\| 7/7", out)  # both families by default
    assert re.search(r"cuda +\| cpu +\| float32 +\| - +\| skipped", out)  # the reason is printed, not a failure
    if backends is None and "triton" in tk.compiled_backends():
        assert re.search(r"triton +\| cpu +\| float32 laplace +\| 7/7", out)


def _interpreter_tiles():
    """CONFIGS[2] for the Triton kernels under the interpreter, else nothing."""
    if os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in tk.compiled_backends():
        return contextlib.nullcontext()
    from tcvae_kernels.backends import triton_kernels as tkn

    return tkn.force_config(tkn.CONFIGS[2])


@pytest.mark.slow  # three worker processes (~30 s); the worker and the tables run in-process below
def test_bench_command_writes_table_json_and_plot(tmp_path):
    cmd = [sys.executable, "-m", "tcvae_kernels", "bench", "--sizes", "16", "24", "--dims", "3",
           "--methods", "eager", "torch", "--min-time", "0.01", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    timed = [r for r in data["records"] if "seconds" in r]
    assert {(r["method"], r["M"], r["mode"]) for r in timed} == {
        (m, s, mode) for m in ("eager", "torch") for s in (16, 24) for mode in ("fwd", "fwdbwd")
    }
    assert all(r["seconds"] > 0 and r["peak_bytes"] >= 0 for r in timed)
    assert any(r["method"] == "exp" and r["exp_per_s"] > 0 for r in data["records"])
    md = (tmp_path / "results.md").read_text()
    assert "| 24 | 3 |" in md and "exp floor" in md
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_bench_components_is_the_bank_shape(capsys):
    # --components K: every method computes the batch's M queries against M + (K − M) banked components
    from tcvae_kernels.tools.benchmark import build_method, make_call, make_inputs

    inputs, bank = make_inputs(5, 3, "cpu", torch.float64, 19)
    assert [t.shape for t in inputs] == [(5, 3)] * 3 and bank[0].shape == (14, 3)
    got = {meth: make_call(build_method(meth, 5, 190, torch.float64, "cpu", bank), "fwdbwd", inputs)()
           for meth in ("eager", "torch", "cpu")}
    for meth in ("torch", "cpu"):
        for a, b in zip(got[meth], got["eager"]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    from tcvae_kernels.tools.benchmark import main as bench_main, render, worker

    spec = dict(device="cpu", dtype="float32", threads=0, sizes=[6], dims=[3], modes=["fwd"], min_time=0.0,
                max_reps=3, components=40)
    records = [r for meth in ("eager", "cpu") for r in worker(dict(spec, method=meth))]
    assert {(r["method"], r["M"], r["K"]) for r in records if "seconds" in r} == {("eager", 6, 40), ("cpu", 6, 40)}
    meta = dict(title="t", when="now", device_name="cpu", torch="x", dtype="float32", threads=1, min_time=0.0,
                sizes=[6], dims=[3], modes=["fwd"], methods=["eager", "cpu"], components=40)
    assert "| M | K | D | eager | cpu |" in render(records, meta) and "| 6 | 40 | 3 |" in render(records, meta)
    with pytest.raises(SystemExit):  # argparse: K below a batch size
        bench_main(["--sizes", "50", "--components", "40"])
    assert "--components 40 must be >= every batch size" in capsys.readouterr().err


def test_the_command_line_says_what_it_can_do(capsys):
    from tcvae_kernels.__main__ import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"tcvae_kernels {tk.__version__}"
    assert main(["chek"]) == 2 and "unknown command 'chek'" in capsys.readouterr().err
    assert main([]) == 2 and "a command is missing" in capsys.readouterr().err
    for command in COMMANDS:  # subcommand help is plain text (no reStructuredText markup)
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "usage: python -m tcvae_kernels " + command in text and "``" not in text and ":func:" not in text


def test_the_methods_figure_is_drawn_from_the_recorded_tables(tmp_path):
    """bench/replot.py reads every cell of RESULTS.md's "All methods" tables (2 modes × 8 shapes × 5
    methods) and draws them with the bench command's plot (time panels and a memory panel)."""
    pytest.importorskip("matplotlib")
    from helpers import load_script

    replot = load_script("replot", "bench")
    records, meta = replot.records_from_results((Path(replot.HERE) / "RESULTS.md").read_text())
    assert len(records) == 80 and meta["methods"] == ["eager", "compile", "keops", "cpu", "torch"]
    assert {r["D"] for r in records} == {10, 32} and "Xeon" in meta["device_name"]
    assert replot.main(["--out", str(tmp_path / "m.png")]) == 0 and (tmp_path / "m.png").stat().st_size > 10000
