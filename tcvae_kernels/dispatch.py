"""The one dispatch point: which backend computes ``log_qz`` for given inputs.

Each backend says why it cannot run (``unavailable_reason`` for the installation,
``not_supported_reasons`` for the inputs); an explicit request for a backend that cannot run
raises :class:`BackendNotSupportedError` listing those reasons, and ``"auto"`` takes the first
backend of the device's preference list that can run, falling back to ``"torch"``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._validation import accumulation_dtype
from .estimators import LogWeights

#: Every backend name a user may pass, besides "auto".
BACKEND_NAMES = ("torch", "cpu", "cuda", "triton")

#: ``"auto"``'s order of preference per device type (fastest first, by bench/RESULTS.md).
AUTO_ORDER = {
    "cpu": ("cpu", "torch"),
    "cuda": ("cuda", "triton", "torch"),
}


class BackendNotSupportedError(ValueError):
    """An explicitly requested backend cannot run on these inputs or in this installation."""


class Backend:
    """A way of computing ``(log_qz [M], log_qz_dims [M, D])``, differentiably.

    Subclasses implement ``log_qz`` returning results in the accumulation dtype
    (float64 for float64 inputs, float32 otherwise).
    """

    name: str = ""
    description: str = ""

    def unavailable_reason(self) -> str | None:
        """Why this installation cannot run the backend at all (None if it can)."""
        return None

    def not_supported_reasons(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> list[str]:
        """Why the backend cannot run on these (validated) inputs; empty if it can."""
        return []

    def log_qz(self, z, mu, logvar, weights: LogWeights, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``deterministic``: bitwise reproducible gradients even where the fast path uses atomics."""
        raise NotImplementedError

    def log_qz_groups(self, z, mu, logvar, weights: LogWeights, groups: list[list[int]], deterministic: bool = False):
        """``(log_qz [M], log_qz_dims [M, D], log_qz_groups [M, G])`` for a partition ``groups`` of
        the dimensions (index lists), ``log_qz_groups[i, g] = logsumexp_j(sum_{d in g} l[i,j,d] + w[i,j])``.

        Default: each group of several dimensions is this backend's ``log_qz`` on that group's
        dimension slice (one more pass of exponentials per such group); a group of one dimension
        is its column of log_qz_dims, a group of all dimensions is log_qz. Low-precision inputs are
        upcast first, so the slices' gradients are summed in float32 and rounded to the input dtype
        once (summed in float16, partial gradients can overflow to ±inf and add up to NaN)."""
        acc = accumulation_dtype(z.dtype)
        z, mu, logvar = (t.to(acc) for t in (z, mu, logvar))
        lqz, lqzd = self.log_qz(z, mu, logvar, weights, deterministic=deterministic)

        def joint(k, g):
            sel = torch.as_tensor(g, device=z.device)
            return self.log_qz(z[:, sel], mu[:, sel], logvar[:, sel], weights, deterministic=deterministic)[0]

        return lqz, lqzd, group_columns(groups, lqz, lqzd, joint)

    def reasons(self, z, mu, logvar) -> list[str]:
        why = self.unavailable_reason()
        return [why] if why else self.not_supported_reasons(z, mu, logvar)


def group_columns(groups, lqz, lqzd, joint) -> torch.Tensor:
    """log_qz_groups [M, G]: a group of one dimension is its column of log_qz_dims, a group of all
    dimensions is log_qz, and the k-th other group (in order) is ``joint(k, group)``."""
    d, cols, k = lqzd.shape[1], [], 0
    for g in groups:
        if len(g) == 1:
            cols.append(lqzd[:, g[0]])
        elif len(g) == d:
            cols.append(lqz)
        else:
            cols.append(joint(k, g))
            k += 1
    return torch.stack(cols, dim=1)


class TorchBackend(Backend):
    name = "torch"
    description = "pure-PyTorch reference (chunked, any device, exact autograd)"

    def log_qz(self, z, mu, logvar, weights, deterministic=False):
        from .reference import log_qz_reference

        return log_qz_reference(z, mu, logvar, weights)


_REGISTRY: dict[str, Backend] = {}
_LOADERS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, loader: Callable[[], Backend]) -> None:
    """Register a lazily constructed backend under one of :data:`BACKEND_NAMES`."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend name {name!r}")
    _LOADERS[name] = loader


def get_backend(name: str) -> Backend | None:
    """The backend object for ``name``, or None if this version ships no such backend."""
    if name not in _REGISTRY and name in _LOADERS:
        _REGISTRY[name] = _LOADERS[name]()
    return _REGISTRY.get(name)


class TritonBackend(Backend):
    name = "triton"
    description = "fused Triton kernels (tcvae_kernels/triton_kernels.py), O(M·D) memory"

    def unavailable_reason(self):
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        return None

    def not_supported_reasons(self, z, mu, logvar):
        import os

        why = []
        if z.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            why.append("backend 'triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, "
                       "the interpreter used for testing)")
        elif z.device.type not in ("cpu", "cuda"):
            why.append(f"backend 'triton' runs on CUDA tensors, got {z.device.type}")
        if mu.shape[0] * mu.shape[1] >= 2**31:
            why.append("backend 'triton' indexes components with 32-bit offsets: K·D must be < 2^31")
        return why

    def log_qz(self, z, mu, logvar, weights, deterministic=False):
        from .triton_kernels import log_qz_op

        q, qd, _, _ = log_qz_op(z, mu, logvar, weights.w_self, weights.w_next, weights.w_other, weights.offset,
                                bool(deterministic))
        return q, qd


register_backend("torch", TorchBackend)
register_backend("triton", TritonBackend)


def _missing_reason(name: str) -> str:
    return f"backend {name!r} is not part of this build of tcvae_kernels"


def available_backends() -> list[str]:
    """Names of the backends this installation can run (on some device)."""
    names = []
    for name in BACKEND_NAMES:
        be = get_backend(name)
        if be is not None and be.unavailable_reason() is None:
            names.append(name)
    return names


def backend_reasons(name: str, z, mu, logvar) -> list[str]:
    """Why backend ``name`` cannot run on these inputs (empty list: it can)."""
    be = get_backend(name)
    return [_missing_reason(name)] if be is None else be.reasons(z, mu, logvar)


def check_backend_name(backend) -> None:
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKEND_NAMES):
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")


def select_backend(backend: str, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> Backend:
    """Resolve the ``backend`` argument to a Backend that can run on the given inputs."""
    check_backend_name(backend)
    if backend != "auto":
        why = backend_reasons(backend, z, mu, logvar)
        if why:
            raise BackendNotSupportedError(
                f"backend={backend!r} cannot run on these inputs "
                f"(z: {tuple(z.shape)} {z.dtype} on {z.device}):\n"
                + "\n".join(f"  - {r}" for r in why)
                + "\nuse backend='auto' to pick one that can, or see tcvae_kernels.available_backends()"
            )
        return get_backend(backend)
    for name in AUTO_ORDER.get(z.device.type, ("torch",)):
        if not backend_reasons(name, z, mu, logvar):
            return get_backend(name)
    return get_backend("torch")
