"""The estimator-regime diagnostic (tk.self_share, loss.last.self_share) against its float64
definition on every backend, and the losses' one-time warning.

Tolerance: the truth is the float64 definition on the same rounded inputs the backend gets (as in
the tolerance rule: rounding z of size 30 to float32 moves a share by up to ~1e-5 by itself, which no
backend can undo). share = exp(log q(z_i|x_i) + w_self - log q(z_i)) inherits the absolute errors of
its two logs as a relative error: for log q(z_i) the tolerance rule's allowance (tcvae_kernels.testing), for
log q(z_i|x_i) (the same O(M·D) expression for every backend, in the inputs' accumulation dtype)
twice its own error against float64; plus a few ulps for the exponential.
"""

import warnings

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.api import _Estimate, _decompose, _grouped_decompose, _self_share
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.reference import log_qz_x_and_log_pz, self_share_reference
from tcvae_kernels.testing import check_backend

from helpers import fresh_seed, interpreter_shapes, make_inputs, targets

CASES = [  # (M, K, D, estimator, logvar range, spread)
    (1, 1, 1, "mws", (-2.0, 1.0), 1.0),
    (7, 7, 3, "mss", (-2.0, 1.0), 1.0),
    (7, 9, 10, "uniform", (-2.0, 1.0), 1.0),
    (33, 33, 33, "mss", (-20.0, 20.0), 1.0),  # extreme variances
    (129, 129, 3, "mss", (-8.0, -4.0), 1.0),  # sharp posteriors: shares near 1
    (129, 129, 1, "mss", (-2.0, 1.0), 30.0),  # spread-out means
]




def _allowed(be, z, mu, lv, w):
    """The tolerance rule's allowance for log_qz on these inputs (forward only)."""
    res = check_backend(be, z, mu, lv, w, grads=False)
    return res.allowed["log_qz"]


@pytest.mark.parametrize("be,device", targets(objects=True, emulation=True))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_self_share_matches_its_definition(be, device, dtype):
    for m, k, d, est, lvr, spread in interpreter_shapes(CASES, be.name, device):
        z, mu, lv = make_inputs(m, k, d, dtype=torch.float64, logvar_range=lvr, spread=spread)
        if est == "mss" and m > 1:
            z[m // 2] += 25.0  # one query far from every component
        z, mu, lv = (t.to(device=device, dtype=dtype) for t in (z, mu, lv))
        w = log_weights(est, k, 10 * k)
        ref = self_share_reference(*(t.double().cpu() for t in (z, mu, lv)), w)  # on the rounded inputs
        if be.name in tk.backend_names():  # the public function, on this backend
            got = tk.self_share(z, mu, lv, dataset_size=10 * k, estimator=est, backend=be.name)
        else:  # the emulation: the same formula on its outputs
            q, qd = be.log_qz(z, mu, lv, w)
            got = _self_share(log_qz_x_and_log_pz(z, mu, lv)[0], _Estimate(q, qd, None, w, (mu, lv)))
        assert got.shape == (m,) and not torch.isnan(got).any()
        own_err = (log_qz_x_and_log_pz(z, mu, lv)[0].double().cpu() - log_qz_x_and_log_pz(
            *(t.double() for t in (z, mu, lv)))[0].cpu()).abs()
        allowed = (_allowed(be, z, mu, lv, w) + 2 * own_err) * ref + 4 * torch.finfo(got.dtype).eps
        err = (got.double().cpu() - ref).abs()
        assert bool((err <= allowed).all()), f"{be.name} {m}x{k}x{d} {est}: max error {err.max():.3e}"
        assert bool(((got >= 0) & (got <= 1)).all())


def test_self_share_is_one_for_isolated_and_small_for_overlapping_posteriors():
    """The definition's two ends, exactly: far-apart sharp posteriors (each q(z_i) its own
    component) give 1; identical components under "uniform" give 1/K."""
    g = torch.Generator().manual_seed(fresh_seed())
    mu = 100.0 * torch.arange(16, dtype=torch.float64)[:, None].repeat(1, 2)
    lv = torch.full_like(mu, -4.0)
    z = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    assert torch.allclose(tk.self_share(z, mu, lv, dataset_size=1000), torch.ones(16, dtype=torch.float64))
    same = torch.zeros(16, 2, dtype=torch.float64)
    share = tk.self_share(torch.randn(16, 2, generator=g, dtype=torch.float64), same, same, estimator="uniform")
    assert torch.allclose(share, torch.full((16,), 1 / 16, dtype=torch.float64))


@pytest.mark.parametrize("cls,kw", [(tk.BetaTCVAELoss, {}), (tk.HFVAELoss, {"groups": [1, 2]})])
def test_loss_last_reports_the_batch_mean_of_the_share(cls, kw):
    z, mu, lv = make_inputs(40, 40, 3)
    loss = cls(dataset_size=400, **kw)
    loss(z, mu, lv)
    opts = tk.EstimatorOptions(dataset_size=400)
    # the same pass the loss makes (the grouped op's log q(z) may differ from the plain op's in the last bit)
    want = (_grouped_decompose(z, mu, lv, opts, kw["groups"]) if kw else _decompose(z, mu, lv, opts))[1].mean()
    assert torch.equal(loss.last.self_share, want) and not loss.last.self_share.requires_grad
    assert isinstance(loss.last, tk.GroupedDecomposition if kw else tk.Decomposition)
    assert len(tuple(loss.last)) == (4 if kw else 3)  # still the decomposition's tuple
    assert "self_share=" in repr(loss.last)


def _sharp_batch(m=64, d=4, logvar=-10.0, seed=None):
    """A self-dominated batch: means spread over the unit cube, posteriors of std e^-5."""
    g = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    mu = torch.randn(m, d, generator=g)
    lv = torch.full_like(mu, logvar)
    return mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=g), mu, lv


