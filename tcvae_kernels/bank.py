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
"""

from __future__ import annotations

from typing import Any

import torch

from ._validation import FLOAT_DTYPES, _check_int, check_family

_STATE_KEYS = ("size", "family", "mu", "logvar", "filled", "head", "pushes", "stamps")


class ComponentBank:
    """A FIFO ring buffer of ``size`` detached components (mu [size, D], logvar [size, D]).

    The shape's D, the dtype and the device are set by the first :meth:`push` and checked on every
    later one. ``logvar`` is the third argument of the estimators whatever the family: the
    log-variance for ``family="normal"``, the log-scale for ``"laplace"``; the family is the
    bank's, and an estimate with another family's options is refused.

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

    def __init__(self, size: int, family: str = "normal") -> None:
        _check_int("size", size, minimum=1)
        check_family(family)
        self.size = int(size)
        self.family = family
        self._mu: torch.Tensor | None = None  # [size, D]
        self._lv: torch.Tensor | None = None  # [size, D]
        self._stamps = torch.zeros(self.size, dtype=torch.int64)  # [size] push index of each row (CPU)
        self._filled = 0
        self._head = 0  # the row the next push writes first
        self._pushes = 0

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._filled

    @property
    def dim(self) -> int | None:
        """D, or None before the first push."""
        return None if self._mu is None else self._mu.shape[1]

    @property
    def dtype(self) -> torch.dtype | None:
        return None if self._mu is None else self._mu.dtype

    @property
    def device(self) -> torch.device | None:
        return None if self._mu is None else self._mu.device

    @property
    def pushes(self) -> int:
        """How many pushes the bank has taken (the losses push once per training call)."""
        return self._pushes

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part: ``(mu [len, D], logvar [len, D])``, views of the storage (no copy; a
        later push overwrites them in place). Storage order, which the estimate does not depend on
        beyond rounding. Raises ValueError when the bank is empty."""
        if self._mu is None or self._filled == 0:
            raise ValueError("the bank is empty: push components first (len(bank) == 0)")
        return self._mu[: self._filled], self._lv[: self._filled]

    def ages(self) -> torch.Tensor:
        """[len] int64 (CPU): pushes since each held component was pushed (0: the latest push), in
        the order of :meth:`components`."""
        return self._pushes - 1 - self._stamps[: self._filled]

    # ------------------------------------------------------------------ writing
    @torch.no_grad()
    def push(self, mu: torch.Tensor, logvar: torch.Tensor, *, check_finite: bool = False) -> None:
        """Append the rows of ``mu``, ``logvar`` [M, D] (detached copies), overwriting the oldest
        when full; of a push of more than ``size`` rows only the last ``size`` are kept. O(M·D):
        written in place into storage allocated by the first push.

        Raises:
            TypeError: a non-tensor, a non-floating dtype, a dtype other than the bank's.
            ValueError: not 2-D, mu and logvar of different shapes, no rows, a D or device other
                than the bank's, non-finite values with ``check_finite``.
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
        if self._mu is not None:
            self._check_like(mu, "bank.push: mu")
        if check_finite:
            for name, t in (("mu", mu), ("logvar", logvar)):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"bank.push: {name} contains NaN or infinite values (check_finite=True); "
                                     "a non-finite component would poison every later estimate")
        if self._mu is None:
            self._mu = mu.new_empty((self.size, mu.shape[1]))
            self._lv = mu.new_empty((self.size, mu.shape[1]))
        rows = min(mu.shape[0], self.size)
        mu, logvar = mu[-rows:], logvar[-rows:]
        first = min(rows, self.size - self._head)  # rows before the ring wraps
        for src, dst in ((mu, self._mu), (logvar, self._lv)):
            dst[self._head:self._head + first].copy_(src[:first])
            dst[: rows - first].copy_(src[first:])
        self._stamps[self._head:self._head + first] = self._pushes
        self._stamps[: rows - first] = self._pushes
        self._head = (self._head + rows) % self.size
        self._filled = min(self.size, self._filled + rows)
        self._pushes += 1

    def clear(self) -> None:
        """Forget every component (the storage, its D, dtype and device too)."""
        self.__init__(self.size, self.family)

    def to(self, device: torch.device | str) -> "ComponentBank":
        """Move the storage to ``device`` (in place; returns self)."""
        if self._mu is not None:
            self._mu, self._lv = self._mu.to(device), self._lv.to(device)
        return self

    def _check_like(self, t: torch.Tensor, what: str) -> None:
        """``t`` [*, D] matches the bank's D, dtype and device (ValueError/TypeError naming ``what``)."""
        if t.shape[1] != self._mu.shape[1]:
            raise ValueError(f"{what} has D={t.shape[1]} latent dimensions but the bank holds D={self._mu.shape[1]}; "
                             "use one bank per latent space (or bank.clear())")
        if t.dtype != self._mu.dtype:
            raise TypeError(f"{what} is {t.dtype} but the bank holds {self._mu.dtype}; nothing is cast silently: "
                            "cast the inputs, or clear the bank")
        if t.device != self._mu.device:
            raise ValueError(f"{what} is on {t.device} but the bank is on {self._mu.device}; "
                             f"move the bank with bank.to({str(t.device)!r})")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: the storage (copies), fill level, write position, push
        count and each row's push index."""
        return {"size": self.size, "family": self.family,
                "mu": None if self._mu is None else self._mu.clone(),
                "logvar": None if self._lv is None else self._lv.clone(),
                "filled": self._filled, "head": self._head, "pushes": self._pushes, "stamps": self._stamps.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Every field is checked before anything is changed.

        Raises:
            ValueError: missing keys, another size or family, a D, dtype or device other than the
                bank's storage (when it has some), inconsistent counters.
        """
        if not isinstance(state, dict) or set(state) != set(_STATE_KEYS):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a ComponentBank state: expected the keys {sorted(_STATE_KEYS)}, got {got}")
        if state["size"] != self.size:
            raise ValueError(f"the state holds a bank of size {state['size']}, this bank has size {self.size}; "
                             f"create ComponentBank({state['size']}) (or bank_size={state['size']}) to load it")
        if state["family"] != self.family:
            raise ValueError(f"the state holds {state['family']!r} components, this bank is for {self.family!r}")
        mu, lv, filled, head = state["mu"], state["logvar"], state["filled"], state["head"]
        stamps = state["stamps"]
        if not (isinstance(stamps, torch.Tensor) and stamps.shape == (self.size,) and 0 <= head < self.size
                and 0 <= filled <= self.size and state["pushes"] >= 0):
            raise ValueError("inconsistent ComponentBank state (stamps, head, filled or pushes out of range)")
        if mu is None:
            if filled:
                raise ValueError("inconsistent ComponentBank state: filled rows but no storage")
        else:
            if not (isinstance(mu, torch.Tensor) and isinstance(lv, torch.Tensor) and mu.ndim == 2
                    and mu.shape[0] == self.size and mu.shape == lv.shape and mu.dtype == lv.dtype):
                raise ValueError(f"the state's mu/logvar must be [{self.size}, D] tensors of one dtype")
            if self._mu is not None:
                self._check_like(mu.to(self._mu.device), "the state's mu")
                mu, lv = mu.to(self._mu.device), lv.to(self._mu.device)
        self._mu = None if mu is None else mu.clone()
        self._lv = None if lv is None else lv.clone()
        self._filled, self._head, self._pushes = int(filled), int(head), int(state["pushes"])
        self._stamps = stamps.to("cpu", torch.int64).clone()

    def __repr__(self) -> str:
        where = "" if self._mu is None else f", D={self.dim}, dtype={self.dtype}, device={self.device}"
        return f"ComponentBank(size={self.size}, family={self.family!r}, len={len(self)}{where})"


def check_bank(bank, family: str) -> None:
    """``bank`` is None or a ComponentBank of ``family`` (the options' ``bank=``)."""
    if bank is None:
        return
    if not isinstance(bank, ComponentBank):
        raise TypeError(f"bank must be a tcvae_kernels.ComponentBank or None, got {type(bank).__name__}")
    if bank.family != family:
        raise ValueError(f"bank holds {bank.family!r} components but the estimate is for family={family!r}; "
                         f"use ComponentBank(size, family={family!r})")
