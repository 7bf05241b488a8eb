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
import math
import numbers
import warnings
from typing import Any, Generic, NamedTuple, TypeVar, overload

import torch
from torch import nn
from torch.nn import functional as F

from ._validation import _check_int, normalize_groups
from .api import Decomposition, GroupedDecomposition, Groups, PriorArg, _decompose, _grouped_decompose
from .reference import check_prior
from .bank import ComponentBank
from .options import EstimatorOptions


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


class EstimatorRegimeWarning(UserWarning):
    """The minibatch estimate of q(z) is dominated by each sample's own posterior (mean self share
    above ``SELF_SHARE_WARNING``): see :func:`tcvae_kernels.self_share`."""


#: The TC losses warn (once per loss object) when the batch mean of the self share exceeds
#: SELF_SHARE_WARNING while the batch is under SMALL_BATCH_FRACTION of dataset_size. Chosen from the
#: The bank size the docs recommend, capped at dataset_size / 4 (docs/estimators.md, "A component
#: bank": a 16k bank leaves 1-3 % TC bias at N = 50,000; stale entries cost nothing measurable).
RECOMMENDED_BANK = 16384
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
    ``(mi, tc, dim_kl)`` (a 3-tuple, as before) and ``self_share``, the batch mean of
    :func:`tcvae_kernels.self_share` from the same pass (detached)."""


class HFVAETerms(_WithSelfShare, GroupedDecomposition):
    """``loss.last`` of :class:`HFVAELoss`: the detached GroupedDecomposition and ``self_share``."""


def _terms(cls, parts, share: torch.Tensor):
    out = cls(*(t.detach() for t in parts))
    out.self_share = share.detach().mean()
    return out


T = TypeVar("T")


class _OptionField(Generic[T]):
    """``loss.<name>``: a field of ``loss.options``; setting it replaces the options (validated)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _OptionField[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj.options, self.name)

    def __set__(self, obj: Any, value: T) -> None:
        obj.options = dataclasses.replace(obj.options, **{self.name: value}).validate()


