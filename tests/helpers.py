"""Shared test helpers: fresh random inputs, a brute-force float64 loop implementation,
and the tolerance rule for low-precision backends."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from tcvae_kernels.estimators import log_weights, weight_matrix
from tcvae_kernels.testing import random_inputs


def fresh_seed() -> int:
    """A fresh seed per test (printed, so a failure can be replayed with TCVAE_TEST_SEED)."""
    seed = int(os.environ.get("TCVAE_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"TCVAE_TEST_SEED={seed}")
    return seed


def make_inputs(m, k, d, *, seed=None, **kw):
    """:func:`tcvae_kernels.testing.random_inputs` (same keywords) with a fresh, printed seed."""
    g = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    return random_inputs(m, k, d, generator=g, **kw)


def brute_force(z, mu, logvar, weights):
    """log_qz [M], log_qz_dims [M, D] by explicit Python loops in float64 (math module only)."""
    z, mu, logvar = (t.detach().double().cpu().tolist() for t in (z, mu, logvar))
    m, k, d = len(z), len(mu), len(z[0])
    w = weight_matrix(weights, m, k).tolist()

    def lse(xs):
        top = max(xs)
        if top == -math.inf:
            return -math.inf
        return top + math.log(math.fsum(math.exp(x - top) for x in xs))

    def l(i, j, dd):
        diff = z[i][dd] - mu[j][dd]
        return -0.5 * (diff * diff * math.exp(-logvar[j][dd]) + logvar[j][dd] + math.log(2 * math.pi))

    log_qz = [lse([math.fsum(l(i, j, dd) for dd in range(d)) + w[i][j] for j in range(k)]) for i in range(m)]
    log_qz_dims = [[lse([l(i, j, dd) + w[i][j] for j in range(k)]) for dd in range(d)] for i in range(m)]
    return torch.tensor(log_qz, dtype=torch.float64), torch.tensor(log_qz_dims, dtype=torch.float64)


def assert_ok(res, what):
    """Assert a tcvae_kernels.testing.CheckResult passed; the message names what failed."""
    assert res.ok, f"{what}: NaN in {list(res.nan)}; " + ", ".join(
        f"{k} {res.errors[k]:.2e} > {res.allowed[k]:.2e}" for k in res.errors if res.errors[k] > res.allowed[k])


def weights_for(estimator, k, n=None):
    return log_weights(estimator, k, n if n is not None else 10 * k)


def max_abs(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def brute_force_groups(z, mu, logvar, weights, groups):
    """log_qz_groups [M, G] by explicit loops in float64: logsumexp_j(sum_{d in g} l[i,j,d] + w[i,j])."""
    z, mu, logvar = (t.detach().double().cpu().tolist() for t in (z, mu, logvar))
    m, k = len(z), len(mu)
    w = weight_matrix(weights, m, k).tolist()

    def l(i, j, dd):
        diff = z[i][dd] - mu[j][dd]
        return -0.5 * (diff * diff * math.exp(-logvar[j][dd]) + logvar[j][dd] + math.log(2 * math.pi))

    out = []
    for i in range(m):
        row = []
        for g in groups:
            xs = [math.fsum(l(i, j, dd) for dd in g) + w[i][j] for j in range(k)]
            top = max(xs)
            row.append(top + math.log(math.fsum(math.exp(x - top) for x in xs)))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def float16_overflow_case():
    """(z, mu, logvar) in float16 whose gradient w.r.t. logvar overflows float16 in some elements
    (z ~100 from the one component, logvar = -3): found by the property tests."""
    z = torch.tensor([[-94.0625, 36.9688, 38.8750, 142.5000, 13.6797]], dtype=torch.float16)
    mu = torch.tensor([[1.5410, -0.2935, -2.1797, 0.5684, -1.0850]], dtype=torch.float16)
    return z, mu, torch.full((1, 5), -3.0, dtype=torch.float16)


def float16_cancelling_gradient_case():
    """(z, mu, logvar) in float16, MSS over 17 components with N = 170, whose grad_logvar[16, 0]
    is -5.8e3, a sum of terms of ±1e6 (z ~1e3 from means near 0, logvar 0): the reference
    computes it in float32 as a positive value past 65504, +inf in float16. Found by the property
    tests (tcvae_kernels.testing.abs_errors)."""
    z = torch.tensor([[-536.5, 66.0, -478.5], [-238.0, 741.5, -91.625], [2616.0, 142.0, 1169.0],
                      [-1725.0, -649.0, 910.5], [3318.0, -1169.0, 1849.0], [2108.0, -845.0, 197.5],
                      [677.0, 859.5, -582.5], [110.6875, 468.25, 491.0], [804.5, -850.5, 453.25],
                      [1076.0, -490.75, 413.0], [463.25, 381.0, -649.0], [440.0, 150.0, 755.0],
                      [603.5, -1142.0, -1354.0], [-1391.0, 431.25, 113.6875], [65.0625, 1032.0, -240.625],
                      [561.5, -914.0, -431.5], [1472.0, -2188.0, 1690.0]], dtype=torch.float16)
    mu = 1e-4 * torch.tensor([[-2.3162, 3.3379, -5.3644], [7.0381, -6.938, 3.8743], [-9.6512, 32.082, -6.9952],
                              [0.90361, -4.8876, -4.1962], [-16.012, 3.6907, -6.9284], [-10.719, 0.41127, 18.787],
                              [-11.368, -2.2781, 5.2738], [1.4985, -16.804, -7.6389], [7.6342, -3.8147, -15.068],
                              [-2.6751, -1.539, 14.763], [18.053, -7.2289, -18.33], [-7.3004, 7.6294, 15.602],
                              [-5.312, -1.6749, -3.7694], [24.49, 3.7599, -10.405], [3.2902, -11.854, -8.7786],
                              [12.541, 8.4639, -5.3263], [17.729, 0.60201, 4.5061]], dtype=torch.float64)
    return z, mu.to(torch.float16), torch.zeros(17, 3, dtype=torch.float16)


def backends(device="cpu", *, fused_only=False, emulation: bool | tuple[int, ...] = False, exclude=(), objects=False):
    """The one list of backends the tests run: every registered backend (tcvae_kernels.backend_names(),
    registration order) that can run on ``device`` tensors in this process. ``fused_only`` drops the
    reference ``torch``; ``exclude`` drops names; ``emulation`` appends the CUDA kernels' code run
    serially on the CPU when the extension is built (split-K forced to 2, or one object per count of
    a tuple); ``objects`` gives Backend
    objects instead of names (the emulation is always an object)."""
    from tcvae_kernels import backend_names
    from tcvae_kernels.backends import extension
    from tcvae_kernels.backends.base import get_backend
    from tcvae_kernels.dispatch import backend_reasons

    probe = torch.zeros(2, 1, device=device)
    out = [b for b in backend_names() if b not in exclude and not (fused_only and b == "torch")
           and not backend_reasons(b, probe, probe, probe)]
    if objects:
        out = [get_backend(b) for b in out]
    if emulation and device == "cpu" and extension.LOAD_ERROR is None:
        from cuda_emulation import CudaEmulationBackend

        out += [CudaEmulationBackend(splits=s) for s in ((2,) if emulation is True else emulation)]
    return out


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_id(backend) -> str:
    """A test id for a backend name or object: its name; the CUDA kernels' CPU emulation
    "cuda-emulation" with its split-K count."""
    if isinstance(backend, str):
        return backend
    splits = getattr(backend, "splits", None)
    return f"{backend.name}-emulation{splits}" if splits is not None else backend.name


def targets(devices=None, **kw):
    """The one builder of parametrized backend cases: ``pytest.param(backend, device, id="<backend>-<device>")``
    for every device in ``devices`` (default: cpu, and cuda when present) and every backend
    :func:`backends` (same keywords) gives there; one skipped case when there is none."""
    out = [pytest.param(b, dev, id=f"{backend_id(b)}-{dev}") for dev in (devices or DEVICES) for b in backends(dev, **kw)]
    return out or [pytest.param(None, None, marks=pytest.mark.skip(reason="no backend can run here"))]


def interpreter_rows() -> int:
    """Rows and components the Triton interpreter's cases are cut to: three of its tiles
    (INTERPRET_CONFIG, 8 × 8), the last holding one row: 17."""
    from tcvae_kernels.backends.triton_kernels import INTERPRET_CONFIG

    return 2 * max(c[b] for c in INTERPRET_CONFIG.values() for b in ("BLOCK_M", "BLOCK_K")) + 1


def interpreted(backend_name, device) -> bool:
    """Whether ``backend_name`` on ``device`` runs under the Triton interpreter (~1e5× slower)."""
    return backend_name == "triton" and torch.device(device).type == "cpu"


INTERPRETER_DIMS = 10  # dimensions the Triton interpreter's cases are cut to (keep_dims=False)


def interpreter_shapes(shapes, backend_name, device, *, keep_dims=False):
    """``shapes`` [(M, K, D, ...)], M and K cut to interpreter_rows() (17) and D to
    INTERPRETER_DIMS (unless ``keep_dims``: groups index the dimensions) when the Triton backend
    runs under the interpreter (CPU tensors); the rest unchanged. The interpreter costs a fixed
    time per operation, tile and dimension; 17 pads to three 8 × 8 tiles each way, the last
    holding one row, so a cut case takes the paths the full one does: interior and edge tiles, and
    tiles with and without the estimator's self/next weights (a query block meets those only in
    the diagonal tiles and column 0). D is a loop in the Triton kernels, not a tile. The full sizes
    run for every other backend and for Triton on a GPU, whose tiles (up to 256) they are chosen
    against; the GPU configs' own tiles run under the interpreter in the slow tier
    (test_triton.test_every_config)."""
    if not interpreted(backend_name, device):
        return list(shapes)
    rows = interpreter_rows()
    out = []
    for s in shapes:
        d = s[2] if keep_dims else min(s[2], INTERPRETER_DIMS)
        cut = (min(s[0], rows), min(s[1], rows), d, *s[3:])
        if cut not in out:
            out.append(cut)
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name, folder="python"):
    """The module of a script of the repository (``python/<name>.py`` or ``<folder>/<name>.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, folder, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
