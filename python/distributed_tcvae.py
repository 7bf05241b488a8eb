"""Data-parallel β-TCVAE with the global-batch estimator, on CPUs (Gloo) or GPUs (NCCL).

    .venv/bin/torchrun --nproc_per_node=2 python/distributed_tcvae.py [--steps 200] [--batch 128]

Each rank trains on its own shard of a synthetic data set (x = A·v + noise, 4 independent
factors v, 16-dim x) with a small MLP VAE wrapped in DistributedDataParallel. The loss is
``BetaTCVAELoss(..., process_group=WORLD)``: log q(z) of every rank's queries is estimated against
the components of the *global* batch (world × --batch), gathered differentiably each step
(2·M_global·D floats), instead of the rank's own batch. Rank 0 prints the global-batch TC
(averaged over ranks) next to what a rank's own batch alone would estimate.
"""

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import tcvae_kernels as tk


class MLPVAE(nn.Module):
    def __init__(self, x_dim=16, z_dim=4, hidden=64):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), z, mu, logvar


def train(a, device):
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same mixing matrix and initial weights on every rank
    mix = torch.randn(4, 16)
    model = DDP(MLPVAE().to(device), device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = tk.BetaTCVAELoss(dataset_size=a.dataset_size, beta=a.beta, process_group=dist.group.WORLD)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard of the data stream
    for step in range(1, a.steps + 1):
        v = torch.randn(a.batch, 4, generator=gen)
        x = (v @ mix + 0.1 * torch.randn(a.batch, 16, generator=gen)).to(device)
        x_hat, z, mu, logvar = model(x)
        recon = ((x_hat - x) ** 2).sum(1).mean()
        loss = recon + loss_fn(z, mu, logvar)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients: the global-batch objective
        opt.step()
        if step % 50 == 0 or step == a.steps:
            tc = loss_fn.last.tc.clone()
            dist.all_reduce(tc)
            with torch.no_grad():
                local = tk.total_correlation(z, mu, logvar, dataset_size=a.dataset_size)
            if rank == 0:
                print(f"step {step}: recon {recon.item():.3f}  TC (global batch of {world * a.batch}) "
                      f"{tc.item() / world:.3f}  TC (rank 0's batch of {a.batch} alone) {local.item():.3f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=128, help="per-rank batch")
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--dataset-size", type=int, default=60000)
    a = p.parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu")
    train(a, device)
    # Everything that holds the process group (DDP, the loss) is gone with train()'s frame; collect
    # their reference cycles too, so no ProcessGroup outlives destroy_process_group: one destroyed
    # during interpreter shutdown can abort the process (Gloo's worker threads).
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
