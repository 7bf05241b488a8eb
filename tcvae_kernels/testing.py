"""Cross-checking a backend against the float64 reference (used by the dispatcher's one-time
self-check of the GPU backends, by ``python -m tcvae_kernels check`` and by the tests), on inputs
from :func:`random_inputs` (the one generator of random cases: tests, ``check``, the benchmarks).

Tolerance rule, per input dtype (errors are max-abs over all elements):

* float64: the backend and the reference both round each of ~K·D terms once; we require
  ``err <= 1e-9 * (1 + max|truth|)`` for outputs and ``1e-8 * (1 + max|truth|)`` for gradients
  (≥ 5 orders of magnitude above float64 rounding of sums of ≤ 1e4 terms), plus twice the
  reference's own float64 error, estimated as the difference between its evaluations with
  exponents in base e (the truth) and in base 2. That is ~1e-15 relative on ordinary inputs; on
  ill-conditioned ones (z 10⁴ from components 10⁻² apart: exponents of 5·10⁷, whose last bits set
  the softmax over components) the truth itself is accurate only to ~2e-8 relative, the size of
  a fused kernel's error there (found by the property tests).
* float32, float16, bfloat16 (all computed in float32): flash-attention's rule. The truth is the
  reference in float64 *on the same rounded inputs*; the backend's error must be at most twice
  the error of the reference evaluated in float32, plus a floor of ``8·eps32·scale`` (a few ulps,
  for the case where the float32 reference happens to be exact). For outputs scale = 1 + max|truth|;
  for gradients, which are sums over i or j of terms with mixed signs, scale = 1 + max over
  elements of the L1 mass of their terms (sum_k |t_k|, e.g. sum_i |G·(diff²·h - 0.5)| for
  grad_logvar): the rounding error of a sum is proportional to the mass of its terms, not to its
  value, and with random upstream gradients the value can be 30× smaller than the mass.
  Where that is exceeded, one more allowance decides: twice the largest change of the float64
  result under three random relative perturbations of the inputs of 4·eps32 (logvar by
  4·eps32·(1 + |logvar|)) — the error any backward-stable float32 evaluation may make. It matters
  for ill-conditioned inputs only (e.g. z 10³ from components whose means differ by 10⁻²: the
  softmax over components then hangs on the last bits of (z - mu)², for every float32 method).
* Everywhere: a NaN output where the float64 truth is not NaN fails, whatever the tolerances.
  Results are returned in the inputs' dtype (float16 tops out at 65504); an element that rounded
  to ±inf counts the least error that rounds there, ``65520 - |truth|`` (0 where the truth itself
  lies past that threshold; ``65520 + |truth|`` for the other sign: ``abs_errors``), so overflowing
  elements neither fail a correct result nor make the allowance infinite. (The other sign occurs:
  a grad_logvar element of -5.8e3 summing terms of ±1e6, whose float32 value may legitimately be
  +7e4, is +inf in float16 for the reference itself: found by the property tests.) The reference's float32 error
  counts only where it is finite (a NaN there is not rounding, and grants no allowance).
  The reference is evaluated in float32 twice, with exponents in base e and in base 2 (how the
  fused kernels hold them), and the larger error counts: the rounding of an exponent X is
  eps·|X| absolute, and whether |X| or |X|·log2(e) falls in the higher binade changes it by up to
  2×. When one element dominates the maximum (extreme inputs: a few wide components carry every
  row) a single base's error is one draw, and kernels as accurate as a float32 evaluation in base 2
  would fail a base-e-only rule now and then (measured: 1 seed in 40 at logvar ∈ [-20, 20]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends.base import Backend, get_backend
from .backends.torch_ref import ReferenceBackend
from .estimators import LogWeights, weight_matrix
from .families import get_family
from .reference import log_density

EPS32 = torch.finfo(torch.float32).eps

INPUT_KINDS = ("normal", "noncontiguous", "extreme")


def random_inputs(m: int, k: int, d: int, *, kind: str = "normal", dtype: torch.dtype = torch.float64,
                  device: str | torch.device = "cpu", generator: torch.Generator | None = None,
                  spread: float = 1.0, logvar_range: tuple[float, float] = (-2.0, 1.0), family: str = "normal"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (z [M, D], mu [K, D], logvar [K, D]), drawn in float64 then rounded to ``dtype``.

    ``mu ~ spread·N(0, 1)``; ``logvar`` uniform in ``logvar_range``; z_i drawn from component i for
    i < min(M, K) (the estimators' own-component convention), from a random component for the
    other rows. ``kind``: "normal"; "noncontiguous" (the same values through transposed and
    strided views); "extreme" (logvar uniform in [-20, 20], z 10³ away from its component in every
    dimension: the kernels' exact fallback). ``family="laplace"``: the third tensor is a log-scale b
    (same range) and z = mu + e^b·Laplace(0, 1) noise. Raises ValueError on another kind."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {INPUT_KINDS}, got {kind!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    f64 = torch.float64
    mu = spread * torch.randn(k, d, generator=g, dtype=f64)
    lo, hi = (-20.0, 20.0) if kind == "extreme" else logvar_range
    logvar = lo + (hi - lo) * torch.rand(k, d, generator=g, dtype=f64)
    src = torch.randint(0, k, (m,), generator=g)
    src[: min(m, k)] = torch.arange(min(m, k))
    if kind == "extreme":
        z = mu[src] + 1e3 * torch.sign(torch.randn(m, d, generator=g, dtype=f64))
    else:
        fam = get_family(family)
        z = mu[src] + fam.scale(logvar[src]) * fam.noise((m, d), g, f64)
    z, mu, logvar = (t.to(dtype=dtype, device=device) for t in (z, mu, logvar))
    if kind == "noncontiguous":  # [D, M] storage seen as [M, D]; mu a column slice of a wider tensor
        z = z.t().contiguous().t()
        mu = torch.cat([mu, mu], dim=1)[:, :d] if d > 1 else mu.t().contiguous().t()
        logvar = logvar.t().contiguous().t()
    return z, mu, logvar


@dataclass
class CheckResult:
    """Per quantity: the backend's error, the allowed error, and whether it passed."""

    errors: dict
    allowed: dict

    nan: tuple = ()  # outputs with NaN where the truth has none

    @property
    def ok(self) -> bool:
        return not self.nan and all(self.errors[k] <= self.allowed[k] for k in self.errors)

    def worst(self) -> tuple[str, float, float]:
        """The quantity closest to (or furthest past) its bound: (name, error, allowed)."""
        name = max(self.errors, key=lambda k: self.errors[k] / max(self.allowed[k], 1e-300))
        return name, self.errors[name], self.allowed[name]


