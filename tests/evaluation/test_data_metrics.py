"""Built-in shapes data, dataset-level evaluation, and the disentanglement metrics on synthetic
encoders whose answers are known."""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels import data as tkdata
from tcvae_kernels import dataset_estimates, metrics
from tcvae_kernels.estimators import log_weights

from helpers import brute_force, fresh_seed

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# ----------------------------------------------------------------------------- data


def test_shapes_grid_labels_and_determinism():
    d = tkdata.Shapes()
    assert d.factor_sizes == (3, 6, 40, 32, 32) and len(d) == 737280
    rng = np.random.default_rng(fresh_seed())
    f = d.sample_factors(50, rng)
    assert f.shape == (50, 5) and (f >= 0).all() and (f < np.array(d.factor_sizes)).all()
    assert np.array_equal(d.index_to_factors(d.factors_to_index(f)), f)
    x1, x2 = d.sample_observations_from_factors(f), d.sample_observations_from_factors(f.copy())
    assert x1.shape == (50, 1, 64, 64) and x1.dtype == np.float32
    assert np.array_equal(x1, x2) and set(np.unique(x1)) <= {0.0, 1.0}
    assert (x1.reshape(50, -1).sum(1) > 20).all()  # every shape is visible


def test_shapes_factors_change_the_image_as_named():
    base = np.array([[0, 3, 0, 16, 16]])
    img = lambda f: tkdata.render(np.asarray(f))[0].astype(float)  # noqa: E731
    area = [img([[0, s, 0, 16, 16]]).sum() for s in range(6)]
    assert all(b > a for a, b in zip(area, area[1:]))  # scale grows the shape
    assert not np.array_equal(img(base), img([[1, 3, 0, 16, 16]]))  # shape
    ys, xs = np.nonzero(img([[0, 3, 0, 0, 16]]))
    ys2, xs2 = np.nonzero(img([[0, 3, 0, 31, 16]]))
    assert xs2.mean() - xs.mean() > 30 and abs(ys2.mean() - ys.mean()) < 1  # pos_x moves along x
    ys, xs = np.nonzero(img([[0, 3, 0, 16, 31]]))
    assert ys.mean() > 45  # pos_y moves along y
    assert not np.array_equal(img([[0, 3, 5, 16, 16]]), img(base))  # rotation
    with pytest.raises(ValueError, match="orientation"):
        tkdata.render(np.array([[0, 0, 40, 0, 0]]))


def test_dsprites_file_loader(tmp_path):
    d = tkdata.Shapes()
    idx = np.array([0, 5, 1000, 737279])
    f = d.index_to_factors(idx)
    latents = np.concatenate([np.zeros((4, 1), dtype=np.int64), f], axis=1)
    path = tmp_path / "dsprites_small.npz"
    np.savez(path, imgs=tkdata.render(f)[::-1], latents_classes=latents[::-1])
    real = tkdata.DSpritesFile(str(path))
    assert np.array_equal(real.sample_observations_from_factors(f), d.sample_observations_from_factors(f))
    with pytest.raises(ValueError, match="not in this dSprites file"):
        real.sample_observations_from_factors(d.index_to_factors(np.array([7])))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a dSprites"):
        tkdata.DSpritesFile(str(bad))


# ----------------------------------------------------------------------------- dataset-level evaluation


def test_dataset_decomposition_matches_brute_force_float64():
    g = torch.Generator().manual_seed(fresh_seed())
    n, d, s = 23, 3, 17
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    lv = -1 + torch.rand(n, d, generator=g, dtype=torch.float64)
    z, idx = dataset_estimates.sample_posteriors(mu, lv, s, g)
    got = dataset_estimates.decomposition_from_samples(z, idx, mu, lv, chunk=5)
    q, qd = brute_force(z, mu, lv, log_weights("uniform", n, None))
    lqzx = torch.tensor([sum(-0.5 * ((z[i, k] - mu[idx[i], k]) ** 2 * math.exp(-lv[idx[i], k]) + lv[idx[i], k]
                                     + math.log(2 * math.pi)) for k in range(d)) for i in range(s)], dtype=torch.float64)
    lpz = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(1)
    assert got.mi.value == pytest.approx((lqzx - q).mean().item(), abs=1e-10)
    assert got.tc.value == pytest.approx((q - qd.sum(1)).mean().item(), abs=1e-10)
    assert got.dim_kl.value == pytest.approx((qd.sum(1) - lpz).mean().item(), abs=1e-10)
    assert got.tc.stderr == pytest.approx((q - qd.sum(1)).std().item() / math.sqrt(s), rel=1e-9)


