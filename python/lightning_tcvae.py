"""β-TCVAE in PyTorch Lightning, with the global-batch estimator under Lightning's DDP strategy.

    python python/lightning_tcvae.py [--steps 300] [--devices 1] [--accelerator cpu] [--out DIR]
    python python/lightning_tcvae.py --devices 2 --accelerator cpu      # two Gloo processes (DDP)
    python python/lightning_tcvae.py --devices 4 --accelerator gpu      # four GPUs (NCCL)

A LightningModule with a small MLP VAE on the built-in shapes data (tcvae_kernels.data.Shapes,
N = 737,280 images of 64×64, each rank drawing its own batches) and ``BetaTCVAELoss``. With more
than one device, ``setup`` hands the loss Lightning's process group (``process_group=WORLD``), so
every rank estimates log q(z) against the components of the *global* batch (devices × --batch);
DDP averages the gradients, so the step is that of the single-process loss on the global batch.
MI, TC and dim-KL are logged every step (``self.log``, averaged over ranks) to a CSV file in --out.
"""

from __future__ import annotations

import argparse
import gc
import os

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

import tcvae_kernels as tk
from tcvae_kernels import data as tkdata


class ShapesStream(IterableDataset):
    """Endless batches of uniformly drawn shapes images [B, 1, 64, 64], a seed per rank."""

    def __init__(self, batch: int, seed: int):
        self.batch, self.seed, self.shapes = batch, seed, tkdata.Shapes()

    def __iter__(self):
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = np.random.default_rng(self.seed + 1000 * rank)
        while True:
            f = self.shapes.sample_factors(self.batch, rng)
            yield torch.from_numpy(self.shapes.sample_observations_from_factors(f))


class LitBetaTCVAE(pl.LightningModule):
    """An MLP VAE (4096 → 512 → 2·D; Bernoulli decoder) trained with recon + BetaTCVAELoss."""

    def __init__(self, dataset_size: int, latent_dim: int = 10, beta: float = 6.0, lr: float = 1e-3,
                 bank_size: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 512), nn.ReLU(), nn.Linear(512, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, 512), nn.ReLU(), nn.Linear(512, 64 * 64))
        # bank_size > 0: q(z) from the batch and the bank_size most recent posteriors (in the checkpoint
        # with the loss's state; under DDP every rank pushes the global batch, so the banks agree)
        self.loss_fn = tk.BetaTCVAELoss(dataset_size=dataset_size, beta=beta, bank_size=bank_size)

    def setup(self, stage: str) -> None:
        # Under DDP, estimate q(z) from the global batch: the loss gathers (mu, logvar) of every rank.
        if self.trainer.world_size > 1 and dist.is_initialized():
            self.loss_fn.options = self.loss_fn.options.replace(process_group=dist.group.WORLD)
            if self.trainer.global_rank == 0:
                print(f"q(z) estimated from the global batch of {self.trainer.world_size} ranks", flush=True)

    def training_step(self, x, batch_idx):
        x = x.squeeze(0) if x.dim() == 5 else x  # the DataLoader adds a batch axis of 1 to each batch
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.dec(z).view_as(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        loss = recon + self.loss_fn(z, mu, logvar)
        last = self.loss_fn.last
        self.log_dict({"recon": recon.detach(), "mi": last.mi, "tc": last.tc, "dim_kl": last.dim_kl},
                      on_step=True, sync_dist=self.trainer.world_size > 1)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128, help="per device")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--bank", type=int, default=0, help="bank_size of the loss (0: no component bank)")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="python/out/lightning_tcvae")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    pl.seed_everything(a.seed, verbose=False)
    model = LitBetaTCVAE(dataset_size=len(tkdata.Shapes()), latent_dim=a.latent_dim, beta=a.beta,
                          bank_size=a.bank)
    loader = DataLoader(ShapesStream(a.batch, a.seed), batch_size=None)
    trainer = pl.Trainer(
        max_steps=a.steps, accelerator=a.accelerator, devices=a.devices,
        strategy="ddp" if a.devices > 1 else "auto", logger=pl.loggers.CSVLogger(a.out, name="tcvae"),
        log_every_n_steps=1, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=os.isatty(1),
    )
    trainer.fit(model, loader)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.global_rank == 0:
        print(f"after {trainer.global_step} steps on {trainer.world_size} device(s): "
              + "  ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items())))
        print(f"metrics per step: {trainer.logger.log_dir}/metrics.csv")
        if model.loss_fn.bank is not None:
            print(f"component bank: {len(model.loss_fn.bank)} of {model.loss_fn.bank.size} filled")
    # shut down as the README's distributed section says: release what holds the group first
    del trainer, model
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
