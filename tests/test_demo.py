"""The main job (python/demo.py) and the paper reproduction (python/reproduce_chen2018.py) at smoke
settings on the CPU: they train, evaluate, draw, time the loss, print the result line, and the
reproduction resumes from its checkpoints and cached results."""

import importlib.util
import json
import os

import pytest

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "python", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_smoke(tmp_path, capsys):
    demo = _load("demo")
    res = demo.main(["--steps", "12", "--log-every", "4", "--train-size", "2048", "--batch", "256",
                     "--eval-samples", "256", "--fvae-train", "30", "--fvae-eval", "20", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("result: (1 seed") and all(name in out[-1] for name in demo.MODELS)
    assert any("materialized [B, B, D] formula" in line for line in out)
    for name in demo.MODELS:
        r = res[0][name]
        assert set(r) >= {"recon", "dataset_tc", "active", "mig_sampling", "mig_histogram", "factor_vae"}
        assert len(r["history"]) == 3
    for pic in ("traversals.png", "mutual_information.png", "decomposition.png", "result.json"):
        assert (tmp_path / pic).exists()


def test_reproduction_smoke_and_resume(tmp_path):
    rep = _load("reproduce_chen2018")
    rep.main(["--smoke", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").exists() and (tmp_path / "mig_vs_beta.png").exists()
    done = tmp_path / "beta-TCVAE_beta6_seed0.json"
    first = json.load(open(done))
    assert first["steps"] == 3
    os.remove(done)  # the checkpoint stays: the run resumes at its last step and only re-evaluates
    rep.main(["--smoke", "--out", str(tmp_path)])
    again = json.load(open(done))
    assert first["resumed_from"] == 0 and again["steps"] == 3 and again["resumed_from"] == 3