def test_entropies_of_a_factorised_gaussian_mixture():
    """Posteriors N(v_k, σ²) on a grid: H(z_d | v) is the entropy of one Gaussian, known exactly."""
    f = tkdata.FactorCodes((3, 4)).index_to_factors(np.arange(12))
    mu = torch.tensor(f, dtype=torch.float64) * 10.0  # well separated values
    sigma2 = 0.25
    lv = torch.full_like(mu, math.log(sigma2))
    g = torch.Generator().manual_seed(fresh_seed())
    h_cond = dataset_estimates.conditional_entropies(mu, lv, f, (3, 4), samples=4000, generator=g)
    h_gauss = 0.5 * math.log(2 * math.pi * math.e * sigma2)
    # z_d given v_d is one Gaussian: exact; given the other factor, a mixture of 3 or 4 separated ones
    assert h_cond[0, 0].item() == pytest.approx(h_gauss, abs=0.05)  # MC stderr ≈ 0.7/sqrt(4000·4/12)
    assert h_cond[1, 1].item() == pytest.approx(h_gauss, abs=0.05)
    assert h_cond[1, 0].item() == pytest.approx(h_gauss + math.log(3), abs=0.05)
    h = dataset_estimates.marginal_entropies(mu, lv, samples=4000, generator=g)
    assert h[1].item() == pytest.approx(h_gauss + math.log(4), abs=0.05)
    assert dataset_estimates.factor_entropies(f, (3, 4)).tolist() == pytest.approx([math.log(3), math.log(4)])


# ----------------------------------------------------------------------------- metrics
# Synthetic encoders on FactorCodes (observations = factors scaled to [0, 1]): identity is perfectly
# disentangled; "hadamard" mixes every factor into every latent with weight 1/2 (the maximally
# entangled rotation; a generic random 4-D rotation still lets the FactorVAE and β-VAE scores reach
# 1.0, since they only need an injective factor → dim signature — a known leniency of those two);
# constant carries no information.

DATA = tkdata.FactorCodes((4, 5, 6, 8))
HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
ENCODERS = {
    "identity": lambda x: x,
    "hadamard": lambda x: x @ HADAMARD.T,
    "constant": lambda x: np.zeros((x.shape[0], 4)),
}


def _rng():
    return np.random.default_rng(fresh_seed())


def test_factor_vae_score_known_answers():
    kw = dict(num_train=600, num_eval=300, num_variance_estimate=2000)
    assert metrics.factor_vae_score(ENCODERS["identity"], DATA, _rng(), **kw)["eval_accuracy"] == 1.0
    # hadamard: every dim has the same variance whatever factor is fixed → votes at chance (0.25);
    # 300 votes: std 0.025, so < 0.45 is 8 std above chance
    assert metrics.factor_vae_score(ENCODERS["hadamard"], DATA, _rng(), **kw)["eval_accuracy"] < 0.45
    const = metrics.factor_vae_score(ENCODERS["constant"], DATA, _rng(), **kw)
    assert const["eval_accuracy"] == 0.0 and const["num_active_dims"] == 0


def test_beta_vae_score_known_answers():
    kw = dict(num_train=600, num_eval=300)
    assert metrics.beta_vae_score(ENCODERS["identity"], DATA, _rng(), **kw)["eval_accuracy"] >= 0.97
    # measured 0.30 (chance 0.25) for hadamard; constant: accuracy = the majority label's share,
    # chance-corrected ≈ 0 (300 points: std of the corrected score ≈ 0.03)
    assert metrics.beta_vae_score(ENCODERS["hadamard"], DATA, _rng(), **kw)["eval_accuracy"] < 0.6
    const = metrics.beta_vae_score(ENCODERS["constant"], DATA, _rng(), **kw)
    assert abs(const["eval_accuracy_chance_corrected"]) < 0.12


def _codes(name, n=3000):
    f = DATA.sample_factors(n, _rng())
    return f, ENCODERS[name](DATA.sample_observations_from_factors(f))


def test_mig_histogram_known_answers():
    f, c = _codes("identity")
    assert metrics.mig_histogram_from_codes(c, f)["mig"] > 0.95  # binning is exact for ≤ 20 values per factor
    f, c = _codes("hadamard")
    assert metrics.mig_histogram_from_codes(c, f)["mig"] < 0.35  # measured ≈ 0.2
    f, c = _codes("constant")
    assert metrics.mig_histogram_from_codes(c, f)["mig"] == 0.0