def test_warning_fires_once_on_a_self_dominated_batch_and_says_what_helps():
    loss = tk.BetaTCVAELoss(dataset_size=100_000)
    z, mu, lv = _sharp_batch()
    assert float(tk.self_share(z, mu, lv, dataset_size=100_000).mean()) > 0.99
    with pytest.warns(tk.EstimatorRegimeWarning, match="self share") as rec:
        loss(z, mu, lv)
    text = str(rec[0].message)
    assert "larger batch" in text and "process_group" in text and "dataset_size" in text and "warn_regime" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per loss object
        for _ in range(2 * tk.loss.REGIME_CHECK_EVERY):
            loss(z, mu, lv)


def test_no_warning_on_a_well_mixed_batch_nor_when_silenced_or_evaluating():
    z, mu, lv = make_inputs(256, 256, 4, logvar_range=(-0.5, 0.5))
    assert float(tk.self_share(z, mu, lv, dataset_size=100_000).mean()) < 0.1
    sharp = _sharp_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(tk.loss.REGIME_CHECK_EVERY + 1):
            tk.BetaTCVAELoss(dataset_size=100_000)(z, mu, lv)
        # isolated posteriors in a batch that is a large part of the data: measured benign
        tk.BetaTCVAELoss(dataset_size=int(sharp[0].shape[0] / tk.loss.SMALL_BATCH_FRACTION))(*sharp)
        tk.BetaTCVAELoss(dataset_size=100_000, warn_regime=False)(*sharp)
        tk.HFVAELoss(dataset_size=100_000, groups=[2, 2], warn_regime=False)(*sharp)
        tk.BetaTCVAELoss(dataset_size=100_000).eval()(*sharp)


def test_the_check_reads_the_share_only_every_few_calls():
    """The host read (a device sync on GPUs) happens at training calls 0, N, 2N, ...: a batch that
    turns self-dominated at call 1 is reported at call N."""
    loss = tk.BetaTCVAELoss(dataset_size=100_000)
    mixed = make_inputs(256, 256, 4, logvar_range=(-0.5, 0.5))
    sharp = _sharp_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(*mixed)
        for _ in range(tk.loss.REGIME_CHECK_EVERY - 1):
            loss(*sharp)
    with pytest.warns(tk.EstimatorRegimeWarning, match=f"training call {tk.loss.REGIME_CHECK_EVERY}"):
        loss(*sharp)
