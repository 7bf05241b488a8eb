"""Numerical and API edge cases on every backend that can run here (the reliability checklist):
logvar ±30, z ±1e4, duplicated rows, M=1 (MWS), D=1, M=2 (MSS), dataset_size == M, empty batch,
inference mode, autocast regions, and out-of-bounds reads at sizes that are multiples of no block."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.testing import check_backend

from helpers import assert_ok, backends, fresh_seed, interpreter_shapes, make_inputs, targets


BACKENDS = backends("cpu")




@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_logvar_30_and_z_1e4(backend, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    m, d = 9, 4
    mu = torch.randn(m, d, generator=g, dtype=torch.float64)
    lv = torch.empty(m, d, dtype=torch.float64).uniform_(-30, 30, generator=g)
    lv[0], lv[1] = -30.0, 30.0
    for z in (mu + 1e4, mu - 1e4, mu + torch.exp(0.5 * lv) * torch.randn(m, d, generator=g, dtype=torch.float64)):
        args = [t.to(dtype) for t in (z, mu, lv)]
        w = log_weights("mss", m, 100)
        res = check_backend(backend, *args, w)
        assert_ok(res, "logvar ±30, z ±1e4")
        q = tk.log_qz(*args, dataset_size=100, backend=backend)
        assert torch.isfinite(q.log_qz).all() and torch.isfinite(q.log_qz_dims).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicated_rows_and_small_shapes(backend):
    z, mu, lv = make_inputs(6, 6, 3)
    z[3], mu[3], lv[3] = z[1], mu[1], lv[1]  # a duplicated sample
    assert_ok(check_backend(backend, z, mu, lv, log_weights("mss", 6, 100)), "duplicates")
    z1, mu1, lv1 = make_inputs(1, 1, 4)
    assert_ok(check_backend(backend, z1, mu1, lv1, log_weights("mws", 1, 10)), "M=1 MWS")
    z2, mu2, lv2 = make_inputs(2, 2, 1)
    assert_ok(check_backend(backend, z2, mu2, lv2, log_weights("mss", 2, 2)), "M=2 MSS, N == M")
    z3, mu3, lv3 = make_inputs(7, 7, 1)
    assert_ok(check_backend(backend, z3, mu3, lv3, log_weights("mss", 7, 7)), "D=1, N == M")


def test_dataset_size_equal_to_batch_size_weights():
    w = log_weights("mss", 5, 5)
    p = torch.tensor([w.w_self, w.w_next, w.w_other]).exp()
    assert p.tolist() == pytest.approx([1 / 5, 1 / 20, 1 / 4])
    assert (p[0] + p[1] + 3 * p[2]).item() == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_is_a_clear_error(backend):
    z = torch.zeros(0, 3)
    mu = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="empty batch"):
        tk.log_qz(z, mu, mu, dataset_size=10, backend=backend)
    with pytest.raises(ValueError, match="no components"):
        tk.log_qz(mu, z, z, dataset_size=10, estimator="uniform", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_mode_and_no_grad(backend):
    z, mu, lv = make_inputs(8, 8, 3, dtype=torch.float32)
    ref = tk.log_qz(z, mu, lv, dataset_size=100, backend=backend)
    with torch.inference_mode():
        a = tk.log_qz(z, mu, lv, dataset_size=100, backend=backend)
    with torch.no_grad():
        b = tk.decompose(z, mu, lv, dataset_size=100, backend=backend)
    assert torch.equal(a.log_qz, ref.log_qz) and torch.equal(a.log_qz_dims, ref.log_qz_dims)
    assert torch.isfinite(b.tc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_region(backend):
    """Under CPU autocast (bfloat16) the op runs on the dtypes it is given, computes in float32, and a
    loss built from it backpropagates; float32 inputs give the float32 result unchanged."""
    z, mu, lv = (t.requires_grad_() for t in make_inputs(8, 8, 3, dtype=torch.float32))
    ref = tk.total_correlation(z, mu, lv, dataset_size=100, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(z, torch.eye(3))  # bfloat16 under autocast
        tc = tk.total_correlation(z, mu, lv, dataset_size=100, backend=backend)
        tc_h = tk.total_correlation(h, mu.to(h.dtype), lv.to(h.dtype), dataset_size=100, backend=backend)
    assert tc.dtype == torch.float32 and torch.equal(tc, ref)
    assert tc_h.dtype == torch.float32 and torch.isfinite(tc_h)
    tc_h.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def _guarded(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous view in the middle of a NaN-filled buffer: a kernel that reads before the
    first element or past the last one (up to 256 rows either side) pulls a NaN into its results."""
    pad = 256 * t.shape[1] + 61
    buf = torch.full((t.numel() + 2 * pad,), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[pad : pad + t.numel()].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous() and view.storage_offset() == pad
    return view


# sizes that are multiples of no block size (kernels tile by 8, 32, 64, 128, 256 and SIMD widths);
# the Triton interpreter cuts them to 17 rows and 10 dimensions (helpers.interpreter_shapes)
GUARD_SHAPES = [(1, 1, 1, "mws"), (37, 37, 5, "mss"), (5, 70, 3, "mss"), (70, 5, 1, "uniform"), (129, 129, 33, "mws")]


# every backend on every device here, and the CUDA kernels' emulation with 1 and 3 split-K slices
# (on a GPU, compute-sanitizer's memcheck, bench/gpu_check.sh, goes further)
@pytest.mark.parametrize("be, device", targets(objects=True, emulation=(1, 3)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_no_out_of_bounds_reads(be, device, dtype):
    """Forward and backward read only their inputs: on inputs fenced by NaN the results are finite
    and bitwise those on plain copies (deterministic paths, so any difference is a stray read)."""
    g = torch.Generator().manual_seed(fresh_seed())
    for m, k, d, est in interpreter_shapes(GUARD_SHAPES, be.name, device):
        z, mu, lv = make_inputs(m, k, d, dtype=dtype, seed=int(torch.randint(2**31, (1,), generator=g)), device=device)
        w = log_weights(est, k, 10 * max(m, k))
        up_q, up_d = (torch.randn(s, generator=g, dtype=dtype).to(device) for s in ((m,), (m, d)))
        results = []
        for make in (lambda t: t.clone(), _guarded):
            leaves = [make(t).requires_grad_() for t in (z, mu, lv)]
            q, qd = be.log_qz(*leaves, w, deterministic=True)
            grads = torch.autograd.grad((q * up_q).sum() + (qd * up_d).sum(), leaves)
            results.append([q.detach(), qd.detach(), *grads])
        for name, plain, fenced in zip(("log_qz", "log_qz_dims", "grad_z", "grad_mu", "grad_logvar"), *results):
            assert torch.isfinite(fenced).all(), f"{be.name} {m}x{k}x{d}: NaN in {name} (out-of-bounds read)"
            assert torch.equal(plain, fenced), f"{be.name} {m}x{k}x{d}: {name} depends on memory past the inputs"
