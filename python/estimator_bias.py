"""How the minibatch TC estimators behave against the full-data TC (K = N components).

A synthetic data set of N encoder posteriors q(z|x_n) = N(mu_n, s2·I) with correlated means
(so the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) has a clear total correlation). The true
TC = E_q(z)[log q(z) - Σ_d log q(z_d)] is estimated by Monte Carlo with all N components
(estimator="uniform"); then the average minibatch estimate of MSS, MWS, and MSS with the
authors' column-fill weights is printed per batch size.

Second table (``--regime``): the estimator's regime. For each posterior variance s2 (sharper
posteriors to the right of the data's unit spread) and batch size, the full-data TC, the mean MSS
estimate, its bias, and the mean self share (:func:`tcvae_kernels.self_share`: the share of each
q(z_i) estimate its own component carries) — the diagnostic the losses report and warn on.

    python python/estimator_bias.py [--n 2000] [--batches 40] [--regime]
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


def regime_table(n, variances, sizes, samples, batches, generator):
    """Rows (s2, batch, full TC, its se, MSS mean, MSS se, mean self share) on one data set of means."""
    base, _ = make_dataset(n, 1.0, generator)
    rows = []
    for s2 in variances:
        mu, logvar = base, torch.full_like(base, math.log(s2))
        tc, tc_se = true_tc(mu, logvar, samples, generator)
        for b in sizes:
            est, share = [], []
            for _ in range(batches):
                pick = torch.randperm(n, generator=generator)[:b]
                m, lv = mu[pick], logvar[pick]
                z = m + torch.exp(0.5 * lv) * torch.randn(m.shape, generator=generator, dtype=m.dtype)
                est.append(tk.total_correlation(z, m, lv, dataset_size=n).item())
                share.append(tk.self_share(z, m, lv, dataset_size=n).mean().item())
            t = torch.tensor(est)
            rows.append((s2, b, tc, tc_se, t.mean().item(), t.std().item() / math.sqrt(batches),
                         sum(share) / len(share)))
    return rows


def warns(share: float, batch: int, n: int) -> bool:
    """The losses' warning rule (tcvae_kernels.loss: SELF_SHARE_WARNING, SMALL_BATCH_FRACTION)."""
    from tcvae_kernels import loss

    return share > loss.SELF_SHARE_WARNING and batch < loss.SMALL_BATCH_FRACTION * n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="data set size N")
    p.add_argument("--s2", type=float, default=0.05, help="posterior variance")
    p.add_argument("--samples", type=int, default=20000, help="Monte Carlo samples for the true TC")
    p.add_argument("--batches", type=int, default=40, help="minibatches per batch size")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256, 1024])
    p.add_argument("--regime-sizes", type=int, nargs="+", default=[32, 128, 512, 1024])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regime", action="store_true", help="also the regime table (bias and self share)")
    p.add_argument("--variances", type=float, nargs="+", default=[0.3, 0.1, 0.03, 0.01, 0.003, 0.0003])
    p.add_argument("--regime-n", type=int, nargs="+", default=[2000, 20000], help="data set sizes of the regime table")
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
    if a.regime:
        print(f"\nRegime (D=3, MSS, {a.batches} batches per cell; bias = MSS mean - full-data TC; warns: the "
              "losses' rule)\n")
        print("| N | posterior variance | batch | full-data TC | MSS estimate | bias / TC | mean self share | warns |")
        print("|---|---|---|---|---|---|---|---|")
        for n in a.regime_n:
            for s2, b, tc, tc_se, mss, mss_se, share in regime_table(n, a.variances, a.regime_sizes, a.samples, a.batches, g):
                print(f"| {n} | {s2:g} | {b} | {tc:.3f} ± {tc_se:.3f} | {mss:.3f} ± {mss_se:.3f} | {(mss - tc) / tc:+.2f} "
                      f"| {share:.3f} | {'yes' if warns(share, b, n) else ''} |")

if __name__ == "__main__":
    main()
