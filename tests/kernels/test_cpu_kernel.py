"""The C++ CPU op: torch.library contract (opcheck, torch.compile), dispatch, threads."""

import json
import os
import subprocess
import sys

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends import extension
from tcvae_kernels.dispatch import select_backend

from helpers import make_inputs

pytestmark = pytest.mark.skipif(extension.LOAD_ERROR is not None, reason=f"extension not built: {extension.LOAD_ERROR}")


def test_extension_reports_its_build():
    info = extension.build_info()
    assert info["cpu_capability"] in ("default", "avx2", "avx512")
    assert info["cuda"] in ("0", "1")
    assert "cpu" in tk.available_backends()


def test_auto_picks_the_cpu_kernel_for_cpu_tensors():
    z, mu, lv = make_inputs(4, 4, 2)
    assert select_backend("auto", z, mu, lv).name == "cpu"
    assert select_backend("torch", z, mu, lv).name == "torch"


@pytest.mark.parametrize("grad_components", [-1, 3], ids=["all-columns", "3-of-9-columns"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_opcheck(dtype, grad_components):
    """The op's schema, fake kernel and autograd; with grad_components the forward sums grad_z's
    terms over the columns from 3 on (they also get through opcheck's autograd checks)."""
    z, mu, lv = make_inputs(7, 9, 3, dtype=dtype)
    for t in (z, mu, lv):
        t.requires_grad_()
    args = (z, mu, lv, [-4.0, -3.5, -2.0], 0, True, "normal", grad_components)
    torch.library.opcheck(torch.ops.tcvae.log_qz.default, args)
    q, qd, aq, aqd = torch.ops.tcvae.log_qz(*args)
    bargs = (torch.randn_like(q), torch.randn_like(qd), z.detach(), mu.detach(), lv.detach(), aq, aqd,
             [-4.0, -3.5, -2.0], 0, True, "normal", grad_components)
    torch.library.opcheck(torch.ops.tcvae.log_qz_backward.default, bargs)
    gargs = (z, mu, lv, [2], [-4.0, -3.5, -2.0], 0, "normal", True, grad_components)
    torch.library.opcheck(torch.ops.tcvae.log_qz_groups.default, gargs)


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


# Run in a fresh process per thread count: the op with upstream gradients on saved inputs, printing
# the SHA-256 of every output's and gradient's bytes. argv: inputs file, thread count, tests/.
_THREADS_SCRIPT = r"""
import hashlib, json, sys
import torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.append(sys.argv[3])
from cuda_emulation import CudaEmulationBackend
from tcvae_kernels.backends.base import get_backend
from tcvae_kernels.estimators import log_weights
cases, out = torch.load(sys.argv[1]), {}
for name, (z, mu, lv, a, b, c, groups, backend) in cases.items():
    be = CudaEmulationBackend(splits=3) if backend == "cuda-emulation" else get_backend(backend)
    leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
    w = log_weights("mss", mu.shape[0], 5000, offset=0)
    res = be.log_qz_groups(*leaves, w, groups) if groups else be.log_qz(*leaves, w)
    loss = (a * res[0]).sum() + (b * res[1]).sum() + ((c * res[2]).sum() if groups else 0)
    tensors = [r.detach() for r in res] + list(torch.autograd.grad(loss, leaves))
    out[name] = [hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() for t in tensors]
print(torch.get_num_threads(), json.dumps(out))
"""


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    """Every output and gradient of the CPU kernel (plain and grouped op, K ≠ M, float32 and
    float64) and of the CUDA kernels' CPU emulation is bitwise the same with 1, 2 and 3 threads, each
    count in a fresh process: the backward's reduction over queries is partitioned by the problem's
    size, not the thread count (csrc/tcvae_cpu.cpp, kMinTilesPerChunk). M = 1000, D = 17 is the
    shape where grad mu/logvar used to differ by ~1e-8 between thread counts."""
    cases = {}
    for dtype in (torch.float32, torch.float64):
        for m, k, d, groups, backend in ((1000, 1000, 17, None, "cpu"), (300, 700, 10, [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]], "cpu"),
                                         (70, 130, 5, None, "cuda-emulation")):
            z, mu, lv = make_inputs(m, k, d, dtype=dtype)
            g = torch.Generator().manual_seed(m + k + d)
            a, b = torch.randn(m, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype)
            c = torch.randn(m, len(groups) if groups else 0, generator=g, dtype=dtype)
            cases[f"{backend} {m}x{k}x{d} groups={groups} {dtype}"] = (z, mu, lv, a, b, c, groups, backend)
    inputs = tmp_path / "inputs.pt"
    torch.save(cases, inputs)
    hashes = {}
    for threads in (1, 2, 3):
        run = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(inputs), str(threads),
                              os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        used, digests = run.stdout.strip().splitlines()[-1].split(" ", 1)
        assert int(used) == threads
        hashes[threads] = json.loads(digests)
    names = ["log_qz", "log_qz_dims", "log_qz_groups", "grad z", "grad mu", "grad logvar"]
    for case, ref in hashes[1].items():
        for threads in (2, 3):
            got = hashes[threads][case]
            parts = names if len(ref) == 6 else names[:2] + names[3:]
            differ = [n for n, x, y in zip(parts, ref, got) if x != y]
            assert not differ, f"{case}: {differ} differ between 1 and {threads} threads"


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
