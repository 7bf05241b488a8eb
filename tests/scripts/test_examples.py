"""The Laplace / prior examples train a few steps on the CPU: python/flow_prior.py (a learned
factorial flow prior, trained jointly: its parameters move and its log-likelihood of the batch's z
is finite) and python/train_tcvae.py with --family laplace and each --prior."""

import json
import math

import pytest
import torch

from helpers import load_script

def _load(name):
    return load_script(name)


@pytest.mark.parametrize("family", ["normal", "laplace"])
def test_flow_prior_trains(family):
    flow = _load("flow_prior")
    before = {k: v.clone() for k, v in flow.FactorialFlowPrior(6).state_dict().items()}
    res = flow.main(["--steps", "4", "--batch-size", "32", "--log-every", "2", "--family", family])
    h = res["history"]
    assert len(h) == 4 and all(all(map(lambda v: v == v and abs(v) < 1e9, r.values())) for r in h)
    after = res["prior"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the prior is trained with the model
    z = torch.linspace(-30, 30, 2001)[:, None].expand(-1, 6)
    mass = torch.exp(res["prior"].log_prob(z)).sum(0) * (60 / 2000)  # a density: integrates to 1 per dim
    assert torch.allclose(mass, torch.ones(6), atol=1e-3), mass


@pytest.mark.parametrize("prior", ["normal", "laplace", "flow"])
def test_train_script_takes_family_and_prior(tmp_path, prior):
    train = _load("train_tcvae")
    res = train.main(["--family", "laplace", "--prior", prior, "--steps", "2", "--steps-per-epoch", "2",
                      "--batch-size", "16", "--latent-dim", "4", "--no-eval", "--out", str(tmp_path)])
    assert res["steps"] == 2 and len(res["history"]) == 1
    assert all(v == v for v in res["history"][0].values())
    assert json.loads((tmp_path / "result.json").read_text())["loss"] == "betatcvae"
    with pytest.raises(SystemExit):
        train.main(["--loss", "betavae", "--family", "laplace", "--no-eval", "--out", str(tmp_path)])


def test_laplace_benchmark_runs(capsys):
    rows = load_script("bench_laplace", "bench").main(["--sizes", "40", "--dims", "3", "--rounds", "1", "--no-compile"])
    assert len(rows) == 1 and rows[0]["laplace_over_normal"] > 0
    assert "| 40 | 3 |" in capsys.readouterr().out


def test_train_script_bank_is_filled_saved_and_resumed(tmp_path):
    train = _load("train_tcvae")
    args = ["--bank", "40", "--steps-per-epoch", "2", "--batch-size", "16", "--latent-dim", "4", "--no-eval",
            "--out", str(tmp_path)]
    train.main([*args, "--steps", "2"])  # pushes 2 × 16 rows

    def bank_state():  # the loss's state_dict: the bank's buffers under "bank."
        loss = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["loss"]
        return {k: int(loss[f"bank.{k}"]) for k in ("filled", "pushes")}

    assert (bank_state()["filled"], bank_state()["pushes"]) == (32, 2)
    res = train.main([*args, "--steps", "4", "--resume"])  # continues with the saved bank: 64 rows pushed, 40 kept
    assert res["steps"] == 4 and res["bank"] == 40 and (bank_state()["filled"], bank_state()["pushes"]) == (40, 4)
    with pytest.raises(SystemExit):
        train.main(["--loss", "betavae", "--bank", "8", "--no-eval", "--out", str(tmp_path)])


def test_bank_study_runs_every_part(tmp_path):
    study = _load("bank_study")
    out = tmp_path / "study"
    res = study.main(["--steps", "4", "--seeds", "0", "--checkpoints", "2", "--batches", "1", "--bias-n", "3000",
                      "--bias-ks", "256", "1024", "--train-size", "1024", "--bank", "512", "--cost-ks", "256", "768",
                      "--timing-reps", "2", "--out", str(out)])
    bias = {(r["sigma"], r["K"]): r for r in res["bias"]}
    assert set(bias) == {(s, k) for s in (0.05, 0.2) for k in ("exact (N)", 256, 1024)}
    assert all(math.isfinite(r["tc"]) for r in res["bias"])
    assert [r["step"] for r in res["staleness"]] == [1, 2, 4] and "tc_stale" in res["staleness"][-1]
    assert {(r["seed"], r["bank"]) for r in res["effect"]} == {(0, 0), (0, 512)}
    assert [r["K"] for r in res["cost"]["penalty"]] == [256, 768]
    text = (tmp_path / "study.md").read_text()
    assert "(a) Bias" in text and "(d) Cost" in text
    assert study.main(["--render", str(tmp_path / "study.json")]) == {}


def test_quickstart_explains_its_first_run_in_one_line(capsys, monkeypatch):
    """python/quickstart.py: no warning, the estimator's regime in one line, then the banked estimate."""
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--batch", "32", "--dim", "3", "--dataset-size", "2000",
                                      "--backend", "cpu", "--device", "cpu"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load("quickstart").main()
    out = capsys.readouterr().out
    assert "self share" in out and "with a bank of 480 earlier posteriors: TC = " in out
