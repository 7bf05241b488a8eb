"""The safety net of backend="auto" (tcvae_kernels.dispatch): a backend marked ``self_check`` is
checked once per (device, dtype) against the reference before auto uses it; if it fails or raises,
auto takes the next backend and warns once with the reason. An explicit backend is never
second-guessed, and TCVAE_AUTO_CHECK=0 turns the check off. Here the GPU kernels' place is taken by
deliberately broken CPU backends."""

import warnings

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels import dispatch
from tcvae_kernels.backends import base, extension
from tcvae_kernels.backends.cpu import CpuBackend

from helpers import make_inputs

pytestmark = pytest.mark.skipif(extension.LOAD_ERROR is not None, reason=f"extension not built: {extension.LOAD_ERROR}")


class _Checked(CpuBackend):
    self_check = True


class _OffByOne(_Checked):
    """Returns log_qz + 1 (a plausible-looking wrong answer)."""

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
        q, qd = super().log_qz(z, mu, logvar, weights, deterministic, family)
        return q + 1.0, qd


class _Raises(_Checked):
    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
        raise RuntimeError("no kernel image is available for execution on the device")


@pytest.fixture
def swap_cpu(monkeypatch):
    """Install a backend object under the name "cpu" (first in auto's CPU order), fresh check cache."""
    monkeypatch.setattr(dispatch, "_SELF_CHECKS", {})
    monkeypatch.delenv(dispatch.AUTO_CHECK_ENV, raising=False)

    def install(be):
        be.name = "cpu"
        monkeypatch.setitem(base._REGISTRY, "cpu", be)
        return be

    return install


def _call(backend, inputs):
    z, mu, lv = inputs
    return tk.log_qz(z, mu, lv, dataset_size=1000, backend=backend)


@pytest.fixture
def inputs():
    return make_inputs(40, 40, 4, dtype=torch.float32)


def test_a_wrong_backend_is_skipped_with_one_warning(swap_cpu, inputs):
    swap_cpu(_OffByOne())
    with pytest.warns(RuntimeWarning, match=r"backend 'cpu' failed its one-time check.*log_qz error"):
        got = _call("auto", inputs)
    want = _call("torch", inputs)
    assert torch.allclose(got.log_qz, want.log_qz, atol=1e-4)  # the next backend (torch) answered
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked once per (device, dtype): no second warning
        again = _call("auto", inputs)
    assert torch.allclose(again.log_qz, want.log_qz, atol=1e-4)
    # another dtype is checked (and warned about) on its own
    with pytest.warns(RuntimeWarning, match="float64"):
        _call("auto", [t.double() for t in inputs])


def test_an_explicit_backend_is_never_second_guessed(swap_cpu, inputs):
    swap_cpu(_OffByOne())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _call("cpu", inputs)
    assert torch.allclose(got.log_qz, _call("torch", inputs).log_qz + 1.0, atol=1e-4)
    assert dispatch._SELF_CHECKS == {}  # no check ran


def test_a_raising_backend_is_skipped(swap_cpu, inputs):
    swap_cpu(_Raises())
    with pytest.warns(RuntimeWarning, match="raised RuntimeError: no kernel image"):
        got = _call("auto", inputs)
    assert torch.allclose(got.log_qz, _call("torch", inputs).log_qz, atol=1e-4)


def test_a_wrong_gradient_alone_is_caught(swap_cpu, inputs):
    class WrongGrad(_Checked):
        def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
            q, qd = super().log_qz(z, mu, logvar, weights, deterministic, family)
            return q, qd + 0.01 * (z - z.detach())  # same values, grad_z off by 0.01·b

    swap_cpu(WrongGrad())
    with pytest.warns(RuntimeWarning, match="grad_z error"):
        _call("auto", inputs)


def test_a_correct_backend_passes_once_and_is_used(swap_cpu, inputs, monkeypatch):
    be = swap_cpu(_Checked())
    calls = []
    original = dispatch._run_self_check
    monkeypatch.setattr(dispatch, "_run_self_check", lambda *a: calls.append(a) or original(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            _call("auto", inputs)
    assert len(calls) == 1 and dispatch._SELF_CHECKS == {("cpu", "cpu", torch.float32): None}
    assert dispatch.select_backend("auto", *inputs) is be


def test_the_environment_switch_turns_the_check_off(swap_cpu, inputs, monkeypatch):
    swap_cpu(_OffByOne())
    monkeypatch.setenv(dispatch.AUTO_CHECK_ENV, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _call("auto", inputs)
    assert torch.allclose(got.log_qz, _call("torch", inputs).log_qz + 1.0, atol=1e-4)


def test_the_gpu_backends_are_the_checked_ones():
    assert base.get_backend("cuda").self_check and base.get_backend("triton").self_check
    assert not base.get_backend("cpu").self_check and not base.get_backend("torch").self_check
