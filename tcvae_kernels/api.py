"""Public functional API: ``log_qz``, ``decompose``, ``total_correlation``.

The formulas are in :mod:`tcvae_kernels.reference`; the weights in :mod:`tcvae_kernels.estimators`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple, Union, Unpack

import torch

from ._host import check_finite
from ._validation import autocast_active, check_estimator_args, check_inputs, normalize_groups
from .bank import check_bank_fits
from .dispatch import select_backend
from .distributed import gather_components
from .estimators import LogWeights, log_weights
from .options import EstimatorKwargs, EstimatorOptions, options_doc, resolve_options
from .reference import Prior, PriorArg, log_density, log_qz_x_and_log_pz  # noqa: F401  (Prior: tk.Prior)


#: a partition of the D dimensions: sizes ``[2, 3, 5]`` or index lists ``[[0, 3], [1, 2, 4]]``
Groups = Union[Sequence[int], Sequence[Sequence[int]]]


class LogQz(NamedTuple):
    """What :func:`log_qz` returns: ``log_qz`` [M], the estimates of log q(z_i), and ``log_qz_dims``
    [M, D], those of log q(z_id); in the inputs' dtype (float32 under autocast)."""

    log_qz: torch.Tensor
    log_qz_dims: torch.Tensor


class LogQzGroups(NamedTuple):
    """As :class:`LogQz`, plus ``log_qz_groups`` [M, G]: log q(z_i,g) of each group of dimensions."""

    log_qz: torch.Tensor
    log_qz_dims: torch.Tensor
    log_qz_groups: torch.Tensor


class Decomposition(NamedTuple):
    """Batch means of the β-TCVAE KL decomposition, scalar tensors in the accumulation dtype
    (float32, float64 for float64 inputs): ``mi`` (index-code mutual information), ``tc`` (total
    correlation), ``dim_kl`` (dimension-wise KL to the prior); MI + TC + dim-KL =
    mean_i(log q(z_i|x_i) - log p(z_i)). Formulas: :func:`decompose`."""

    mi: torch.Tensor
    tc: torch.Tensor
    dim_kl: torch.Tensor


class GroupedDecomposition(NamedTuple):
    """Batch means of the grouped (HFVAE) KL decomposition (scalar tensors):
    MI + tc_between + tc_within + dim_kl = mean_i(log q(z_i|x_i) - log p(z_i))."""

    mi: torch.Tensor
    tc_between: torch.Tensor
    tc_within: torch.Tensor
    dim_kl: torch.Tensor


def _under_autocast(fn):
    """Run ``fn(z, mu, logvar, ...)`` in float32 with autocast off when an autocast region is active
    for z's device (float16/bfloat16 inputs upcast, differentiably): the estimates are logsumexps
    over M·D log densities, an "autocast to float32" kind of op, like torch's softmax and logsumexp."""

    @functools.wraps(fn)
    def wrapped(z, mu, logvar, *args, **kwargs):
        if not (isinstance(z, torch.Tensor) and autocast_active(z)):
            return fn(z, mu, logvar, *args, **kwargs)
        up = [t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16) else t
              for t in (z, mu, logvar)]
        with torch.autocast(z.device.type, enabled=False):
            return fn(*up, *args, **kwargs)

    return wrapped


class _Estimate(NamedTuple):
    lqz: torch.Tensor  # [M]
    lqzd: torch.Tensor  # [M, D]
    lqg: torch.Tensor | None  # [M, G] with groups
    weights: LogWeights
    batch: tuple[torch.Tensor, torch.Tensor]  # the (global) batch's (mu, logvar) [M_global, D]: what a bank takes


