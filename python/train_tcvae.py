"""Train a small convolutional β-TCVAE (or β-VAE, FactorVAE, HFVAE) on the built-in shapes data,
then evaluate it.

    python python/train_tcvae.py [--loss betatcvae] [--beta 6] [--steps 2000] [--out DIR] [--device cuda]
                                 [--family normal|laplace] [--prior normal|laplace|flow] [--bank 16384]

Data: the procedurally rendered dSprites grid (tcvae_kernels.data.Shapes, N = 737,280 images,
rendered on the fly; batches drawn uniformly, so dataset_size = N). Loss: Bernoulli
reconstruction + the penalty of ``--loss``: ``betatcvae`` (BetaTCVAELoss, α = γ = 1, MSS, the
fastest backend), ``betavae`` (BetaVAELoss), ``factorvae`` (FactorVAELoss with γ = --beta and its
discriminator trained on a second batch each step), ``hfvae`` (HFVAELoss over ``--groups``).
``--family laplace`` (betatcvae, hfvae): Laplace posteriors, the encoder's second head a log-scale
(the authors' ``-dist laplace``); ``--prior``: p(z) of the dimension-wise KL, standard Normal,
standard Laplace, or ``flow``, a learned factorial flow (python/flow_prior.py) trained with the model.
``--bank N`` (betatcvae, hfvae): q(z) estimated from the batch's posteriors and the N most recent
ones before it (``bank_size=N``, docs/estimators.md "A component bank"); saved with the checkpoint.
Every ``--steps-per-epoch`` steps: the mean minibatch MI / TC / dim-KL of the epoch is logged and a
checkpoint written (``--resume`` continues from it). At the end: MIG (sampling estimator, on a
sub-grid of the data), the FactorVAE score, and three pictures in ``--out``: latent traversals,
the MI/TC/dim-KL curves, and the factor × latent mutual-information matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import tcvae_kernels as tk
from tcvae_kernels import data as tkdata
from tcvae_kernels import metrics
from tcvae_kernels.progress import progress


class ConvVAE(nn.Module):
    """64×64×1 → D-dim diagonal Gaussian posterior; Bernoulli decoder (logits)."""

    def __init__(self, latent_dim: int = 10, width: int = 32, family: str = "normal"):
        super().__init__()
        self.family = family
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), nn.ReLU(),  # 32
            nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(),  # 16
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(),  # 8
            nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(),  # 4
            nn.Flatten(), nn.Linear(2 * w * 16, 256), nn.ReLU(), nn.Linear(256, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 2 * w * 16), nn.ReLU(),
            nn.Unflatten(1, (2 * w, 4, 4)),
            nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, 2, 1),
        )
        self.latent_dim = latent_dim

    def encode(self, x):
        """(mu, logvar) — the log-scale b in place of logvar for the Laplace family."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0) if self.family == "normal" else logvar.clamp(-6.0, 4.0)

    def forward(self, x):
        mu, logvar = self.encode(x)
        if self.family == "laplace":
            z = torch.distributions.Laplace(mu, logvar.exp()).rsample()
        else:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), z, mu, logvar


def terms(last) -> tuple[float, float, float]:
    """(MI, TC, dim-KL) of a loss's last call for logging; NaN where a loss has no such term
    (β-VAE: the KL goes in the dim-KL slot; FactorVAE: the discriminator's TC; HFVAE: TC = between + within)."""
    nan = float("nan")
    if isinstance(last, tk.GroupedDecomposition):
        return last.mi.item(), (last.tc_between + last.tc_within).item(), last.dim_kl.item()
    if isinstance(last, tk.Decomposition):
        return last.mi.item(), last.tc.item(), last.dim_kl.item()
    if hasattr(last, "tc"):
        return nan, last.tc.item(), last.kl.item()
    return nan, nan, last.kl.item()


@torch.no_grad()
def encode_all(model, data, index, device, batch=512):
    mus, lvs = [], []
    for s in range(0, len(index), batch):
        x = torch.from_numpy(data.images(index[s : s + batch])).to(device)
        mu, lv = model.encode(x)
        mus.append(mu.double().cpu())
        lvs.append(lv.double().cpu())
    return torch.cat(mus), torch.cat(lvs)


