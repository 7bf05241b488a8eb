"""pytest-benchmark cases for the same methods and sizes as ``python -m tcvae_kernels bench``.

Not part of the CI suite (``make test`` runs tests/ only). Run with::

    .venv/bin/python -m pytest bench/test_bench.py --benchmark-only [-k "cpu and 2048"]

Slow comparators at large sizes take minutes; select with -k. The committed figures in
bench/RESULTS.md come from ``python -m tcvae_kernels bench --full`` (side-by-side medians and
peak memory in one run), which this file complements with pytest-benchmark's statistics.
"""

import pytest
import torch

from tcvae_kernels.tools.benchmark import FULL_DIMS, FULL_SIZES, build_method, make_call, make_inputs, method_unavailable

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
METHODS = ["eager", "compile", "keops", "torch", "cpu", "cuda", "triton"]
BANK_M, BANK_K, BANK_DIMS = 256, 16384, [10, 32]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("d", FULL_DIMS)
@pytest.mark.parametrize("m", FULL_SIZES)
@pytest.mark.parametrize("method", METHODS)
def test_log_qz(benchmark, method, m, d, mode):
    _run(benchmark, method, m, m, d, mode)


# the shape of a component bank: a batch of 256 queries against its own and 16,128 banked components
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("d", BANK_DIMS)
@pytest.mark.parametrize("method", METHODS)
def test_log_qz_with_bank(benchmark, method, d, mode):
    _run(benchmark, method, BANK_M, BANK_K, d, mode)


def _run(benchmark, method, m, k, d, mode):
    """Time ``method`` at M queries × K components (skipped where it cannot run or is no benchmark)."""
    why = method_unavailable(method, DEVICE)
    if why:
        pytest.skip(why)
    if method == "triton" and DEVICE == "cpu":
        pytest.skip("the Triton interpreter is not a benchmark")
    inputs, bank = make_inputs(m, d, DEVICE, torch.float32, k)
    call = make_call(build_method(method, m, 10 * k, torch.float32, DEVICE, bank), mode, inputs)
    call()  # warm-up: compilation / JIT outside the timed rounds
    if DEVICE == "cuda":
        benchmark(lambda: (call(), torch.cuda.synchronize()))
    else:
        benchmark(call)
