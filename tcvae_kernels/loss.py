"""The loss family on one engine. Every loss takes ``(z, mu, logvar)`` of a batch ([M, D] each,
z ~ N(mu, exp(logvar))), returns the penalty to add to the reconstruction loss (both as means over
the batch), and keeps the last detached terms in ``.last`` for logging.

| loss | penalty | paper |
|---|---|---|
| :class:`BetaVAELoss` | β·KL(q(z|x) ‖ N(0, I)) | Higgins et al. 2017 |
| :class:`BetaTCVAELoss` | α·MI + β·TC + γ·dim-KL | Chen et al. 2018 |
| :class:`FactorVAELoss` | KL(q(z|x) ‖ N(0, I)) + γ·TC by density ratio (a discriminator) | Kim & Mnih 2018 |
| :class:`HFVAELoss` | α·MI + β·TC_between + β_within·TC_within + γ·dim-KL over groups of dims | Esmaeili et al. 2019 |
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ._validation import _check_int, check_estimator, normalize_groups
from .api import Decomposition, GroupedDecomposition, decompose, grouped_decompose
from .dispatch import check_backend_name


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check_batch(z, mu, logvar):
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"{name} must be a 2-D tensor [M, D]")
    if not (z.shape == mu.shape == logvar.shape):
        raise ValueError(f"z, mu, logvar must share one shape [M, D], got {tuple(z.shape)}, {tuple(mu.shape)}, "
                         f"{tuple(logvar.shape)}")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per row: 0.5·sum_d (mu² + e^logvar - logvar - 1), [M]."""
    return 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1).sum(dim=1)


class _WarmupMixin:
    """Linear warm-up of the weights named in ``_annealed`` over ``warmup_steps`` training calls;
    the step count is part of ``state_dict`` so resumed runs continue the schedule."""

    _annealed: tuple = ()

    def _init_warmup(self, warmup_steps: int):
        _check_int("warmup_steps", warmup_steps, minimum=0)
        self.warmup_steps = warmup_steps
        self.step = 0

    def ramp(self) -> float:
        return 1.0 if self.warmup_steps == 0 else min(1.0, self.step / self.warmup_steps)

    def _advance(self):
        if self.training:
            self.step += 1

    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state):
        self.step = int(state["step"])


class BetaTCVAELoss(_WarmupMixin, nn.Module):
    """β-TCVAE KL penalty ``α·MI + β·TC + γ·dim_KL`` (Chen et al. 2018), batch means.

    Add the returned scalar to your reconstruction loss (both as means over the batch)::

        loss_fn = BetaTCVAELoss(dataset_size=len(train_set), beta=6.0)
        loss = recon_loss + loss_fn(z, mu, logvar)     # z ~ N(mu, exp(logvar)), [M, D]
        print(loss_fn.last.tc)                         # detached MI / TC / dim-KL of that call

    Args:
        dataset_size: N, the number of training examples (required by "mss"/"mws").
        alpha, beta, gamma: weights of MI, TC and dimension-wise KL (paper: 1, β, 1).
        estimator: "mss" (default), "mws" or "uniform"; see :mod:`tcvae_kernels.estimators`.
        backend: "auto", "torch", "cpu", "cuda" or "triton".
        warmup_steps: if > 0, β and γ ramp linearly from 0 to their values over that many
            training-mode calls (KL warm-up, as in the authors' code); the step count is saved
            in ``state_dict`` so resumed runs continue the schedule.
        check_finite: raise on NaN/inf inputs instead of propagating them.
        deterministic: bitwise reproducible gradients on GPU backends (see :func:`tcvae_kernels.log_qz`).
        process_group: a torch.distributed group: estimate q(z) from the global batch of every rank
            (tcvae_kernels.distributed); ``dataset_size`` stays the size of the whole data set. The
            returned penalty is this rank's mean; DDP's gradient averaging makes it the global mean.
    """

    def __init__(
        self,
        dataset_size: int | None,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        estimator: str = "mss",
        backend: str = "auto",
        *,
        warmup_steps: int = 0,
        check_finite: bool = False,
        deterministic: bool = False,
        process_group=None,
    ):
        super().__init__()
        check_estimator(estimator, dataset_size)
        check_backend_name(backend)
        self._init_warmup(warmup_steps)
        self.dataset_size = dataset_size
        self.alpha = _check_weight("alpha", alpha)
        self.beta = _check_weight("beta", beta)
        self.gamma = _check_weight("gamma", gamma)
        self.estimator = estimator
        self.backend = backend
        self.check_finite = bool(check_finite)
        self.deterministic = bool(deterministic)
        self.process_group = process_group
        self.last: Decomposition | None = None

    def _options(self):
        return dict(dataset_size=self.dataset_size, estimator=self.estimator, backend=self.backend,
                    check_finite=self.check_finite, deterministic=self.deterministic,
                    process_group=self.process_group)

    def current_weights(self) -> tuple[float, float, float]:
        """(α, β, γ) in effect for the next call, after warm-up annealing."""
        r = self.ramp()
        return self.alpha, self.beta * r, self.gamma * r

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        parts = decompose(z, mu, logvar, **self._options())
        a, b, g = self.current_weights()
        self.last = Decomposition(*(t.detach() for t in parts))
        self._advance()
        return a * parts.mi + b * parts.tc + g * parts.dim_kl

    def extra_repr(self) -> str:
        return (
            f"dataset_size={self.dataset_size}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"estimator={self.estimator!r}, backend={self.backend!r}, warmup_steps={self.warmup_steps}"
        )