def _with_bank(be, z, mu, logvar, bank, opts: EstimatorOptions, offset: int, index, det: bool) -> _Estimate:
    """The estimate against the components ``[batch; bank]``, K = M_global + bank.size: the rows the
    bank has not filled yet are components of zero density (:meth:`ComponentBank.estimate_rows`)
    and the weights are those of the K = M_global + filled components present, computed on the
    device from the bank's fill level (no host read, no shape that changes while the bank fills).
    "mws" and "uniform" weight every component alike: their weight is added to the kernel's sums.
    "mss": the kernel sums the other components (its self and next weights -inf), and the self and
    next terms, [M, D] densities, are added here with their weights; the next component of the last
    global query is the first bank row, or (an empty bank, whose K wraps) the batch's first
    component: that row's estimate is then the batch-only one. Exact up to rounding; the bank rows
    carry no gradient, and the backward computes none for them (``grad_components``: the columns of
    the batch's M_global components only)."""
    m_global = mu.shape[0]
    bank.check_like(mu, "mu (the batch's components; under torch.autocast the estimate runs in float32, so push "
                        "float32 components)")
    bmu, blv = bank.estimate_rows()
    comp_mu, comp_lv = torch.cat([mu, bmu]), torch.cat([logvar, blv])
    w = log_weights(opts.estimator, m_global + bank.filled, opts.dataset_size, offset)
    fam = opts.family

    def fused(zq, cm, cl, weights, grad_components=None):
        kw = dict(deterministic=det, family=fam, grad_components=grad_components)
        if index is None:
            return (*be.log_qz(zq, cm, cl, weights, **kw), None)
        return be.log_qz_groups(zq, cm, cl, weights, index, **kw)

    def grouped(l):  # [M, D] -> [M, G] sums over each group's dimensions
        return torch.stack([l[:, g].sum(dim=1) for g in index], dim=1)

    if opts.estimator != "mss":
        q, qd, qg = fused(z, comp_mu, comp_lv, LogWeights(0.0, 0.0, 0.0, offset), m_global)
        acc = q.dtype
        wo = w.w_other.to(acc)
        return _Estimate(q + wo, qd + wo, None if qg is None else qg + wo, w, (mu, logvar))
    q, qd, qg = fused(z, comp_mu, comp_lv, LogWeights(float("-inf"), float("-inf"), 0.0, offset), m_global)
    acc = q.dtype
    # s_i = offset + i; next: s_i + 1 (< K: no wrap, S >= 1), the first bank row after the batch's last.
    # Slices of the batch (not of the [K, D] concatenation: their backward would fill [K, D] zeros).
    rows = slice(offset, offset + z.shape[0])
    nxt = slice(offset + 1, offset + z.shape[0] + 1)
    l_self = log_density(z.to(acc), mu[rows].to(acc), logvar[rows].to(acc), fam)
    l_next = log_density(z.to(acc), torch.cat([mu, bmu[:1]])[nxt].to(acc), torch.cat([logvar, blv[:1]])[nxt].to(acc), fam)
    ws, wn, wo = float(w.w_self), w.w_next.to(acc), w.w_other.to(acc)

    def combine(kernel, own, nxt):  # log(e^{w_o}·kernel + e^{w_s}·own + e^{w_n}·next), elementwise
        return torch.logsumexp(torch.stack([kernel + wo, own + ws, nxt + wn]), dim=0)

    q = combine(q, l_self.sum(dim=1), l_next.sum(dim=1))
    qd = combine(qd, l_self, l_next)
    qg = None if qg is None else combine(qg, grouped(l_self), grouped(l_next))
    if offset + z.shape[0] == m_global:  # this rank holds the global last query: an empty bank wraps its next
        alone = fused(z[-1:], mu, logvar, log_weights("mss", m_global, opts.dataset_size, m_global - 1))
        empty = bank.filled == 0
        q, qd = (torch.cat([t[:-1], torch.where(empty, a.to(acc), t[-1:])]) for t, a in zip((q, qd), alone))
        if qg is not None:
            qg = torch.cat([qg[:-1], torch.where(empty, alone[2].to(acc), qg[-1:])])
    return _Estimate(q, qd, qg, w, (mu, logvar))


