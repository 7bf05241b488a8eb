"""The pure-PyTorch reference backend against a brute-force float64 loop, gradcheck,
the estimator weights, and numerical edge cases."""

import math

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.estimators import log_weights, weight_matrix
from tcvae_kernels.reference import log_qz_reference

from helpers import brute_force, make_inputs, max_abs, weights_for

# float64 reference vs float64 loop: both round each of ~K·D terms once; 1e-10 absolute on
# O(10) values leaves 4 orders of magnitude of margin over the accumulated rounding (~1e-14).
TOL64 = 1e-10


@pytest.mark.parametrize("estimator", ["mss", "mws", "uniform"])
@pytest.mark.parametrize("m,k,d", [(2, 2, 1), (7, 7, 3), (5, 9, 4), (9, 9, 1), (6, 6, 10)])
def test_reference_matches_brute_force(m, k, d, estimator):
    z, mu, logvar = make_inputs(m, k, d)
    w = weights_for(estimator, k)
    got_q, got_d = log_qz_reference(z, mu, logvar, w)
    want_q, want_d = brute_force(z, mu, logvar, w)
    assert max_abs(got_q, want_q) < TOL64
    assert max_abs(got_d, want_d) < TOL64


def test_single_query_mws_matches_brute_force():
    z, mu, logvar = make_inputs(1, 1, 3)
    w = log_weights("mws", 1, 50)
    got = tk.log_qz(z, mu, logvar, dataset_size=50, estimator="mws", backend="torch")
    want_q, want_d = brute_force(z, mu, logvar, w)
    assert max_abs(got.log_qz, want_q) < TOL64 and max_abs(got.log_qz_dims, want_d) < TOL64


def test_more_queries_than_components_uniform():
    z, mu, logvar = make_inputs(11, 4, 2)
    w = log_weights("uniform", 4, None)
    got_q, got_d = log_qz_reference(z, mu, logvar, w)
    want_q, want_d = brute_force(z, mu, logvar, w)
    assert max_abs(got_q, want_q) < TOL64 and max_abs(got_d, want_d) < TOL64


def test_non_contiguous_inputs_match_contiguous():
    z, mu, logvar = make_inputs(7, 7, 5)
    # transposed storage, a strided slice, and an expanded (stride-0) tensor
    z_nc = z.t().contiguous().t()
    mu_big = torch.zeros(7, 10, dtype=torch.float64)
    mu_big[:, ::2] = mu
    mu_nc = mu_big[:, ::2]
    lv_nc = logvar[:, :1].expand(7, 5)
    assert not z_nc.is_contiguous() and not mu_nc.is_contiguous() and not lv_nc.is_contiguous()
    got = tk.log_qz(z_nc, mu_nc, lv_nc, dataset_size=100, backend="torch")
    w = log_weights("mss", 7, 100)
    want_q, want_d = brute_force(z, mu, lv_nc.contiguous(), w)
    assert max_abs(got.log_qz, want_q) < TOL64 and max_abs(got.log_qz_dims, want_d) < TOL64


def test_chunking_is_exact_forward_and_backward():
    z, mu, logvar = make_inputs(37, 37, 6)
    w = log_weights("mss", 37, 1000)
    leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]
    leaves2 = [t.clone().requires_grad_() for t in (z, mu, logvar)]
    g = torch.Generator().manual_seed(0)
    up_q, up_d = torch.randn(37, generator=g, dtype=torch.float64), torch.randn(37, 6, generator=g, dtype=torch.float64)
    q1, d1 = log_qz_reference(*leaves, w)  # one chunk
    q2, d2 = log_qz_reference(*leaves2, w, chunk_elements=5 * 37 * 6)  # 8 chunks, checkpointed
    assert max_abs(q1, q2) < 1e-12 and max_abs(d1, d2) < 1e-12
    g1 = torch.autograd.grad((q1 * up_q).sum() + (d1 * up_d).sum(), leaves)
    g2 = torch.autograd.grad((q2 * up_q).sum() + (d2 * up_d).sum(), leaves2)
    for a, b in zip(g1, g2):
        assert max_abs(a, b) < 1e-12


