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

import torch

from . import backends as _backends  # noqa: F401  (importing the package registers every backend)
from .backends.base import Backend, auto_order, backend_names, check_backend_name, get_backend
from .estimators import log_weights
from .testing import check_backend


class BackendNotSupportedError(ValueError):
    """An explicitly requested backend cannot run on these inputs or in this installation."""


def _missing_reason(name: str) -> str:
    return f"backend {name!r} is not part of this build of tcvae_kernels"


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """The backends that can run here: built and installed, and with a device of their kind in this
    process (``cuda`` and ``triton`` need a GPU). What is installed regardless of the devices:
    :func:`compiled_backends`; why a backend is missing: :func:`backend_status`.

    Args:
        device: None for every device here, or a device ("cpu", "cuda", ``torch.device``): only
            the backends that run on tensors of its type.

    Returns:
        Backend names, in registration order (a subset of :func:`~tcvae_kernels.backend_names`).
    """
    kind = None if device is None else torch.device(device).type
    names = []
    for name in compiled_backends():
        devs = get_backend(name).devices()
        if devs and (kind is None or kind in devs):
            names.append(name)
    return names


def compiled_backends() -> list[str]:
    """The backends this installation ships and has built (the extension loads, triton is
    importable), whether or not a device for them exists in this process.

    Returns:
        Backend names, in registration order.
    """
    names = []
    for name in backend_names():
        be = get_backend(name)
        if be is not None and be.unavailable_reason() is None:
            names.append(name)
    return names


def backend_status() -> dict[str, str]:
    """Why each backend can or cannot run here.

    Returns:
        ``{name: status}`` for every registered backend: "available (cpu, cuda)" (the device types
        it runs on here), or the reason it cannot run (not built, no GPU, triton missing, ...).
    """
    out = {}
    for name in backend_names():
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
    for name in auto_order(z.device.type) or ("torch",):
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