def _log_qz_acc(z, mu, logvar, opts: EstimatorOptions, *, need_own_component=False, groups=None) -> _Estimate:
    """Validate, dispatch, and return (log_qz, log_qz_dims, log_qz_groups or None, the weights) in
    the accumulation dtype (groups: :meth:`Backend.log_qz_groups`). With a process group the
    components are those of the global batch (tcvae_kernels.distributed); with a materialized bank,
    those and the bank's (:func:`_with_bank`)."""
    if opts.process_group is not None and z.ndim == 2 and z.shape[0] == 0:
        gather_components(mu, logvar, opts.process_group)  # an empty rank: raise on every rank, in the collective
    m, k, _ = check_inputs(z, mu, logvar)
    opts.validate()
    if need_own_component and m > k:
        raise ValueError(
            f"the decomposition needs each query z_i drawn from component i (M <= K), got M={m} queries "
            f"and K={k} components; pass the batch's own mu/logvar"
        )
    index = normalize_groups(groups, z.shape[1]) if groups is not None else None
    if opts.check_finite:
        check_finite((z, mu, logvar), ("z", "mu", "logvar"))
    offset = 0
    if opts.process_group is not None:
        mu, logvar, offset = gather_components(mu, logvar, opts.process_group)
    bank = opts.bank if opts.bank is not None and opts.bank.materialized else None
    k = mu.shape[0] + (bank.size if bank is not None else 0)
    n = opts.dataset_size
    if bank is not None:
        check_bank_fits(mu.shape[0], bank.size, n, opts.estimator)
    check_estimator_args(opts.estimator, n, m, k, offset)
    if bank is not None and opts.estimator == "mss" and mu.shape[0] < 2:
        raise ValueError("estimator='mss' with a bank needs a (global) batch of at least 2 components: the first "
                         "estimate, before anything is pushed, has only the batch's")
    det = bool(opts.deterministic)
    be = select_backend(opts.backend, z, mu, logvar)
    if bank is not None:
        return _with_bank(be, z, mu, logvar, bank, opts, offset, index, det)
    weights = log_weights(opts.estimator, k, n, offset)
    fam = opts.family
    if index is None:
        return _Estimate(*be.log_qz(z, mu, logvar, weights, deterministic=det, family=fam), None, weights, (mu, logvar))
    return _Estimate(*be.log_qz_groups(z, mu, logvar, weights, index, deterministic=det, family=fam), weights,
                     (mu, logvar))


@options_doc
def log_qz(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, groups: Groups | None = None,
           options: EstimatorOptions | None = None, **estimator_options: Unpack[EstimatorKwargs]) -> LogQz | LogQzGroups:
    """Minibatch estimates of log q(z_i) and log q(z_id).

    ``log_qz[i] = logsumexp_j(sum_d l[i,j,d] + w[i,j])``, ``log_qz_dims[i,d] = logsumexp_j(l[i,j,d] + w[i,j])``
    with ``l[i,j,d] = log N(z_id; mu_jd, exp(logvar_jd))`` (``family="laplace"``:
    ``-|z_id - mu_jd|·exp(-logvar_jd) - logvar_jd - log 2``, the third argument a log-scale) and the
    estimator's log weights ``w``.

    Args:
        z: queries [M, D]. mu, logvar: components [K, D] (K = M for a minibatch; K != M allowed);
            with ``family="laplace"`` the third argument is the log-scale b, not a log-variance.
        groups: optional partition of the D dimensions (sizes ``[2, 3, 5]`` or index lists
            ``[[0, 3], [1, 2, 4]]``); adds ``log_qz_groups[i, g] = logsumexp_j(sum_{d in g} l[i,j,d] + w[i,j])``,
            computed by the same backend on each group's dimension slice (groups of one dimension
            are free: they equal log_qz_dims).
{options}

    Returns:
        ``LogQz(log_qz [M], log_qz_dims [M, D])`` — or ``LogQzGroups(..., log_qz_groups [M, G])``
        with ``groups`` — in the input dtype (computed in float32 for float16/bfloat16, float64 for
        float64). Inside a ``torch.autocast`` region for the inputs' device, float16/bfloat16
        inputs are upcast and the results are float32 (autocast's rule for softmax-like ops); the
        fused ops themselves are registered to do the same when called directly. Differentiable
        w.r.t. all three inputs.

    Raises:
        TypeError: an input that is no floating tensor, inputs of different dtypes or devices, an
            unknown option keyword.
        ValueError: a malformed shape, option or partition, naming the argument.

    Example:
        >>> import torch, tcvae_kernels as tk
        >>> z = mu = logvar = torch.zeros(4, 2)
        >>> out = tk.log_qz(z, mu, logvar, dataset_size=10, estimator="mws")
        >>> out.log_qz.shape, out.log_qz_dims.shape
        (torch.Size([4]), torch.Size([4, 2]))
    """
    opts = resolve_options(options, dict(estimator_options))
    out = z.dtype if not (isinstance(z, torch.Tensor) and autocast_active(z)) else torch.promote_types(z.dtype, torch.float32)
    lqz, lqzd, lqg, *_ = _under_autocast(_log_qz_acc)(z, mu, logvar, opts, groups=groups)
    if lqg is None:
        return LogQz(lqz.to(out), lqzd.to(out))
    return LogQzGroups(lqz.to(out), lqzd.to(out), lqg.to(out))


