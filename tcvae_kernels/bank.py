"""A component bank: detached posteriors of recent batches as extra mixture components.

The minibatch estimate of q(z_i) mixes the M components of the batch; its bias (TC low, MI high)
shrinks as the number of components K grows, and the fused kernels cost O(M·K·D) time and
O((M + K)·D) memory. A :class:`ComponentBank` keeps the (mu, logvar) of the last ``size`` data
points seen (a ring buffer, oldest overwritten first); with ``bank=`` the estimators use the K =
M + len(bank) components ``[batch; bank]`` (query i drawn from component i, the estimator's
weights for that K), so ``log q(z_i) = logsumexp_j(Σ_d l[i,j,d] + w_ij)`` over j < K. Bank entries
are constants (detached): gradients reach z and the batch's components only. They are stale by
the steps since they were pushed (:meth:`ComponentBank.ages`); docs/estimators.md ("A component
bank") measures what that costs.

The bank is an ``nn.Module`` whose state is registered buffers (storage, fill level, write position,
push count, each row's push index): it is saved in ``state_dict``, moves with ``.to()``, and a
compiled training step reads and pushes it without reading anything on the host. The estimate
always spans the bank's whole capacity, K = M + size components, with the rows not yet filled
counted as components of zero density and the weights of the filled K computed on the device
(:func:`tcvae_kernels.api` composes it): the shapes never change while the bank fills.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._host import check_finite as host_check_finite
from ._validation import FLOAT_DTYPES, Family, _check_int, autocast_active, check_family

_STORAGE = ("mu", "logvar")
_COUNTERS = ("filled", "head", "pushes", "stamps")  # fill level, write position, push count, each row's push index


class ComponentBank(nn.Module):
    """A FIFO ring buffer of ``size`` detached components (mu [size, D], logvar [size, D]).

    The storage's D, dtype and device are set by the first :meth:`push` (or by a loss's first call,
    or by loading a state) and checked on every later one. ``logvar`` is the third argument of the
    estimators whatever the family: the log-variance for ``family="normal"``, the log-scale for
    ``"laplace"``; the family is the bank's, and an estimate with another family's options is refused.

    Buffers (all in ``state_dict``): ``mu``, ``logvar`` [size, D] (rows below ``filled`` hold
    components, in storage order), ``filled``, ``head`` (the row the next push writes first),
    ``pushes`` (0-dim int64) and ``stamps`` [size] (the push index of each row).

    Args:
        size: the most components held (>= 1). With MSS or MWS, the batch plus the bank must not
            exceed ``dataset_size`` (M + size <= N): each component stands for a distinct data point.
        family: "normal" or "laplace", the family of the pushed parameters.

    Raises:
        TypeError: a size that is no int.
        ValueError: a size below 1, an unknown family.

    Example:
        >>> import torch, tcvae_kernels as tk
        >>> bank = tk.ComponentBank(1000)
        >>> mu, logvar = torch.zeros(64, 8), torch.zeros(64, 8)
        >>> z = mu + torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        >>> tc = tk.total_correlation(z, mu, logvar, dataset_size=10_000, bank=bank)  # K = 64 (empty bank)
        >>> bank.push(mu, logvar)  # after the step: the next batch meets 64 + 64 components
        >>> len(bank)
        64
    """

    def __init__(self, size: int, family: Family = "normal") -> None:
        super().__init__()
        _check_int("size", size, minimum=1)
        check_family(family)
        self.size = int(size)
        self.family = family
        self._materialized = False  # a plain flag (static under torch.compile), set with the storage
        self.mu: torch.Tensor
        self.logvar: torch.Tensor
        self.filled: torch.Tensor
        self.head: torch.Tensor
        self.pushes: torch.Tensor
        self.stamps: torch.Tensor
        for name in _STORAGE:  # [0] until the storage exists (then [size, D], the same tensor objects)
            self.register_buffer(name, torch.empty(0))
        for name in ("filled", "head", "pushes"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))
        self.register_buffer("stamps", torch.zeros(self.size, dtype=torch.int64))

    # ------------------------------------------------------------------ reading
    @property
    def materialized(self) -> bool:
        """Whether the storage exists (D, dtype and device are set)."""
        return self._materialized

    def __len__(self) -> int:
        """The components held (reads the fill level on the host: a device sync on a GPU)."""
        return int(self.filled)

    @property
    def dim(self) -> int | None:
        """D, or None before the storage exists."""
        return self.mu.shape[1] if self.materialized else None

    @property
    def dtype(self) -> torch.dtype | None:
        return self.mu.dtype if self.materialized else None

    @property
    def device(self) -> torch.device:
        """Where the buffers are."""
        return self.filled.device

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part: ``(mu [len, D], logvar [len, D])``, views of the storage (no copy; a
        later push overwrites them in place). Storage order, which the estimate does not depend on
        beyond rounding. Reads the fill level on the host. Raises ValueError when the bank is empty."""
        n = len(self) if self.materialized else 0
        if n == 0:
            raise ValueError("the bank is empty: push components first (len(bank) == 0)")
        return self.mu[:n], self.logvar[:n]

    def ages(self) -> torch.Tensor:
        """[len] int64: pushes since each held component was pushed (0: the latest push), in the
        order of :meth:`components`."""
        return self.pushes - 1 - self.stamps[: len(self)]

    def estimate_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row of the storage as components of an estimate, with no host read: ``(mu, logvar)``
        [size, D], the rows not filled yet given logvar = +inf (a component of zero density: every
        kernel's log density is -inf there, without NaN, for finite queries) and mu = 0."""
        present = (torch.arange(self.size, device=self.device) < self.filled)[:, None]
        inf = torch.full((), float("inf"), dtype=self.logvar.dtype, device=self.device)
        return torch.where(present, self.mu, 0.0), torch.where(present, self.logvar, inf)

    # ------------------------------------------------------------------ writing
    def materialize(self, dim: int, dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        """Allocate the storage for D = ``dim`` in ``dtype`` on ``device`` (default: the buffers'),
        filled with zeros; the counters move there too. Raises ValueError if it exists already."""
        if self.materialized:
            raise ValueError(f"the bank's storage exists already ({self.dim} dimensions, {self.dtype}); "
                             "use bank.clear() to empty it")
        device = self.device if device is None else torch.device(device)
        for name in _STORAGE:  # in place (.data): a DistributedDataParallel built before keeps its references
            getattr(self, name).data = torch.zeros((self.size, dim), dtype=dtype, device=device)
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name).to(device))
        self._materialized = True

    @torch.no_grad()
    def prepare(self, mu: torch.Tensor) -> None:
        """Ready the bank for an estimate with the batch's components ``mu`` [M, D] (the losses
        call it once, at their first call): moved to mu's device if it is elsewhere and, without
        storage yet, given storage for mu's D in the dtype the estimate pushes (float32 for
        float16/bfloat16 inside autocast, else mu's)."""
        if self.device != mu.device:
            self.to(mu.device)
        if not self.materialized:
            half = mu.dtype in (torch.float16, torch.bfloat16)
            self.materialize(mu.shape[1], torch.float32 if half and autocast_active(mu) else mu.dtype, mu.device)

    def push(self, mu: torch.Tensor, logvar: torch.Tensor, *, check_finite: bool = False) -> None:
        """Append the rows of ``mu``, ``logvar`` [M, D] (detached copies), overwriting the oldest
        when full; of a push of more than ``size`` rows only the last ``size`` are kept. O(M·D):
        written in place (index writes at the write position, on the device), so a compiled step
        pushes without a host read. The first push allocates the storage.

        Raises:
            TypeError: a non-tensor, a non-floating dtype, a dtype other than the bank's.
            ValueError: not 2-D, mu and logvar of different shapes, no rows, a D or device other
                than the bank's, non-finite values with ``check_finite`` (a device sync on a GPU).
        """
        for name, t in (("mu", mu), ("logvar", logvar)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"bank.push: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in FLOAT_DTYPES:
                raise TypeError(f"bank.push: {name} must be a floating tensor, got {t.dtype}")
            if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
                raise ValueError(f"bank.push: {name} must be [M, D] with M, D >= 1, got shape {tuple(t.shape)}")
        if mu.shape != logvar.shape or mu.dtype != logvar.dtype or mu.device != logvar.device:
            raise ValueError(f"bank.push: mu and logvar must share one shape, dtype and device, got "
                             f"{tuple(mu.shape)} {mu.dtype} {mu.device} and {tuple(logvar.shape)} {logvar.dtype} "
                             f"{logvar.device}")
        if self.materialized:
            self.check_like(mu, "bank.push: mu")
        if check_finite:
            host_check_finite((mu, logvar), ("bank.push: mu", "bank.push: logvar"),
                              "check_finite=True; a non-finite component would poison every later estimate")
        if not self.materialized:
            self.materialize(mu.shape[1], mu.dtype, mu.device)
        rows = min(mu.shape[0], self.size)
        mu, logvar = mu.detach()[-rows:], logvar.detach()[-rows:]
        idx = (self.head + torch.arange(rows, device=self.device)) % self.size
        self.mu.index_copy_(0, idx, mu)
        self.logvar.index_copy_(0, idx, logvar)
        self.stamps.index_copy_(0, idx, self.pushes.expand(rows))
        self.head.copy_((self.head + rows) % self.size)
        self.filled.copy_(torch.clamp(self.filled + rows, max=self.size))
        self.pushes.add_(1)

    def clear(self) -> None:
        """Forget every component (the fill level, write position and push count go to 0; the
        storage, its D, dtype and device stay)."""
        for name in _COUNTERS:
            getattr(self, name).zero_()

    def check_like(self, t: torch.Tensor, what: str) -> None:
        """``t`` ``[N, D]`` matches the bank's D, dtype and device (ValueError/TypeError naming ``what``)."""
        if t.shape[1] != self.mu.shape[1]:
            raise ValueError(f"{what} has D={t.shape[1]} latent dimensions but the bank holds D={self.mu.shape[1]}; "
                             "use one bank per latent space")
        if t.dtype != self.mu.dtype:
            raise TypeError(f"{what} is {t.dtype} but the bank holds {self.mu.dtype}; nothing is cast silently: "
                            "cast the inputs, or use a bank of that dtype")
        if t.device != self.mu.device:
            raise ValueError(f"{what} is on {t.device} but the bank is on {self.mu.device}; "
                             f"move the bank (or the loss that owns it) with .to({str(t.device)!r})")

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        return {"size": self.size, "family": self.family}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        pass  # checked (before anything is loaded) in _load_from_state_dict

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Check the whole state first (size, family, shapes, dtype), then load: a bank without
        storage takes the state's D and dtype on its own device; a state without storage (saved
        before anything was pushed) leaves this bank empty."""
        extra = state_dict.get(prefix + "_extra_state")
        want = [prefix + k for k in (*_STORAGE, *_COUNTERS, "_extra_state")]
        if not isinstance(extra, dict) or "size" not in extra or any(k not in state_dict for k in want):
            got = sorted(k for k in state_dict if k.startswith(prefix))
            raise ValueError(f"not a ComponentBank state: expected the keys {want}, got {got}")
        if extra["size"] != self.size:
            raise ValueError(f"the state holds a bank of size {extra['size']}, this bank has size {self.size}; "
                             f"create ComponentBank({extra['size']}) (or bank_size={extra['size']}) to load it")
        if extra["family"] != self.family:
            raise ValueError(f"the state holds {extra['family']!r} components, this bank is for {self.family!r}")
        mu, lv = state_dict.get(prefix + "mu"), state_dict.get(prefix + "logvar")
        if not (isinstance(mu, torch.Tensor) and isinstance(lv, torch.Tensor) and mu.shape == lv.shape
                and mu.dtype == lv.dtype):
            raise ValueError(f"the state's {prefix}mu and {prefix}logvar must be tensors of one shape and dtype")
        saved_empty = mu.numel() == 0
        if not saved_empty:
            if mu.ndim != 2 or mu.shape[0] != self.size:
                raise ValueError(f"the state's {prefix}mu must be [{self.size}, D], got {tuple(mu.shape)}")
            if self.materialized:
                self.check_like(mu.to(self.device), f"the state's {prefix}mu")
            else:
                self.materialize(mu.shape[1], mu.dtype)
        state = dict(state_dict)
        if saved_empty:  # nothing was pushed: keep this bank's storage (if any), counters from the state
            for name in _STORAGE:
                state.pop(prefix + name, None)
        n = prefix + "stamps"
        if n in state and state[n].shape != (self.size,):
            raise ValueError(f"the state's {n} must be [{self.size}], got {tuple(state[n].shape)}")
        super()._load_from_state_dict(state, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if saved_empty:
            for name in _STORAGE:
                k = prefix + name
                if k in missing_keys:
                    missing_keys.remove(k)

    def extra_repr(self) -> str:
        where = "" if not self.materialized else f", D={self.dim}, dtype={self.dtype}, device={self.device}"
        return f"size={self.size}, family={self.family!r}{where}"


def check_bank_fits(batch: int, bank_size: int, dataset_size, estimator: str) -> None:
    """The one rule of a bank's size: a batch of ``batch`` components plus a bank of ``bank_size``
    make K = batch + bank_size components, each a distinct data point under "mss"/"mws", so K <=
    ``dataset_size`` ("uniform", a plain mixture, and an unknown dataset_size have no bound). The
    losses check it with the smallest batch (1) when built, the functions with the call's batch.

    Raises:
        ValueError: K > dataset_size, naming the largest bank that fits."""
    if estimator == "uniform" or not isinstance(dataset_size, int) or isinstance(dataset_size, bool):
        return
    k = batch + bank_size
    if bank_size and k > dataset_size:
        raise ValueError(f"the batch ({batch} component{'s' if batch != 1 else ''}) plus the bank (size {bank_size}) "
                         f"make K={k} components, more than dataset_size={dataset_size}: with estimator={estimator!r} "
                         f"each component stands for a distinct data point; use a bank of at most "
                         f"{dataset_size - batch} (bank_size)")


def check_bank(bank, family: str) -> None:
    """``bank`` is None or a ComponentBank of ``family`` (the options' ``bank=``)."""
    if bank is None:
        return
    if not isinstance(bank, ComponentBank):
        raise TypeError(f"bank must be a tcvae_kernels.ComponentBank or None, got {type(bank).__name__}")
    if bank.family != family:
        raise ValueError(f"bank holds {bank.family!r} components but the estimate is for family={family!r}; "
                         f"use ComponentBank(size, family={family!r})")
