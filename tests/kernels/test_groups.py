"""The grouped op ``log_qz_groups[i, g] = logsumexp_j(sum_{d in g} l[i,j,d] + w[i,j])`` on every
backend against the float64 reference, under the same tolerance rule as the base op
(tcvae_kernels/testing.py, with the groups' terms in the gradients' L1 mass): odd sizes, K != M,
uneven and non-contiguous groups, dimensions in no multi-dimension group, extreme values, offsets,
non-contiguous inputs. The CPU backend computes it in one fused pass (tcvae::log_qz_groups); the
others evaluate each group on its dimension slice (Backend.log_qz_groups)."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends import extension
from tcvae_kernels.api import normalize_groups
from tcvae_kernels.dispatch import backend_reasons
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.testing import check_backend

from helpers import (assert_ok, backend_id, backends, brute_force_groups, float16_overflow_case, fresh_seed,
                     interpreter_shapes, make_inputs, max_abs)


BACKENDS = backends("cpu", emulation=True, objects=True)
IDS = [backend_id(b) for b in BACKENDS]

# (M, K, D, estimator, groups): sizes that are multiples of no tile; groups given as sizes or as
# index lists, out of order, of uneven sizes, leaving dimensions in singletons; the Triton
# interpreter cuts M and K to 17 (helpers.interpreter_shapes)
CASES = [
    (1, 1, 3, "mws", [[0, 2], [1]]),
    (2, 2, 4, "mss", [2, 2]),
    (7, 7, 10, "mss", [[0, 3, 5], [1, 2], [4], [6, 7, 8, 9]]),
    (5, 70, 6, "uniform", [[5, 0], [1, 2, 3], [4]]),
    (70, 5, 5, "uniform", [[4, 1, 2], [0], [3]]),
    (129, 129, 33, "mws", [9, 7, 1, 16]),
]




@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_grouped_matches_the_reference(backend, dtype):
    seed = fresh_seed()
    for m, k, d, est, groups in interpreter_shapes(CASES, backend.name, "cpu", keep_dims=True):
        z, mu, lv = make_inputs(m, k, d, dtype=dtype, seed=seed + m)
        index = normalize_groups(groups, d)
        res = check_backend(backend, z, mu, lv, log_weights(est, k, 10 * max(m, k)), groups=index)
        assert_ok(res, f"{backend.name} {m}x{k}x{d} {est} {groups} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_grouped_extreme_values(backend, dtype):
    """logvar over [-20, 20], queries 10³ away from every component (group joints far below any
    exp range: exact only through the online maximum), a mix of near and far queries."""
    g = torch.Generator().manual_seed(fresh_seed())
    m, d = 13, 7
    groups = normalize_groups([[0, 6], [1, 2, 3], [4], [5]], d)
    mu = torch.randn(m, d, generator=g, dtype=torch.float64)
    lv = torch.empty(m, d, dtype=torch.float64).uniform_(-20, 20, generator=g)
    near = mu + torch.exp(0.5 * lv) * torch.randn(m, d, generator=g, dtype=torch.float64)
    far = mu + 1e3
    mixed = torch.where(torch.arange(m)[:, None] % 2 == 0, near, mu - 3e2)
    for z in (near, far, mixed):
        args = [t.to(dtype) for t in (z, mu, lv)]
        res = check_backend(backend, *args, log_weights("mss", m, 100), groups=groups)
        assert_ok(res, f"{backend.name} extreme {dtype}")


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_grouped_offset_and_non_contiguous_inputs(backend):
    """Weights with an offset (a rank's rows of a global batch) and transposed-storage inputs."""
    z, mu, lv = make_inputs(6, 15, 5)
    z, mu, lv = (t.t().contiguous().t() for t in (z, mu, lv))
    assert not z.is_contiguous()
    groups = normalize_groups([[3, 1], [0, 2, 4]], 5)
    res = check_backend(backend, z, mu, lv, log_weights("mss", 15, 300, offset=6), groups=groups)
    assert_ok(res, f"{backend.name} offset, non-contiguous")


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_grouped_float16_where_gradients_overflow(backend):
    """float16 inputs whose gradient overflows float16 in places: the groups' partial gradients are
    summed in float32 (no ±inf + ∓inf = NaN), overflowing elements are the true ±inf, the rest
    within tolerance."""
    z, mu, lv = float16_overflow_case()
    for groups in ([[0], [1, 2, 3, 4]], [[0, 1], [2, 3, 4]], [[3, 1], [0], [2, 4]]):
        res = check_backend(backend, z, mu, lv, log_weights("mws", 1, 10), groups=groups)
        assert_ok(res, f"{backend.name} float16 overflow {groups}")


def test_fused_cpu_groups_gradient_of_the_groups_alone_and_determinism():
    """Only log_qz_groups feeds the loss (the op's other outputs get no gradient); results are
    bitwise equal run to run."""
    if backend_reasons("cpu", *(torch.zeros(2, 1),) * 3):
        pytest.skip("the CPU kernel is not built")
    z, mu, lv = make_inputs(37, 37, 9)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        out = tk.log_qz(*leaves, dataset_size=400, backend="cpu", groups=[[0, 8], [1, 2, 3, 4], [5, 6], [7]])
        grads = torch.autograd.grad(out.log_qz_groups.sum(), leaves)
        runs.append([out.log_qz_groups.detach(), *grads])
        ref_leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        ref = tk.log_qz(*ref_leaves, dataset_size=400, backend="torch", groups=[[0, 8], [1, 2, 3, 4], [5, 6], [7]])
        ref_grads = torch.autograd.grad(ref.log_qz_groups.sum(), ref_leaves)
        for a, b in zip(runs[-1], [ref.log_qz_groups.detach(), *ref_grads]):
            assert (a - b).abs().max().item() <= 1e-9 * (1 + b.abs().max().item())
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_fused_cpu_groups_opcheck():
    if extension.LOAD_ERROR is not None:
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(fresh_seed())
    for dtype in (torch.float64, torch.float32):
        z, mu, lv = (torch.randn(6, 5, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3))
        torch.library.opcheck(torch.ops.tcvae.log_qz_groups.default, (z, mu, lv, [2, 4], [-4.0, -3.0, -2.0], 0))
        torch.library.opcheck(torch.ops.tcvae.log_qz_groups.default, (z, mu, lv, [5], [-4.0, -3.0, -2.0], 1))


def test_fused_cpu_groups_rejects_bad_group_ends():
    if extension.LOAD_ERROR is not None:
        pytest.skip("the C++ extension is not built")
    z = torch.randn(4, 5, dtype=torch.float64)
    for ends in ([0, 3], [3, 2], [2, 6]):
        with pytest.raises(RuntimeError, match="group_ends must be strictly increasing"):
            torch.ops.tcvae.log_qz_groups(z, z, z, ends, [-1.0, -1.0, -1.0], 0)


# through the public function (backend names) and, for the CUDA kernels' CPU emulation, the object
PUBLIC = backends("cpu", emulation=True)


def _grouped(backend, z, mu, lv, n, groups):
    """tk.log_qz(..., groups=groups) on a backend name, or the same through a Backend object."""
    if isinstance(backend, str):
        return tk.log_qz(z, mu, lv, dataset_size=n, backend=backend, groups=groups)
    w = log_weights("mss", mu.shape[0], n)
    out = backend.log_qz_groups(z, mu, lv, w, tk.api.normalize_groups(groups, z.shape[1]))
    return tk.LogQzGroups(*out)


GROUPINGS = [
    [5],  # one group of all dims: the joint
    [1, 1, 1, 1, 1],  # singletons: the marginals
    [1, 3, 1],  # uneven sizes
    [[0, 3], [1, 2, 4]],  # index lists
]


@pytest.mark.parametrize("backend", PUBLIC, ids=backend_id)
def test_grouped_log_qz_matches_brute_force_float64(backend):
    z, mu, lv = make_inputs(7, 9, 5)
    w = log_weights("mss", 9, 200)
    for groups in GROUPINGS:
        out = _grouped(backend, z, mu, lv, 200, groups)
        index = tk.api.normalize_groups(groups, 5)
        assert max_abs(out.log_qz_groups, brute_force_groups(z, mu, lv, w, index)) < 1e-10
    all_in_one = _grouped(backend, z, mu, lv, 200, [5])
    assert torch.equal(all_in_one.log_qz_groups[:, 0], all_in_one.log_qz)
    singles = _grouped(backend, z, mu, lv, 200, [1] * 5)
    assert torch.equal(singles.log_qz_groups, singles.log_qz_dims)


@pytest.mark.parametrize("backend", [b for b in PUBLIC if b != "torch"], ids=backend_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_grouped_gradients_match_the_reference(backend, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    z, mu, lv = make_inputs(9, 9, 6, dtype=dtype)
    up = torch.randn(9, 3, generator=g, dtype=torch.float64).to(dtype)
    grads = {}
    for name in ("torch", backend):
        leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        out = _grouped(name, *leaves, 300, [[0, 5], [1, 2, 3], [4]])
        grads[backend_id(name)] = torch.autograd.grad((out.log_qz_groups * up).sum(), leaves)
    # float64: 1e-8 of the largest gradient; float32: 1e-4 relative (a sum over 9 components of
    # softmax-weighted terms, each within a few float32 ulps of the reference's: measured < 1e-5)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    for a, b in zip(grads[backend_id(backend)], grads["torch"]):
        assert max_abs(a, b) <= tol * (1 + b.abs().max().item())


def test_grouped_gradcheck_cpu_and_reference():
    for backend in backends("cpu", exclude=("triton",)):  # the interpreter's gradcheck: test_backends
        z, mu, lv = (t.requires_grad_() for t in make_inputs(5, 6, 4))

        def f(z, mu, lv):
            return tk.log_qz(z, mu, lv, dataset_size=50, backend=backend, groups=[[0, 2], [1, 3]]).log_qz_groups

        assert torch.autograd.gradcheck(f, (z, mu, lv))


def test_grouped_decomposition_identities():
    z, mu, lv = make_inputs(10, 10, 6)
    parts = tk.grouped_decompose(z, mu, lv, groups=[2, 1, 3], dataset_size=500)
    base = tk.decompose(z, mu, lv, dataset_size=500)
    # the four terms add up to E[log q(z|x) - log p(z)], like MI + TC + dim-KL
    assert (parts.mi + parts.tc_between + parts.tc_within + parts.dim_kl).item() == pytest.approx(
        (base.mi + base.tc + base.dim_kl).item(), abs=1e-10)
    assert (parts.tc_between + parts.tc_within).item() == pytest.approx(base.tc.item(), abs=1e-10)
    singles = tk.grouped_decompose(z, mu, lv, groups=[1] * 6, dataset_size=500)
    assert singles.tc_within.item() == 0.0 and torch.equal(singles.tc_between, base.tc)


@pytest.mark.parametrize("groups, match", [
    ([2, 2], "sum to D=5"),
    ([0, 5], "positive"),
    ([[0, 1], [1, 2, 3, 4]], "partition"),
    ([[0, 1], [2, 3]], "partition"),
    ([[0, 1], 3], "all sizes"),
    ([], "non-empty"),
])
def test_bad_groups_raise(groups, match):
    z, mu, lv = make_inputs(4, 4, 5)
    with pytest.raises(ValueError, match=match):
        tk.log_qz(z, mu, lv, dataset_size=100, groups=groups)