def _self_share(log_qz_x: torch.Tensor, est: _Estimate) -> torch.Tensor:
    """self_share [M] = exp(log q(z_i|x_i) + w_self - log q(z_i)) (reference.py), from the outputs
    every backend returns: O(M) work after the pass. Rounding can put the exponent a few ulp above
    0; the share is 1 then."""
    return torch.exp((log_qz_x + est.weights.w_self - est.lqz).clamp(max=0.0))


@_under_autocast
def _decompose(z, mu, logvar, opts: EstimatorOptions,
               prior: PriorArg = "normal") -> tuple[Decomposition, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(the decomposition, self_share [M], the (global) batch's components) from one pass (the
    losses use all three: the last is what they push into their bank)."""
    est = _log_qz_acc(z, mu, logvar, opts, need_own_component=True)
    lqzx, lpz = log_qz_x_and_log_pz(z, mu, logvar, prior=prior, family=opts.family)  # validates the prior
    sum_dims = est.lqzd.sum(dim=1)
    parts = Decomposition(mi=(lqzx - est.lqz).mean(), tc=(est.lqz - sum_dims).mean(), dim_kl=(sum_dims - lpz).mean())
    return parts, _self_share(lqzx, est), est.batch


@_under_autocast
def _grouped_decompose(z, mu, logvar, opts: EstimatorOptions, groups, prior: PriorArg = "normal"
                       ) -> tuple[GroupedDecomposition, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    est = _log_qz_acc(z, mu, logvar, opts, need_own_component=True, groups=groups)
    lqzx, lpz = log_qz_x_and_log_pz(z, mu, logvar, prior=prior, family=opts.family)
    sum_dims, sum_groups = est.lqzd.sum(dim=1), est.lqg.sum(dim=1)
    parts = GroupedDecomposition(
        mi=(lqzx - est.lqz).mean(),
        tc_between=(est.lqz - sum_groups).mean(),
        tc_within=(sum_groups - sum_dims).mean(),
        dim_kl=(sum_dims - lpz).mean(),
    )
    return parts, _self_share(lqzx, est), est.batch


@options_doc
def decompose(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, prior: PriorArg = "normal",
              options: EstimatorOptions | None = None, **estimator_options: Unpack[EstimatorKwargs]) -> Decomposition:
    """β-TCVAE decomposition of the batch: ``(mi, tc, dim_kl)`` scalar tensors, differentiable.

    ``MI = mean_i(log q(z_i|x_i) - log q(z_i))``, ``TC = mean_i(log q(z_i) - sum_d log q(z_id))``,
    ``dim_KL = mean_i(sum_d log q(z_id) - log p(z_i))`` with p the prior; z_i must be drawn from
    component i (M <= K). Results are in the accumulation dtype (float32, or float64 for float64
    inputs) so the differences keep their precision. With a ``process_group`` the means are over
    this rank's queries, estimated against the global batch (average them over ranks — DDP's
    gradient averaging does — for the global-batch mean).

    Args:
        z: queries [M, D]. mu, logvar: the batch's components [K, D], K >= M.
        prior: p(z) of dim_KL (MI and TC do not depend on it): "normal" (N(0, I)), "laplace"
            (standard Laplace), or an object with ``log_prob(z)`` returning [M] or [M, D] — a
            ``torch.distributions.Distribution``, a learned flow (gradients reach its parameters).
{options}

    Returns:
        :class:`Decomposition` ``(mi, tc, dim_kl)``, differentiable scalar tensors.

    Raises:
        TypeError: as :func:`log_qz`; a prior that is neither a name nor has ``log_prob``.
        ValueError: as :func:`log_qz`; M > K (z_i must be drawn from component i); an unknown
            prior name, or a ``log_prob`` of another shape.

    Example:
        >>> import torch, tcvae_kernels as tk
        >>> mu, logvar = torch.zeros(8, 3), torch.zeros(8, 3)
        >>> z = mu + torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
        >>> parts = tk.decompose(z, mu, logvar, dataset_size=100)
        >>> [t.dim() for t in parts]  # mi, tc, dim_kl: scalars
        [0, 0, 0]
    """
    return _decompose(z, mu, logvar, resolve_options(options, dict(estimator_options)), prior)[0]


@options_doc
def self_share(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, options: EstimatorOptions | None = None,
               **estimator_options: Unpack[EstimatorKwargs]) -> torch.Tensor:
    """The estimator's regime per query: the share of the minibatch estimate of q(z_i) that query
    i's own component carries, ``self_share[i] = exp(log q(z_i|x_i) + w_self - log q(z_i))`` in (0, 1]
    ([M], accumulation dtype; z_i drawn from component i, M <= K).

    Near 1, each q(z_i) is its own posterior alone (posteriors sharp against the spacing of the
    batch): the MI estimate sits near -w_self (log N for "mss") and the TC estimate is biased low,
    often negative, so a TC penalty acts on information more than on dependence between the
    dimensions. A larger batch, the global batch across ranks (``process_group``) or a
    ``dataset_size`` that matches the data actually sampled lower it. The losses report its batch
    mean in ``loss.last.self_share`` (from the same pass) and warn when it is high (docs/estimators.md: "Why
    is my TC negative?").

    Args:
        z: queries [M, D]. mu, logvar: the batch's components [K, D], K >= M.
{options}

    Returns:
        self_share [M], in (0, 1], in the accumulation dtype (a diagnostic; differentiable like the
        rest).
    """
    return _decompose(z, mu, logvar, resolve_options(options, dict(estimator_options)))[1]


@options_doc
def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
                      options: EstimatorOptions | None = None, **estimator_options: Unpack[EstimatorKwargs]) -> torch.Tensor:
    """``TC = mean_i(log q(z_i) - sum_d log q(z_id))``, a differentiable scalar (accumulation dtype).

    Args:
        z: queries [M, D]. mu, logvar: components [K, D].
{options}

    Returns:
        TC, a differentiable scalar tensor in the accumulation dtype.
    """
    return _total_correlation(z, mu, logvar, resolve_options(options, dict(estimator_options)))


@_under_autocast
def _total_correlation(z, mu, logvar, opts: EstimatorOptions) -> torch.Tensor:
    est = _log_qz_acc(z, mu, logvar, opts)
    return (est.lqz - est.lqzd.sum(dim=1)).mean()


@options_doc
def grouped_decompose(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, groups: Groups,
                      prior: PriorArg = "normal", options: EstimatorOptions | None = None,
                      **estimator_options: Unpack[EstimatorKwargs]) -> GroupedDecomposition:
    """HFVAE decomposition (Esmaeili et al. 2019) for a partition of the dimensions into groups:

    ``MI = mean_i(log q(z_i|x_i) - log q(z_i))``,
    ``tc_between = mean_i(log q(z_i) - sum_g log q(z_i,g))``  (TC between the groups),
    ``tc_within = mean_i(sum_g log q(z_i,g) - sum_d log q(z_id))``  (TC inside the groups),
    ``dim_KL = mean_i(sum_d log q(z_id) - log p(z_i))``.
    With singleton groups tc_within = 0 and tc_between = TC: the β-TCVAE decomposition.

    Args:
        z: queries [M, D]. mu, logvar: the batch's components [K, D], K >= M.
        groups: the partition, as sizes ``[2, 3, 5]`` or index lists ``[[0, 3], [1, 2, 4]]``.
        prior: p(z) of dim_KL, as for :func:`decompose`.
{options}

    Returns:
        :class:`GroupedDecomposition` ``(mi, tc_between, tc_within, dim_kl)``, differentiable
        scalar tensors in the accumulation dtype.

    Raises:
        ValueError: groups that are not a partition of the D dimensions (naming the problem).
    """
    return _grouped_decompose(z, mu, logvar, resolve_options(options, dict(estimator_options)), groups, prior)[0]
