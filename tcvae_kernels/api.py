"""Public functional API: ``log_qz``, ``decompose``, ``total_correlation``.

The formulas are in :mod:`tcvae_kernels.reference`; the weights in :mod:`tcvae_kernels.estimators`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validation import check_estimator_args, check_finite_inputs, check_inputs
from .dispatch import select_backend
from .estimators import log_weights
from .reference import log_qz_x_and_log_pz


class LogQz(NamedTuple):
    """``log_qz`` [M]: log q(z_i); ``log_qz_dims`` [M, D]: log q(z_id)."""

    log_qz: torch.Tensor
    log_qz_dims: torch.Tensor


class Decomposition(NamedTuple):
    """Batch means of the β-TCVAE KL decomposition (scalar tensors)."""

    mi: torch.Tensor
    tc: torch.Tensor
    dim_kl: torch.Tensor


def _log_qz_acc(z, mu, logvar, dataset_size, estimator, backend, check_finite, deterministic=False, *,
                need_own_component=False):
    """Validate, dispatch, and return (log_qz, log_qz_dims) in the accumulation dtype."""
    m, k, _ = check_inputs(z, mu, logvar)
    check_estimator_args(estimator, dataset_size, m, k)
    if need_own_component and m > k:
        raise ValueError(
            f"the decomposition needs each query z_i drawn from component i (M <= K), got M={m} queries "
            f"and K={k} components; pass the batch's own mu/logvar"
        )
    if check_finite:
        check_finite_inputs(z, mu, logvar)
    weights = log_weights(estimator, k, dataset_size)
    return select_backend(backend, z, mu, logvar).log_qz(z, mu, logvar, weights, deterministic=bool(deterministic))


def log_qz(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    dataset_size: int | None = None,
    estimator: str = "mss",
    backend: str = "auto",
    check_finite: bool = False,
    deterministic: bool = False,
) -> LogQz:
    """Minibatch estimates of log q(z_i) and log q(z_id).

    ``log_qz[i] = logsumexp_j(sum_d l[i,j,d] + w[i,j])``, ``log_qz_dims[i,d] = logsumexp_j(l[i,j,d] + w[i,j])``
    with ``l[i,j,d] = log N(z_id; mu_jd, exp(logvar_jd))`` and the estimator's log weights ``w``.

    Args:
        z: queries [M, D]. mu, logvar: components [K, D] (K = M for a minibatch; K != M allowed).
        dataset_size: N, the number of training examples (required by "mss" and "mws").
        estimator: "mss" (stratified), "mws" (weighted) or "uniform" (plain mixture, -log K).
        backend: "auto", "torch", "cpu", "cuda" or "triton".
        check_finite: raise ValueError on NaN/inf inputs (a device sync on GPUs); otherwise
            non-finite inputs propagate to the outputs.
        deterministic: bitwise reproducible gradients on backends whose fast backward uses
            atomics (Triton: a second pass instead, about 2× the backward's cost). The CPU kernel
            and the reference are always deterministic.

    Returns:
        ``LogQz(log_qz [M], log_qz_dims [M, D])`` in the input dtype (computed in float32 for
        float16/bfloat16, float64 for float64). Differentiable w.r.t. all three inputs.
    """
    lqz, lqzd = _log_qz_acc(z, mu, logvar, dataset_size, estimator, backend, check_finite, deterministic)
    return LogQz(lqz.to(z.dtype), lqzd.to(z.dtype))


def decompose(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    dataset_size: int | None = None,
    estimator: str = "mss",
    backend: str = "auto",
    check_finite: bool = False,
    deterministic: bool = False,
) -> Decomposition:
    """β-TCVAE decomposition of the batch: ``(mi, tc, dim_kl)`` scalar tensors, differentiable.

    ``MI = mean_i(log q(z_i|x_i) - log q(z_i))``, ``TC = mean_i(log q(z_i) - sum_d log q(z_id))``,
    ``dim_KL = mean_i(sum_d log q(z_id) - log p(z_i))`` with p = N(0, I); z_i must be drawn from
    component i (M <= K). Results are in the accumulation dtype (float32, or float64 for float64
    inputs) so the differences keep their precision. Arguments as for :func:`log_qz`.
    """
    lqz, lqzd = _log_qz_acc(
        z, mu, logvar, dataset_size, estimator, backend, check_finite, deterministic, need_own_component=True
    )
    lqzx, lpz = log_qz_x_and_log_pz(z, mu, logvar)
    sum_dims = lqzd.sum(dim=1)
    return Decomposition(
        mi=(lqzx - lqz).mean(),
        tc=(lqz - sum_dims).mean(),
        dim_kl=(sum_dims - lpz).mean(),
    )


def total_correlation(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    dataset_size: int | None = None,
    estimator: str = "mss",
    backend: str = "auto",
    check_finite: bool = False,
    deterministic: bool = False,
) -> torch.Tensor:
    """``TC = mean_i(log q(z_i) - sum_d log q(z_id))``, a differentiable scalar (accumulation dtype)."""
    lqz, lqzd = _log_qz_acc(z, mu, logvar, dataset_size, estimator, backend, check_finite, deterministic)
    return (lqz - lqzd.sum(dim=1)).mean()
