"""``BetaTCVAELoss``: the weighted KL penalty of β-TCVAE as an ``nn.Module``."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ._validation import _check_int, check_estimator
from .api import Decomposition, decompose
from .dispatch import check_backend_name


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


class BetaTCVAELoss(nn.Module):
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
    ):
        super().__init__()
        check_estimator(estimator, dataset_size)
        check_backend_name(backend)
        _check_int("warmup_steps", warmup_steps, minimum=0)
        self.dataset_size = dataset_size
        self.alpha = _check_weight("alpha", alpha)
        self.beta = _check_weight("beta", beta)
        self.gamma = _check_weight("gamma", gamma)
        self.estimator = estimator
        self.backend = backend
        self.warmup_steps = warmup_steps
        self.check_finite = bool(check_finite)
        self.deterministic = bool(deterministic)
        self.step = 0
        self.last: Decomposition | None = None

    def current_weights(self) -> tuple[float, float, float]:
        """(α, β, γ) in effect for the next call, after warm-up annealing."""
        ramp = 1.0 if self.warmup_steps == 0 else min(1.0, self.step / self.warmup_steps)
        return self.alpha, self.beta * ramp, self.gamma * ramp

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        parts = decompose(
            z,
            mu,
            logvar,
            dataset_size=self.dataset_size,
            estimator=self.estimator,
            backend=self.backend,
            check_finite=self.check_finite,
            deterministic=self.deterministic,
        )
        a, b, g = self.current_weights()
        self.last = Decomposition(*(t.detach() for t in parts))
        if self.training:
            self.step += 1
        return a * parts.mi + b * parts.tc + g * parts.dim_kl

    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state):
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        return (
            f"dataset_size={self.dataset_size}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"estimator={self.estimator!r}, backend={self.backend!r}, warmup_steps={self.warmup_steps}"
        )
