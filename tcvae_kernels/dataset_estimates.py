"""Dataset-level estimates with the fused op: the full-data ELBO decomposition and the latent
entropies behind MIG.

For a data set of N encoder posteriors q(z|x_n) = N(mu_n, exp(logvar_n)) (or, ``family="laplace"``,
Laplace(mu_n, exp(logscale_n)) with the log-scale in place of logvar) the aggregate posterior
is the mixture q(z) = (1/N) Σ_n q(z|x_n) — ``log_qz(..., estimator="uniform")`` with the N
posteriors as the K = N components. Expectations over q(z) are Monte Carlo averages over samples
z_s ~ q(z|x_{n_s}), n_s uniform:

    MI     = E[log q(z|x) - log q(z)]                 (index-code mutual information)
    TC     = E[log q(z) - Σ_d log q(z_d)]
    dim_KL = E[Σ_d log q(z_d) - log p(z)],  p the prior (default N(0, I); reference.log_prior)
    H(z_d) = -E[log q(z_d)],   H(z_d | v_k) = Σ_v p(v_k = v) · H(z_d | v_k = v)

where H(z_d | v_k = v) uses only the posteriors of the data points with factor k equal to v.
Queries go through the op in chunks, so memory is O(chunk·D + N·D) at any N (the public code's
chunked loops materialize chunk × N × D instead).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .progress import progress as _progress
from .api import log_qz
from ._docs import fill_doc
from .families import Family, get_family
from .reference import log_density, log_prior



#: the arguments every chunked estimate here shares, documented once
_common_doc = fill_doc(common="""        chunk: queries per call of the fused op (K = N components each): memory O((chunk + N)·D).
        backend: as for :func:`tcvae_kernels.log_qz`.
        progress: a progress line per chunk.
        family: the posterior family, "normal" or "laplace" (logvar then holds the log-scale).""")

class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error."""

    value: float
    stderr: float


class FullDecomposition(NamedTuple):
    """The data set's decomposition: ``mi``, ``tc``, ``dim_kl`` (each an :class:`Estimate` in nats)
    and ``samples``, the Monte Carlo samples they rest on."""

    mi: Estimate
    tc: Estimate
    dim_kl: Estimate
    samples: int


def _check(mu, logvar):
    if not isinstance(mu, torch.Tensor) or not isinstance(logvar, torch.Tensor):
        raise TypeError("mu and logvar must be torch tensors [N, D]")
    if mu.ndim != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be [N, D], got {tuple(mu.shape)} and {tuple(logvar.shape)}")


def sample_posteriors(mu, logvar, samples: int, generator: torch.Generator | None = None, *, family: Family = "normal"):
    """Samples of the aggregate posterior q(z) = (1/N)·Σ_n q(z | x_n), which every dataset-level
    estimate here draws: idx uniform over the N posteriors, then the family's sampler
    (:meth:`tcvae_kernels.families.PosteriorFamily.sample`): ``z = mu + exp(logvar / 2)·ε`` with
    ε ~ N(0, 1) (normal) or ``z = mu + exp(b)·(E1 - E2)`` with E1, E2 ~ Exp(1), whose difference is
    Laplace(0, 1) (laplace, b the log-scale).

    Args:
        mu, logvar: the N encoder posteriors [N, D] (``family="laplace"``: logvar holds the log-scale).
        samples: S >= 1.
        generator: a CPU ``torch.Generator`` (None: the global RNG).
        family: "normal" or "laplace" (:class:`tcvae_kernels.EstimatorOptions`).

    Returns:
        ``(z [S, D], idx [S])``: idx uniform over the N posteriors, z ~ q(z | x_idx), in mu's dtype.

    Raises:
        TypeError, ValueError: mu/logvar not tensors of one [N, D] shape; samples < 1; an unknown family.
    """
    _check(mu, logvar)
    fam = get_family(family)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n = mu.shape[0]
    idx = torch.randint(0, n, (samples,), generator=generator).to(mu.device)
    return fam.sample(mu[idx], logvar[idx], generator), idx