@pytest.mark.parametrize("estimator", ["mss", "mws"])
@pytest.mark.parametrize("fn,m,d,n", [(tk.log_qz, 5, 3, 40), (tk.decompose, 6, 2, 30)], ids=["log_qz", "decompose"])
def test_gradcheck_log_qz_and_decompose(fn, m, d, n, estimator):
    z, mu, logvar = (t.requires_grad_() for t in make_inputs(m, m, d))

    def f(z, mu, logvar):
        return tuple(fn(z, mu, logvar, dataset_size=n, estimator=estimator, backend="torch"))

    assert torch.autograd.gradcheck(f, (z, mu, logvar))


def test_gradcheck_chunked_path():
    z, mu, logvar = (t.requires_grad_() for t in make_inputs(6, 6, 2))
    w = log_weights("mss", 6, 30)
    assert torch.autograd.gradcheck(lambda *a: log_qz_reference(*a, w, chunk_elements=12), (z, mu, logvar))


# ----------------------------------------------------------------------------- estimator weights


@pytest.mark.parametrize("m,n", [(2, 2), (2, 100), (7, 7), (7, 1000), (64, 50000)])
def test_mss_weights_rows_sum_to_one_with_self_on_diagonal(m, n):
    w = log_weights("mss", m, n)
    W = weight_matrix(w, m, m).exp()
    assert torch.allclose(W.sum(1), torch.ones(m, dtype=torch.float64), atol=1e-12, rtol=0)
    i = torch.arange(m)
    assert torch.allclose(W[i, i], torch.full((m,), 1.0 / n, dtype=torch.float64))
    assert torch.allclose(W[i, (i + 1) % m], torch.full((m,), (n - m + 1) / (n * (m - 1)), dtype=torch.float64))
    other = torch.ones(m, m, dtype=torch.bool)
    other[i, i] = False
    other[i, (i + 1) % m] = False
    assert torch.allclose(W[other], torch.full((int(other.sum()),), 1.0 / (m - 1), dtype=torch.float64))


