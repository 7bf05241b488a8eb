"""The tolerance rule itself (tcvae_kernels/testing.py): it accepts the reference and rejects
backends that are wrong by more than the rule allows — also where some elements of a float16
gradient overflow (they used to make the error and the allowance both infinite: a free pass), and
it measures an element that rounded to ±inf by the least error that rounds there."""

import torch

from tcvae_kernels.backends.base import Backend
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.reference import log_qz_reference
from tcvae_kernels.testing import abs_errors, check_backend

from helpers import float16_cancelling_gradient_case, float16_overflow_case, make_inputs

Z, MU, LV = float16_overflow_case()


class _Perturbed(Backend):
    """The reference, with grad_logvar[:, col] moved by ``shift`` per unit of sum(upstream of
    log_qz) (the forward values unchanged), or the forward log_qz moved by ``shift_out``."""

    name = "perturbed"

    def __init__(self, col=1, shift=0.0, shift_out=0.0):
        self.col, self.shift, self.shift_out = col, shift, shift_out

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
        q, qd = log_qz_reference(z, mu, logvar, weights)
        t = logvar[:, self.col].float().sum()
        return q + self.shift * (t - t.detach()) + self.shift_out, qd


def test_the_reference_passes_and_overflowing_elements_are_checked():
    w = log_weights("mws", 1, 10)
    res = check_backend(_Perturbed(), Z, MU, LV, w)
    assert res.ok, res
    # grad_logvar overflows float16 in some elements, yet its error and allowance stay finite
    assert 0 < res.allowed["grad_logvar"] < float("inf")


def test_a_wrong_float16_gradient_fails_beside_overflowing_elements():
    w = log_weights("mws", 1, 10)
    # element 1 of grad_logvar is about 2.8e4 (float16 ulp 16): move it by ~30 ulps
    res = check_backend(_Perturbed(col=1, shift=500.0), Z, MU, LV, w,
                        upstream=(torch.ones(1, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64)))
    assert not res.ok and res.errors["grad_logvar"] > res.allowed["grad_logvar"]


class _ClampGradToHalf(torch.autograd.Function):
    """float16 -> float32 on the way in; on the way back the float32 gradient is clamped to the
    float16 range (±65504) instead of overflowing to ±inf."""

    @staticmethod
    def forward(ctx, x):
        return x.float()

    @staticmethod
    def backward(ctx, g):
        return g.clamp(-65504, 65504).to(torch.float16)


class _Clamped(Backend):
    name = "clamped"

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
        return log_qz_reference(z.float(), mu.float(), _ClampGradToHalf.apply(logvar), weights)


def test_a_finite_result_where_the_truth_overflows_fails():
    w = log_weights("mws", 1, 10)
    up = (torch.ones(1, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64))
    assert check_backend(_Perturbed(), Z, MU, LV, w, upstream=up).ok
    # 65504 where the true gradient is beyond 1e5: an error of > 3e4, far past the allowance
    res = check_backend(_Clamped(), Z, MU, LV, w, upstream=up)
    assert not res.ok and res.errors["grad_logvar"] > 3e4 > res.allowed["grad_logvar"]


def test_abs_errors_of_overflowed_elements():
    truth = torch.tensor([65000.0, 70000.0, -66000.0, 65000.0, -5.0, 1.0], dtype=torch.float64)
    result = torch.tensor([float("inf"), float("inf"), float("-inf"), float("-inf"), float("inf"), 1.0]).half()
    # inf just past the truth: 65520 - 65000; past the threshold: 0; the other sign: 65520 + |truth|
    assert abs_errors(result, truth).tolist() == [520.0, 0.0, 0.0, 130520.0, 65525.0, 0.0]


def test_an_infinity_of_the_wrong_sign_fails_unless_the_sum_allows_it():
    """The property tests' case: grad_logvar[16, 0] = -5.8e3 sums terms of ±1e6; the reference
    itself computes it in float32 as a positive value past 65504 (+inf in float16), within the
    allowance of such a sum. Sending well-conditioned elements to ±inf still fails."""
    z, mu, lv = float16_cancelling_gradient_case()
    w = log_weights("mss", 17, 170)
    res = check_backend("torch", z, mu, lv, w)
    assert res.ok, (res.errors, res.allowed)
    z, mu, lv = make_inputs(9, 9, 4, dtype=torch.float16)
    for shift in (1e6, -1e6):  # grad_logvar[:, 1] of size ~1 sent to +inf, then to -inf: both signs
        res = check_backend(_Perturbed(col=1, shift=shift), z, mu, lv, log_weights("mss", 9, 100))
        assert not res.ok and res.errors["grad_logvar"] > 6e4 > res.allowed["grad_logvar"]


def test_float32_errors_beyond_the_rule_fail_and_within_it_pass():
    z, mu, lv = make_inputs(9, 9, 4, dtype=torch.float32)
    w = log_weights("mss", 9, 100)
    assert check_backend(_Perturbed(shift_out=1e-6), z, mu, lv, w).ok  # below float32 resolution of ~|log q|
    res = check_backend(_Perturbed(shift_out=1e-3), z, mu, lv, w)
    assert not res.ok and res.errors["log_qz"] > res.allowed["log_qz"]
    res = check_backend(_Perturbed(shift=1e-2), z, mu, lv, w)
    assert not res.ok and res.errors["grad_logvar"] > res.allowed["grad_logvar"]


def test_nan_where_the_truth_is_finite_fails():
    z, mu, lv = make_inputs(5, 5, 3, dtype=torch.float32)
    res = check_backend(_Perturbed(shift_out=float("nan")), z, mu, lv, log_weights("mss", 5, 100))
    assert "log_qz" in res.nan and not res.ok


def test_float64_on_ill_conditioned_inputs():
    """z 3·10⁴ from components 10⁻² apart: exponents of ~5·10⁸ whose last bits set the softmax, so
    two valid float64 evaluations (the reference in base e and in base 2) differ far beyond the
    fixed float64 bound. The rule accepts the base-2 one, and still rejects an error 10× larger."""
    g = torch.Generator().manual_seed(5)
    mu = 1e-2 * torch.randn(13, 5, generator=g, dtype=torch.float64)
    z = 3e4 * torch.randn(13, 5, generator=g, dtype=torch.float64)
    lv = torch.zeros(13, 5, dtype=torch.float64)
    w = log_weights("mss", 13, 130)

    class Base2(Backend):
        name = "base2"

        def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
            return log_qz_reference(z, mu, logvar, weights, base2=True)

    res = check_backend(Base2(), z, mu, lv, w)
    assert res.ok, res
    # this backend is the base-2 reference, so its error is the spread and the allowance is the
    # fixed bound plus twice the spread: the fixed bound alone would have failed it
    assert any(res.errors[k] > res.allowed[k] - 2 * res.errors[k] for k in res.errors)
    spread = res.errors["grad_logvar"]
    bad = check_backend(_Perturbed(shift=10 * spread + 1.0), z, mu, lv, w,
                        upstream=(torch.ones(13, dtype=torch.float64), torch.zeros(13, 5, dtype=torch.float64)))
    assert not bad.ok and bad.errors["grad_logvar"] > bad.allowed["grad_logvar"]
