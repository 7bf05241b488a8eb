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

import dataclasses
import itertools
import warnings
from typing import Any, NamedTuple, Unpack

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.lazy import LazyModuleMixin

from . import _host
from ._validation import _check_int, accumulation_dtype, check_batch, check_weight, normalize_groups
from .api import Decomposition, GroupedDecomposition, Groups, PriorArg, _decompose, _grouped_decompose
from .reference import check_prior
from .bank import ComponentBank, check_bank_fits
from .options import EstimatorKwargs, EstimatorOptions, options_doc, resolve_options


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per row: 0.5·sum_d (mu² + e^logvar - logvar - 1), [M]."""
    return 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1).sum(dim=1)


class _LossState(LazyModuleMixin, nn.Module):
    """What the losses keep between calls, as registered buffers (``state_dict``, ``.to()``, a
    compiled step updates them in place with no host read): ``step``, the training-mode calls so
    far (0-dim int64), and the component bank of the TC losses (a submodule). The weights named in
    ``_annealed`` ramp linearly from 0 over ``warmup_steps`` training calls.

    At the first call (a lazy module's one-time initialisation, which ``torch.compile`` runs before
    it traces) the buffers move to the batch's device if they are elsewhere and a bank without
    storage gets it (the batch's D, the dtype its estimate pushes); later, the loss moves with
    ``.to()`` like any module with state."""

    def _init_state(self, warmup_steps: int) -> None:
        _check_int("warmup_steps", warmup_steps, minimum=0)
        self.warmup_steps = warmup_steps
        self.step: torch.Tensor
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def initialize_parameters(self, z, mu, logvar) -> None:
        """The first call's set-up (see the class docstring)."""
        check_batch(z, mu, logvar)
        dev = z.device
        if self.step.device != dev:
            self.step = self.step.to(dev)
        bank = self._modules.get("bank")
        if bank is not None:
            bank.prepare(mu)

    def _replicate_for_data_parallel(self):  # replicas of an initialised loss (LazyModuleMixin refuses any)
        return nn.Module._replicate_for_data_parallel(self)

    def ramp(self) -> float:
        """The warm-up factor of the next call, in [0, 1] (reads ``step`` on the host)."""
        return 1.0 if self.warmup_steps == 0 else min(1.0, int(self.step) / self.warmup_steps)

    def _ramped(self, weight: float, like: torch.Tensor):
        """``weight`` times the warm-up factor: the float itself without warm-up, else a 0-dim tensor of
        ``like``'s dtype computed from ``step`` on its device (float64, then rounded once)."""
        if self.warmup_steps == 0:
            return weight
        return (weight * (self.step.to(torch.float64) / self.warmup_steps).clamp(max=1.0)).to(like.dtype)

    def _advance(self) -> None:
        if self.training:
            self.step.add_(1)


class EstimatorRegimeWarning(UserWarning):
    """The minibatch estimate of q(z) is dominated by each sample's own posterior (mean self share
    above ``SELF_SHARE_WARNING``): see :func:`tcvae_kernels.self_share`."""


#: The bank size the docs recommend, capped at dataset_size / 4 (docs/estimators.md, "A component
#: bank": a 16k bank leaves 1-3 % TC bias at N = 50,000; stale entries cost nothing measurable over
#: a 16-step span, about half of the TC correction over 64, a 16k bank's span at batch 256).
RECOMMENDED_BANK = 16384
#: The TC losses warn (once per loss object) when the batch mean of the self share exceeds
#: SELF_SHARE_WARNING while the batch is under SMALL_BATCH_FRACTION of dataset_size. Chosen from the
#: 48 cells measured by ``python/estimator_bias.py --regime`` (docs/estimators.md, "Why is my TC negative?"): the
#: rule marks 21, in 15 of which the MSS estimate is off by more than half the TC (6 of the 8
#: negative estimates); of the 27 it leaves, 4 are off that much, all at batches of 32-128 with
#: shares under 0.15 (the plain small-batch bias). Batches of at least a tenth of the data, whatever
#: their share, estimated the TC within 18% and are not marked.
SELF_SHARE_WARNING = 0.15
SMALL_BATCH_FRACTION = 0.1
#: The warning's check reads the share on the host (a device sync) every this many training calls.
REGIME_CHECK_EVERY = 100


class _WithSelfShare:
    """A decomposition tuple plus the detached batch-mean ``self_share`` as an attribute (not a
    field: unpacking still gives the decomposition's terms)."""

    self_share: torch.Tensor

    def __repr__(self):
        return f"{super().__repr__()[:-1]}, self_share={self.self_share!r})"


class BetaTCVAETerms(_WithSelfShare, Decomposition):
    """``loss.last`` of :class:`BetaTCVAELoss`: the detached :class:`~tcvae_kernels.Decomposition`
    ``(mi, tc, dim_kl)`` (a 3-tuple: ``mi, tc, dim_kl = loss.last``) with one more attribute.

    Attributes:
        mi, tc, dim_kl: the batch means of the three terms (0-dim tensors, before the weights).
        self_share: the batch mean of :func:`tcvae_kernels.self_share` from the same pass (0-dim).
    """


class HFVAETerms(_WithSelfShare, GroupedDecomposition):
    """``loss.last`` of :class:`HFVAELoss`: the detached :class:`~tcvae_kernels.GroupedDecomposition`
    ``(mi, tc_between, tc_within, dim_kl)`` with one more attribute.

    Attributes:
        mi, tc_between, tc_within, dim_kl: the batch means of the terms (0-dim tensors, before the weights).
        self_share: the batch mean of :func:`tcvae_kernels.self_share` from the same pass (0-dim).
    """


def _terms(cls, parts, share: torch.Tensor):
    out = cls(*(t.detach() for t in parts))
    out.self_share = share.detach().mean()
    return out


@options_doc
class BetaTCVAELoss(_LossState):
    """β-TCVAE KL penalty ``α·MI + β·TC + γ·dim_KL`` (Chen et al. 2018), batch means.

    Add the returned scalar to your reconstruction loss (both as means over the batch)::

        loss_fn = BetaTCVAELoss(dataset_size=len(train_set), beta=6.0)
        loss = recon_loss + loss_fn(z, mu, logvar)     # z ~ N(mu, exp(logvar)), [M, D]
        print(loss_fn.last.tc)                         # detached MI / TC / dim-KL of that call

    Every argument is a keyword. The estimator options (``dataset_size``, ``estimator``, ...) are
    the fields of :class:`~tcvae_kernels.EstimatorOptions`, held as ``loss.options``; change them
    with ``loss.options = loss.options.replace(estimator="mws")`` (validated). With a process group
    the returned penalty is this rank's mean (DDP's gradient averaging makes it the global mean);
    with ``family="laplace"`` the loss is called as ``loss_fn(z, mu, logscale)``.

    Args:
        alpha: weight of the index-code mutual information MI (paper: 1).
        beta: weight of the total correlation TC (the paper's β).
        gamma: weight of the dimension-wise KL (paper: 1).
        warmup_steps: if > 0, β and γ ramp linearly from 0 to their values over that many
            training-mode calls (KL warm-up, as in the authors' code); the step count is the buffer
            ``loss.step``, saved in ``state_dict`` so resumed runs continue the schedule.
        warn_regime: warn once (:class:`EstimatorRegimeWarning`) when the batch mean of the self
            share exceeds ``SELF_SHARE_WARNING`` with a batch (plus bank) under ``SMALL_BATCH_FRACTION`` of
            ``dataset_size`` (checked every ``REGIME_CHECK_EVERY`` training calls): the TC estimate
            is then unreliable, often negative. ``loss.last.self_share`` holds the value of every
            call either way.
        prior: p(z) of the dimension-wise KL: "normal" (N(0, I)), "laplace" (standard Laplace) or an
            object with ``log_prob(z)`` returning [M] or [M, D] (a learned one trains: a module is
            registered as a submodule of the loss, so its parameters are in ``loss.parameters()``).
        bank_size: 0 (off), or the size of a :class:`~tcvae_kernels.ComponentBank` the loss owns
            (``loss.bank``; instead of the option ``bank=``, a bank of your own): each call
            estimates q(z) with the batch's components plus the bank's (K = M + len(bank)), and each
            training-mode call then pushes the (global) batch's detached components, so a component
            never meets its own query twice. It removes most of the minibatch bias for no network
            memory (docs/estimators.md, "A component bank"); M + bank_size <= dataset_size. A
            submodule: saved in ``state_dict``, moved by ``.to()`` (and, at the first call, to the
            batch's device).
{options}

    Raises:
        TypeError: a positional argument, an unknown keyword, ``bank_size`` with ``bank``, a weight
            that is no real number.
        ValueError: an invalid option, weight, prior or bank size, naming it.

    Example:
        >>> import torch, tcvae_kernels as tk
        >>> loss_fn = tk.BetaTCVAELoss(dataset_size=1000, beta=6.0, warn_regime=False)
        >>> mu, logvar = torch.zeros(16, 4), torch.zeros(16, 4)
        >>> z = mu + torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
        >>> penalty = loss_fn(z, mu, logvar)
        >>> penalty.dim(), loss_fn.last.tc.dim(), loss_fn.last.self_share.dim()
        (0, 0, 0)
    """

    last: BetaTCVAETerms | None
    """The detached terms of the last call (None before the first)."""

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        warmup_steps: int = 0,
        warn_regime: bool = True,
        prior: PriorArg = "normal",
        bank_size: int = 0,
        options: EstimatorOptions | None = None,
        **estimator_options: Unpack[EstimatorKwargs],
    ) -> None:
        super().__init__()
        self._init_state(warmup_steps)
        self.warn_regime = bool(warn_regime)
        self._regime_warned = False
        self._host_calls = 0
        self._host_key = _host.register(self._host_regime)
        _check_int("bank_size", bank_size, minimum=0)
        opts = resolve_options(options, dict(estimator_options))
        if bank_size:
            if opts.bank is not None:
                raise TypeError("pass bank_size= (the loss creates its bank) or bank= (a ComponentBank of yours), "
                                "not both")
            check_bank_fits(1, bank_size, opts.dataset_size, opts.estimator)  # the smallest batch; each call checks its own
            opts = opts.replace(bank=ComponentBank(bank_size, opts.family))
        self.options = opts
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.gamma = check_weight("gamma", gamma)
        check_prior(prior)
        self.prior = prior
        self.last = None

    def __setattr__(self, name: str, value: Any) -> None:
        # a property (``loss.bank = None`` too) goes to its setter, not to nn.Module's registry
        # (which would set the submodule alone, behind the options' back)
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def options(self) -> EstimatorOptions:
        """How q(z) is estimated (:class:`~tcvae_kernels.EstimatorOptions`); setting it validates it,
        and its bank becomes the submodule ``bank`` (in ``state_dict``, moved by ``.to()``)."""
        return self._options

    @options.setter
    def options(self, value: EstimatorOptions) -> None:
        if not isinstance(value, EstimatorOptions):
            raise TypeError(f"options must be a tcvae_kernels.EstimatorOptions, got {type(value).__name__}")
        self._options = value.validate()
        if value.bank is None:
            self._modules.pop("bank", None)
        else:
            self._modules["bank"] = value.bank

    @property
    def bank(self) -> ComponentBank | None:
        """The component bank the estimates read and training calls push (``options.bank``), or None;
        setting it replaces the options."""
        return self._options.bank

    @bank.setter
    def bank(self, value: ComponentBank | None) -> None:
        self.options = self._options.replace(bank=value)

    def current_weights(self) -> tuple[float, float, float]:
        """(α, β, γ) in effect for the next call, after warm-up annealing (reads ``step`` on the host)."""
        r = self.ramp()
        return self.alpha, self.beta * r, self.gamma * r

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The penalty ``α·MI + β·TC + γ·dim_KL`` of a batch; ``.last`` holds its terms.

        In training mode the call also checks the estimator's regime (every ``REGIME_CHECK_EVERY``
        calls), pushes the (global) batch into the bank and advances the warm-up: all of it in
        place, so a compiled step does the same.

        Args:
            z: [M, D], z_i drawn from the posterior of row i of ``(mu, logvar)``.
            mu: [M, D], the batch's posterior means.
            logvar: [M, D], their log-variances (``family="laplace"``: log-scales).

        Returns:
            A 0-dim tensor, the batch mean of the penalty, in the accumulation dtype (float32 for
            float16/bfloat16 and under autocast, float64 for float64); differentiable w.r.t. all three.

        Raises:
            ValueError: as :func:`tcvae_kernels.decompose`, e.g. a malformed shape, a batch plus
                bank larger than ``dataset_size``, non-finite input with ``check_finite``.
            TypeError: as :func:`tcvae_kernels.decompose`, e.g. inputs of different dtypes or devices.
        """
        parts, share, batch = _decompose(z, mu, logvar, self.options, self.prior)
        b, g = self._ramped(self.beta, parts.tc), self._ramped(self.gamma, parts.tc)
        self.last = _terms(BetaTCVAETerms, parts, share)
        self._after(share, batch)
        return self.alpha * parts.mi + b * parts.tc + g * parts.dim_kl

    def _after(self, share: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """After the estimate, in training mode: the regime check (a host callback), the (global)
        batch's detached components into the bank, the warm-up step."""
        if not self.training:
            return
        bank = self.options.bank
        if self.warn_regime:
            _host.callback(self._host_key, [share.mean()] + ([bank.filled] if bank is not None else []),
                           [batch[0].shape[0]])
        if bank is not None:
            bank.push(batch[0].detach(), batch[1].detach(), check_finite=self.options.check_finite)
        self._advance()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A checkpoint without a bank leaves this loss's bank empty (it refills in size/M steps); one
        with a bank needs a loss with a bank of that size."""
        saved = state_dict.get(prefix + "bank._extra_state")
        bank = self.options.bank
        if saved is not None and bank is None:
            raise ValueError(f"the checkpoint holds a component bank of size {saved['size']} but this loss has none; "
                             f"create the loss with bank_size={saved['size']}")
        if saved is None and bank is not None:  # (state_dict is load_state_dict's own copy)
            state_dict.update({f"{prefix}bank.{k}": v for k, v in ComponentBank(bank.size, bank.family).state_dict().items()})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __setstate__(self, state):  # a copy (deepcopy, pickle) gets its own regime check
        super().__setstate__(state)
        self._host_key = _host.register(self._host_regime)

    def _host_regime(self, share: torch.Tensor, *rest) -> None:
        """The one-time warning, on the host: it reads the share (a sync on a GPU) every
        REGIME_CHECK_EVERY training calls and does nothing on the others."""
        *filled, m_global = rest
        calls, self._host_calls = self._host_calls, self._host_calls + 1
        if self._regime_warned or calls % REGIME_CHECK_EVERY:
            return
        n = self.options.dataset_size
        k = m_global + (int(filled[0]) if filled else 0)  # the components of the estimate
        if n is not None and k >= SMALL_BATCH_FRACTION * n:
            return
        value = float(share)
        if value > SELF_SHARE_WARNING:
            self._regime_warned = True
            warnings.warn(
                f"tcvae_kernels: the minibatch estimate of q(z) is dominated by each sample's own posterior "
                f"(mean self share {value:.2f} > {SELF_SHARE_WARNING} at training call {calls}, {k} components of "
                f"dataset_size {n}): each log q(z_i) rests on a few components, the MI estimate sits near its "
                f"ceiling (log N for MSS) and the TC estimate is off by up to its own size, often negative, so "
                f"beta*TC acts on information rather than on dependence between the latents. What helps: "
                f"{self._bank_advice(n)}; a larger batch; "
                f"the global batch across ranks (process_group=); a dataset_size that matches the data actually "
                f"sampled. Silence with warn_regime=False or warnings.filterwarnings('ignore', "
                f"category=tcvae_kernels.EstimatorRegimeWarning). docs/estimators.md: 'Why is my TC negative?'",
                EstimatorRegimeWarning, stacklevel=_host.user_stacklevel())

    def _bank_advice(self, n: int | None) -> str:
        """The recommended bank (docs/estimators.md, "A component bank"): min(16384, N/4)."""
        want = RECOMMENDED_BANK if n is None else max(1, min(RECOMMENDED_BANK, n // 4))
        bank = self.options.bank
        if bank is None:
            return f"a component bank (bank_size={want}: more components at no network memory)"
        if bank.size < want:
            return f"a larger component bank (bank_size={bank.size} now; {want} recommended)"
        return f"the component bank (bank_size={bank.size}) once it has filled"

    def extra_repr(self) -> str:
        o = self.options
        return (
            f"dataset_size={o.dataset_size}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"estimator={o.estimator!r}, family={o.family!r}, backend={o.backend!r}, "
            f"warmup_steps={self.warmup_steps}" + ("" if o.bank is None else f", bank_size={o.bank.size}")
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

    TC_between is the total correlation between the groups, TC_within the sum of each group's own
    total correlation (:func:`tcvae_kernels.grouped_decompose`). With groups of one dimension
    TC_within is 0 and the loss equals :class:`BetaTCVAELoss` (α, β, γ).

    Args:
        groups: the partition of the D latent dimensions: sizes ``[2, 3, 5]`` (contiguous) or index
            lists ``[[0, 3], [1, 2, 4]]``.
        beta_within: weight of TC_within (``beta`` weighs TC_between; ``warmup_steps`` ramps β,
            β_within and γ).

    Every other argument is :class:`BetaTCVAELoss`'s (same names, defaults and meaning; all keywords),
    the estimator options included.

    Raises:
        ValueError: a malformed partition; otherwise as :class:`BetaTCVAELoss`.
    """

    last: HFVAETerms | None  # type: ignore[assignment]
    """The detached terms of the last call (None before the first)."""

    def __init__(self, *, groups: Groups, alpha: float = 1.0, beta: float = 6.0, beta_within: float = 1.0,
                 gamma: float = 1.0, warmup_steps: int = 0, warn_regime: bool = True, prior: PriorArg = "normal",
                 bank_size: int = 0, options: EstimatorOptions | None = None,
                 **estimator_options: Unpack[EstimatorKwargs]) -> None:
        super().__init__(alpha=alpha, beta=beta, gamma=gamma, warmup_steps=warmup_steps, warn_regime=warn_regime,
                         prior=prior, bank_size=bank_size, options=options, **estimator_options)
        self.beta_within = check_weight("beta_within", beta_within)
        self.groups = groups
        normalize_groups(groups, _implied_dims(groups))  # a valid partition (checked against D per call)

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The penalty ``α·MI + β·TC_between + β_within·TC_within + γ·dim_KL`` of a batch z, mu,
        logvar [M, D] (a 0-dim tensor); otherwise as :meth:`BetaTCVAELoss.forward`."""
        parts, share, batch = _grouped_decompose(z, mu, logvar, self.options, self.groups, self.prior)
        b, bw, g = (self._ramped(w, parts.mi) for w in (self.beta, self.beta_within, self.gamma))
        self.last = _terms(HFVAETerms, parts, share)
        self._after(share, batch)
        return self.alpha * parts.mi + b * parts.tc_between + bw * parts.tc_within + g * parts.dim_kl

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta_within={self.beta_within}, groups={self.groups}"


class BetaVAETerms(NamedTuple):
    """``loss.last`` of :class:`BetaVAELoss`: ``kl``, the detached batch mean of
    KL(q(z|x_i) ‖ N(0, I)) (a scalar tensor, before β)."""

    kl: torch.Tensor


class BetaVAELoss(_LossState):
    """β-VAE penalty ``β·mean_i KL(q(z|x_i) ‖ N(0, I))`` (Higgins et al. 2017), analytic KL.

    ``z`` is accepted for a uniform interface and not used."""

    def __init__(self, beta: float = 4.0, *, warmup_steps: int = 0):
        super().__init__()
        self.beta = check_weight("beta", beta)
        self._init_state(warmup_steps)
        self.last: BetaVAETerms | None = None

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``β·mean_i KL(q(z|x_i) ‖ N(0, I))`` (β after warm-up); advances the warm-up in training mode."""
        check_batch(z, mu, logvar)
        kl = gaussian_kl(mu, logvar).mean()
        self.last = BetaVAETerms(kl.detach())
        b = self._ramped(self.beta, kl)
        self._advance()
        return b * kl


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each column of z shuffled by its own random permutation of the batch: samples of ∏_d q(z_d)
    from samples of q(z) (FactorVAE); one argsort of an [M, D] uniform matrix, no loop over D.

    Args:
        z: samples [M, D], any floating dtype and device.
        generator: a CPU ``torch.Generator`` for the permutations (None: the global RNG on z's device).

    Returns:
        The shuffled samples ``out[:, d] = z[perm_d, d]``, [M, D], in z's dtype and on its device.

    Raises:
        ValueError: z is not 2-D.
    """
    if z.ndim != 2:
        raise ValueError(f"z must be [M, D], got {tuple(z.shape)}")
    keys = torch.rand(z.shape, generator=generator, device="cpu" if generator is not None else z.device)
    return z.gather(0, keys.to(z.device).argsort(dim=0))


def default_discriminator(latent_dim: int, hidden: int = 1000, layers: int = 6) -> nn.Module:
    """The FactorVAE paper's discriminator (Kim & Mnih 2018) for :class:`FactorVAELoss`.

    Args:
        latent_dim: D, the width of its input z [M, D].
        hidden: units per hidden layer.
        layers: hidden layers, each Linear + LeakyReLU(0.2).

    Returns:
        An ``nn.Sequential`` mapping [M, D] to two logits [M, 2] (index 0: "from q(z)", index 1:
        "from ∏_d q(z_d)"), float32 on the CPU.
    """
    mods, width = [], latent_dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    mods.append(nn.Linear(width, 2))
    return nn.Sequential(*mods)


class FactorVAETerms(NamedTuple):
    """``loss.last`` of :class:`FactorVAELoss`: the detached scalar tensors ``kl`` (batch mean of
    KL(q(z|x_i) ‖ N(0, I))) and ``tc``, the discriminator's density-ratio estimate of the total
    correlation (before γ)."""

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
        self.gamma = check_weight("gamma", gamma)
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
        """The density-ratio estimate ``mean_i (D(z_i)[0] - D(z_i)[1])`` (gradients reach the discriminator)."""
        return self._tc_of(self.discriminator(z))

    @staticmethod
    def _tc_of(logits: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(f"the discriminator must return [M, 2] logits, got {tuple(logits.shape)}")
        return (logits[:, 0] - logits[:, 1]).mean()

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        check_batch(z, mu, logvar)
        kl = gaussian_kl(mu, logvar).mean()
        # the VAE step must not move the discriminator: it runs on detached copies of its parameters
        # (a functional call: no flag flipped on the parameters, so a compiled step has nothing to guard)
        frozen = {n: t.detach() for n, t in itertools.chain(self.discriminator.named_parameters(),
                                                            self.discriminator.named_buffers())}
        tc = self._tc_of(torch.func.functional_call(self.discriminator, frozen, (z,)))
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