class BetaTCVAELoss(_WarmupMixin, nn.Module):
    """β-TCVAE KL penalty ``α·MI + β·TC + γ·dim_KL`` (Chen et al. 2018), batch means.

    Add the returned scalar to your reconstruction loss (both as means over the batch)::

        loss_fn = BetaTCVAELoss(dataset_size=len(train_set), beta=6.0)
        loss = recon_loss + loss_fn(z, mu, logvar)     # z ~ N(mu, exp(logvar)), [M, D]
        print(loss_fn.last.tc)                         # detached MI / TC / dim-KL of that call

    Args:
        dataset_size, estimator, family, backend, check_finite, deterministic, process_group: how q(z) is
            estimated, the fields of :class:`tcvae_kernels.EstimatorOptions` (held as
            ``loss.options``; "mss" needs ``dataset_size``). With a process group the returned
            penalty is this rank's mean; DDP's gradient averaging makes it the global mean.
            ``family="laplace"``: the loss is called as ``loss_fn(z, mu, logscale)`` (the log-scale of a
            Laplace posterior, not a log-variance).
        alpha, beta, gamma: weights of MI, TC and dimension-wise KL (paper: 1, β, 1).
        prior: p(z) of the dimension-wise KL: "normal" (N(0, I)), "laplace" (standard Laplace) or an
            object with ``log_prob(z)`` returning [M] or [M, D] (a learned one trains: a module is
            registered as a submodule of the loss, so its parameters are in ``loss.parameters()``).
        warmup_steps: if > 0, β and γ ramp linearly from 0 to their values over that many
            training-mode calls (KL warm-up, as in the authors' code); the step count is saved
            in ``state_dict`` so resumed runs continue the schedule.
        bank_size: 0 (off), or the size of a :class:`~tcvae_kernels.ComponentBank` the loss owns
            (``loss.bank``): each call estimates q(z) with the batch's components plus the bank's
            (K = M + len(bank)), and each training-mode call then pushes the (global) batch's
            detached components, so a component never meets its own query twice. It removes most of
            the minibatch bias for no network memory (docs/estimators.md, "A component bank":
            measured bias, staleness and cost); M + bank_size <= dataset_size. Saved in
            ``state_dict``; the bank follows the batch's device (e.g. after a checkpoint loaded to cpu).
        bank: instead of ``bank_size``, a :class:`~tcvae_kernels.ComponentBank` of your own (the
            loss reads and pushes it the same way; ``loss.bank``).
        warn_regime: warn once (:class:`EstimatorRegimeWarning`) when the batch mean of the self
            share exceeds ``SELF_SHARE_WARNING`` with a batch (plus bank) under ``SMALL_BATCH_FRACTION`` of
            ``dataset_size`` (checked every ``REGIME_CHECK_EVERY`` training calls): the TC estimate
            is then unreliable, often negative. ``loss.last.self_share`` holds the value of every
            call either way.

    Example:
        >>> import torch, tcvae_kernels as tk
        >>> loss_fn = tk.BetaTCVAELoss(dataset_size=1000, beta=6.0, warn_regime=False)
        >>> mu, logvar = torch.zeros(16, 4), torch.zeros(16, 4)
        >>> z = mu + torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
        >>> penalty = loss_fn(z, mu, logvar)
        >>> penalty.dim(), loss_fn.last.tc.dim(), loss_fn.last.self_share.dim()
        (0, 0, 0)
    """

    # the fields of EstimatorOptions, readable and settable on the loss (tests/test_typing.py: all of them)
    dataset_size: _OptionField[int | None] = _OptionField()
    estimator: _OptionField[str] = _OptionField()
    family: _OptionField[str] = _OptionField()
    backend: _OptionField[str] = _OptionField()
    check_finite: _OptionField[bool] = _OptionField()
    deterministic: _OptionField[bool] = _OptionField()
    process_group: _OptionField[Any] = _OptionField()
    bank: _OptionField[ComponentBank | None] = _OptionField()

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
        process_group: Any = None,
        warn_regime: bool = True,
        prior: PriorArg = "normal",
        family: str = "normal",
        bank_size: int = 0,
        bank: ComponentBank | None = None,
    ) -> None:
        super().__init__()
        self._init_warmup(warmup_steps)
        self.warn_regime = bool(warn_regime)
        self._regime_warned = False
        _check_int("bank_size", bank_size, minimum=0)
        if bank_size and bank is not None:
            raise TypeError("pass bank_size= (the loss creates its bank) or bank= (a ComponentBank of yours), not both")
        if bank_size and estimator != "uniform" and isinstance(dataset_size, int) and bank_size >= dataset_size:
            raise ValueError(f"bank_size={bank_size} must be below dataset_size={dataset_size}: the batch plus the "
                             f"bank must not exceed the data set (each component is a distinct data point)")
        self.options = EstimatorOptions(dataset_size=dataset_size, estimator=estimator, family=family, backend=backend,
                                        check_finite=bool(check_finite), deterministic=bool(deterministic),
                                        process_group=process_group,
                                        bank=ComponentBank(bank_size, family) if bank_size else bank).validate()
        self.alpha = _check_weight("alpha", alpha)
        self.beta = _check_weight("beta", beta)
        self.gamma = _check_weight("gamma", gamma)
        check_prior(prior)
        self.prior = prior
        self.last: BetaTCVAETerms | None = None

    def current_weights(self) -> tuple[float, float, float]:
        """(α, β, γ) in effect for the next call, after warm-up annealing."""
        r = self.ramp()
        return self.alpha, self.beta * r, self.gamma * r

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        self._bank_to(z.device)
        parts, share, batch = _decompose(z, mu, logvar, self.options, self.prior)
        a, b, g = self.current_weights()
        self.last = _terms(BetaTCVAETerms, parts, share)
        self._check_regime(z)
        self._push(batch)
        self._advance()
        return a * parts.mi + b * parts.tc + g * parts.dim_kl

    @torch.compiler.disable
    def _bank_to(self, device: torch.device) -> None:
        """The bank follows the batch's device, as a buffer follows the module (a checkpoint loaded
        with map_location="cpu" into a loss trained on cuda); D and dtype are still checked."""
        if self.options.bank is not None:
            self.options.bank.to(device)  # no copy where it is already there

    @torch.compiler.disable
    def _push(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """After the estimate, in training mode: the (global) batch's detached components into the bank."""
        bank = self.options.bank
        if bank is not None and self.training:
            bank.push(batch[0].detach(), batch[1].detach(), check_finite=self.options.check_finite)

    def get_extra_state(self):
        bank = self.options.bank
        return {"step": self.step, "bank": None if bank is None else bank.state_dict()}

    def set_extra_state(self, state):
        """The warm-up step and the bank. A checkpoint without a bank leaves this loss's bank empty
        (it refills in size/M steps); one with a bank needs a loss with a bank of that size."""
        bank, saved = self.options.bank, state.get("bank")
        if saved is not None and bank is None:
            raise ValueError(f"the checkpoint holds a component bank of size {saved['size']} but this loss has none; "
                             f"create the loss with bank_size={saved['size']}")
        if bank is not None:
            if saved is None:
                bank.clear()
            else:
                bank.load_state_dict(saved)
        self.step = int(state["step"])

    def _check_regime(self, z: torch.Tensor):
        """The one-time warning, read every REGIME_CHECK_EVERY training calls (a host sync then)."""
        if not (self.warn_regime and self.training) or self._regime_warned or self.step % REGIME_CHECK_EVERY:
            return
        if torch.compiler.is_compiling():
            return
        n, pg = self.options.dataset_size, self.options.process_group
        k = z.shape[0] * (torch.distributed.get_world_size(pg) if pg is not None else 1)  # the (global) batch
        k += 0 if self.options.bank is None else len(self.options.bank)
        if n is not None and k >= SMALL_BATCH_FRACTION * n:
            return
        share = float(self.last.self_share)
        if share > SELF_SHARE_WARNING:
            self._regime_warned = True
            warnings.warn(
                f"tcvae_kernels: the minibatch estimate of q(z) is dominated by each sample's own posterior "
                f"(mean self share {share:.2f} > {SELF_SHARE_WARNING} at training call {self.step}, {k} components of "
                f"dataset_size {n}): each log q(z_i) rests on a few components, the MI estimate sits near its "
                f"ceiling (log N for MSS) and the TC estimate is off by up to its own size, often negative, so "
                f"beta*TC acts on information rather than on dependence between the latents. What helps: "
                f"{self._bank_advice(n)}; a larger batch; "
                f"the global batch across ranks (process_group=); a dataset_size that matches the data actually "
                f"sampled. Silence with warn_regime=False or warnings.filterwarnings('ignore', "
                f"category=tcvae_kernels.EstimatorRegimeWarning). docs/estimators.md: 'Why is my TC negative?'",
                EstimatorRegimeWarning, stacklevel=5)  # _check_regime, forward, Module's two calls, the caller

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
        return (
            f"dataset_size={self.dataset_size}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"estimator={self.estimator!r}, family={self.family!r}, backend={self.backend!r}, "
            f"warmup_steps={self.warmup_steps}" + ("" if self.bank is None else f", bank_size={self.bank.size}")
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

    def __init__(self, dataset_size: int | None, groups: Groups, alpha: float = 1.0, beta: float = 6.0,
                 beta_within: float = 1.0, gamma: float = 1.0, estimator: str = "mss", backend: str = "auto", *,
                 warmup_steps: int = 0, check_finite: bool = False, deterministic: bool = False,
                 process_group: Any = None, warn_regime: bool = True, prior: PriorArg = "normal",
                 family: str = "normal", bank_size: int = 0, bank: ComponentBank | None = None) -> None:
        super().__init__(dataset_size, alpha, beta, gamma, estimator, backend, warmup_steps=warmup_steps,
                         check_finite=check_finite, deterministic=deterministic, process_group=process_group,
                         warn_regime=warn_regime, prior=prior, family=family, bank_size=bank_size, bank=bank)
        self.beta_within = _check_weight("beta_within", beta_within)
        self.groups = groups
        normalize_groups(groups, _implied_dims(groups))  # a valid partition (checked against D per call)

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        self._bank_to(z.device)
        parts, share, batch = _grouped_decompose(z, mu, logvar, self.options, self.groups, self.prior)
        a, b, g = self.current_weights()
        bw = self.beta_within * self.ramp()
        self.last = _terms(HFVAETerms, parts, share)
        self._check_regime(z)
        self._push(batch)
        self._advance()
        return a * parts.mi + b * parts.tc_between + bw * parts.tc_within + g * parts.dim_kl

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta_within={self.beta_within}, groups={self.groups}"


class BetaVAETerms(NamedTuple):
    """``loss.last`` of :class:`BetaVAELoss`: ``kl``, the detached batch mean of
    KL(q(z|x_i) ‖ N(0, I)) (a scalar tensor, before β)."""

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
