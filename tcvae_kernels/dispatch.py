"""The one dispatch point: which backend computes ``log_qz`` for given inputs.

Each backend says why it cannot run (``unavailable_reason`` for the installation,
``not_supported_reasons`` for the inputs); an explicit request for a backend that cannot run
raises :class:`BackendNotSupportedError` listing those reasons, and ``"auto"`` takes the first
backend of the device's preference list that can run, falling back to ``"torch"``.

Safety net: a backend with ``self_check = True`` (the GPU kernels) is checked once per (device,
dtype) before ``"auto"`` first uses it: forward and the three gradients on a small case (300
queries and components, D = 5, one query 30 units from every component) against the float64 reference
under the tolerance rule of :mod:`tcvae_kernels.testing`. If it fails or raises, ``"auto"`` uses
the next backend and warns once with the reason. An explicit ``backend=`` is never second-guessed;
``TCVAE_AUTO_CHECK=0`` turns the check off; under ``torch.compile`` tracing it is not run (an
earlier eager check's verdict is used).
"""

from __future__ import annotations

import os
import warnings
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
    self_check = True

    def unavailable_reason(self):
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        return None

    def devices(self):
        import os

        out = ["cuda"] if torch.cuda.is_available() else []
        return out + (["cpu"] if os.environ.get("TRITON_INTERPRET", "0") == "1" else [])

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
                                bool(deterministic), needs_grad(z, mu, logvar))
        return q, qd


def needs_grad(*tensors) -> bool:
    """Whether autograd will ask for gradients of these inputs: the GPU forwards then also sum the
    terms of grad_z (a third more work), else they skip them."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


register_backend("torch", TorchBackend)
register_backend("triton", TritonBackend)


def _missing_reason(name: str) -> str:
    return f"backend {name!r} is not part of this build of tcvae_kernels"


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends that can run here: built and installed, and with a device of their
    kind in this process (``cuda`` and ``triton`` need a GPU). With ``device`` ("cpu", "cuda",
    ...): those that run on tensors of that device type. What is installed regardless of the
    devices: :func:`compiled_backends`; why a backend is missing: :func:`backend_status`."""
    kind = None if device is None else torch.device(device).type
    names = []
    for name in compiled_backends():
        devs = get_backend(name).devices()
        if devs and (kind is None or kind in devs):
            names.append(name)
    return names


def compiled_backends() -> list[str]:
    """Names of the backends this installation ships and has built (the extension loads, triton is
    importable), whether or not a device for them exists in this process."""
    names = []
    for name in BACKEND_NAMES:
        be = get_backend(name)
        if be is not None and be.unavailable_reason() is None:
            names.append(name)
    return names


def backend_status() -> dict[str, str]:
    """Per backend name: "available (cpu, cuda)", or why it cannot run here."""
    out = {}
    for name in BACKEND_NAMES:
        be = get_backend(name)
        if be is None:
            out[name] = _missing_reason(name)
        elif be.unavailable_reason():
            out[name] = be.unavailable_reason()
        elif not be.devices():
            out[name] = "built, but no device for it in this process (no CUDA GPU visible)"
        else:
            out[name] = "available (" + ", ".join(be.devices()) + ")"
    return out


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
                + f"\nuse backend='auto' to pick one that can; on {z.device.type} tensors here: "
                + f"{available_backends(z.device)} (tcvae_kernels.backend_status() says why the others cannot)"
            )
        return get_backend(backend)
    for name in AUTO_ORDER.get(z.device.type, ("torch",)):
        if backend_reasons(name, z, mu, logvar):
            continue
        be = get_backend(name)
        if be.self_check and self_check_failure(be, z.device, z.dtype):
            continue
        return be
    return get_backend("torch")


AUTO_CHECK_ENV = "TCVAE_AUTO_CHECK"
#: (backend name, device, dtype) -> why its one-time check failed, or None (passed)
_SELF_CHECKS: dict[tuple[str, str, torch.dtype], str | None] = {}


def self_check_failure(be: Backend, device, dtype: torch.dtype) -> str | None:
    """Why ``be`` failed its one-time check on (device, dtype), or None when it passed (or the check
    is off: ``TCVAE_AUTO_CHECK=0``, or during ``torch.compile`` tracing before any eager check)."""
    key = (be.name, str(torch.device(device)), dtype)
    if key in _SELF_CHECKS:
        return _SELF_CHECKS[key]
    if os.environ.get(AUTO_CHECK_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if torch.compiler.is_compiling():
        return None
    why = _run_self_check(be, torch.device(device), dtype)
    _SELF_CHECKS[key] = why
    if why:
        warnings.warn(f"tcvae_kernels: backend {be.name!r} failed its one-time check against the reference on "
                      f"{device} {dtype} ({why}); backend='auto' uses the next backend. Please report this with "
                      f"`python -m tcvae_kernels check --all`; {AUTO_CHECK_ENV}=0 skips the check.",
                      RuntimeWarning, stacklevel=4)
    return why


def _run_self_check(be: Backend, device: torch.device, dtype: torch.dtype) -> str | None:
    from .estimators import log_weights
    from .testing import check_backend

    g = torch.Generator().manual_seed(20261201)
    m, d = 300, 5  # several row blocks and component tiles: tiles with and without the self weights
    mu = torch.randn(m, d, generator=g, dtype=torch.float64)
    lv = torch.empty(m, d, dtype=torch.float64).uniform_(-2.0, 1.0, generator=g)
    z = mu + torch.exp(0.5 * lv) * torch.randn(m, d, generator=g, dtype=torch.float64)
    z[m // 2] += 30.0  # a query ≥ 18 σ from every component: the kernels' exact fallback (the rule's
    # allowance grows with the inputs' conditioning, so not farther: it would hide other errors)
    args = [t.to(device=device, dtype=dtype) for t in (z, mu, lv)]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            res = check_backend(be, *args, log_weights("mss", m, 10 * m))
    except Exception as e:  # noqa: BLE001 (any failure of the backend disqualifies it)
        return f"it raised {type(e).__name__}: {e}"
    if res.ok:
        return None
    bad = [f"{k} error {res.errors[k]:.2e} > allowed {res.allowed[k]:.2e}" for k in res.errors
           if res.errors[k] > res.allowed[k]]
    return "; ".join(([f"NaN in {', '.join(res.nan)}"] if res.nan else []) + bad)
