"""Minimal use of tcvae_kernels: the β-TCVAE penalty of a batch, its decomposition, and a
backward pass, on the fastest backend for the inputs' device.

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

    # What an encoder would output for a batch: posterior means and log-variances, and a sample.
    mu = torch.randn(a.batch, a.dim, device=a.device, requires_grad=True)
    logvar = (-2 + torch.rand(a.batch, a.dim, device=a.device)).requires_grad_()
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterised sample

    loss_fn = tk.BetaTCVAELoss(dataset_size=a.dataset_size, beta=6.0, backend=a.backend)
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


if __name__ == "__main__":
    main()
