"""Triton-specific checks: every autotune config, the split-K path, the fixed config of
``deterministic=True``, the torch.library contract. Under TRITON_INTERPRET=1 on CPU
tensors in CI (small sizes); on CUDA at realistic sizes when a GPU is present."""

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.dispatch import backend_reasons
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.testing import check_backend

from helpers import assert_ok, fresh_seed, make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_probe = torch.zeros(2, 1, device=DEVICE)
pytestmark = pytest.mark.skipif(bool(backend_reasons("triton", _probe, _probe, _probe)),
                                reason="; ".join(backend_reasons("triton", _probe, _probe, _probe)))

if not backend_reasons("triton", _probe, _probe, _probe):
    from tcvae_kernels.backends import triton_kernels as tkn
else:  # pragma: no cover
    tkn = None

SMALL = DEVICE == "cpu"  # the interpreter: keep sizes small




def _config_params():
    """CONFIGS[0] in the default tier, the others (the same code at other tile sizes, each padded to
    up to 256 rows under the interpreter) in the slow tier."""
    return [pytest.param(cfg, id=f"cfg{cfg}", marks=() if cfg == 0 else pytest.mark.slow)
            for cfg in range(len(tkn.CONFIGS) if tkn else 3)]


@pytest.mark.parametrize("cfg", _config_params())
def test_every_config(cfg):
    config = tkn.CONFIGS[cfg]
    g = torch.Generator().manual_seed(fresh_seed())
    shapes = [(1, 1, 1, "mws"), (2, 2, 3, "mss"), (7, 7, 10, "mss"), (65, 65, 33, "mws"), (7, 40, 3, "mss"),
              (40, 7, 1, "uniform")]
    with tkn.force_config(config):
        for m, k, d, est in shapes:
            z, mu, lv = make_inputs(m, k, d, dtype=torch.float32, device=DEVICE, seed=int(torch.randint(0, 2**31, (1,), generator=g)))
            assert_ok(check_backend("triton", z, mu, lv, log_weights(est, k, 10 * max(m, k))),
                      f"{config} {m}x{k}x{d} {est}")


def test_deterministic_launches_a_fixed_config(monkeypatch):
    """``deterministic=True`` launches every kernel with CONFIGS[0] instead of the autotuner's pick
    (which is by timing, so it may differ between processes and round differently); without it the
    autotuned kernels go through the autotuner. Forced configs and the interpreter's come first."""
    monkeypatch.setattr(tkn, "INTERPRET", False)
    for name in tkn.KERNELS:
        tuned = tkn.KERNELS[name][0] in tkn._TUNED
        assert tkn._launch_config(name, deterministic=True) is tkn.CONFIGS[0]
        assert tkn._launch_config(name, deterministic=False) is (None if tuned else tkn.CONFIGS[0])
        with tkn.force_config(tkn.CONFIGS[1]):
            assert tkn._launch_config(name, deterministic=True) is tkn.CONFIGS[1]
    monkeypatch.setattr(tkn, "INTERPRET", True)
    assert tkn._launch_config("_fwd_kernel", deterministic=False) is tkn.INTERPRET_CONFIG
    assert any(k[0] in tkn._TUNED for k in tkn.KERNELS.values())  # the autotuned path is not vacuous


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_reaches_every_launch(monkeypatch, deterministic):
    """The public option travels to every kernel launch of the forward and the backward."""
    seen = []
    real = tkn._launch_config

    def spy(name, det):
        seen.append((name, det))
        return real(name, det)

    monkeypatch.setattr(tkn, "_launch_config", spy)
    z, mu, lv = (t.requires_grad_() for t in make_inputs(3, 3, 2, dtype=torch.float32, device=DEVICE))
    q, qd = tk.log_qz(z, mu, lv, dataset_size=10, backend="triton", deterministic=deterministic)
    (q.sum() + qd.sum()).backward()
    names = {name for name, _ in seen}
    assert {"_marginal_exact_kernel", "_bwd_cols_kernel"} <= names and any(n.startswith("_fwd_kernel") for n in names)
    assert all(det is deterministic for _, det in seen), seen


@pytest.mark.parametrize("splits", [2, 3])
def test_split_k_matches_reference(splits):
    z, mu, lv = make_inputs(37, 150, 5, dtype=torch.float64, device=DEVICE)
    with tkn.force_config(tkn.CONFIGS[2], splits=splits):
        assert_ok(check_backend("triton", z, mu, lv, log_weights("mss", 150, 1000)), f"splits={splits}")


