"""Property-based tests (hypothesis) across every backend that can run here: random M, K, D
(including 1 and primes), dtypes, non-contiguous views, values spanning many orders of magnitude —
each backend within its stated tolerance of the float64 reference (tcvae_kernels/testing.py), the
fused grouped op on random partitions of the dimensions, and the estimator's invariances. Profiles
(conftest.py): 200 examples per property ("ci", the default), --hypothesis-profile=long for 5,000;
the every-backend property runs 10 examples in the default tier and the profile's in the slow one."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tcvae_kernels as tk
from tcvae_kernels.dispatch import backend_reasons
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.testing import check_backend

from helpers import assert_ok, backends

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


FUSED = backends("cpu", fused_only=True, emulation=True)
SIZES = st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 31, 33])
FAMILIES = st.sampled_from(["normal", "laplace"])


@st.composite
def problems(draw, max_size=33):
    m = draw(SIZES.filter(lambda v: v <= max_size))
    k = draw(st.one_of(st.just(m), SIZES.filter(lambda v: v <= max_size)))
    d = draw(st.sampled_from([1, 2, 3, 5, 7, 10, 13, 33]))
    estimator = draw(st.sampled_from(["mss", "mws", "uniform"]))
    if estimator == "mss" and (k < 2 or m > k):
        estimator = "mws" if m <= k else "uniform"
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    mu_scale = 10.0 ** draw(st.integers(-3, 3))
    lv_center = draw(st.floats(-8.0, 8.0))
    lv_spread = draw(st.floats(0.0, 6.0))
    far = 10.0 ** draw(st.integers(-2, 3 if dtype in (torch.float16,) else 4))
    noncontig = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    mu = mu_scale * torch.randn(k, d, generator=g, dtype=torch.float64)
    lv = lv_center + lv_spread * (2 * torch.rand(k, d, generator=g, dtype=torch.float64) - 1)
    src = torch.arange(m) % k
    z = mu[src] + torch.exp(0.5 * lv[src]) * torch.randn(m, d, generator=g, dtype=torch.float64)
    z = z + far * torch.randn(m, d, generator=g, dtype=torch.float64) * draw(st.booleans())
    z, mu, lv = (t.to(dtype) for t in (z, mu, lv))
    if noncontig:
        z, mu, lv = (t.t().contiguous().t() for t in (z, mu, lv))
    return z, mu, lv, estimator, 10 * max(m, k) + draw(st.integers(0, 1000))




def _every_backend_matches_the_reference(problem, family):
    """Both posterior families (for "laplace" the third tensor is read as a log-scale)."""
    z, mu, lv, estimator, n = problem
    w = log_weights(estimator, mu.shape[0], n)
    for be in FUSED:
        if isinstance(be, str) and backend_reasons(be, z, mu, lv):
            continue
        assert_ok(check_backend(be, z, mu, lv, w, family=family),
                  f"{getattr(be, 'name', be)} {tuple(z.shape)}x{mu.shape[0]} {z.dtype} {estimator} {family}")


# One property, two tiers: QUICK examples by default, the profile's (ci: 200, long: 5,000) in the
# slow tier. Every example runs each fused backend, the Triton interpreter's ~0.5 s included.
QUICK = 10
_needs_fused = pytest.mark.skipif(not FUSED, reason="no fused backend available")
test_every_backend_matches_the_reference = _needs_fused(
    settings(max_examples=QUICK)(given(problems(max_size=17), FAMILIES)(_every_backend_matches_the_reference)))
test_every_backend_matches_the_reference_profile = pytest.mark.slow(_needs_fused(
    given(problems(max_size=17), FAMILIES)(_every_backend_matches_the_reference)))


@pytest.mark.skipif(bool(backend_reasons("cpu", *(torch.zeros(2, 1),) * 3)), reason="the CPU kernel is not built")
@given(problems(), st.data())
def test_fused_groups_match_the_reference(problem, data):
    """The CPU backend's fused grouped pass on a random partition of the dimensions (random group
    count and order; groups of one dimension and of all of them included) against the float64
    reference, under the base op's tolerance rule."""
    z, mu, lv, estimator, n = problem
    d = z.shape[1]
    dims = data.draw(st.permutations(range(d)))
    cuts = sorted(data.draw(st.sets(st.integers(1, d - 1), max_size=d - 1))) if d > 1 else []
    groups = [list(dims[a:b]) for a, b in zip([0] + cuts, cuts + [d])]
    res = check_backend("cpu", z, mu, lv, log_weights(estimator, mu.shape[0], n), groups=groups)
    assert_ok(res, f"cpu groups {groups} {tuple(z.shape)}x{mu.shape[0]} {z.dtype} {estimator}")


