r"""The reference: the math, written once, and its literal pure-PyTorch evaluation, the ground truth
every fused backend is tested against (the backend "torch", ``backends/torch_ref.py``, runs it);
and the priors of the dimension-wise KL.

The math (written once, here)
-----------------------------
Queries ``z`` [M, D]; diagonal components ``mu``, ``logvar`` [K, D] of the posterior family
(``family=``): "normal" (the default; ``logvar`` the log-variance log σ²) or "laplace" (``logvar``
holds the log-scale b = log(scale), not a log-variance: a Laplace's variance is 2·e^{2b})::

    normal:   l[i,j,d]  = -0.5 * ((z[i,d] - mu[j,d])**2 * exp(-logvar[j,d]) + logvar[j,d] + log(2*pi))
    laplace:  l[i,j,d]  = -|z[i,d] - mu[j,d]| * exp(-b[j,d]) - b[j,d] - log(2)      (b = logscale)
    w[i,j]          = structured log importance weight (see tcvae_kernels.estimators)
    log_qz[i]       = logsumexp_j( sum_d l[i,j,d] + w[i,j] )          # log q(z_i)
    log_qz_dims[i,d]= logsumexp_j( l[i,j,d] + w[i,j] )                # log q(z_id)

With upstream gradients ``a_i = dL/dlog_qz[i]`` and ``b_id = dL/dlog_qz_dims[i,d]``::

    P[i,j]   = exp(sum_d l[i,j,d] + w[i,j] - log_qz[i])              # joint softmax over j
    Q[i,j,d] = exp(l[i,j,d] + w[i,j] - log_qz_dims[i,d])             # marginal softmax over j
    G[i,j,d] = a_i * P[i,j] + b_id * Q[i,j,d]
    dL/dz[i,d]      = -sum_j G * (z_id - mu_jd) * exp(-logvar_jd)
    dL/dmu[j,d]     =  sum_i G * (z_id - mu_jd) * exp(-logvar_jd)
    dL/dlogvar[j,d] =  sum_i G * (0.5 * (z_id - mu_jd)**2 * exp(-logvar_jd) - 0.5)
    laplace: (z_id - mu_jd) * exp(-logvar_jd) becomes sign(z_id - mu_jd) * exp(-b_jd) in dz and dmu
    (at z_id = mu_jd the subgradient 0, torch's d|x|/dx at 0), dL/db[j,d] = sum_i G * (|z_id - mu_jd| * exp(-b_jd) - 1)

For a partition of the dimensions into groups (HFVAE, Esmaeili et al. 2019), with upstream
``c_ig = dL/dlog_qz_groups[i,g]`` and g(d) the group holding d::

    log_qz_groups[i,g] = logsumexp_j( sum_{d in g} l[i,j,d] + w[i,j] )  # log q(z_i,g)
    R[i,j,g] = exp(sum_{d in g} l[i,j,d] + w[i,j] - log_qz_groups[i,g])
    G[i,j,d] += c_i,g(d) * R[i,j,g(d)]                                  # then dz, dmu, dlogvar as above

The β-TCVAE decomposition (Chen et al. 2018) of the batch, with ``z_i`` drawn from component i::

    log_qz_x[i] = sum_d l[i,i,d]                 log_pz[i] = log p(z_i)   (the prior, below)
    MI     = mean_i(log_qz_x - log_qz)
    TC     = mean_i(log_qz - sum_d log_qz_dims)
    dim_KL = mean_i(sum_d log_qz_dims - log_pz)

The prior p(z) enters dim_KL only (MI and TC do not depend on it): "normal" (default)
``sum_d log N(z_id; 0, 1)``; "laplace" ``sum_d (-|z_id| - log 2)`` (the standard Laplace of the
authors' ``-dist laplace``); or any object with ``log_prob(z)`` returning [M] or [M, D] (summed over
d), e.g. a ``torch.distributions.Distribution`` or a learned flow, differentiable so it trains.

The estimator's regime: the share of q(z_i)'s mass that its own component carries (s_i = i + offset)::

    self_share[i] = P[i, s_i] = exp(log_qz_x[i] + w[i, s_i] - log_qz[i])      # in (0, 1]

Near 1 (posteriors sharp against the spacing of the batch), log_qz ≈ log_qz_x + w_self: MI ≈
-w_self - const (log N for MSS) and the TC estimate is biased low, often negative.

The reference evaluates the formulas literally on row chunks of ``z`` ([C, K, D] at a time) so
memory stays O(C·K·D) at any M; when gradients are needed each chunk is checkpointed
(recomputed in the backward pass), so autograd is exact and the backward's memory is bounded too.
It runs on any device; float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import math
from typing import Protocol, Union

import torch
from torch.utils.checkpoint import checkpoint

from ._validation import accumulation_dtype
from .estimators import LogWeights, weight_matrix
from .families import FAMILIES, LOG_2PI, Family, get_family  # noqa: F401  (LOG_2PI: the benchmarks' formula)

#: Elements of the [C, K, D] chunk tensor evaluated at once (about 16 MiB in float32).
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, family: str = "normal") -> torch.Tensor:
    """Elementwise l = log N(z; mu, exp(logvar)), or for "laplace" log Laplace(z; mu, exp(logscale))
    with ``logvar`` holding the log-scale (module docstring); broadcasting. The family's
    :meth:`~tcvae_kernels.families.PosteriorFamily.log_density`."""
    return get_family(family).log_density(z, mu, logvar)


def _chunk(z_c: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, w_c: torch.Tensor, family: str = "normal"):
    # z_c [C, D], mu/logvar [K, D], w_c [C, K]  ->  log_qz [C], log_qz_dims [C, D]
    l = log_density(z_c[:, None, :], mu[None, :, :], logvar[None, :, :], family)  # [C, K, D]
    log_qz = torch.logsumexp(l.sum(dim=2) + w_c, dim=1)
    log_qz_dims = torch.logsumexp(l + w_c[:, :, None], dim=1)
    return log_qz, log_qz_dims


def _chunk_base2(z_c: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, w_c: torch.Tensor,
                 family: str = "normal"):
    # The same in base 2: exponents l·log2(e) (how the fused kernels hold them), logsumexp via exp2/log2.
    log2e = 1.0 / math.log(2.0)
    l2 = log_density(z_c[:, None, :], mu[None, :, :], logvar[None, :, :], family) * log2e  # [C, K, D]
    w2 = w_c * log2e

    def lse2(x, dim):
        top = x.amax(dim=dim, keepdim=True).detach()
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return (top.squeeze(dim) + torch.log2(torch.exp2(x - top).sum(dim=dim))) * math.log(2.0)

    return lse2(l2.sum(dim=2) + w2, 1), lse2(l2 + w2[:, :, None], 1)


def log_qz_reference(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    weights: LogWeights,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    base2: bool = False,
    family: str = "normal",
    grad_components: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_qz [M], log_qz_dims [M, D])`` in the accumulation dtype (float64 or float32).

    Inputs are assumed validated. Differentiable by plain autograd. ``base2=True`` evaluates the
    same formulas with exponents in base 2 (a second, equally valid float32 evaluation, used by the
    tests' tolerance rule: rounding depends on the binade the exponents fall in).
    ``grad_components=n``: the components from n on are constants to autograd (their d/dmu,
    d/dlogvar are 0), as the fused backends' backward leaves their columns out.
    """
    acc = accumulation_dtype(z.dtype)
    z, mu, logvar = z.to(acc), mu.to(acc), logvar.to(acc)
    if grad_components is not None and grad_components < mu.shape[0]:
        n = grad_components
        mu, logvar = (torch.cat([t[:n], t[n:].detach()]) for t in (mu, logvar))
    m, d = z.shape
    k = mu.shape[0]
    rows = max(1, chunk_elements // max(1, k * d))
    grad = torch.is_grad_enabled() and (z.requires_grad or mu.requires_grad or logvar.requires_grad)
    chunk_fn = _chunk_base2 if base2 else _chunk
    outs_q, outs_d = [], []
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        w_c = weight_matrix(weights, stop - start, k, row_start=start, dtype=acc, device=z.device)
        if grad and rows < m:
            q, qd = checkpoint(chunk_fn, z[start:stop], mu, logvar, w_c, family, use_reentrant=False)
        else:
            q, qd = chunk_fn(z[start:stop], mu, logvar, w_c, family)
        outs_q.append(q)
        outs_d.append(qd)
    if len(outs_q) == 1:
        return outs_q[0], outs_d[0]
    return torch.cat(outs_q), torch.cat(outs_d)


#: The named priors, the standard member (mu = 0, log-parameter 0) of each posterior family.
PRIORS = FAMILIES


class Prior(Protocol):
    """A prior p(z) for the dimension-wise KL: anything with ``log_prob(z [M, D]) -> [M] or [M, D]``
    (a ``torch.distributions.Distribution``, a learned flow module)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor: ...


#: ``prior=``: "normal" (standard Normal, the default), "laplace" (standard Laplace) or a :class:`Prior`
PriorArg = Union[Family, Prior]


def check_prior(prior) -> None:
    """Raises ValueError for an unknown prior name, TypeError for an object without ``log_prob``."""
    if isinstance(prior, str):
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS} or an object with log_prob(z), got {prior!r}")
    elif not callable(getattr(prior, "log_prob", None)):
        raise TypeError(f"prior must be one of {PRIORS} or an object with a log_prob(z) method, got {type(prior).__name__}")


def log_prior(z: torch.Tensor, prior="normal") -> torch.Tensor:
    """``log p(z_i)`` [M] for z [M, D] (module docstring: the priors).

    Args:
        z: [M, D].
        prior: "normal", "laplace", or an object with ``log_prob(z)`` returning [M] or [M, D].

    Returns:
        [M], z's dtype (an object's result is summed over d and cast).

    Raises:
        ValueError: an unknown prior name, or ``log_prob`` returning another shape.
        TypeError: a prior that is neither a name nor has a ``log_prob`` method.
    """
    check_prior(prior)
    if isinstance(prior, str):
        zero = z.new_zeros(())
        return get_family(prior).log_density(z, zero, zero).sum(dim=1)
    lp = prior.log_prob(z)
    if not isinstance(lp, torch.Tensor) or lp.shape not in (z.shape, z.shape[:1]):
        raise ValueError(f"prior.log_prob(z) must return [M] or [M, D] = {list(z.shape)} for z [M, D], "
                         f"got {list(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__}")
    return (lp.sum(dim=1) if lp.dim() == 2 else lp).to(z.dtype)


def log_qz_x_and_log_pz(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, offset: int = 0, prior="normal",
                        family: str = "normal"):
    """``log q(z_i | x_i) = sum_d l[i, i+offset, d]`` and ``log p(z_i)`` (:func:`log_prior`), [M] each,
    in the accumulation dtype. O(M·D)."""
    acc = accumulation_dtype(z.dtype)
    m = z.shape[0]
    z = z.to(acc)
    mu_own = mu[offset : offset + m].to(acc)
    lv_own = logvar[offset : offset + m].to(acc)
    log_qz_x = log_density(z, mu_own, lv_own, family).sum(dim=1)
    return log_qz_x, log_prior(z, prior)


def self_share_reference(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, weights: LogWeights,
                         family: str = "normal") -> torch.Tensor:
    """``self_share [M]`` by its definition, the joint softmax over all K components at each query's own
    one, from the dense [M, K] weights (float64 for the tests; O(M·K·D) memory)."""
    acc = accumulation_dtype(z.dtype)
    z, mu, logvar = z.to(acc), mu.to(acc), logvar.to(acc)
    m, k = z.shape[0], mu.shape[0]
    s = log_density(z[:, None], mu[None], logvar[None], family).sum(dim=2) + weight_matrix(weights, m, k, dtype=acc,
                                                                                   device=z.device)
    own = torch.arange(m, device=z.device) + weights.offset
    return torch.softmax(s, dim=1)[torch.arange(m, device=z.device), own]
