"""The grouped op ``log_qz_groups[i, g] = logsumexp_j(sum_{d in g} l[i,j,d] + w[i,j])`` on every
backend against the float64 reference, under the same tolerance rule as the base op
(tcvae_kernels/testing.py, with the groups' terms in the gradients' L1 mass): odd sizes, K != M,
uneven and non-contiguous groups, dimensions in no multi-dimension group, extreme values, offsets,
non-contiguous inputs. The CPU backend computes it in one fused pass (tcvae::log_qz_groups); the
others evaluate each group on its dimension slice (Backend.log_qz_groups)."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends import extension as ops
from tcvae_kernels.api import normalize_groups
from tcvae_kernels.dispatch import backend_reasons
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.testing import check_backend

from helpers import assert_ok, backends, float16_overflow_case, fresh_seed, interpreter_shapes, make_inputs


BACKENDS = backends("cpu", emulation=True, objects=True)
IDS = [b.name for b in BACKENDS]

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
    if ops.LOAD_ERROR is not None:
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(fresh_seed())
    for dtype in (torch.float64, torch.float32):
        z, mu, lv = (torch.randn(6, 5, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3))
        torch.library.opcheck(torch.ops.tcvae.log_qz_groups.default, (z, mu, lv, [2, 4], [-4.0, -3.0, -2.0], 0))
        torch.library.opcheck(torch.ops.tcvae.log_qz_groups.default, (z, mu, lv, [5], [-4.0, -3.0, -2.0], 1))


def test_fused_cpu_groups_rejects_bad_group_ends():
    if ops.LOAD_ERROR is not None:
        pytest.skip("the C++ extension is not built")
    z = torch.randn(4, 5, dtype=torch.float64)
    for ends in ([0, 3], [3, 2], [2, 6]):
        with pytest.raises(RuntimeError, match="group_ends must be strictly increasing"):
            torch.ops.tcvae.log_qz_groups(z, z, z, ends, [-1.0, -1.0, -1.0], 0)
