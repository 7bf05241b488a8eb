"""The C++ CPU op: torch.library contract (opcheck, torch.compile), dispatch, threads."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends import extension as ops
from tcvae_kernels.dispatch import select_backend

from helpers import make_inputs

pytestmark = pytest.mark.skipif(ops.LOAD_ERROR is not None, reason=f"extension not built: {ops.LOAD_ERROR}")


def test_extension_reports_its_build():
    info = ops.build_info()
    assert info["cpu_capability"] in ("default", "avx2", "avx512")
    assert info["cuda"] in ("0", "1")
    assert "cpu" in tk.available_backends()


def test_auto_picks_the_cpu_kernel_for_cpu_tensors():
    z, mu, lv = make_inputs(4, 4, 2)
    assert select_backend("auto", z, mu, lv).name == "cpu"
    assert select_backend("torch", z, mu, lv).name == "torch"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    z, mu, lv = make_inputs(7, 9, 3, dtype=dtype)
    for t in (z, mu, lv):
        t.requires_grad_()
    args = (z, mu, lv, [-4.0, -3.5, -2.0], 0)
    torch.library.opcheck(torch.ops.tcvae.log_qz.default, args)
    q, qd, aq, aqd = torch.ops.tcvae.log_qz(*args)
    bargs = (torch.randn_like(q), torch.randn_like(qd), z.detach(), mu.detach(), lv.detach(), aq, aqd, [-4.0, -3.5, -2.0], 0)
    torch.library.opcheck(torch.ops.tcvae.log_qz_backward.default, bargs)


def test_torch_compile_fullgraph_decompose():
    z, mu, lv = make_inputs(16, 16, 5, dtype=torch.float32)

    def step(z, mu, lv):
        parts = tk.decompose(z, mu, lv, dataset_size=500, backend="cpu")
        return parts.mi + 6.0 * parts.tc + parts.dim_kl, parts

    compiled = torch.compile(step, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
    leaves_c = [t.clone().requires_grad_() for t in (z, mu, lv)]
    (loss, parts), (loss_c, _) = step(*leaves), compiled(*leaves_c)
    # Inductor reorders the float32 reductions around the op: agreement to float32 rounding of the
    # magnitudes involved (the loss is a difference of terms up to 30× larger than itself; measured
    # worst relative gradient difference over 40 seeds: 4.5e-6).
    mag = (parts.mi.abs() + 6 * parts.tc.abs() + parts.dim_kl.abs()).item()
    assert abs(loss.item() - loss_c.item()) <= 1e-5 * mag
    for a, b in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(loss_c, leaves_c)):
        assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()


def test_thread_count_independence():
    z, mu, lv = make_inputs(300, 300, 10, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
            q, qd = tk.log_qz(*leaves, dataset_size=1000, backend="cpu")
            grads = torch.autograd.grad((q * 0.3).sum() - qd.sum(), leaves)
            results.append([q.detach(), qd.detach(), *grads])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        # forward: bitwise (each row is one thread's work); column gradients: summed in a different
        # number of partial buffers, so equal to float32 rounding of their magnitude
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_every_op_takes_the_weight_contract():
    """LogWeights.op_args is the one layout of the weights the ops take (`float[] weights, int
    offset`); the C++ side refuses another length with a message that names the layout."""
    w = tk.log_weights("mss", 9, 100, offset=0)
    weights, offset = w.op_args()
    assert weights == [w.w_self, w.w_next, w.w_other] and offset == 0
    assert tk.LogWeights.from_op_args(weights, offset) == w
    for name in ("log_qz", "log_qz_groups", "log_qz_backward", "log_qz_groups_backward", "_emulate_log_qz",
                 "_emulate_log_qz_backward"):
        schema = getattr(torch.ops.tcvae, name).default._schema
        assert "float[] weights, int offset" in str(schema), name
    z, mu, lv = make_inputs(9, 9, 3)
    with pytest.raises(ValueError, match=r"weights must be \[w_self, w_next, w_other\]"):  # std::invalid_argument
        torch.ops.tcvae.log_qz(z, mu, lv, weights[:2], 0)
    with pytest.raises(ValueError, match=r"weights must be \[w_self, w_next, w_other\]"):
        tk.LogWeights.from_op_args(weights + [0.0], 0)
