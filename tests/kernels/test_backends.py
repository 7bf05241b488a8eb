"""Every fused backend against the float64 reference: forward and all three gradients, odd sizes,
K != M, non-contiguous and expanded inputs, both estimators, extreme values, dtypes, NaN/inf.

The tolerance rule (per dtype, justified) lives in tcvae_kernels/testing.py: float64 within
1e-9 (outputs) / 1e-8 (gradients) of the largest magnitude; float32/float16/bfloat16 within twice
the error of the reference evaluated in the same precision, plus 8 float32 ulps of the largest value.
Backends run where they can: "cpu" on CPU tensors; "triton" on CPU tensors under TRITON_INTERPRET=1
(small sizes) and on CUDA; "cuda" on CUDA.
"""

import math

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends.base import get_backend
from tcvae_kernels.estimators import LogWeights, log_weights
from tcvae_kernels.testing import check_backend, random_inputs

from helpers import (assert_ok, float16_cancelling_gradient_case, fresh_seed, interpreter_shapes, targets,
                     make_inputs)


TARGETS = targets(fused_only=True)


SHAPES = [(1, 1, 3, "mws"), (2, 2, 1, "mss"), (7, 7, 3, "mss"), (7, 7, 10, "mws"), (129, 129, 33, "mss"),
          (65, 65, 10, "mws"), (300, 300, 3, "mss"), (1000, 1000, 10, "mss"), (5, 17, 3, "mss"), (40, 9, 33, "uniform")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_matches_reference(backend, device, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    for m, k, d, est in interpreter_shapes(SHAPES, backend, device):
        z, mu, lv = random_inputs(m, k, d, kind="normal", dtype=dtype, device=device, generator=g)
        assert_ok(check_backend(backend, z, mu, lv, log_weights(est, k, 10 * max(m, k))), f"{m}x{k}x{d} {est}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_non_contiguous_and_expanded_inputs(backend, device, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    for m, k, d in interpreter_shapes([(33, 33, 10), (7, 7, 1), (65, 65, 33)], backend, device):
        z, mu, lv = random_inputs(m, k, d, kind="noncontiguous", dtype=dtype, device=device, generator=g)
        assert_ok(check_backend(backend, z, mu, lv, log_weights("mss", k, 1000)), "non-contiguous")
        # expanded (stride-0) logvar and a transposed z
        lv_exp = lv[:1].expand(k, d)
        assert_ok(check_backend(backend, z, mu, lv_exp, log_weights("mws", k, 1000)), "expanded")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_extreme_values(backend, device, dtype):
    """logvar in [-20, 20] and z 1e3 away from every mean: l is below -1e4 for most pairs."""
    g = torch.Generator().manual_seed(fresh_seed())
    shapes = [(33, 33, 10, "mws"), (129, 129, 3, "mss"), (17, 301, 5, "uniform")]
    for m, k, d, est in interpreter_shapes(shapes, backend, device):
        z, mu, lv = random_inputs(m, k, d, kind="extreme", dtype=dtype, device=device, generator=g)
        lv[0] = -20.0
        lv[1] = 20.0
        w = log_weights(est, k, 10 * max(m, k))
        assert_ok(check_backend(backend, z, mu, lv, w), f"extreme {m}x{k}x{d}")
        out = get_backend(backend).log_qz(z, mu, lv, w)
        assert all(torch.isfinite(t).all() for t in out)
        # 1e7 away: with logvar <= 20, every l[i, j, d] < -0.5·1e14·e^-20 ≈ -1e5 (all terms underflow exp)
        z_far = z + 1e7
        l_max = (-0.5 * ((z_far.double()[:, None] - mu.double()[None]) ** 2 * torch.exp(-lv.double())[None])).max()
        assert l_max < -1e4
        assert_ok(check_backend(backend, z_far, mu, lv, w), f"far {m}x{k}x{d}")
        out = get_backend(backend).log_qz(z_far, mu, lv, w)
        assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_mixed_far_and_near_queries(backend, device):
    """Some queries far from every component (exact fallback in the CPU kernel), some near."""
    ((m, k, d),) = interpreter_shapes([(40, 40, 5)], backend, device)
    z, mu, lv = make_inputs(m, k, d, dtype=torch.float32, device=device)
    z[::3] += 500.0
    assert_ok(check_backend(backend, z, mu, lv, log_weights("mss", k, 1000)), "mixed")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_half_precision_inputs(backend, device, dtype):
    ((m, k, d),) = interpreter_shapes([(33, 33, 10)], backend, device)
    z, mu, lv = make_inputs(m, k, d, dtype=dtype, device=device)
    out = tk.log_qz(z, mu, lv, dataset_size=500, backend=backend)
    assert out.log_qz.dtype == dtype and out.log_qz_dims.dtype == dtype
    assert_ok(check_backend(backend, z, mu, lv, log_weights("mss", k, 500)), str(dtype))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_float16_gradient_that_cancels_past_the_range(backend, device):
    """A grad_logvar element of -5.8e3 summing terms of ±1e6: +inf in float16 for the reference
    itself (helpers.float16_cancelling_gradient_case); every backend within the same rule."""
    z, mu, lv = (t.to(device) for t in float16_cancelling_gradient_case())
    assert_ok(check_backend(backend, z, mu, lv, log_weights("mss", 17, 170)), "float16, cancelling sums")


@pytest.mark.parametrize("backend,device", TARGETS)
def test_offset_locates_own_component(backend, device):
    z, mu, lv = make_inputs(6, 14, 4, device=device)
    w = log_weights("mss", 14, 100, offset=5)
    assert_ok(check_backend(backend, z, mu, lv, w), "offset")
    w = LogWeights(-1.0, -3.0, -2.0, offset=12)  # queries 2.. have no own component (s >= K)
    assert_ok(check_backend(backend, z, mu, lv, w), "offset past K")


@pytest.mark.parametrize("backend,device", TARGETS)
def test_gradcheck_float64(backend, device):
    z, mu, lv = (t.requires_grad_() for t in make_inputs(5, 6, 3, device=device))
    w = log_weights("mss", 6, 50)
    be = get_backend(backend)
    assert torch.autograd.gradcheck(lambda *a: be.log_qz(*a, w), (z, mu, lv))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_gradients_of_a_subset_and_of_one_output(backend, device):
    z, mu, lv = make_inputs(9, 9, 4, device=device)
    mu.requires_grad_()
    q, qd = tk.log_qz(z, mu, lv, dataset_size=100, backend=backend)
    (gmu,) = torch.autograd.grad(q.sum(), [mu])  # log_qz_dims unused: its upstream gradient is None
    mu_r = mu.detach().clone().requires_grad_()
    q_r, _ = tk.log_qz(z, mu_r, lv, dataset_size=100, backend="torch")
    (gmu_r,) = torch.autograd.grad(q_r.sum(), [mu_r])
    assert torch.allclose(gmu, gmu_r, rtol=1e-9, atol=1e-10)
    assert z.grad is None and lv.grad is None


@pytest.mark.parametrize("backend,device", TARGETS)
def test_nan_and_inf_propagate_like_the_reference(backend, device):
    z, mu, lv = make_inputs(6, 6, 3, dtype=torch.float32, device=device)
    z[2, 1] = float("nan")
    z[4, 0] = float("inf")
    mu[5, 2] = float("nan")
    got = tk.log_qz(z, mu, lv, dataset_size=50, backend=backend)
    ref = tk.log_qz(z, mu, lv, dataset_size=50, backend="torch")
    for a, b in zip(got, ref):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        fin = torch.isfinite(b)
        assert torch.allclose(a[fin], b[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_deterministic_bitwise(backend, device):
    """deterministic=True: bitwise equal forward and gradients run to run (the CPU kernel always is)."""
    ((m, k, d),) = interpreter_shapes([(65, 65, 10)], backend, device)
    z, mu, lv = make_inputs(m, k, d, dtype=torch.float32, device=device)
    outs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        tc = tk.total_correlation(*leaves, dataset_size=1000, backend=backend, deterministic=True)
        outs.append([tc.detach(), *torch.autograd.grad(tc, leaves)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_double_backward_is_a_clear_error(backend, device):
    z, mu, lv = (t.requires_grad_() for t in make_inputs(5, 5, 2, device=device))
    tc = tk.total_correlation(z, mu, lv, dataset_size=50, backend=backend)
    (gz,) = torch.autograd.grad(tc, [z], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gz.sum().backward()


def test_mws_log_qz_shifts_by_log_n_exactly():
    """Invariance shared by all backends: MWS log q(z) moves by -log(N2/N1) when N changes."""
    z, mu, lv = make_inputs(9, 9, 3)
    for name in ["torch"] + [p.values[0] for p in TARGETS if p.values[0] and p.values[1] == "cpu"]:
        a = tk.log_qz(z, mu, lv, dataset_size=100, estimator="mws", backend=name)
        b = tk.log_qz(z, mu, lv, dataset_size=1000, estimator="mws", backend=name)
        assert torch.allclose(a.log_qz - b.log_qz, torch.full((9,), math.log(10.0), dtype=z.dtype), atol=1e-9)
        assert torch.allclose(a.log_qz_dims - b.log_qz_dims, torch.full((9, 3), math.log(10.0), dtype=z.dtype), atol=1e-9)
