"""A learned factorial normalizing-flow prior in the dimension-wise KL (the authors' ``-dist flow``
setting: Normal posteriors, a flow prior), trained jointly with a small VAE on the built-in shapes data.

    python python/flow_prior.py [--steps 200] [--batch-size 128] [--family normal|laplace]

The prior is any object with ``log_prob(z) -> [M, D]``; here :class:`FactorialFlowPrior`, written
with torch only: per dimension d, an invertible increasing map f_d from z_d to a standard-Normal
base variable, ``log p(z) = sum_d log N(f_d(z_d); 0, 1) + log f_d'(z_d)`` (change of variables).
It is a submodule of the loss, so ``loss_fn.parameters()`` holds it and one optimizer trains the
encoder, decoder and prior together. Prints the penalty terms and the prior's log-likelihood of the
batch's z as training goes; CI runs a few steps (tests/scripts/test_examples.py).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import tcvae_kernels as tk
from tcvae_kernels import data as tkdata


class FactorialFlowPrior(nn.Module):
    """p(z) = prod_d p_d(z_d), each p_d the pushforward of N(0, 1) under an increasing bijection:
    x = f_d(z) = g_L ∘ ... ∘ g_1((z - loc_d)·e^{-log_scale_d}), g_l(x) = x + a_l·tanh(w_l·x + c_l) with
    a_l = softplus(.) >= 0, w_l = softplus(.) >= 0 (so g_l' = 1 + a_l·w_l·(1 - tanh²) >= 1: invertible).
    log p_d(z) = log N(f_d(z); 0, 1) + log f_d'(z), f_d' the product of the layers' derivatives."""

    def __init__(self, d: int, layers: int = 4):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.a = nn.Parameter(torch.full((layers, d), -2.0))  # softplus(-2) ≈ 0.13: near the identity
        self.w = nn.Parameter(torch.zeros(layers, d))
        self.c = nn.Parameter(0.5 * torch.randn(layers, d, generator=torch.Generator().manual_seed(0)))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """[M, D] -> [M, D]: log p_d(z_id) (differentiable in z and in the parameters)."""
        x = (z - self.loc) * torch.exp(-self.log_scale)
        log_det = (-self.log_scale).expand_as(z)
        a, w = F.softplus(self.a), F.softplus(self.w)
        for layer in range(self.a.shape[0]):
            t = torch.tanh(w[layer] * x + self.c[layer])
            log_det = log_det + torch.log1p(a[layer] * w[layer] * (1 - t * t))
            x = x + a[layer] * t
        return -0.5 * (x * x + math.log(2 * math.pi)) + log_det


class SmallVAE(nn.Module):
    """64×64 images → D-dim posterior (mu and logvar, or the log-scale for the Laplace family)."""

    def __init__(self, d: int = 6, family: str = "normal"):
        super().__init__()
        self.family = family
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 4, 4), nn.ReLU(), nn.Conv2d(16, 32, 4, 4), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(32 * 16, 2 * d))
        self.decoder = nn.Sequential(nn.Linear(d, 32 * 16), nn.ReLU(), nn.Unflatten(1, (32, 4, 4)),
                                     nn.ConvTranspose2d(32, 16, 4, 4), nn.ReLU(), nn.ConvTranspose2d(16, 1, 4, 4))

    def forward(self, x):
        mu, log_param = self.encoder(x).chunk(2, dim=1)
        log_param = log_param.clamp(-8.0, 4.0)
        if self.family == "laplace":  # log_param is the log-scale b: z = mu + e^b·Laplace(0, 1)
            z = torch.distributions.Laplace(mu, log_param.exp()).rsample()
        else:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_param)
        return self.decoder(z), z, mu, log_param


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--latent-dim", type=int, default=6)
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--family", default="normal", choices=["normal", "laplace"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    data = tkdata.Shapes()
    model = SmallVAE(a.latent_dim, a.family)
    prior = FactorialFlowPrior(a.latent_dim)
    loss_fn = tk.BetaTCVAELoss(dataset_size=len(data), beta=a.beta, prior=prior, family=a.family, warn_regime=False)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)  # the prior is in loss_fn's
    history = []
    for step in range(1, a.steps + 1):
        x = torch.from_numpy(data.sample_observations_from_factors(data.sample_factors(a.batch_size, rng)))
        logits, z, mu, log_param = model(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        loss = recon + loss_fn(z, mu, log_param)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t = loss_fn.last
        row = {"step": step, "loss": loss.item(), "recon": recon.item(), "mi": t.mi.item(), "tc": t.tc.item(),
               "dim_kl": t.dim_kl.item(), "prior_log_lik": prior.log_prob(z.detach()).sum(1).mean().item()}
        history.append(row)
        if step % a.log_every == 0 or step == a.steps:
            print(f"step {step}: loss {row['loss']:.1f} recon {row['recon']:.1f} MI {row['mi']:.2f} "
                  f"TC {row['tc']:.2f} dim-KL {row['dim_kl']:.2f} prior log-lik {row['prior_log_lik']:.2f}")
    return {"history": history, "prior": prior}


if __name__ == "__main__":
    main()
