"""``prior=``: p(z) of the dimension-wise KL on decompose, grouped_decompose and the losses. For every
prior, MI + TC + dim-KL equals mean_i(log q(z_i|x_i) - log p(z_i)) of the same batch (the telescoping
identity, up to rounding); MI and TC do not depend on the prior; the names equal the corresponding
torch.distributions; a learned prior receives gradients and trains."""

import math

import pytest
import torch
from torch import distributions as D

import tcvae_kernels as tk
from tcvae_kernels.reference import log_density

from helpers import backends, make_inputs


class LearnedPrior(torch.nn.Module):
    """A factorial Normal with learned location and log-scale per dimension (a one-layer 'flow')."""

    def __init__(self, d):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.log_scale = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def log_prob(self, z):
        return D.Normal(self.loc, self.log_scale.exp()).log_prob(z)  # [M, D]


def _priors(d):
    """(prior argument, its log density [M] written out independently)."""
    return [
        ("normal", lambda z: (-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum(1)),
        ("laplace", lambda z: (-z.abs() - math.log(2.0)).sum(1)),  # the authors' Laplace(0, 1)
        (D.Laplace(torch.tensor(0.3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)),
         lambda z: (-(z - 0.3).abs() / 2.0 - math.log(4.0)).sum(1)),
        (D.Independent(D.Normal(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64) * 1.5), 1),
         lambda z: (-0.5 * (z / 1.5) ** 2 - math.log(1.5) - 0.5 * math.log(2 * math.pi)).sum(1)),  # returns [M]
    ]


@pytest.mark.parametrize("backend", backends("cpu", exclude=("triton",)))  # the interpreter: too slow here
def test_the_decomposition_telescopes_for_every_prior(backend):
    z, mu, lv = make_inputs(40, 40, 5)
    own = log_density(z, mu, lv).sum(1)  # log q(z_i | x_i)
    first = None
    for prior, log_p in _priors(5):
        parts = tk.decompose(z, mu, lv, dataset_size=1000, prior=prior, backend=backend)
        total = (parts.mi + parts.tc + parts.dim_kl).item()
        assert total == pytest.approx((own - log_p(z)).mean().item(), abs=1e-12, rel=1e-12), prior
        grouped = tk.grouped_decompose(z, mu, lv, groups=[2, 3], dataset_size=1000, prior=prior, backend=backend)
        assert (grouped.mi + grouped.tc_between + grouped.tc_within + grouped.dim_kl).item() == pytest.approx(total, abs=1e-12)
        if first is None:
            first = parts
        assert torch.equal(parts.mi, first.mi) and torch.equal(parts.tc, first.tc)  # the prior enters dim-KL only


def test_the_names_are_the_standard_distributions():
    z, mu, lv = make_inputs(12, 12, 3)
    for name, dist in (("normal", D.Normal(0.0, 1.0)), ("laplace", D.Laplace(0.0, 1.0))):
        a = tk.decompose(z, mu, lv, dataset_size=100, prior=name).dim_kl
        b = tk.decompose(z, mu, lv, dataset_size=100, prior=D.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
                         if name == "normal" else D.Laplace(torch.tensor(0.0, dtype=torch.float64), 1.0)).dim_kl
        assert a.item() == pytest.approx(b.item(), abs=1e-12), (name, dist)


def test_a_learned_prior_trains_through_the_loss():
    torch.manual_seed(0)
    z, mu, lv = make_inputs(64, 64, 4, seed=1)
    z = z * 3.0 + 1.0  # the data's latents sit away from N(0, I): a learned prior should move there
    prior = LearnedPrior(4)
    loss_fn = tk.BetaTCVAELoss(dataset_size=10_000, prior=prior, warn_regime=False)
    assert {id(p) for p in prior.parameters()} <= {id(p) for p in loss_fn.parameters()}
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(z, mu, lv)
        loss.backward()
        assert prior.loc.grad is not None and prior.loc.grad.abs().sum() > 0
        opt.step()
        first = loss_fn.last.dim_kl.item() if first is None else first
    assert loss_fn.last.dim_kl.item() < first - 0.5  # the prior moved toward the aggregate posterior


def test_hfvae_takes_the_prior():
    z, mu, lv = make_inputs(10, 10, 4)
    a = tk.HFVAELoss(dataset_size=500, groups=[1, 1, 1, 1], prior="laplace", warn_regime=False)(z, mu, lv)
    b = tk.BetaTCVAELoss(dataset_size=500, prior="laplace", warn_regime=False)(z, mu, lv)
    assert torch.equal(a, b)


def test_bad_priors_are_refused():
    z, mu, lv = make_inputs(6, 6, 3)
    with pytest.raises(ValueError, match="prior must be one of"):
        tk.decompose(z, mu, lv, dataset_size=100, prior="gauss")
    with pytest.raises(TypeError, match="log_prob"):
        tk.decompose(z, mu, lv, dataset_size=100, prior=3)
    with pytest.raises(ValueError, match=r"log_prob\(z\) must return \[M\] or \[M, D\]"):
        tk.decompose(z, mu, lv, dataset_size=100, prior=type("Bad", (), {"log_prob": lambda self, v: v[:, :1]})())
    with pytest.raises(ValueError, match="prior must be one of"):
        tk.BetaTCVAELoss(dataset_size=100, prior="flow")