def _implied_dims(groups) -> int:
    """D implied by a partition: the sum of sizes, or 1 + the largest index."""
    if isinstance(groups, (list, tuple)) and groups and all(isinstance(g, (list, tuple)) for g in groups):
        return 1 + max((i for g in groups for i in g if isinstance(i, int)), default=-1)
    if isinstance(groups, (list, tuple)) and all(isinstance(g, int) for g in groups):
        return sum(groups)
    return -1  # normalize_groups reports the malformed value


class HFVAELoss(BetaTCVAELoss):
    """Grouped (HFVAE-style) penalty ``α·MI + β·TC_between + β_within·TC_within + γ·dim_KL``
    (Esmaeili et al. 2019) for a partition of the latent dimensions into groups.

    ``groups``: sizes ``[2, 3, 5]`` (contiguous) or index lists ``[[0, 3], [1, 2, 4]]``. TC_between
    is the total correlation between the groups, TC_within the sum of each group's own total
    correlation (:func:`tcvae_kernels.grouped_decompose`). With groups of one dimension TC_within is
    0 and the loss equals :class:`BetaTCVAELoss` (α, β, γ). ``warmup_steps`` ramps β, β_within and γ.
    Other arguments as for :class:`BetaTCVAELoss`; ``.last`` is a GroupedDecomposition.
    """

    def __init__(self, dataset_size: int | None, groups, alpha: float = 1.0, beta: float = 6.0,
                 beta_within: float = 1.0, gamma: float = 1.0, estimator: str = "mss", backend: str = "auto", **kw):
        super().__init__(dataset_size, alpha, beta, gamma, estimator, backend, **kw)
        self.beta_within = _check_weight("beta_within", beta_within)
        self.groups = groups
        normalize_groups(groups, _implied_dims(groups))  # a valid partition (checked against D per call)

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        parts = grouped_decompose(z, mu, logvar, groups=self.groups, **self._options())
        a, b, g = self.current_weights()
        bw = self.beta_within * self.ramp()
        self.last = GroupedDecomposition(*(t.detach() for t in parts))
        self._advance()
        return a * parts.mi + b * parts.tc_between + bw * parts.tc_within + g * parts.dim_kl

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta_within={self.beta_within}, groups={self.groups}"


class BetaVAETerms(NamedTuple):
    kl: torch.Tensor


