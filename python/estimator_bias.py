"""How the minibatch TC estimators behave against the full-data TC (K = N components).

A synthetic data set of N encoder posteriors q(z|x_n) = N(mu_n, s2·I) with correlated means
(so the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) has a clear total correlation). The true
TC = E_q(z)[log q(z) - Σ_d log q(z_d)] is estimated by Monte Carlo with all N components
(estimator="uniform"); then the average minibatch estimate of MSS, MWS, and MSS with the
authors' column-fill weights is printed per batch size.

    python python/estimator_bias.py [--n 2000] [--batches 40]
"""

import argparse
import math

import torch

import tcvae_kernels as tk
from tcvae_kernels.reference import log_density


def make_dataset(n, s2, generator):
    corr = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)
    mu = torch.randn(n, 3, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(corr).T
    logvar = torch.full_like(mu, math.log(s2))
    return mu, logvar


def true_tc(mu, logvar, samples, generator):
    n = mu.shape[0]
    idx = torch.randint(0, n, (samples,), generator=generator)
    z = mu[idx] + torch.exp(0.5 * logvar[idx]) * torch.randn(samples, mu.shape[1], generator=generator, dtype=mu.dtype)
    out = tk.log_qz(z, mu, logvar, estimator="uniform")
    tc = out.log_qz - out.log_qz_dims.sum(1)
    return tc.mean().item(), tc.std().item() / math.sqrt(samples)


def column_fill_tc(z, mu, logvar, n):
    """MSS with the weight matrix of the authors' public code (self weight filled into column 0)."""
    b = z.shape[0]
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=z.dtype)
    w.view(-1)[:: m + 1] = 1.0 / n
    w.view(-1)[1 :: m + 1] = (n - m) / (n * m)
    w[m - 1, 0] = (n - m) / (n * m)
    l = log_density(z[:, None], mu[None], logvar[None])
    log_qz = torch.logsumexp(l.sum(2) + w.log(), dim=1)
    log_qz_dims = torch.logsumexp(l + w.log()[:, :, None], dim=1)
    return (log_qz - log_qz_dims.sum(1)).mean().item()


def batch_estimates(mu, logvar, batch, batches, generator):
    n = mu.shape[0]
    rows = {"mss": [], "mws": [], "mss (column fill)": []}
    for _ in range(batches):
        pick = torch.randperm(n, generator=generator)[:batch]
        m, lv = mu[pick], logvar[pick]
        z = m + torch.exp(0.5 * lv) * torch.randn(m.shape, generator=generator, dtype=m.dtype)
        for est in ("mss", "mws"):
            rows[est].append(tk.total_correlation(z, m, lv, dataset_size=n, estimator=est).item())
        rows["mss (column fill)"].append(column_fill_tc(z, m, lv, n))
    return {k: (sum(v) / len(v), torch.tensor(v).std().item() / math.sqrt(len(v))) for k, v in rows.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="data set size N")
    p.add_argument("--s2", type=float, default=0.05, help="posterior variance")
    p.add_argument("--samples", type=int, default=20000, help="Monte Carlo samples for the true TC")
    p.add_argument("--batches", type=int, default=40, help="minibatches per batch size")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256, 1024])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    mu, logvar = make_dataset(a.n, a.s2, g)
    tc, se = true_tc(mu, logvar, a.samples, g)
    print(f"N={a.n}, D=3, s2={a.s2}: full-data TC = {tc:.3f} ± {se:.3f} (MC, K=N components)")
    print(f"(D-1)·log N = {2 * math.log(a.n):.2f}\n")
    print("| batch | MSS | MWS | MWS − (D−1)·log N | MSS, column fill |")
    print("|---|---|---|---|---|")
    for b in a.sizes:
        r = batch_estimates(mu, logvar, b, a.batches, g)
        mss, mws, col = r["mss"], r["mws"], r["mss (column fill)"]
        print(
            f"| {b} | {mss[0]:.3f} ± {mss[1]:.3f} | {mws[0]:.2f} ± {mws[1]:.2f} | {mws[0] - 2 * math.log(a.n):.2f} "
            f"| {col[0]:.3f} ± {col[1]:.3f} |"
        )


if __name__ == "__main__":
    main()