@torch.no_grad()
@_common_doc
def mixture_log_density(z, mu, logvar, *, chunk: int = 1024, backend: str = "auto", progress: bool = False,
                        family: Family = "normal"):
    """log q(z_s) and log q(z_sd) under the uniform mixture of the N posteriors (the fused op with
    ``estimator="uniform"``, K = N), chunk by chunk of queries.

    Args:
        z: queries [S, D].
        mu, logvar: the N components [N, D].
{common}

    Returns:
        ``(log_qz [S], log_qz_dims [S, D])``, z's dtype.
    """
    outs_q, outs_d = [], []
    for s in _progress(range(0, z.shape[0], chunk), desc="log q(z)", enabled=progress, unit="chunk"):
        q, qd = log_qz(z[s : s + chunk], mu, logvar, estimator="uniform", backend=backend, family=family)
        outs_q.append(q)
        outs_d.append(qd)
    return torch.cat(outs_q), torch.cat(outs_d)


def _estimate(x: torch.Tensor) -> Estimate:
    x = x.double()
    se = x.std().item() / math.sqrt(x.numel()) if x.numel() > 1 else float("nan")
    return Estimate(x.mean().item(), se)


@torch.no_grad()
@_common_doc
def decomposition_from_samples(z, idx, mu, logvar, *, chunk: int = 1024, backend: str = "auto",
                               progress: bool = False, family: Family = "normal", prior="normal") -> FullDecomposition:
    """The data set's MI, TC and dim-KL from given samples of the aggregate posterior:
    ``MI = E[log q(z|x) - log q(z)]``, ``TC = E[log q(z) - Σ_d log q(z_d)]``,
    ``dim_KL = E[Σ_d log q(z_d) - log p(z)]`` with q the mixture of all N posteriors, p the prior.

    Args:
        z: samples [S, D], z_s drawn from q(z | x_idx[s]).
        idx: [S], the posterior each sample was drawn from.
        mu, logvar: the N encoder posteriors [N, D].
{common}
        prior: p(z), as for :func:`tcvae_kernels.decompose` ("normal", "laplace" or a ``log_prob`` object).

    Returns:
        :class:`FullDecomposition`, each term an :class:`Estimate` (mean and standard error over
        the samples, nats), computed in float64.
    """
    _check(mu, logvar)
    lq, lqd = mixture_log_density(z, mu, logvar, chunk=chunk, backend=backend, progress=progress, family=family)
    lq, lqd = lq.double(), lqd.double()
    zz = z.double()
    log_qzx = log_density(zz, mu[idx].double(), logvar[idx].double(), family).sum(1)
    log_pz = log_prior(zz, prior).double()
    sum_dims = lqd.sum(1)
    return FullDecomposition(_estimate(log_qzx - lq), _estimate(lq - sum_dims), _estimate(sum_dims - log_pz), z.shape[0])


@_common_doc
def full_decomposition(mu, logvar, *, samples: int = 10000, generator=None, chunk: int = 1024,
                       backend: str = "auto", progress: bool = False, family: Family = "normal",
                       prior="normal") -> FullDecomposition:
    """Monte Carlo estimates (with standard errors) of MI, TC and dim-KL over the whole data set:
    :func:`sample_posteriors` then :func:`decomposition_from_samples`.

    Args:
        mu, logvar: the encoder posteriors of the N data points [N, D].
        samples: Monte Carlo samples S.
        generator: a CPU ``torch.Generator`` (None: the global RNG).
{common}
        prior: p(z) of dim-KL, as for :func:`tcvae_kernels.decompose`.

    Returns:
        :class:`FullDecomposition` (nats).

    Example:
        >>> import torch
        >>> from tcvae_kernels import dataset_estimates
        >>> mu, logvar = torch.randn(200, 3), torch.full((200, 3), -2.0)
        >>> g = torch.Generator().manual_seed(0)
        >>> full = dataset_estimates.full_decomposition(mu, logvar, samples=500, generator=g, backend="torch")
        >>> full.samples, full.mi.value > 0
        (500, True)
    """
    z, idx = sample_posteriors(mu, logvar, samples, generator, family=family)
    return decomposition_from_samples(z, idx, mu, logvar, chunk=chunk, backend=backend, progress=progress,
                                      family=family, prior=prior)