@torch.no_grad()
def save_pictures(model, history, mig_result, data, out, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # latent traversals around the posterior mean of one image, dims sorted by their KL
    base = torch.from_numpy(data.images(data.factors_to_index(np.array([[2, 5, 0, 16, 16]])))).to(device)
    mu, logvar = model.encode(base)
    vals = torch.linspace(-2.5, 2.5, 9, device=device)
    rows = []
    for d in range(model.latent_dim):
        z = mu.repeat(len(vals), 1)
        z[:, d] = vals
        rows.append(torch.sigmoid(model.decoder(z)).cpu()[:, 0])
    fig, axes = plt.subplots(model.latent_dim, len(vals), figsize=(len(vals) * 0.8, model.latent_dim * 0.8))
    for d in range(model.latent_dim):
        for c in range(len(vals)):
            axes[d, c].imshow(rows[d][c].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[d, c].set_xticks([])
            axes[d, c].set_yticks([])
        axes[d, 0].set_ylabel(f"z{d}", fontsize=7)
    fig.suptitle("latent traversals (−2.5 … 2.5)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "traversals.png"), dpi=70)
    plt.close(fig)

    # MI / TC / dim-KL per epoch
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in ("mi", "tc", "dim_kl"):
        ax.plot(ep, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats (minibatch MSS estimate)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "decomposition.png"), dpi=80)
    plt.close(fig)

    # factor × latent mutual information
    mi = mig_result["mi"]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    im = ax.imshow(mi, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(data.factor_names)), data.factor_names, fontsize=8)
    ax.set_xticks(range(mi.shape[1]), [f"z{d}" for d in range(mi.shape[1])], fontsize=8)
    ax.set_title(f"I(z_d; v_k) [nats], MIG = {mig_result['mig']:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "mutual_information.png"), dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", default="betatcvae", choices=["betavae", "betatcvae", "factorvae", "hfvae"])
    p.add_argument("--beta", type=float, default=6.0, help="β (γ for factorvae, between-group β for hfvae)")
    p.add_argument("--beta-within", type=float, default=1.0, help="hfvae: weight of the within-group TC")
    p.add_argument("--groups", type=int, nargs="+", default=None, help="hfvae: group sizes (default: pairs)")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--steps-per-epoch", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--estimator", default="mss", choices=tk.ESTIMATORS)
    p.add_argument("--family", default="normal", choices=["normal", "laplace"],
                   help="posterior family (betatcvae, hfvae); laplace: the encoder gives a log-scale")
    p.add_argument("--prior", default="normal", choices=["normal", "laplace", "flow"],
                   help="p(z) of the dimension-wise KL (betatcvae, hfvae); flow: learned (python/flow_prior.py)")
    p.add_argument("--bank", type=int, default=0, metavar="N",
                   help="betatcvae/hfvae: a ComponentBank of the N most recent posteriors (bank_size=N; 0: off)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-strides", type=int, nargs=5, default=[1, 1, 4, 4, 4],
                   help="MIG on every n-th value of (shape, scale, orientation, x, y); 1 1 1 1 1 = all 737,280")
    p.add_argument("--mig-samples", type=int, default=2000)
    p.add_argument("--factor-vae-train", type=int, default=1000, help="votes (literature: 10000)")
    p.add_argument("--factor-vae-eval", type=int, default=500, help="votes (literature: 5000)")
    p.add_argument("--out", default="python/out/train_tcvae")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-eval", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    data = tkdata.Shapes()
    n = len(data)
    device = torch.device(a.device)
    if a.loss not in ("betatcvae", "hfvae") and (a.family, a.prior) != ("normal", "normal"):
        p.error(f"--family/--prior apply to --loss betatcvae and hfvae ({a.loss} has the analytic Normal KL)")
    if a.bank and a.loss not in ("betatcvae", "hfvae"):
        p.error(f"--bank applies to --loss betatcvae and hfvae ({a.loss} estimates no q(z))")
    model = ConvVAE(a.latent_dim, family=a.family).to(device)
    d_opt = None
    prior = a.prior
    if prior == "flow":
        import importlib.util

        spec = importlib.util.spec_from_file_location("flow_prior", os.path.join(os.path.dirname(__file__), "flow_prior.py"))
        flow = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(flow)
        prior = flow.FactorialFlowPrior(a.latent_dim).to(device)
    if a.loss == "betatcvae":
        loss_fn = tk.BetaTCVAELoss(dataset_size=n, beta=a.beta, estimator=a.estimator, backend=a.backend,
                                   warmup_steps=a.warmup_steps, family=a.family, prior=prior, bank_size=a.bank)
    elif a.loss == "hfvae":
        groups = a.groups or [2] * (a.latent_dim // 2) + [1] * (a.latent_dim % 2)
        loss_fn = tk.HFVAELoss(dataset_size=n, groups=groups, beta=a.beta, beta_within=a.beta_within,
                               estimator=a.estimator, backend=a.backend, warmup_steps=a.warmup_steps,
                               family=a.family, prior=prior, bank_size=a.bank)
    elif a.loss == "betavae":
        loss_fn = tk.BetaVAELoss(beta=a.beta, warmup_steps=a.warmup_steps)
    else:
        loss_fn = tk.FactorVAELoss(gamma=a.beta, latent_dim=a.latent_dim).to(device)
        d_opt = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    # a learned prior (--prior flow) is a submodule of the loss: trained with the model
    opt = torch.optim.Adam([*model.parameters(), *(loss_fn.parameters() if a.prior == "flow" else ())], lr=a.lr)
    ckpt_path = os.path.join(a.out, "checkpoint.pt")
    history, step = [], 0
    if a.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)  # tensors and plain containers only
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        loss_fn.load_state_dict(ck["loss"])
        if d_opt is not None:
            d_opt.load_state_dict(ck["d_opt"])
        history, step = ck["history"], ck["step"]
        rng = np.random.default_rng(a.seed + step)
        print(f"resumed from step {step}")
    print(f"{a.loss} β={a.beta} on shapes (N={n}), batch {a.batch_size}, {a.steps} steps, device {device}, "
          f"backend {a.backend}, {a.family} posteriors, {a.prior} prior" + (f", bank {a.bank}" if a.bank else ""))
    model.train()
    sums, count = np.zeros(4), 0
    bar = progress(total=a.steps, initial=step, desc="train", unit="step")
    while step < a.steps:
        f = data.sample_factors(a.batch_size, rng)
        x = torch.from_numpy(data.sample_observations_from_factors(f)).to(device)
        logits, z, mu, logvar = model(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        penalty = loss_fn(z, mu, logvar)
        loss = recon + penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if d_opt is not None:  # FactorVAE: train the discriminator on this batch and a second one
            x2 = torch.from_numpy(data.sample_observations_from_factors(data.sample_factors(a.batch_size, rng)))
            with torch.no_grad():
                _, z2, _, _ = model(x2.to(device))
            d_loss = loss_fn.discriminator_loss(z.detach(), z2)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        step += 1
        sums += np.array([recon.item(), *terms(loss_fn.last)])
        count += 1
        bar.set_postfix(loss=f"{loss.item():.1f}", recon=f"{recon.item():.1f}", tc=f"{terms(loss_fn.last)[1]:.2f}",
                        refresh=False)
        bar.update(1)
        if step % a.steps_per_epoch == 0 or step == a.steps:
            r, mi, tc, dkl = (float(v) for v in sums / count)  # plain floats: the checkpoint loads weights_only
            history.append({"epoch": len(history) + 1, "step": step, "recon": r, "mi": mi, "tc": tc, "dim_kl": dkl})
            bar.write(f"epoch {len(history)} (step {step}): recon {r:.2f}  MI {mi:.3f}  TC {tc:.3f}  dim-KL {dkl:.3f}")
            sums, count = np.zeros(4), 0
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "loss": loss_fn.state_dict(),
                        "d_opt": d_opt.state_dict() if d_opt is not None else None,
                        "history": history, "step": step, "args": vars(a)}, ckpt_path)
    bar.close()
    result = {"loss": a.loss, "beta": a.beta, "bank": a.bank, "steps": step, "history": history}
    if not a.no_eval:
        model.eval()
        t0 = time.perf_counter()
        index = tkdata.grid_subset(data, a.eval_strides)
        mu_all, lv_all = encode_all(model, data, index, device)
        mig_result = metrics.mig_from_posteriors(mu_all, lv_all, data.index_to_factors(index), data.factor_sizes,
                                                 samples=a.mig_samples, generator=torch.Generator().manual_seed(a.seed),
                                                 progress=True, family=a.family)
        full = tk.dataset_estimates.decomposition_from_samples(
            *tk.dataset_estimates.sample_posteriors(mu_all, lv_all, a.mig_samples,
                                                    torch.Generator().manual_seed(a.seed + 1), family=a.family),
            mu_all, lv_all, progress=True, family=a.family, prior=loss_fn.prior if hasattr(loss_fn, "prior") else "normal")

        def represent(x):
            with torch.no_grad():
                return model.encode(torch.from_numpy(x).to(device))[0].cpu().numpy()

        fvae = metrics.factor_vae_score(represent, data, np.random.default_rng(a.seed + 2),
                                        num_train=a.factor_vae_train, num_eval=a.factor_vae_eval, progress=True)
        save_pictures(model, history, mig_result, data, a.out, device)
        result.update(
            mig=mig_result["mig"], mig_per_factor=dict(zip(data.factor_names, mig_result["per_factor"].tolist())),
            factor_vae=fvae["eval_accuracy"], eval_points=int(len(index)),
            dataset_mi=full.mi.value, dataset_tc=full.tc.value, dataset_dim_kl=full.dim_kl.value,
            eval_seconds=time.perf_counter() - t0,
        )
        print(f"MIG {result['mig']:.3f} (per factor {', '.join(f'{k} {v:.2f}' for k, v in result['mig_per_factor'].items())})")
        print(f"FactorVAE score {result['factor_vae']:.3f}; data-set TC {full.tc.value:.3f} ± {full.tc.stderr:.3f}")
        print(f"pictures: {os.path.abspath(a.out)}/traversals.png, decomposition.png, mutual_information.png")
    with open(os.path.join(a.out, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
