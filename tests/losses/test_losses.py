"""The loss family: HFVAE, β-VAE, FactorVAE (the grouped op itself: test_groups.py)."""

import math

import pytest
import torch

import tcvae_kernels as tk

from helpers import fresh_seed, make_inputs


def test_hfvae_with_singleton_groups_is_beta_tcvae_exactly():
    z, mu, lv = make_inputs(12, 12, 4, dtype=torch.float32)
    a = [t.clone().requires_grad_() for t in (z, mu, lv)]
    b = [t.clone().requires_grad_() for t in (z, mu, lv)]
    hf = tk.HFVAELoss(dataset_size=1000, groups=[1, 1, 1, 1], alpha=0.7, beta=5.0, beta_within=3.0, gamma=2.0)(*a)
    tc = tk.BetaTCVAELoss(dataset_size=1000, alpha=0.7, beta=5.0, gamma=2.0)(*b)
    assert torch.equal(hf, tc)
    for x, y in zip(torch.autograd.grad(hf, a), torch.autograd.grad(tc, b)):
        assert torch.equal(x, y)


def test_hfvae_weights_each_term():
    z, mu, lv = make_inputs(8, 8, 5)
    fn = tk.HFVAELoss(dataset_size=300, groups=[[0, 1], [2, 3, 4]], alpha=1.0, beta=2.0, beta_within=3.0, gamma=4.0)
    loss = fn(z, mu, lv)
    p = fn.last
    assert loss.item() == pytest.approx((p.mi + 2 * p.tc_between + 3 * p.tc_within + 4 * p.dim_kl).item(), abs=1e-10)


# ----------------------------------------------------------------------------- β-VAE


def test_beta_vae_loss_is_beta_times_the_analytic_kl():
    z, mu, lv = make_inputs(16, 16, 6)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    want = torch.distributions.kl_divergence(q, p).sum(1).mean()
    fn = tk.BetaVAELoss(beta=4.0)
    assert fn(z, mu, lv).item() == pytest.approx(4 * want.item(), rel=1e-12)
    assert fn.last.kl.item() == pytest.approx(want.item(), rel=1e-12)
    warm = tk.BetaVAELoss(beta=4.0, warmup_steps=2)
    assert warm(z, mu, lv).item() == 0.0 and warm(z, mu, lv).item() == pytest.approx(2 * want.item(), rel=1e-12)


# ----------------------------------------------------------------------------- FactorVAE


def test_permute_dims_permutes_each_column_independently():
    g = torch.Generator().manual_seed(fresh_seed())
    z = torch.arange(2000 * 3, dtype=torch.float64).reshape(2000, 3)
    p = tk.permute_dims(z, g)
    for d in range(3):
        assert torch.equal(p[:, d].sort().values, z[:, d])  # a permutation of the column
    assert (p[:, 1] - p[:, 0] == 1).float().mean() < 0.01
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        tk.permute_dims(z[0])


def _train_discriminator(sample, steps=600, seed=0):
    torch.manual_seed(seed)
    fn = tk.FactorVAELoss(gamma=1.0, discriminator=torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64), torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(64, 2)))
    opt = torch.optim.Adam(fn.discriminator.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = fn.discriminator_loss(sample(256), sample(256))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return fn.tc_estimate(sample(20000)).item()


@pytest.mark.slow  # trains two discriminators (20-30 s); FactorVAELoss's paths run in the default tier
def test_factor_vae_discriminator_estimates_tc():
    """Factorised codes: TC = 0; correlated Gaussian codes (ρ = 0.9): TC = -½·log(1-ρ²) = 0.830.
    The density-ratio estimate of a small trained MLP: |TC| < 0.1 for the first (measured ~0.02),
    0.5–1.2 for the second (measured ~0.8): the discriminator's approximation error is the slack."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    indep = lambda n: torch.randn(n, 2, generator=gen)  # noqa: E731
    chol = torch.tensor([[1.0, 0.0], [0.9, math.sqrt(1 - 0.81)]])
    corr = lambda n: torch.randn(n, 2, generator=gen) @ chol.T  # noqa: E731
    assert abs(_train_discriminator(indep, seed=seed)) < 0.1
    assert 0.5 < _train_discriminator(corr, seed=seed) < 1.2


def test_factor_vae_loss_leaves_the_discriminator_alone():
    z, mu, lv = (t.float().requires_grad_() for t in make_inputs(32, 32, 4))
    fn = tk.FactorVAELoss(gamma=6.4, latent_dim=4)
    loss = fn(z, mu, lv)
    loss.backward()
    assert all(p.grad is None for p in fn.discriminator.parameters())
    assert z.grad is not None and mu.grad is not None
    kl = 0.5 * (mu**2 + lv.exp() - lv - 1).sum(1).mean()
    assert loss.item() == pytest.approx((kl + 6.4 * fn.last.tc).item(), rel=1e-6)
    with pytest.raises(ValueError, match="latent_dim"):
        tk.FactorVAELoss(gamma=1.0)


@pytest.mark.parametrize("loss", ["betavae", "betatcvae", "factorvae", "hfvae"])
def test_demo_program_accepts_every_loss(loss, tmp_path):
    import importlib.util
    import os

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    spec = importlib.util.spec_from_file_location("train_tcvae", os.path.join(root, "python", "train_tcvae.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--loss", loss, "--steps", "2", "--steps-per-epoch", "2", "--batch-size", "8",
                    "--latent-dim", "4", "--no-eval", "--out", str(tmp_path)])
    assert res["loss"] == loss and res["steps"] == 2 and math.isfinite(res["history"][0]["recon"])


@pytest.mark.parametrize("make", [lambda: tk.BetaVAELoss(), lambda: tk.BetaTCVAELoss(dataset_size=100)])
def test_a_bad_first_call_gets_a_clear_error(make):
    """The first call's set-up (moving the state to the batch's device) checks the batch first."""
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        make()([[0.0, 0.0]] * 4, x, x)
    with pytest.raises(ValueError, match="share one shape"):
        make()(torch.zeros(3, 2), x, x)