def test_mig_sampling_estimator_known_answers():
    """Posteriors N(code, 1e-4): identity separates every factor value (I = H(v): MIG ≈ 1)."""
    g = torch.Generator().manual_seed(fresh_seed())
    for name, lo, hi in [("identity", 0.9, 1.01), ("hadamard", 0.0, 0.35), ("constant", 0.0, 0.05)]:
        f, c = _codes(name, 1500)
        mu = torch.tensor(c, dtype=torch.float64)
        res = metrics.mig_from_posteriors(mu, torch.full_like(mu, math.log(1e-4)), f, DATA.factor_sizes, samples=800, generator=g)
        assert lo <= res["mig"] <= hi, (name, res["mig"])
        assert res["mi"].shape == (4, 4)


# ----------------------------------------------------------------------------- the demo program


@pytest.mark.slow  # an end-to-end run of the example (its parts: the data, dataset_estimates and metrics tests)
def test_demo_training_loop_runs_a_few_steps(tmp_path):
    spec = importlib.util.spec_from_file_location("train_tcvae", os.path.join(ROOT, "python", "train_tcvae.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    res = mod.main(["--steps", "4", "--steps-per-epoch", "2", "--batch-size", "16", "--latent-dim", "4",
                    "--eval-strides", "3", "6", "40", "16", "16", "--mig-samples", "50",
                    "--factor-vae-train", "20", "--factor-vae-eval", "10", "--out", str(out)])
    assert res["steps"] == 4 and len(res["history"]) == 2
    assert all(math.isfinite(h["tc"]) for h in res["history"])
    assert 0.0 <= res["mig"] <= 1.0 and 0.0 <= res["factor_vae"] <= 1.0
    for name in ("traversals.png", "decomposition.png", "mutual_information.png", "checkpoint.pt", "result.json"):
        assert (out / name).stat().st_size > 0
    res2 = mod.main(["--steps", "6", "--steps-per-epoch", "2", "--batch-size", "16", "--latent-dim", "4",
                     "--out", str(out), "--resume", "--no-eval"])
    assert res2["steps"] == 6 and len(res2["history"]) == 3  # resumed from the checkpoint


# ----------------------------------------------------------------------------- DCI, SAP, Modularity, evaluate
# Known answers on the same synthetic encoders (1,000 train / 500 test codes; bounds from measured
# values with margins far above the run-to-run spread, noted per line).


def test_dci_known_answers():
    kw = dict(num_train=1000, num_test=500)
    ident = metrics.dci_score(ENCODERS["identity"], DATA, _rng(), **kw)
    # each factor is read off its own dim: importance diagonal (measured D, C > 0.99)
    assert ident["disentanglement"] > 0.95 and ident["completeness"] > 0.95
    assert ident["informativeness_test"] == 1.0
    had = metrics.dci_score(ENCODERS["hadamard"], DATA, _rng(), **kw)
    assert had["disentanglement"] < 0.6 and had["completeness"] < 0.6  # measured ≈ 0.3
    const = metrics.dci_score(ENCODERS["constant"], DATA, _rng(), **kw)
    assert const["disentanglement"] == pytest.approx(0.0, abs=1e-9)
    assert const["completeness"] == pytest.approx(0.0, abs=1e-9)


def test_sap_known_answers():
    kw = dict(num_train=1000, num_test=500)
    ident = metrics.sap_score(ENCODERS["identity"], DATA, _rng(), **kw)["sap"]
    had = metrics.sap_score(ENCODERS["hadamard"], DATA, _rng(), **kw)["sap"]
    const = metrics.sap_score(ENCODERS["constant"], DATA, _rng(), **kw)["sap"]
    assert ident > had + 0.1 and const == 0.0  # measured ≈ 0.25 and ≈ 0.02
    cont = metrics.sap_score(ENCODERS["identity"], DATA, _rng(), continuous_factors=True, **kw)["sap"]
    assert cont > 0.95  # R² = 1 for the own dim, ≈ 0 for the others


def test_modularity_explicitness_known_answers():
    kw = dict(num_train=1000, num_test=500)
    ident = metrics.modularity_explicitness_score(ENCODERS["identity"], DATA, _rng(), **kw)
    assert ident["modularity"] > 0.99 and ident["explicitness_test"] > 0.95
    had = metrics.modularity_explicitness_score(ENCODERS["hadamard"], DATA, _rng(), **kw)
    assert had["modularity"] < ident["modularity"] - 0.2  # measured ≈ 0.5
    const = metrics.modularity_explicitness_score(ENCODERS["constant"], DATA, _rng(), **kw)
    assert const["modularity"] == 0.0 and const["explicitness_test"] == pytest.approx(0.5)


