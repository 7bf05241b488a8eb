"""Cross-checking a backend against the float64 reference (used by the tests and by
``python -m tcvae_kernels check``).

Tolerance rule, per input dtype (errors are max-abs over all elements):

* float64: the backend and the reference both round each of ~K·D terms once; we require
  ``err <= 1e-9 * (1 + max|truth|)`` for outputs and ``1e-8 * (1 + max|truth|)`` for gradients
  (≥ 5 orders of magnitude above float64 rounding of sums of ≤ 1e4 terms).
* float32, float16, bfloat16 (all computed in float32): flash-attention's rule. The truth is the
  reference in float64 *on the same rounded inputs*; the backend's error must be at most twice
  the error of the reference evaluated in float32, plus a floor of ``8·eps32·(1 + max|truth|)``
  (a few ulps of the largest value, for the case where the float32 reference happens to be exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dispatch import get_backend
from .estimators import LogWeights
from .reference import log_qz_reference

EPS32 = torch.finfo(torch.float32).eps


@dataclass
class CheckResult:
    """Per quantity: the backend's error, the allowed error, and whether it passed."""

    errors: dict
    allowed: dict

    @property
    def ok(self) -> bool:
        return all(self.errors[k] <= self.allowed[k] for k in self.errors)

    def worst(self) -> tuple[str, float, float]:
        """The quantity closest to (or furthest past) its bound: (name, error, allowed)."""
        name = max(self.errors, key=lambda k: self.errors[k] / max(self.allowed[k], 1e-300))
        return name, self.errors[name], self.allowed[name]


def _forward_backward(fn, z, mu, logvar, up_q, up_d, grads: bool):
    leaves = [t.detach().clone().requires_grad_(grads) for t in (z, mu, logvar)]
    with torch.set_grad_enabled(grads):
        q, qd = fn(*leaves)
        if not grads:
            return [q.detach(), qd.detach()]
        gz, gmu, glv = torch.autograd.grad((q * up_q.to(q.dtype)).sum() + (qd * up_d.to(qd.dtype)).sum(), leaves)
    return [q.detach(), qd.detach(), gz, gmu, glv]


NAMES = ("log_qz", "log_qz_dims", "grad_z", "grad_mu", "grad_logvar")


def check_backend(
    backend: str,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    weights: LogWeights,
    *,
    grads: bool = True,
    upstream: tuple[torch.Tensor, torch.Tensor] | None = None,
    deterministic: bool = False,
) -> CheckResult:
    """Compare ``backend`` on (z, mu, logvar) — in their dtype and on their device — with the
    float64 reference on the same values; upstream gradients default to random ones."""
    m, d = z.shape
    if upstream is None:
        g = torch.Generator().manual_seed(1234)
        upstream = (torch.randn(m, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64))
    up_q, up_d = (u.to(z.device) for u in upstream)
    be = get_backend(backend)

    def run(impl, dtype):
        args = [t.detach().to(dtype) for t in (z, mu, logvar)]
        return _forward_backward(lambda a, b, c: impl(a, b, c, weights), *args, up_q, up_d, grads)

    got = run(lambda a, b, c, w: be.log_qz(a, b, c, w, deterministic=deterministic), z.dtype)
    truth = run(log_qz_reference, torch.float64)
    errors, allowed = {}, {}
    for i, (g_, t_) in enumerate(zip(got, truth)):
        name = NAMES[i]
        err = (g_.double() - t_).abs().max().item() if t_.numel() else 0.0
        if err != err:  # NaN anywhere counts as a failure
            err = float("inf")
        scale = 1.0 + (t_.abs().max().item() if t_.numel() else 0.0)
        errors[name] = err
        if z.dtype == torch.float64:
            allowed[name] = (1e-9 if i < 2 else 1e-8) * scale
        else:
            allowed[name] = 8 * EPS32 * scale
    if z.dtype != torch.float64:
        ref32 = run(log_qz_reference, z.dtype)  # computes in float32; gradients rounded to z.dtype like ours
        for i, (r_, t_) in enumerate(zip(ref32, truth)):
            err = (r_.double() - t_).abs().max().item() if t_.numel() else 0.0
            allowed[NAMES[i]] += 2 * err
    return CheckResult(errors, allowed)