@torch.no_grad()
@_common_doc
def marginal_entropies(mu, logvar, *, samples: int = 10000, generator=None, chunk: int = 1024,
                       backend: str = "auto", progress: bool = False, family: Family = "normal") -> torch.Tensor:
    """H(z_d), the entropy of each dimension of the aggregate posterior, by Monte Carlo with all N
    components.

    Args:
        mu, logvar: the N encoder posteriors [N, D].
        samples, generator: as :func:`full_decomposition`.
{common}

    Returns:
        [D], float64 (nats).
    """
    z, _ = sample_posteriors(mu, logvar, samples, generator, family=family)
    _, lqd = mixture_log_density(z, mu, logvar, chunk=chunk, backend=backend, progress=progress, family=family)
    return -lqd.double().mean(0)


@torch.no_grad()
@_common_doc
def conditional_entropies(mu, logvar, factors, factor_sizes: Sequence[int], *, samples: int = 10000,
                          generator=None, chunk: int = 1024, backend: str = "auto",
                          progress: bool = False, family: Family = "normal") -> torch.Tensor:
    """H(z_d | v_k): for each factor k and value v, the entropy of the mixture of the posteriors of
    the points with v_k = v (Monte Carlo, ``samples`` samples per value), weighted by the empirical
    p(v_k = v). With :func:`marginal_entropies`, the mutual informations I(z_d; v_k) of the MIG.

    Args:
        mu, logvar: the N encoder posteriors [N, D].
        factors: integer factor values [N, K] (numpy or a tensor), factor k in [0, factor_sizes[k]).
        factor_sizes: K values, the number of values of each factor.
        samples: Monte Carlo samples per factor value.
        generator: a CPU ``torch.Generator`` (None: the global RNG).
{common}

    Returns:
        [K, D], float64 (nats).

    Raises:
        ValueError: factors not [N, K].
    """
    _check(mu, logvar)
    factors = np.asarray(factors)
    if factors.shape != (mu.shape[0], len(factor_sizes)):
        raise ValueError(f"factors must be [N, {len(factor_sizes)}] for N={mu.shape[0]} posteriors, got {factors.shape}")
    n, d = mu.shape
    out = torch.zeros(len(factor_sizes), d, dtype=torch.float64)
    values = [(k, v) for k, size in enumerate(factor_sizes) for v in range(size)]
    for k, v in _progress(values, desc="H(z|v)", enabled=progress, unit="value"):
        sel = np.flatnonzero(factors[:, k] == v)
        if sel.size == 0:
            continue
        sel_t = torch.as_tensor(sel, device=mu.device)
        sub_mu, sub_lv = mu[sel_t], logvar[sel_t]
        h = marginal_entropies(sub_mu, sub_lv, samples=samples, generator=generator, chunk=chunk, backend=backend,
                               family=family)
        out[k] += (sel.size / n) * h.cpu()
    return out


def factor_entropies(factors, factor_sizes: Sequence[int]) -> torch.Tensor:
    """H(v_k), the entropy of each factor's empirical distribution.

    Args:
        factors: integer factor values [N, K].
        factor_sizes: K values, the number of values of each factor.

    Returns:
        [K], float64 (nats).
    """
    factors = np.asarray(factors)
    out = []
    for k, size in enumerate(factor_sizes):
        p = np.bincount(factors[:, k], minlength=size) / factors.shape[0]
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum()))
    return torch.tensor(out, dtype=torch.float64)
