"""The FMA-pipe exp2 of the CUDA kernels (csrc/tcvae_math.h, exp2_fma) against the correctly rounded
2^x, through the same C++ function run on the CPU (tcvae::_exp2_fma).

Contract: at most 2 ulp for x in [-126, 64) (the kernels feed x2 < 64); for x < -126 a value in
[0, 2^-126) (what flush-to-zero arithmetic reads as 0, as MUFU.EX2 returns there); NaN propagates.
The result is p(f)·2^n with n = rint(x) and f = x - n exact, and 2^n exact while normal, so its
relative error is a function of f alone: checking every float32 f in [-0.5, 0.5] checks every x
whose result is normal; the range reduction is checked on every float32 of windows around the
integers where n changes, the top of the range and the underflow edge, and on random x."""

import numpy as np
import pytest
import torch

from tcvae_kernels.backends import extension

pytestmark = pytest.mark.skipif(extension.LOAD_ERROR is not None, reason=f"extension not built: {extension.LOAD_ERROR}")


def _ulp_error(x: torch.Tensor) -> torch.Tensor:
    got = torch.ops.tcvae._exp2_fma(x).double()
    true = torch.exp2(x.double())
    ulp = torch.from_numpy(np.spacing(true.float().numpy()).astype(np.float64))
    return (got - true).abs() / ulp


def _max_ulp_error(x: torch.Tensor) -> float:
    """Largest error of x's elements, 2^25 at a time (the float64 temporaries of 2^29 inputs
    would take ~24 GiB)."""
    return max((float(_ulp_error(c).max()) for c in x.split(1 << 25)), default=0.0)


def _floats_between(lo: float, hi: float) -> torch.Tensor:
    """Every float32 in [lo, hi] (same sign), by bit pattern."""
    a, b = (int(np.float32(v).view(np.int32)) for v in (lo, hi))
    a, b = min(a, b), max(a, b)
    return torch.arange(a, b + 1, dtype=torch.int32).view(torch.float32)


@pytest.mark.slow
def test_every_reduced_argument_within_2_ulp():
    worst = 0.0
    for lo, hi in [(2.0**-26, 0.5), (-0.5, -(2.0**-26))]:
        worst = max(worst, _max_ulp_error(_floats_between(lo, hi)))  # 0.2 G floats in 26 binades per sign
    tiny = torch.tensor([0.0, -0.0, 2.0**-40, -(2.0**-40), 2.0**-27, -(2.0**-27)])
    worst = max(worst, float(_ulp_error(tiny).max()))
    assert worst <= 2.0, worst


@pytest.mark.parametrize("lo,hi", [(-126.0, -124.5), pytest.param(-1.5, 1.5, marks=pytest.mark.slow), (62.5, 63.999996),
                                   (-60.6, -59.4), (10.4, 11.6)])
def test_every_float_in_range_reduction_windows(lo, hi):
    parts = []
    if lo < 0:
        parts.append(_floats_between(lo, min(hi, -(2.0**-30))))
    if hi > 0:
        parts.append(_floats_between(max(lo, 2.0**-30), hi))
    assert max(_max_ulp_error(p) for p in parts) <= 2.0


def test_random_arguments_over_the_whole_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1 << 22, generator=g, dtype=torch.float64).mul(190.0).sub(126.0).float().clamp(max=63.99)
    assert _max_ulp_error(x) <= 2.0


def test_underflow_edge_and_special_values():
    below = torch.cat([_floats_between(-126.6, -126.00001), torch.tensor([-127.0, -150.0, -1e4, -3e38,
                                                                           float("-inf")])])
    y = torch.ops.tcvae._exp2_fma(below)
    assert bool(((y >= 0) & (y < 2.0**-126)).all())
    assert torch.ops.tcvae._exp2_fma(torch.tensor([float("nan")])).isnan().all()
    # x = -126 exactly is the smallest normal result
    assert float(torch.ops.tcvae._exp2_fma(torch.tensor([-126.0]))) == 2.0**-126
