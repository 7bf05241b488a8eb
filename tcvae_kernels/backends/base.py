"""The backend contract and the registry every backend joins.

A backend is a :class:`Backend` subclass in its own module of this package, beside its kernel,
registered with :func:`register_backend`; its ``name`` and ``auto_priority`` (per device type, for
``backend="auto"``, higher first) are all the dispatcher needs. The names users may pass
(``tcvae_kernels.backend_names()``) and ``"auto"``'s order per device type are derived from the
registrations (:func:`backend_names`, :func:`auto_order`): nothing else lists the backends.
"""

from __future__ import annotations

from typing import Callable

import torch

from .._validation import accumulation_dtype
from ..estimators import LogWeights


class Backend:
    """A way of computing ``(log_qz [M], log_qz_dims [M, D])``, differentiably.

    Subclasses implement ``log_qz`` returning results in the accumulation dtype
    (float64 for float64 inputs, float32 otherwise).
    """

    name: str = ""
    description: str = ""
    #: device type -> priority of this backend for ``backend="auto"`` on tensors of that type
    #: (higher first); a device type not listed: "auto" never picks it there
    auto_priority: dict[str, int] = {}
    #: ``"auto"`` checks this backend against the reference once per (device, dtype) before use
    self_check: bool = False

    def unavailable_reason(self) -> str | None:
        """Why this installation cannot run the backend at all (None if it can)."""
        return None

    def not_supported_reasons(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> list[str]:
        """Why the backend cannot run on these (validated) inputs; empty if it can."""
        return []

    def devices(self) -> list[str]:
        """Device types on which this backend can run in this process (given what is installed
        and which devices exist); empty if none."""
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]

    def log_qz(self, z, mu, logvar, weights: LogWeights, deterministic: bool = False,
               family: str = "normal", grad_components: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``deterministic``: results bitwise the same in every process (a backend whose launch
        configuration is autotuned fixes it; the others are deterministic anyway). ``family``: the
        posterior family, reference.FAMILIES ("laplace": ``logvar`` holds the log-scale).
        ``grad_components``: None (all), or n: only the first n components get d/dmu, d/dlogvar
        (the others' rows are 0; they enter d/dz alone), so the backward skips their columns."""
        raise NotImplementedError

    def log_qz_groups(self, z, mu, logvar, weights: LogWeights, groups: list[list[int]], deterministic: bool = False,
                      family: str = "normal", grad_components: int | None = None):
        """``(log_qz [M], log_qz_dims [M, D], log_qz_groups [M, G])`` for a partition ``groups`` of
        the dimensions (index lists), ``log_qz_groups[i, g] = logsumexp_j(sum_{d in g} l[i,j,d] + w[i,j])``.

        Default: each group of several dimensions is this backend's ``log_qz`` on that group's
        dimension slice (one more pass of exponentials per such group); a group of one dimension
        is its column of log_qz_dims, a group of all dimensions is log_qz. Low-precision inputs are
        upcast first, so the slices' gradients are summed in float32 and rounded to the input dtype
        once (summed in float16, partial gradients can overflow to ±inf and add up to NaN)."""
        acc = accumulation_dtype(z.dtype)
        z, mu, logvar = (t.to(acc) for t in (z, mu, logvar))
        kw = dict(deterministic=deterministic, family=family, grad_components=grad_components)
        lqz, lqzd = self.log_qz(z, mu, logvar, weights, **kw)

        def joint(k, g):
            sel = torch.as_tensor(g, device=z.device)
            return self.log_qz(z[:, sel], mu[:, sel], logvar[:, sel], weights, **kw)[0]

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


def needs_grad(*tensors) -> bool:
    """Whether autograd will ask for gradients of these inputs: the GPU forwards then also sum the
    terms of grad_z (a third more work), else they skip them."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def op_grad_components(grad_components: int | None) -> int:
    """A backend's ``grad_components`` (None: all) as the ops take it (-1: all)."""
    return -1 if grad_components is None else int(grad_components)


#: name -> the constructed backend (built on first use) / its class, in registration order
_REGISTRY: dict[str, Backend] = {}
_LOADERS: dict[str, Callable[[], Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a backend class (constructed lazily, on first use) under ``cls.name``; usable as a
    class decorator."""
    if not cls.name or cls.name == "auto" or cls.name in _LOADERS:
        raise ValueError(f"backend name {cls.name!r} is empty, reserved or already registered")
    _LOADERS[cls.name] = cls
    return cls


def backend_names() -> tuple[str, ...]:
    """Every registered backend name, live (a backend registered later joins).

    Returns:
        The names a user may pass as ``backend=`` besides "auto", in registration order.
    """
    return tuple(_LOADERS)


def check_backend_name(backend) -> None:
    """Raise ValueError unless ``backend`` is "auto" or a registered backend name."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in backend_names()):
        raise ValueError(f"backend must be 'auto' or one of {backend_names()}, got {backend!r}")


def auto_order(device_type: str) -> tuple[str, ...]:
    """``backend="auto"``'s preference on tensors of ``device_type``: the backends that list it in
    their ``auto_priority``, highest first (ties: registration order)."""
    ranked = [(-cls.auto_priority[device_type], n, name) for n, (name, cls) in enumerate(_LOADERS.items())
              if device_type in cls.auto_priority]
    return tuple(name for _, _, name in sorted(ranked))


def get_backend(name: str) -> Backend | None:
    """The backend object for ``name``, or None if this version ships no such backend."""
    if name not in _REGISTRY and name in _LOADERS:
        _REGISTRY[name] = _LOADERS[name]()
    return _REGISTRY.get(name)
