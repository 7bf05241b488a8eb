"""Statistical sanity of the minibatch estimators against a full-data TC computed with K = N.

Synthetic data: N = 2000 posteriors N(mu_n, 0.05·I) in D = 3 with correlated means (true TC ≈ 0.6).
Measured with python/estimator_bias.py (60 batches each): MSS averages 0.04, 0.19, 0.46, 0.57 at
B = 32, 64, 256, 1024 against a true 0.595 — biased low at small B, converging as B → N (it is
consistent, not unbiased). MWS sits at TC + (D−1)·log N + O(1) (15.2 above here).

Tolerances: at B = 1000 the measured MSS bias is −0.025; the Monte Carlo standard errors are
≈ 0.01 (truth, 10k samples) and ≈ 0.005 (mean of 20 batches). We allow |bias| < 0.1, i.e. the
observed bias plus > 7 standard errors, so a fresh seed does not flake while a wrong
normalisation fails. At B = 64 MSS must be biased *low* by more than 0.1 (measured −0.40 ± 0.03):
log of an unbiased density estimate is biased low (Jensen), far more for the 3-D joint than for
the 1-D marginals. The authors' column-fill weights are biased *high* there (+0.50), so that slip
fails this test as well as the weight-layout test.
"""

import math

import torch

import tcvae_kernels as tk

from helpers import fresh_seed

N, S2 = 2000, 0.05


def _setup():
    g = torch.Generator().manual_seed(fresh_seed())
    corr = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)
    mu = torch.randn(N, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(corr).T
    logvar = torch.full_like(mu, math.log(S2))
    idx = torch.randint(0, N, (10000,), generator=g)
    z = mu[idx] + math.sqrt(S2) * torch.randn(10000, 3, generator=g, dtype=torch.float64)
    full = tk.log_qz(z, mu, logvar, estimator="uniform")
    true_tc = (full.log_qz - full.log_qz_dims.sum(1)).mean().item()
    return g, mu, logvar, true_tc


def _mean_estimate(g, mu, logvar, batch, batches, estimator):
    vals = []
    for _ in range(batches):
        pick = torch.randperm(N, generator=g)[:batch]
        m, lv = mu[pick], logvar[pick]
        z = m + math.sqrt(S2) * torch.randn(m.shape, generator=g, dtype=m.dtype)
        vals.append(tk.total_correlation(z, m, lv, dataset_size=N, estimator=estimator).item())
    return sum(vals) / len(vals)


def test_mss_converges_to_full_data_tc_and_mws_is_offset():
    g, mu, logvar, true_tc = _setup()
    assert 0.4 < true_tc < 0.8  # the synthetic data set has a clear TC
    mss_large = _mean_estimate(g, mu, logvar, 1000, 20, "mss")
    mss_small = _mean_estimate(g, mu, logvar, 64, 20, "mss")
    assert abs(mss_large - true_tc) < 0.1, (mss_large, true_tc)
    assert mss_small < true_tc - 0.1, (mss_small, true_tc)  # Jensen: biased low at small B
    assert abs(mss_large - true_tc) < 0.5 * abs(mss_small - true_tc)  # consistency: bias shrinks with B
    mws_large = _mean_estimate(g, mu, logvar, 1000, 10, "mws")
    offset = mws_large - true_tc
    assert abs(offset - 2 * math.log(N)) < 0.5, offset  # ≈ (D−1)·log N; measured +0.03 beyond it
