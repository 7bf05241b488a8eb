"""Chen et al. (2018), Figure 5-style comparison on the shapes data: β-VAE against β-TCVAE over
β ∈ {1, 2, 4, 6, 8, 10}, several seeds, at the paper's settings — meant for a GPU.

    python python/reproduce_chen2018.py [--betas 1 2 4 6 8 10] [--seeds 0 1 2] [--out python/out/chen2018]
    python python/reproduce_chen2018.py --smoke          # a few steps on the CPU (what CI runs)

Settings (Chen et al. 2018, dSprites experiments): the full data (N = 737,280 images of 64×64,
tcvae_kernels.data.Shapes), batch 2048, Adam 1e-3, an MLP encoder 4096 → 1200 → 1200 → 2·10 and
decoder 10 → 1200 → 1200 → 1200 → 4096 (ReLU here), Bernoulli likelihood, MSS with dataset_size = N
for β-TCVAE (α = γ = 1), 50 epochs (18,000 steps) by default. Each run (model, β, seed) writes its
checkpoint (every ``--save-every`` steps; ``weights_only`` loading) and, when finished, its result;
a rerun skips finished runs and resumes unfinished ones, so the sweep can be spread over several
sessions. At the end: ``table.md`` (mean ± sd over seeds of MIG, reconstruction and data-set TC),
``mig_vs_beta.png`` and ``recon_vs_beta.png``.

Status: **not yet run on a GPU** (no GPU machine has been lent to this project). The smoke
configuration is tested in CI on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tcvae_kernels as tk  # noqa: E402
from tcvae_kernels import data as tkdata  # noqa: E402
from tcvae_kernels import metrics  # noqa: E402
from tcvae_kernels.progress import progress  # noqa: E402


class PaperVAE(nn.Module):
    """Chen et al.'s dSprites MLPs (widths 1200), diagonal Gaussian encoder, Bernoulli decoder."""

    def __init__(self, pixels: int, latent_dim: int = 10, width: int = 1200):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, width), nn.Tanh(), nn.Linear(width, pixels))

    def encode(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


def run_one(model_name: str, beta: float, seed: int, shapes, a, out_dir: str) -> dict:
    """Train (or resume) one run and evaluate it; the result is cached in out_dir."""
    tag = f"{model_name}_beta{beta:g}_seed{seed}"
    res_path, ck_path = os.path.join(out_dir, f"{tag}.json"), os.path.join(out_dir, f"{tag}.pt")
    if os.path.exists(res_path):
        return json.load(open(res_path))
    n = len(shapes) if a.train_size is None else a.train_size
    index = None if a.train_size is None else np.sort(np.random.default_rng(1234).choice(len(shapes), n, replace=False))
    side = shapes.image_size
    torch.manual_seed(seed)
    model = PaperVAE(side * side, a.latent_dim, a.width).to(a.device)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = (tk.BetaTCVAELoss(dataset_size=n, beta=beta) if model_name == "beta-TCVAE"
               else tk.BetaVAELoss(beta=beta))
    step, rng = 0, np.random.default_rng(seed)
    if os.path.exists(ck_path):
        ck = torch.load(ck_path, map_location=a.device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        rng = np.random.default_rng([seed, step])
    resumed_from = step
    t0 = time.perf_counter()
    bar = progress(total=a.steps, initial=step, desc=tag, unit="step")
    while step < a.steps:
        if index is None:
            x = shapes.sample_observations_from_factors(shapes.sample_factors(a.batch, rng))
        else:
            x = shapes.images(index[rng.integers(0, n, a.batch)])
        x = torch.from_numpy(x).to(a.device)
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy_with_logits(model.dec(z).view_as(x), x, reduction="sum") / x.shape[0]
        loss = recon + loss_fn(z, mu, logvar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % a.save_every == 0 or step == a.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ck_path)
    bar.close()
    model.eval()
    ev_index = tkdata.grid_subset(shapes, a.eval_strides)
    mus, lvs, recon_sum = [], [], 0.0
    with torch.no_grad():
        for s in range(0, len(ev_index), 4096):
            x = torch.from_numpy(shapes.images(ev_index[s : s + 4096])).to(a.device)
            mu, lv = model.encode(x)
            recon_sum += F.binary_cross_entropy_with_logits(model.dec(mu).view_as(x), x, reduction="sum").item()
            mus.append(mu.double().cpu())
            lvs.append(lv.double().cpu())
    mu, lv = torch.cat(mus), torch.cat(lvs)
    factors = shapes.index_to_factors(ev_index)
    mig = metrics.mig_from_posteriors(mu, lv, factors, shapes.factor_sizes, samples=a.eval_samples,
                                      generator=torch.Generator().manual_seed(seed))
    full = tk.dataset_estimates.full_decomposition(mu, lv, samples=a.eval_samples,
                                                   generator=torch.Generator().manual_seed(seed))
    res = {"model": model_name, "beta": beta, "seed": seed, "steps": step, "resumed_from": resumed_from, "mig": mig["mig"],
           "mig_chen2018": float(np.mean(mig["per_factor"][1:])),  # the paper's average: shape left out
           "mig_histogram": metrics.mig_histogram_from_codes(mu.numpy(), factors)["mig"],
           "recon": recon_sum / len(ev_index),
           "dataset_tc": full.tc.value, "active": int((mu.var(0) > 0.01).sum()),
           "train_seconds": time.perf_counter() - t0, "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu"}
    json.dump(res, open(res_path, "w"), indent=1)
    return res


def summarize(results: list[dict], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| model | β | seeds | MIG (sampling) | MIG without shape (the paper's) | MIG (histogram) | recon (nats) | "
             "data-set TC | active |", "|---|---|---|---|---|---|---|---|---|"]
    agg = {}
    for r in results:
        agg.setdefault((r["model"], r["beta"]), []).append(r)
    for (name, beta), rs in sorted(agg.items()):
        cell = lambda k: f"{np.mean([r[k] for r in rs]):.3f} ± {np.std([r[k] for r in rs]):.3f}"  # noqa: E731
        lines.append(f"| {name} | {beta:g} | {len(rs)} | {cell('mig')} | {cell('mig_chen2018')} | "
                     f"{cell('mig_histogram')} | {cell('recon')} | "
                     f"{cell('dataset_tc')} | {cell('active')} |")
    text = "\n".join(lines)
    open(os.path.join(out_dir, "table.md"), "w").write(text + "\n")
    for key, fname, label in (("mig", "mig_vs_beta.png", "MIG (sampling)"), ("recon", "recon_vs_beta.png",
                                                                             "reconstruction (nats)")):
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for name in sorted({k[0] for k in agg}):
            betas = sorted(b for (m, b) in agg if m == name)
            mean = [np.mean([r[key] for r in agg[(name, b)]]) for b in betas]
            sd = [np.std([r[key] for r in agg[(name, b)]]) for b in betas]
            ax.errorbar(betas, mean, yerr=sd, marker="o", capsize=3, label=name)
        ax.set_xlabel("β")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=90)
        plt.close(fig)
    return text


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["beta-VAE", "beta-TCVAE"], choices=["beta-VAE", "beta-TCVAE"])
    p.add_argument("--betas", type=float, nargs="+", default=[1, 2, 4, 6, 8, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=18000, help="50 epochs of the full data at batch 2048")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train-size", type=int, default=None, help="a fixed subset instead of the full data")
    p.add_argument("--eval-strides", type=int, nargs=5, default=[1, 1, 2, 2, 2])
    p.add_argument("--eval-samples", type=int, default=10000)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="python/out/chen2018")
    p.add_argument("--smoke", action="store_true", help="tiny settings for a CPU check (CI)")
    a = p.parse_args(argv)
    if a.smoke:
        a.betas, a.seeds, a.steps, a.batch, a.width = [1.0, 6.0], [0], 3, 64, 64
        a.image_size, a.train_size, a.eval_strides, a.eval_samples, a.save_every = 32, 2048, [1, 2, 8, 8, 8], 256, 2
    os.makedirs(a.out, exist_ok=True)
    shapes = tkdata.Shapes(a.image_size)
    results = [run_one(m, b, s, shapes, a, a.out) for m in a.models for b in a.betas for s in a.seeds]
    text = summarize(results, a.out)
    print(text)
    print(f"wrote {a.out}/table.md, mig_vs_beta.png, recon_vs_beta.png")
    return text


if __name__ == "__main__":
    main()