def test_mss_self_weight_is_not_a_column_fill():
    # The authors' code writes the self weight into column 0 (W.view(-1)[::M+1] with M = B-1).
    m, n = 8, 1000
    W = weight_matrix(log_weights("mss", m, n), m, m).exp()
    is_self = torch.isclose(W, torch.tensor(1.0 / n, dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.count_nonzero(is_self[:, 0]) == 1  # only (0, 0) of column 0 holds the self weight
    assert torch.equal(is_self, torch.eye(m, dtype=torch.bool))


def test_mws_weights_constant():
    w = log_weights("mws", 16, 1000)
    assert w.w_self == w.w_next == w.w_other == pytest.approx(-math.log(16 * 1000))


def test_mss_offset_locates_the_own_component():
    w = log_weights("mss", 10, 100, offset=3)
    W = weight_matrix(w, 4, 10).exp()
    for i in range(4):
        assert W[i, i + 3] == pytest.approx(1 / 100)
        assert W[i, (i + 4) % 10] == pytest.approx((100 - 10 + 1) / (100 * 9))
        assert W[i].sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- dtypes and values


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_accumulates_in_float32(dtype):
    z, mu, logvar = make_inputs(9, 9, 4, dtype=dtype)
    out = tk.log_qz(z, mu, logvar, dataset_size=100, backend="torch")
    assert out.log_qz.dtype == dtype and out.log_qz_dims.dtype == dtype
    want = tk.log_qz(z.float(), mu.float(), logvar.float(), dataset_size=100, backend="torch")
    assert torch.equal(out.log_qz, want.log_qz.to(dtype))
    parts = tk.decompose(z, mu, logvar, dataset_size=100, backend="torch")
    assert parts.tc.dtype == torch.float32


def test_extreme_values_are_finite_and_exact():
    g = torch.Generator().manual_seed(1)
    m, d = 9, 4
    mu = torch.randn(m, d, generator=g, dtype=torch.float64)
    logvar = -20 + 40 * torch.rand(m, d, generator=g, dtype=torch.float64)
    logvar[0] = -20.0
    logvar[1] = 20.0
    z = mu + 1e3  # 1e3 away from every mean (mu ~ N(0, 1))
    w = log_weights("mss", m, 100)
    q, qd = log_qz_reference(z, mu, logvar, w)
    assert torch.isfinite(q).all() and torch.isfinite(qd).all()
    want_q, want_d = brute_force(z, mu, logvar, w)
    assert torch.allclose(q, want_q, rtol=1e-12, atol=1e-9)
    assert torch.allclose(qd, want_d, rtol=1e-12, atol=1e-9)
    for dtype in (torch.float32, torch.float64):
        parts = tk.decompose(z.to(dtype), mu.to(dtype), logvar.to(dtype), dataset_size=100, backend="torch")
        assert all(torch.isfinite(p) for p in parts)


def test_nan_propagates_and_check_finite_raises():
    z, mu, logvar = make_inputs(5, 5, 3)
    z[2, 1] = float("nan")
    out = tk.log_qz(z, mu, logvar, dataset_size=50, backend="torch")
    assert torch.isnan(out.log_qz[2]) and torch.isnan(out.log_qz_dims[2, 1])
    assert torch.isfinite(out.log_qz[[0, 1, 3, 4]]).all()
    assert torch.isnan(tk.total_correlation(z, mu, logvar, dataset_size=50, backend="torch"))
    with pytest.raises(ValueError, match="z contains NaN"):
        tk.log_qz(z, mu, logvar, dataset_size=50, check_finite=True)
    z2, mu2, logvar2 = make_inputs(5, 5, 3)
    mu2[3, 0] = float("nan")  # a NaN component enters every row's sum over j
    out = tk.log_qz(z2, mu2, logvar2, dataset_size=50, backend="torch")
    assert torch.isnan(out.log_qz).all() and torch.isnan(out.log_qz_dims[:, 0]).all()
    assert torch.isfinite(out.log_qz_dims[:, 1:]).all()


def test_infinite_query_gives_minus_infinity_not_a_finite_value():
    z, mu, logvar = make_inputs(4, 4, 2)
    z[1, 0] = float("inf")
    out = tk.log_qz(z, mu, logvar, dataset_size=50, backend="torch")
    assert out.log_qz[1] == -math.inf and out.log_qz_dims[1, 0] == -math.inf
    with pytest.raises(ValueError, match="z contains NaN or infinite"):
        tk.log_qz(z, mu, logvar, dataset_size=50, check_finite=True)


def test_reference_supports_double_backward_through_chunks():
    z, mu, logvar = (t.requires_grad_() for t in make_inputs(6, 6, 2))
    w = log_weights("mss", 6, 30)
    assert torch.autograd.gradgradcheck(lambda *a: log_qz_reference(*a, w, chunk_elements=12), (z, mu, logvar))


def test_base2_evaluation_matches_the_reference():
    z, mu, logvar = (t.requires_grad_() for t in make_inputs(9, 11, 4))
    w = log_weights("mss", 11, 300)
    a = log_qz_reference(z, mu, logvar, w)
    b = log_qz_reference(z, mu, logvar, w, base2=True)
    for x, y in zip(a, b):
        assert max_abs(x, y) < 1e-12
    ga = torch.autograd.grad(a[0].sum() + a[1].sum(), (z, mu, logvar))
    gb = torch.autograd.grad(b[0].sum() + b[1].sum(), (z, mu, logvar))
    for x, y in zip(ga, gb):
        assert max_abs(x, y) < 1e-12