def test_mig_chen2018_average_leaves_out_shape():
    f = tkdata.Shapes().sample_factors(4000, _rng())
    codes = np.concatenate([f[:, 1:] / np.array([5.0, 39.0, 31.0, 31.0]), np.zeros((4000, 2))], axis=1)
    full = metrics.mig_histogram_from_codes(codes, f)  # shape is coded nowhere: its gap is ≈ 0
    chen = metrics.mig_histogram_from_codes(codes, f, average="chen2018_dsprites")
    assert full["per_factor"][0] < 0.01 and chen["mig"] > 0.8  # 20 bins hold at most log 20 of log 40, log 32
    assert chen["mig"] == pytest.approx(np.mean(full["per_factor"][1:]), abs=1e-15)
    assert full["mig"] == pytest.approx(np.mean(full["per_factor"]), abs=1e-15)
    with pytest.raises(ValueError, match="average must be one of"):
        metrics.mig_histogram_from_codes(codes, f, average="paper")
    with pytest.raises(ValueError, match="5 dSprites factors"):
        metrics.mig_histogram_from_codes(codes[:, :3], f[:, :3], average="chen2018_dsprites")


def test_observed_data_incomplete_grid_and_evaluate():
    """Half of the grid is missing: sampling stays on observed combinations, every metric runs,
    the report has every headline number; a factor with a single observed value is refused."""
    full = DATA.index_to_factors(np.arange(len(DATA)))
    keep = full[(full[:, 0] + full[:, 1]) % 2 == 0]  # an incomplete grid (a checkerboard over two factors)
    obs = DATA.sample_observations_from_factors(keep)
    data = tkdata.ObservedData(obs, keep)
    rng = np.random.default_rng(fresh_seed())
    seen = {tuple(r) for r in keep.tolist()}
    assert all(tuple(r) in seen for r in data.sample_factors(500, rng).tolist())
    fixed = data.sample_factors_with_fixed(64, 2, rng)
    assert len(set(fixed[:, 2])) == 1 and all(tuple(r) in seen for r in fixed.tolist())
    f1 = data.sample_factors(64, rng)
    f2 = data.sample_factors_matching(f1, 1, rng)
    assert (f2[:, 1] == f1[:, 1]).all() and all(tuple(r) in seen for r in f2.tolist())
    with pytest.raises(ValueError, match="never observed"):
        data.sample_observations_from_factors(np.array([[0, 1, 0, 0]]))
    small = {m: {"num_train": 400, "num_test": 200} for m in ("dci", "sap", "modularity_explicitness")}
    small.update(beta_vae={"num_train": 200, "num_eval": 100}, mig_histogram={"num_train": 1000},
                 factor_vae={"num_train": 200, "num_eval": 100, "num_variance_estimate": 500})
    res = metrics.evaluate(ENCODERS["identity"], data, options=small, progress=False)
    assert set(res) == set(metrics.METRICS)
    assert res["dci"]["disentanglement"] > 0.9 and res["factor_vae"]["eval_accuracy"] == 1.0
    assert res.table.count("\n") == 1 + sum(len(v[1]) for v in metrics.METRICS.values())
    one = tkdata.ObservedData(obs[keep[:, 0] == 0], keep[keep[:, 0] == 0])  # factor 0 never varies
    with pytest.raises(ValueError, match="SAP cannot score factor 0"):
        metrics.evaluate(ENCODERS["identity"], one, metrics=["sap"], options={"sap": small["sap"]}, progress=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.evaluate(ENCODERS["identity"], data, metrics=["irs"])
    with pytest.raises(TypeError, match="integer array"):
        tkdata.ObservedData(obs, keep.astype(float))


def test_beta_vae_score_depends_on_scale_like_the_library_unless_standardized():
    """The library's classifier (L2, C = 1) on raw features: the identity code shrunk 1000-fold is
    regularised to about chance; standardize=True makes the score scale-free again."""
    small = lambda x: 1e-3 * x  # noqa: E731
    kw = dict(num_train=600, num_eval=300)
    raw = metrics.beta_vae_score(small, DATA, _rng(), **kw)["eval_accuracy"]
    std = metrics.beta_vae_score(small, DATA, _rng(), standardize=True, **kw)["eval_accuracy"]
    assert raw < 0.6 and std >= 0.97  # chance 0.25; the unscaled identity scores ≥ 0.97 (above)
