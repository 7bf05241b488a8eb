"""Under torch.autocast the estimates compute in float32 and say so: float16/bfloat16 inputs are
upcast, results are float32 and bitwise equal to the float32 computation outside autocast (on every
backend: inside the op autocast is off, so no matmul or exp of the reference is run in low
precision), gradients reach the low-precision leaves in their dtype; the compiled ops called
directly behave the same (registered with torch.library.register_autocast)."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends import extension

from helpers import backends, make_inputs

CASES = [("cpu", torch.bfloat16)] + ([("cuda", torch.float16), ("cuda", torch.bfloat16)]
                                      if torch.cuda.is_available() else [])


PARAMS = [(dev, dt, be) for dev, dt in CASES for be in backends(dev)]


@pytest.mark.parametrize("device,dtype,backend", PARAMS, ids=[f"{d}-{str(t)[6:]}-{b}" for d, t, b in PARAMS])
def test_low_precision_inputs_compute_and_return_float32(device, dtype, backend):
    z32, mu32, lv32 = make_inputs(19, 19, 4, dtype=torch.float32, device=device)
    leaves = [t.to(dtype).requires_grad_() for t in (z32, mu32, lv32)]
    up = [t.detach().float().requires_grad_() for t in leaves]  # the same values in float32
    with torch.autocast(device, dtype=dtype):
        got = tk.log_qz(*leaves, dataset_size=190, backend=backend)
        dec = tk.decompose(*leaves, dataset_size=190, backend=backend)
    want = tk.log_qz(*up, dataset_size=190, backend=backend)
    want_dec = tk.decompose(*up, dataset_size=190, backend=backend)
    assert got.log_qz.dtype == got.log_qz_dims.dtype == torch.float32 and dec.tc.dtype == torch.float32
    assert torch.equal(got.log_qz, want.log_qz) and torch.equal(got.log_qz_dims, want.log_qz_dims)
    assert torch.equal(dec.tc, want_dec.tc) and torch.equal(dec.mi, want_dec.mi)
    (got.log_qz.sum() - got.log_qz_dims.sum()).backward()
    (want.log_qz.sum() - want.log_qz_dims.sum()).backward()
    for a, b in zip(leaves, up):
        assert a.grad.dtype == dtype and torch.equal(a.grad, b.grad.to(dtype))


@pytest.mark.parametrize("device,dtype,backend", PARAMS, ids=[f"{d}-{str(t)[6:]}-{b}" for d, t, b in PARAMS])
def test_float32_inputs_are_unchanged_by_autocast(device, dtype, backend):
    z, mu, lv = make_inputs(9, 12, 3, dtype=torch.float32, device=device)
    want = tk.log_qz(z, mu, lv, dataset_size=120, backend=backend)
    with torch.autocast(device, dtype=dtype):
        got = tk.log_qz(z, mu, lv, dataset_size=120, backend=backend)
        loss = tk.BetaTCVAELoss(dataset_size=120, backend=backend)(z[:9], mu[:9], lv[:9])
    assert got.log_qz.dtype == torch.float32 and torch.equal(got.log_qz, want.log_qz)
    assert loss.dtype == torch.float32


@pytest.mark.skipif(extension.LOAD_ERROR is not None, reason="extension not built")
@pytest.mark.parametrize("device,dtype", CASES)
def test_the_compiled_op_under_autocast(device, dtype):
    z, mu, lv = make_inputs(7, 7, 3, dtype=torch.float32, device=device)
    args = ([-4.0, -3.0, -2.0], 0)
    want = torch.ops.tcvae.log_qz(*(t.to(dtype).float() for t in (z, mu, lv)), *args)
    with torch.autocast(device, dtype=dtype):
        got = torch.ops.tcvae.log_qz(*(t.to(dtype) for t in (z, mu, lv)), *args)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and torch.equal(g, w)