def test_split_k_with_far_queries_uses_the_exact_path():
    z, mu, lv = make_inputs(20, 90, 4, dtype=torch.float32, device=DEVICE)
    z[::2] += 1e4
    with tkn.force_config(tkn.CONFIGS[0], splits=3):
        assert_ok(check_backend("triton", z, mu, lv, log_weights("mss", 90, 1000)), "far + splits")


def test_opcheck_triton_ops():
    z, mu, lv = make_inputs(7, 9, 3, dtype=torch.float32, device=DEVICE)
    for t in (z, mu, lv):
        t.requires_grad_()
    args = (z, mu, lv, [-4.0, -3.5, -2.0], 0, False)
    # The interpreter executes kernels even on fake tensors, so fake-tensor tracing is checked on GPUs only.
    utils = ("test_schema", "test_autograd_registration") + (("test_faketensor",) if DEVICE == "cuda" else ())
    torch.library.opcheck(tkn.log_qz_op, args, test_utils=utils)


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.compile of Triton kernels needs a GPU")
def test_torch_compile_fullgraph_on_cuda():
    z, mu, lv = make_inputs(256, 256, 10, dtype=torch.float32, device="cuda")

    def step(z, mu, lv):
        p = tk.decompose(z, mu, lv, dataset_size=5000, backend="triton")
        return p.mi + 6 * p.tc + p.dim_kl

    compiled = torch.compile(step, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
    leaves_c = [t.clone().requires_grad_() for t in (z, mu, lv)]
    loss, loss_c = step(*leaves), compiled(*leaves_c)
    assert torch.allclose(loss, loss_c, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(loss_c, leaves_c)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="realistic sizes need a GPU")
@pytest.mark.parametrize("m,d", [(1024, 10), (4096, 32), (2053, 64), (1000, 257)])
def test_realistic_sizes_on_cuda(m, d):
    z, mu, lv = make_inputs(m, m, d, dtype=torch.float32, device="cuda")
    for det in (False, True):
        assert_ok(check_backend("triton", z, mu, lv, log_weights("mss", m, 50 * m), deterministic=det),
                   f"{m}x{d} det={det}")


@pytest.mark.skipif(DEVICE != "cpu", reason="exp2_peak itself runs on CUDA in the benchmark")
def test_exp2_peak_kernel_runs_in_the_interpreter():
    from tcvae_kernels.tools.exp2_peak import _exp2_peak_kernel

    out = torch.empty(2 * 16)
    _exp2_peak_kernel[(2,)](out, 3, BLOCK=16)
    x = torch.arange(16, dtype=torch.float32) * -1e-3
    want = sum(torch.exp2(x - i * 1e-6) for i in range(3))
    assert torch.allclose(out[:16], want, rtol=1e-6) and torch.allclose(out[16:], want, rtol=1e-6)


def test_split_count_counts_the_programs_of_the_config_that_runs(monkeypatch):
    """_num_splits: about 2 programs per SM, counted with the rows (forward) or components (column
    backward) one program of the configuration in use covers; autotuned: the largest candidate block."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: SimpleNamespace(multi_processor_count=132))
    cuda = torch.device("cuda")
    rows, cols = 16384, 16384
    for cfg in tkn.CONFIGS:
        with tkn.force_config(cfg):
            for kind, axis in (("rows", "BLOCK_M"), ("cols", "BLOCK_K")):
                programs = -(-rows // cfg[kind][axis])
                assert tkn._num_splits(rows, cols, cuda, kind) == max(1, min(-(-264 // programs), cols // 512))
    monkeypatch.setattr(tkn, "INTERPRET", False)  # autotuned: the largest block of any candidate
    largest = max(c["rows"]["BLOCK_M"] for c in tkn.CONFIGS)
    assert tkn._num_splits(rows, cols, cuda, "rows") == -(-264 // (rows // largest))
    assert tkn._num_splits(rows, cols, torch.device("cpu"), "rows") == 1



@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's speed-up (tests/triton_interpreter.py) is for CPU runs")
def test_the_interpreter_speed_up_changes_no_bit():
    """conftest skips the interpreter's repeated patching of triton.language; forward and gradients
    are bitwise those of the interpreter as it ships."""
    from triton_interpreter import as_shipped, skip_repeated_patching

    assert skip_repeated_patching()  # installed by conftest (True: it is)
    z, mu, lv = make_inputs(17, 17, 3, dtype=torch.float32)

    def run():
        leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        tc = tk.total_correlation(*leaves, dataset_size=170, backend="triton")
        return [tc.detach(), *torch.autograd.grad(tc, leaves)]

    sped_up = run()
    with as_shipped():
        shipped = run()
    for a, b in zip(sped_up, shipped):
        assert torch.equal(a, b)