def _forward_backward(fn, z, mu, logvar, ups, grads: bool):
    """fn's outputs (log_qz, log_qz_dims[, log_qz_groups]) and, with ``grads``, the gradients of
    sum(output · upstream) w.r.t. z, mu, logvar."""
    leaves = [t.detach().clone().requires_grad_(grads) for t in (z, mu, logvar)]
    with torch.set_grad_enabled(grads):
        outs = fn(*leaves)
        if not grads:
            return [o.detach() for o in outs]
        total = sum((o * u.to(o.dtype)).sum() for o, u in zip(outs, ups))
        gz, gmu, glv = torch.autograd.grad(total, leaves)
    return [o.detach() for o in outs] + [gz, gmu, glv]


def abs_errors(result: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """|result - truth| per element, in float64. Where the result rounded to ±inf while the truth
    is finite (a float16 gradient past 65504), the error is the least one that rounds to it: the
    distance from the truth to ±threshold, threshold = max + ulp(max)/2 of the result's dtype
    (values at or beyond it round to ±inf): threshold - |truth| (at least 0) for the truth's sign,
    threshold + |truth| for the other (a sum of large terms that cancel to a small value of one
    sign may be computed within its allowance on the other side of the range)."""
    r = result.double()
    d = (r - truth).abs()
    if result.is_floating_point() and result.dtype != torch.float64:
        fi = torch.finfo(result.dtype)
        top = fi.max + 2.0 ** math.floor(math.log2(fi.max)) * fi.eps / 2
        hit = torch.isinf(r) & torch.isfinite(truth)
        d = torch.where(hit, (torch.sign(r) * top - truth).abs().where(torch.sign(r) != torch.sign(truth),
                                                                      (top - truth.abs()).clamp_min(0.0)), d)
    return d


NAMES = ("log_qz", "log_qz_dims", "grad_z", "grad_mu", "grad_logvar")
GROUP_NAMES = ("log_qz", "log_qz_dims", "log_qz_groups", "grad_z", "grad_mu", "grad_logvar")


def gradient_l1_mass(z, mu, logvar, weights, up_q, up_d, log_qz, log_qz_dims, chunk_elements=1 << 22,
                     groups=None, up_g=None, log_qz_groups=None, family="normal"):
    """Max over elements of sum_k |t_k| for grad_z, grad_mu, grad_logvar (float64, chunked over rows).

    With G = a·P + b·Q (+ c·R for groups; reference.py): grad_z[i,d] sums |G·diff·e^-lv| over j,
    grad_mu[j,d] the same over i, grad_logvar[j,d] sums |G·(0.5·diff²·e^-lv - 0.5)| over i
    (laplace: |G·e^-b| and |G·(|diff|·e^-b - 1)|)."""
    z, mu, logvar = (t.detach().double() for t in (z, mu, logvar))
    up_q, up_d, log_qz, log_qz_dims = (t.detach().double() for t in (up_q, up_d, log_qz, log_qz_dims))
    m, d = z.shape
    k = mu.shape[0]
    iv = torch.exp(-logvar)
    fam = get_family(family)
    mass_mu = torch.zeros_like(mu)
    mass_lv = torch.zeros_like(mu)
    mass_z = 0.0
    rows = max(1, chunk_elements // max(1, k * d))
    for s in range(0, m, rows):
        e = min(m, s + rows)
        l = log_density(z[s:e, None, :], mu[None], logvar[None], family)  # [C, K, D]
        w = weight_matrix(weights, e - s, k, row_start=s, dtype=torch.float64, device=z.device)
        p = torch.exp(l.sum(2) + w - log_qz[s:e, None])
        q = torch.exp(l + w[..., None] - log_qz_dims[s:e, None, :])
        g = up_q[s:e, None, None] * p[..., None] + up_d[s:e, None, :] * q
        for gi, dims in enumerate(groups or ()):
            r = torch.exp(l[..., dims].sum(2) + w - log_qz_groups[s:e, gi, None].double())
            g[..., dims] += (up_g[s:e, gi, None].double() * r)[..., None]
        g = g.abs()
        diff = z[s:e, None, :] - mu[None]
        a_mu, a_lv = fam.abs_partials(diff, iv[None])
        t_mu, t_lv = g * a_mu, g * a_lv
        mass_z = max(mass_z, t_mu.sum(1).max().item())
        mass_mu += t_mu.sum(0)
        mass_lv += t_lv.sum(0)
    return mass_z, mass_mu.max().item(), mass_lv.max().item()


def check_backend(
    backend,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    weights: LogWeights,
    *,
    grads: bool = True,
    upstream: tuple[torch.Tensor, torch.Tensor] | None = None,
    deterministic: bool = False,
    groups: list[list[int]] | None = None,
    family: str = "normal",
) -> CheckResult:
    """Compare ``backend`` (a name, or a Backend object) on (z, mu, logvar) — in their dtype and on
    their device — with the float64 reference on the same values; upstream gradients default to
    random ones. With ``groups`` (index lists), ``log_qz_groups`` is checked too (``upstream`` then
    has a third tensor [M, G]). ``family``: the posterior family (reference.FAMILIES)."""
    m, d = z.shape
    n_out = 2 if groups is None else 3
    if upstream is None:
        g = torch.Generator().manual_seed(1234)
        shapes = [(m,), (m, d), (m, len(groups or ()))][:n_out]
        upstream = tuple(torch.randn(sh, generator=g, dtype=torch.float64) for sh in shapes)
    ups = [u.to(z.device) for u in upstream]
    be = get_backend(backend) if isinstance(backend, str) else backend
    names = NAMES if groups is None else GROUP_NAMES

    def run(impl: Backend, dtype):
        return run_on(impl, [t.detach().to(dtype) for t in (z, mu, logvar)])

    def run_on(impl: Backend, args):
        if groups is None:
            fn = lambda a, b, c: impl.log_qz(a, b, c, weights, deterministic=deterministic, family=family)  # noqa: E731
        else:
            fn = lambda a, b, c: impl.log_qz_groups(a, b, c, weights, groups, deterministic=deterministic,  # noqa: E731
                                                    family=family)
        return _forward_backward(fn, *args, ups, grads)

    got = run(be, z.dtype)
    truth = run(ReferenceBackend(), torch.float64)
    errors, allowed, ref_err = {}, {}, {}
    masses = (None,) * len(names)  # L1 masses of the gradient sums (float32 rule only)
    if grads and z.dtype != torch.float64:
        extra = dict(family=family) if groups is None else dict(groups=groups, up_g=ups[2], log_qz_groups=truth[2],
                                                                 family=family)
        masses = (None,) * n_out + gradient_l1_mass(z, mu, logvar, weights, ups[0], ups[1], truth[0], truth[1],
                                                     **extra)
    nan = []
    for i, (g_, t_) in enumerate(zip(got, truth)):
        name = names[i]
        if bool((torch.isnan(g_.double()) & ~torch.isnan(t_)).any()):
            nan.append(name)
        d = abs_errors(g_, t_)
        d = d[~(torch.isnan(g_.double()) & torch.isnan(t_))]  # NaN where the truth is NaN too: not an error
        err = d.max().item() if d.numel() else 0.0
        err = float("inf") if err != err else err  # NaN where the truth is not
        scale = 1.0 + (t_.abs().max().item() if t_.numel() else 0.0)
        if masses[i] is not None and math.isfinite(masses[i]):
            scale = max(scale, 1.0 + masses[i])
        errors[name] = err
        if z.dtype == torch.float64:
            allowed[name] = (1e-9 if i < n_out else 1e-8) * scale
        else:
            allowed[name] = 8 * EPS32 * scale
    # the reference's own error in the input precision (gradients rounded to z.dtype like ours),
    # evaluated with exponents in base e and in base 2; in float64 the base-e evaluation is the truth
    for base2 in (True,) if z.dtype == torch.float64 else (False, True):
        ref = run(ReferenceBackend(base2), z.dtype)
        for i, (r_, t_) in enumerate(zip(ref, truth)):
            # its rounding error where it is finite (a NaN or an overflow of the reference is not
            # rounding, and grants no allowance)
            d = abs_errors(r_, t_)
            d = d[torch.isfinite(d)]
            ref_err[names[i]] = max(ref_err.get(names[i], 0.0), d.max().item() if d.numel() else 0.0)
    for name in ref_err:
        allowed[name] += 2 * ref_err[name]
    if z.dtype != torch.float64:
        if any(errors[n] > allowed[n] for n in errors):
            # backward-stability allowance (see the module docstring), computed only when needed
            g = torch.Generator().manual_seed(4321)
            eps = 4 * EPS32
            dev = {n: 0.0 for n in names[: len(truth)]}
            for _ in range(3):
                pert = []
                for j, t in enumerate((z, mu, logvar)):
                    t64 = t.detach().double().cpu()
                    u = 2 * torch.rand(t64.shape, generator=g, dtype=torch.float64) - 1
                    delta = eps * u * (t64.abs() if j < 2 else 1 + t64.abs())
                    pert.append((t64 + delta).to(z.device))
                out = run_on(ReferenceBackend(), pert)
                for i, (o_, t_) in enumerate(zip(out, truth)):
                    d = (o_ - t_).abs()
                    d = d[torch.isfinite(d)]
                    if d.numel():
                        dev[names[i]] = max(dev[names[i]], d.max().item())
            for name in dev:
                allowed[name] += 2 * dev[name]
    return CheckResult(errors, allowed, tuple(nan))
