"""The CUDA kernels (csrc/tcvae_cuda.cu). Without a GPU, CI checks their per-thread arithmetic,
tiling, padding of D to the register width, split-K indexing and host orchestration through the
CPU emulation (csrc/tcvae_emulate.cpp runs the same code, csrc/tcvae_fused.h, serially); the same
tests then run on CUDA tensors when a GPU is present."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.backends import extension
from tcvae_kernels.dispatch import backend_reasons
from tcvae_kernels.estimators import LogWeights, log_weights
from tcvae_kernels.testing import check_backend, random_inputs

from cuda_emulation import CudaEmulationBackend
from helpers import assert_ok, fresh_seed, make_inputs

pytestmark = pytest.mark.skipif(extension.LOAD_ERROR is not None, reason=f"extension not built: {extension.LOAD_ERROR}")

HAS_GPU = torch.cuda.is_available() and not backend_reasons(
    "cuda", torch.zeros(2, 1, device="cuda"), torch.zeros(2, 1, device="cuda"), torch.zeros(2, 1, device="cuda"))


def _targets():
    out = [pytest.param(("emulation", 1), "cpu", id="emulated-1split"),
           pytest.param(("emulation", 3), "cpu", id="emulated-3splits")]
    if HAS_GPU:
        out.append(pytest.param("cuda", "cuda", id="cuda"))
    return out


def _backend(spec):
    return CudaEmulationBackend(splits=spec[1]) if isinstance(spec, tuple) else spec




# D: 1, odd, even and past 64; M and K: 1, tiles of 32 and blocks of 128 and their edges
SHAPES = [(1, 1, 1, "mws"), (2, 2, 3, "mss"), (7, 7, 8, "mss"), (9, 40, 9, "mss"), (130, 129, 16, "mws"),
          (33, 70, 17, "uniform"), (65, 65, 33, "mss"), (20, 33, 64, "mws"),
          (129, 130, 3, "mss")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec,device", _targets())
def test_matches_reference(spec, device, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    for m, k, d, est in SHAPES:
        z, mu, lv = random_inputs(m, k, d, kind="normal", dtype=dtype, device=device, generator=g)
        assert_ok(check_backend(_backend(spec), z, mu, lv, log_weights(est, k, 10 * max(m, k))), f"{m}x{k}x{d} {est}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec,device", _targets())
def test_extreme_and_far_values(spec, device, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    for m, k, d, est in [(33, 33, 10, "mws"), (40, 129, 3, "mss")]:
        z, mu, lv = random_inputs(m, k, d, kind="extreme", dtype=dtype, device=device, generator=g)
        lv[0], lv[1] = -20.0, 20.0
        w = log_weights(est, k, 10 * max(m, k))
        assert_ok(check_backend(_backend(spec), z, mu, lv, w), "extreme")
        z_far = z.clone()
        z_far[::2] += 1e7  # every l < -1e4 for these rows: the exact fallback
        assert_ok(check_backend(_backend(spec), z_far, mu, lv, w), "far")


@pytest.mark.parametrize("spec,device", _targets())
def test_non_contiguous_offset_and_nan(spec, device):
    be = _backend(spec)
    g = torch.Generator().manual_seed(fresh_seed())
    z, mu, lv = random_inputs(45, 45, 10, kind="noncontiguous", dtype=torch.float32, device=device, generator=g)
    assert_ok(check_backend(be, z, mu, lv, log_weights("mss", 45, 1000)), "non-contiguous")
    z, mu, lv = make_inputs(6, 14, 4, device=device)
    assert_ok(check_backend(be, z, mu, lv, log_weights("mss", 14, 100, offset=5)), "offset")
    assert_ok(check_backend(be, z, mu, lv, LogWeights(-1.0, -3.0, -2.0, offset=12)), "offset past K")
    z, mu, lv = make_inputs(6, 6, 3, dtype=torch.float32, device=device)
    z[2, 1] = float("nan")
    z[4, 0] = float("inf")
    mu[5, 2] = float("nan")
    w = log_weights("mss", 6, 50)
    got = be.log_qz(z, mu, lv, w) if not isinstance(be, str) else tk.log_qz(z, mu, lv, dataset_size=50, backend=be)
    ref = tk.log_qz(z, mu, lv, dataset_size=50, backend="torch")
    for a, b in zip(got, ref):
        assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.isinf(a), torch.isinf(b))


def test_emulation_gradcheck_float64():
    be = CudaEmulationBackend(splits=2)
    z, mu, lv = (t.requires_grad_() for t in make_inputs(5, 37, 3))
    w = log_weights("mss", 37, 500)
    assert torch.autograd.gradcheck(lambda *a: be.log_qz(*a, w), (z, mu, lv))


def test_cuda_backend_reasons_without_gpu():
    z = torch.zeros(3, 2)
    reasons = backend_reasons("cuda", z, z, z)
    assert reasons  # CPU tensors (and, on a machine without the CUDA build, the build itself)
    if extension.build_info().get("cuda") == "1":
        assert any("runs on cuda tensors" in r for r in reasons)


def test_emulation_handles_large_d():
    """No register array depends on D any more: D = 100 runs through the same code."""
    z, mu, lv = make_inputs(9, 40, 100, dtype=torch.float32)
    assert_ok(check_backend(CudaEmulationBackend(splits=2), z, mu, lv, log_weights("mss", 40, 400)), "D=100")


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
@pytest.mark.parametrize("m,d", [(1024, 10), (4096, 32), (2053, 64), (1000, 3)])
def test_realistic_sizes_on_cuda(m, d):
    z, mu, lv = make_inputs(m, m, d, dtype=torch.float32, device="cuda")
    assert_ok(check_backend("cuda", z, mu, lv, log_weights("mss", m, 50 * m)), f"{m}x{d}")


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_cuda_opcheck_and_compile():
    z, mu, lv = make_inputs(7, 9, 3, dtype=torch.float32, device="cuda")
    for t in (z, mu, lv):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.tcvae.log_qz.default, (z, mu, lv, [-4.0, -3.5, -2.0], 0))
    compiled = torch.compile(lambda a, b, c: tk.total_correlation(a, b, c, dataset_size=100, backend="cuda"),
                             fullgraph=True)
    assert torch.allclose(compiled(z, mu, lv), tk.total_correlation(z, mu, lv, dataset_size=100, backend="cuda"),
                          rtol=1e-5, atol=1e-5)


def test_ci_build_compiled_the_cuda_kernel():
    """`make test` builds with CUDA_HOME set and a CUDA build of torch: the .cu must have compiled in."""
    import os

    if not (os.environ.get("CUDA_HOME") and torch.version.cuda):
        pytest.skip("not a CUDA-enabled build environment")
    if extension.build_info().get("sanitize"):
        pytest.skip("make sanitize builds the CPU kernel only")
    assert extension.build_info().get("cuda") == "1"