@given(problems(), st.integers(0, 2**31 - 1))
def test_permuting_the_batch_permutes_log_qz(problem, seed):
    """Any permutation for MWS / uniform weights; MSS ties query i to i and i+1, so a cyclic
    rotation of the batch (which keeps those pairs) for MSS."""
    z, mu, lv, estimator, n = problem
    if z.shape[0] != mu.shape[0]:
        return
    z, mu, lv = (t.double() for t in (z, mu, lv))
    m = z.shape[0]
    if estimator == "mss":
        perm = torch.roll(torch.arange(m), seed % m)
    else:
        perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    backends = ["torch"] + [b for b in FUSED if isinstance(b, str) and b != "triton"]
    for be in backends:
        a = tk.log_qz(z, mu, lv, dataset_size=n, estimator=estimator, backend=be)
        b = tk.log_qz(z[perm], mu[perm], lv[perm], dataset_size=n, estimator=estimator, backend=be)
        scale = 1 + a.log_qz.abs().max().item()
        assert torch.allclose(b.log_qz, a.log_qz[perm], rtol=0, atol=1e-9 * scale)
        assert torch.allclose(b.log_qz_dims, a.log_qz_dims[perm], rtol=0, atol=1e-9 * (1 + a.log_qz_dims.abs().max().item()))


@given(problems(), st.floats(-1e3, 1e3))
def test_translating_z_and_mu_changes_nothing(problem, shift):
    z, mu, lv, estimator, n = problem
    z, mu, lv = (t.double() for t in (z, mu, lv))
    backends = ["torch"] + [b for b in FUSED if isinstance(b, str) and b != "triton"]
    for be in backends:
        a = tk.log_qz(z, mu, lv, dataset_size=n, estimator=estimator, backend=be)
        b = tk.log_qz(z + shift, mu + shift, lv, dataset_size=n, estimator=estimator, backend=be)
        # (z + c) - (mu + c) differs from z - mu by the rounding of the sums: ulp(|c| + |z|) relative
        # to the spread, amplified by (z - mu)·e^-logvar in l
        lim = 1e-9 * (1 + a.log_qz.abs().max().item()) * (1 + abs(shift) + z.abs().max().item())
        assert (b.log_qz - a.log_qz).abs().max().item() <= lim
        assert (b.log_qz_dims - a.log_qz_dims).abs().max().item() <= lim


@given(problems(), st.integers(1, 10**6))
def test_mws_shifts_by_exactly_minus_log_n(problem, extra):
    z, mu, lv, _, n = problem
    z, mu, lv = (t.double() for t in (z, mu, lv))
    n2 = n + extra
    for be in ["torch"] + [b for b in FUSED if isinstance(b, str) and b != "triton"]:
        a = tk.log_qz(z, mu, lv, dataset_size=n, estimator="mws", backend=be)
        b = tk.log_qz(z, mu, lv, dataset_size=n2, estimator="mws", backend=be)
        shift = math.log(n2) - math.log(n)
        fin = torch.isfinite(a.log_qz)
        assert torch.allclose((a.log_qz - b.log_qz)[fin], torch.full_like(a.log_qz[fin], shift), rtol=0,
                              atol=1e-12 * (1 + a.log_qz.abs().max().item()))
        assert torch.allclose(a.log_qz_dims - b.log_qz_dims, torch.full_like(a.log_qz_dims, shift), rtol=0,
                              atol=1e-12 * (1 + a.log_qz_dims.abs().max().item()))