class BetaVAELoss(_WarmupMixin, nn.Module):
    """β-VAE penalty ``β·mean_i KL(q(z|x_i) ‖ N(0, I))`` (Higgins et al. 2017), analytic KL.

    ``z`` is accepted for a uniform interface and not used."""

    def __init__(self, beta: float = 4.0, *, warmup_steps: int = 0):
        super().__init__()
        self.beta = _check_weight("beta", beta)
        self._init_warmup(warmup_steps)
        self.last: BetaVAETerms | None = None

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        _check_batch(z, mu, logvar)
        kl = gaussian_kl(mu, logvar).mean()
        self.last = BetaVAETerms(kl.detach())
        b = self.beta * self.ramp()
        self._advance()
        return b * kl


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each column of z [M, D] shuffled by its own random permutation of the batch (samples of
    ∏_d q(z_d) from samples of q(z)); one argsort of an [M, D] uniform matrix, no loop over D."""
    if z.ndim != 2:
        raise ValueError(f"z must be [M, D], got {tuple(z.shape)}")
    keys = torch.rand(z.shape, generator=generator, device="cpu" if generator is not None else z.device)
    return z.gather(0, keys.to(z.device).argsort(dim=0))


def default_discriminator(latent_dim: int, hidden: int = 1000, layers: int = 6) -> nn.Module:
    """The FactorVAE paper's discriminator: an MLP of ``layers`` hidden layers of ``hidden`` units,
    LeakyReLU(0.2), two logits (index 0: "from q(z)", index 1: "from ∏_d q(z_d))")."""
    mods, width = [], latent_dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    mods.append(nn.Linear(width, 2))
    return nn.Sequential(*mods)


class FactorVAETerms(NamedTuple):
    kl: torch.Tensor
    tc: torch.Tensor


class FactorVAELoss(nn.Module):
    """FactorVAE penalty ``mean KL(q(z|x) ‖ N(0, I)) + γ·TC`` (Kim & Mnih 2018), TC estimated by the
    density-ratio trick: ``TC ≈ mean_i (D(z_i)[0] - D(z_i)[1])``, the log-odds of a discriminator
    trained to tell samples of q(z) from samples of ∏_d q(z_d).

    Training step (two batches, as in the paper)::

        loss_fn = FactorVAELoss(gamma=6.4, latent_dim=10)           # or discriminator=your_module
        d_opt = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
        z1, mu1, lv1 = encode(x1); z2, _, _ = encode(x2)             # two independent batches
        vae_loss = recon(x1) + loss_fn(z1, mu1, lv1)                 # discriminator frozen here
        vae_opt.zero_grad(); vae_loss.backward(); vae_opt.step()
        d_loss = loss_fn.discriminator_loss(z1.detach(), z2.detach())
        d_opt.zero_grad(); d_loss.backward(); d_opt.step()

    ``forward`` does not train the discriminator (its parameters get no gradient from it).
    """

    def __init__(self, gamma: float = 6.4, discriminator: nn.Module | None = None, latent_dim: int | None = None):
        super().__init__()
        self.gamma = _check_weight("gamma", gamma)
        if discriminator is None:
            if latent_dim is None:
                raise ValueError("pass latent_dim (for the default discriminator) or a discriminator module")
            _check_int("latent_dim", latent_dim, minimum=1)
            discriminator = default_discriminator(latent_dim)
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be an nn.Module, got {type(discriminator).__name__}")
        self.discriminator = discriminator
        self.last: FactorVAETerms | None = None

    def tc_estimate(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(z)
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(f"the discriminator must return [M, 2] logits, got {tuple(logits.shape)}")
        return (logits[:, 0] - logits[:, 1]).mean()

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        _check_batch(z, mu, logvar)
        kl = gaussian_kl(mu, logvar).mean()
        params = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:  # the VAE step must not move the discriminator
            p.requires_grad_(False)
        try:
            tc = self.tc_estimate(z)
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
        self.last = FactorVAETerms(kl.detach(), tc.detach())
        return kl + self.gamma * tc

    def discriminator_loss(self, z_first: torch.Tensor, z_second: torch.Tensor, generator=None) -> torch.Tensor:
        """Cross-entropy of the discriminator: z_first (a batch of q(z)) labelled 0, the
        dimension-wise permutation of z_second (an independent batch) labelled 1."""
        if z_first.ndim != 2 or z_second.ndim != 2 or z_first.shape[1] != z_second.shape[1]:
            raise ValueError("z_first and z_second must be [M, D] batches with the same D")
        z_first, z_second = z_first.detach(), z_second.detach()
        real = self.discriminator(z_first)
        fake = self.discriminator(permute_dims(z_second, generator))
        zeros = torch.zeros(real.shape[0], dtype=torch.long, device=real.device)
        ones = torch.ones(fake.shape[0], dtype=torch.long, device=fake.device)
        return 0.5 * (F.cross_entropy(real, zeros) + F.cross_entropy(fake, ones))
