"""Minimal use of tcvae_kernels: the β-TCVAE penalty of a batch, its decomposition, and a
backward pass, on the fastest backend for the inputs' device; then the same estimate with a
component bank filled by earlier batches (what fixes a minibatch estimate that rests on each
sample's own posterior: the "self share" printed).

    python python/quickstart.py [--batch 1024] [--dim 10] [--backend auto]
"""

import argparse
import time

import torch

import tcvae_kernels as tk


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--dataset-size", type=int, default=60000)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()

    def batch():  # what an encoder would output: posterior means and log-variances, and a sample
        mu = torch.randn(a.batch, a.dim, device=a.device, requires_grad=True)
        logvar = (-2 + torch.rand(a.batch, a.dim, device=a.device)).requires_grad_()
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu), mu, logvar  # reparameterised z

    z, mu, logvar = batch()
    # warn_regime=False: this script prints the regime itself (the warning says the same, at length)
    loss_fn = tk.BetaTCVAELoss(dataset_size=a.dataset_size, beta=6.0, backend=a.backend, warn_regime=False)
    t0 = time.perf_counter()
    penalty = loss_fn(z, mu, logvar)  # add this to your reconstruction loss
    penalty.backward()
    if a.device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"available backends: {tk.available_backends()}")
    print(f"batch {a.batch}×{a.dim} on {a.device}: penalty = {penalty.item():.4f} "
          f"(forward + backward {dt * 1e3:.1f} ms, first call)")
    print(f"  MI = {loss_fn.last.mi.item():.4f}, TC = {loss_fn.last.tc.item():.4f}, "
          f"dim-KL = {loss_fn.last.dim_kl.item():.4f}")
    print(f"  |grad mu| = {mu.grad.norm().item():.4f}, |grad logvar| = {logvar.grad.norm().item():.4f}")
    share = loss_fn.last.self_share.item()
    print(f"  self share {share:.2f}: " + (
        "each log q(z_i) rests mostly on its own posterior, so this minibatch TC is unreliable (it can "
        "be negative; a TC is >= 0)" if share > tk.loss.SELF_SHARE_WARNING else "a reliable regime"))

    # The same estimate with a component bank: each training call pushes its batch, later calls
    # read the bank as extra components (docs/estimators.md, "A component bank").
    bank_size = min(16 * a.batch, a.dataset_size // 4)
    banked = tk.BetaTCVAELoss(dataset_size=a.dataset_size, beta=6.0, backend=a.backend, bank_size=bank_size,
                              warn_regime=False)
    for _ in range(bank_size // a.batch):
        banked(*batch())
    banked.eval()  # estimate without pushing
    banked(*batch())
    print(f"with a bank of {len(banked.bank)} earlier posteriors: TC = {banked.last.tc.item():.4f}, "
          f"self share {banked.last.self_share.item():.2f}")


if __name__ == "__main__":
    main()
