"""The main job (``make demo``): what β-TCVAE is for, measured. Three models with the same
architecture, data and budget — β-TCVAE (β = 6, the fused loss, MSS), β-VAE (β = 6) and a VAE
(β = 1) — trained on a fixed subset of the shapes data, then compared on what the paper claims:
at the same β the total-correlation penalty removes dependence between the latents (the data-set
TC, estimated with all N components) while keeping the reconstruction and the code (active
latents) that β-VAE's whole-KL penalty gives up.

    python python/demo.py [--seeds 0] [--steps 1400] [--out python/out/demo] [--device cpu] [--precision fp32]

Recipe (chosen so that three models train in <= 10 minutes on the slowest supported machine, 2 CPU
cores with AVX2 and no native bfloat16, with a margin for the ±30% that a shared virtual machine's
speed varies; fixed steps, so the numbers do not depend on the speed of the machine; see the README):
32×32 renders of the dSprites grid (tcvae_kernels.data.Shapes(32)), a fixed training subset of
N = 16,384 images (every seed trains on the same points; dataset_size = N, so the batch of 1,024 is
6% of the data and the MSS estimator sees a meaningful share of it), an MLP encoder and decoder
(1024 → 512 → 512 → 2·10 and back, ReLU, Bernoulli likelihood), Adam 1e-3, the penalty weight
ramped linearly from 0 over the first 20% of the steps (without the ramp the β = 6 models sit
collapsed for hundreds of steps), 1,400 steps, float32. ``--precision auto`` runs the four wide
layers in bfloat16 where the hardware has it natively (the posterior heads stay float32; faster
there, with other numbers).
Reported per model: reconstruction (nats per image), the data-set TC
(``tcvae_kernels.dataset_estimates``: 4,096 samples against all N posteriors), active latents (posterior
means whose variance over the data exceeds 0.01), the sampling MIG (Chen et al.) and the histogram
MIG (disentanglement_lib's, 20 bins) on the training subset, and the FactorVAE score (1,000 / 500
votes). The last line printed starts with ``result:``; the line before it, ``targets:``, counts the
seeds that meet each of the README's targets.
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

MODELS = {  # name -> (loss, beta)
    "beta-TCVAE": ("betatcvae", 6.0),
    "beta-VAE": ("betavae", 6.0),
    "VAE": ("betavae", 1.0),
}


class MLPVAE(nn.Module):
    """[B, 1, S, S] → diagonal Gaussian posterior over D latents; Bernoulli decoder (logits).

    ``mixed=True``: the four wide layers (pixels→H, H→H in the encoder; H→H, H→pixels in the decoder: 98% of the FLOPs) run in
    bfloat16 under autocast; the heads that produce (mu, logvar) and read z stay float32, so the
    posterior the TC estimator sees has float32 resolution (bfloat16 resolves 2^-8 of |mu|, coarser
    than a posterior std of e^-6)."""

    def __init__(self, pixels: int, latent_dim: int = 10, hidden: int = 512, mixed: bool = False):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU())
        self.enc_head = nn.Linear(hidden, 2 * latent_dim)
        self.dec_head = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU())
        self.dec = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, pixels))
        self.latent_dim, self.mixed = latent_dim, mixed

    def _wide(self, layers, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.mixed):
            return layers(x).float()

    def encode(self, x):
        mu, logvar = self.enc_head(self._wide(self.enc, x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z, shape):
        return self._wide(self.dec, self.dec_head(z)).view(z.shape[0], *shape)


def mixed_precision(precision: str, device: str) -> bool:
    """``auto``: bfloat16 for the wide layers where the hardware computes it natively (CUDA; a CPU
    with AVX512-BF16 or AMX, where it is ~3x float32's matmul rate), float32 elsewhere."""
    if precision != "auto":
        return precision == "bf16"
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def family_of(name: str, a) -> str:
    """The posterior family of a model: ``--family`` for the β-TCVAE models; "normal" for the
    β-VAE baselines (their analytic KL is the Normal's)."""
    return a.family if MODELS[name][0] == "betatcvae" else "normal"


def sample_z(mu, log_param, family: str, generator=None):
    """z ~ q(z|x): N(mu, e^logvar), or Laplace(mu, e^b) with ``log_param`` the log-scale b."""
    if family == "laplace":
        u = torch.rand((2, *mu.shape), generator=generator).to(mu.device)
        return mu + torch.exp(log_param) * (torch.log1p(-u[1]) - torch.log1p(-u[0]))
    return mu + torch.randn(mu.shape, generator=generator).to(mu.device) * torch.exp(0.5 * log_param)


def make_loss(kind: str, beta: float, n: int, warmup: int, family: str = "normal", prior: str = "normal"):
    if kind == "betatcvae":
        return tk.BetaTCVAELoss(dataset_size=n, beta=beta, warmup_steps=warmup, family=family, prior=prior)
    return tk.BetaVAELoss(beta=beta, warmup_steps=warmup)


def train(name: str, images: torch.Tensor, a, seed: int) -> tuple[nn.Module, dict]:
    kind, beta = MODELS[name]
    n = images.shape[0]
    fam = family_of(name, a)
    torch.manual_seed(seed)
    model = MLPVAE(images[0].numel(), a.latent_dim, a.hidden, a.mixed).to(a.device)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = make_loss(kind, beta, n, int(a.warmup * a.steps), fam, a.prior)
    gen = torch.Generator().manual_seed(seed)
    # the other models' minibatch MI / TC / dim-KL and self share, for the curves (logging only)
    monitor = loss_fn if kind == "betatcvae" else tk.BetaTCVAELoss(dataset_size=n, warn_regime=False)
    history, sums, count = [], np.zeros(5), 0
    t0 = time.perf_counter()
    for step in progress(range(1, a.steps + 1), desc=f"{name} seed {seed}", unit="step"):
        x = images[torch.randint(0, n, (a.batch,), generator=gen)].to(a.device).float()
        mu, logvar = model.encode(x)  # logvar: the log-scale for --family laplace
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if fam == "normal" else sample_z(mu, logvar, fam)
        recon = F.binary_cross_entropy_with_logits(model.decode(z, x.shape[1:]), x, reduction="sum") / x.shape[0]
        loss = recon + loss_fn(z, mu, logvar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if monitor is not loss_fn:
            with torch.no_grad():
                monitor(z, mu, logvar)
        tc = monitor.last
        sums += np.array([recon.item(), tc.mi.item(), tc.tc.item(), tc.dim_kl.item(), tc.self_share.item()])
        count += 1
        if step % a.log_every == 0 or step == a.steps:
            r, mi, tcv, dkl, share = (float(v) for v in sums / count)
            history.append({"step": step, "recon": r, "mi": mi, "tc": tcv, "dim_kl": dkl, "self_share": share})
            sums, count = np.zeros(5), 0
    return model, {"history": history, "train_seconds": time.perf_counter() - t0}


@torch.no_grad()
def encode(model, images, device, batch=4096):
    mus, lvs = [], []
    for s in range(0, images.shape[0], batch):
        mu, lv = model.encode(images[s : s + batch].to(device).float())
        mus.append(mu.double().cpu())
        lvs.append(lv.double().cpu())
    return torch.cat(mus), torch.cat(lvs)


@torch.no_grad()
def evaluate(model, images, factors, shapes, a, seed, family: str = "normal") -> dict:
    """Data-set TC and MI with every training image's posterior as a component; reconstruction,
    active latents and both MIGs on a fixed random subset of ``--eval-size`` training images."""
    mu_all, lv_all = encode(model, images, a.device)
    gen = torch.Generator().manual_seed(seed + 1)
    full = tk.dataset_estimates.full_decomposition(mu_all, lv_all, samples=a.eval_samples, generator=gen,
                                                   family=family, prior=a.prior if family == a.family else "normal")
    sub = np.sort(np.random.default_rng(4321).choice(len(images), size=min(a.eval_size, len(images)), replace=False))
    mu, lv, images, factors = mu_all[sub], lv_all[sub], images[sub], factors[sub]
    recon = 0.0
    for s in range(0, images.shape[0], 4096):  # -E log p(x | z), z sampled from the posterior, as trained
        x = images[s : s + 4096].to(a.device).float()
        m, v = model.encode(x)
        z = sample_z(m, v, family, gen)
        recon += F.binary_cross_entropy_with_logits(model.decode(z, x.shape[1:]), x, reduction="sum").item()
    active = int((mu.var(0) > 0.01).sum())
    mig_s = metrics.mig_from_posteriors(mu, lv, factors, shapes.factor_sizes, samples=a.eval_samples,
                                        generator=torch.Generator().manual_seed(seed + 2), family=family)
    mig_h = metrics.mig_histogram_from_codes(mu.numpy(), factors)

    def represent(x):
        return model.encode(torch.from_numpy(x).to(a.device))[0].cpu().numpy()

    fvae = metrics.factor_vae_score(represent, shapes, np.random.default_rng(seed + 3), num_train=a.fvae_train,
                                    num_eval=a.fvae_eval)
    return {"recon": recon / images.shape[0], "dataset_tc": full.tc.value, "dataset_tc_se": full.tc.stderr,
            "dataset_mi": full.mi.value, "active": active, "mig_sampling": mig_s["mig"],
            "mig_histogram": mig_h["mig"], "factor_vae": fvae["eval_accuracy"], "mi_matrix": mig_s["mi"].tolist()}


def loss_timing(n: int, batch: int, d: int, device, reps: int = 5) -> dict:
    """Seconds per step of the β-TCVAE penalty (forward + backward) at the demo's batch: the fused
    backend against the materialized [B, B, D] formula of public code."""
    from tcvae_kernels.tools.benchmark import dense_mss_log_weights, materialized_log_qz

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(batch, d, generator=g).to(device)
    lv = (0.1 * torch.randn(batch, d, generator=g)).to(device)
    z = mu + torch.exp(0.5 * lv) * torch.randn(batch, d, generator=g).to(device)
    log_w = dense_mss_log_weights(batch, n, torch.float32, device)

    def fused():
        leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        tk.total_correlation(*leaves, dataset_size=n).backward()

    def dense():
        leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
        q, qd = materialized_log_qz(*leaves, log_w)
        (q - qd.sum(1)).mean().backward()

    out = {}
    for key, fn in (("fused", fused), ("materialized", dense)):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out[key] = float(np.median(ts))
    out["backend"] = tk.dispatch.select_backend("auto", z, mu, lv).name
    return out


def pictures(models: dict, images, shapes, a, out: str, seed: int, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    side = images.shape[-1]
    # traversals: one image, each latent (sorted by variance of its mean) from -2.5 to 2.5
    base = torch.from_numpy(shapes.images(shapes.factors_to_index(np.array([[2, 5, 0, 16, 16]])))).to(a.device)
    vals = torch.linspace(-2.5, 2.5, 7, device=a.device)
    cols = len(names) * (len(vals) + 1) - 1  # an empty column between the models
    fig, grid = plt.subplots(a.latent_dim, cols, figsize=(cols * 0.62 + 0.8, a.latent_dim * 0.62 + 1.1),
                             gridspec_kw=dict(width_ratios=([1] * len(vals) + [0.35]) * (len(names) - 1) + [1] * len(vals)))
    for r in range(a.latent_dim):
        for c in range(1, len(names)):
            grid[r, c * (len(vals) + 1) - 1].axis("off")
    axes = np.stack([np.concatenate([grid[r, c * (len(vals) + 1):c * (len(vals) + 1) + len(vals)]
                                     for c in range(len(names))]) for r in range(a.latent_dim)])
    for c, name in enumerate(names):
        model = models[name]
        with torch.no_grad():
            pick = np.random.default_rng(0).choice(len(images), min(4096, len(images)), replace=False)
            mu_all, _ = encode(model, images[pick], a.device)
            order = torch.argsort(mu_all.var(0), descending=True)
            mu, _ = model.encode(base)
            for r, d in enumerate(order.tolist()):
                zz = mu.repeat(len(vals), 1)
                zz[:, d] = vals
                imgs = torch.sigmoid(model.decode(zz, (1, side, side))).cpu()[:, 0]
                for k in range(len(vals)):
                    ax = axes[r, c * len(vals) + k]
                    ax.imshow(imgs[k].numpy(), cmap="gray", vmin=0, vmax=1)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if k == 0:
                        ax.set_ylabel(f"z{d}", fontsize=9, rotation=0, ha="right", va="center")
                    if r == a.latent_dim - 1:
                        ax.set_xlabel(f"{vals[k].item():+.1f}", fontsize=8)
        axes[0, c * len(vals) + len(vals) // 2].set_title(name, fontsize=11)
    fig.suptitle("Traversals: one image's code, each latent (rows, most varied first) set from -2.5 to +2.5",
                 fontsize=10)
    fig.tight_layout(pad=0.3)
    paths = [os.path.join(out, "traversals.png")]
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    # factor x latent mutual information
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.0))
    for ax, name in zip(axes, names):
        res = results[name]
        im = ax.imshow(np.array(res["mi_matrix"]), cmap="viridis", aspect="auto", vmin=0)
        ax.set_yticks(range(len(shapes.factor_names)), shapes.factor_names, fontsize=9)
        ax.set_xticks(range(a.latent_dim), [f"z{d}" for d in range(a.latent_dim)], fontsize=8)
        ax.set_xlabel("latent", fontsize=9)
        ax.set_title(f"{name}\nMIG {res['mig_sampling']:.2f} (sampling), {res['mig_histogram']:.2f} (histogram)",
                     fontsize=10)
        fig.colorbar(im, ax=ax).set_label("I(factor; latent) (nats)", fontsize=9)
    fig.suptitle("Mutual information of each ground-truth factor with each latent (MIG: the gap between a "
                 "factor's two most informative latents, normalised, averaged)", fontsize=10)
    fig.tight_layout()
    paths.append(os.path.join(out, "mutual_information.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    # MI / TC / dim-KL during training (minibatch MSS estimates) and the estimator's self share
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    titles = {"mi": ("index-code MI", "nats"), "tc": ("total correlation", "nats"),
              "dim_kl": ("dimension-wise KL", "nats"), "self_share": ("self share", "share of q(z_i), 0-1")}
    for ax, key in zip(axes, titles):
        for name in names:
            h = results[name]["history"]
            ax.plot([e["step"] for e in h], [e[key] for e in h], label=name)
        ax.set_title(titles[key][0], fontsize=10)
        ax.set_ylabel(titles[key][1], fontsize=9)
        ax.set_xlabel("training step", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Minibatch (MSS) estimates during training", fontsize=10, y=0.99)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.93),
               ncol=len(names), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.84), w_pad=2.0)
    paths.append(os.path.join(out, "decomposition.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def target_checks(all_results: dict) -> list[str] | None:
    """The demo's targets (README), counted over the seeds run; ``None`` unless all three models ran.
    Per seed: β-TCVAE data-set TC ≤ VAE's / 3; β-TCVAE reconstruction below β-VAE's; ≥ 3 active
    latents for β-TCVAE and the VAE. The histogram-MIG target (β-TCVAE ≥ β-VAE) is met when it holds
    on the mean over the seeds and in at least two thirds of them (2 of 3)."""
    runs = [r for r in all_results.values() if all(name in r for name in MODELS)]
    if not runs:
        return None
    k = len(runs)

    def count(pred):
        return sum(bool(pred(r["beta-TCVAE"], r["beta-VAE"], r["VAE"])) for r in runs)

    lines = [f"{what}: {n}/{k} seeds ({'met' if n == k else 'NOT met'})" for what, n in (
        ("β-TCVAE data-set TC ≤ VAE's / 3", count(lambda tc, b, v: tc["dataset_tc"] <= v["dataset_tc"] / 3)),
        ("β-TCVAE reconstruction better than β-VAE's", count(lambda tc, b, v: tc["recon"] < b["recon"])),
        ("≥ 3 active latents (β-TCVAE and VAE)", count(lambda tc, b, v: tc["active"] >= 3 and v["active"] >= 3)),
    )]
    mig_tc, mig_b = (sum(r[name]["mig_histogram"] for r in runs) / k for name in ("beta-TCVAE", "beta-VAE"))
    mig_seeds = count(lambda tc, b, v: tc["mig_histogram"] >= b["mig_histogram"])
    met = mig_tc >= mig_b and 3 * mig_seeds >= 2 * k
    lines.append(f"β-TCVAE histogram MIG ≥ β-VAE's: {mig_seeds}/{k} seeds, mean {mig_tc:.3f} against {mig_b:.3f} "
                 f"({'met' if met else 'NOT met'})")
    return lines


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--train-size", type=int, default=16384,
                   help="a fixed random subset of this many images (0: all 737,280)")
    p.add_argument("--eval-size", type=int, default=65536, help="images for reconstruction, active latents and MIG")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.2, help="share of the steps over which the penalty ramps up")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=4096)
    p.add_argument("--fvae-train", type=int, default=1000)
    p.add_argument("--fvae-eval", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="fp32",
                   help="of the wide layers (auto: bf16 where the hardware has it natively; fp32: the "
                        "same numbers on every machine kind)")
    p.add_argument("--out", default="python/out/demo")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--family", choices=("normal", "laplace"), default="normal",
                   help="posterior family of the β-TCVAE models (the β-VAE baselines stay Normal)")
    p.add_argument("--prior", choices=("normal", "laplace"), default="normal", help="p(z) of the β-TCVAE models")
    a = p.parse_args(argv)
    a.mixed = mixed_precision(a.precision, a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    shapes = tkdata.Shapes(a.image_size)
    rng = np.random.default_rng(1234)  # the training subset is the same for every seed
    n = a.train_size or len(shapes)
    index = np.sort(rng.choice(len(shapes), size=n, replace=False)) if a.train_size else np.arange(n)
    t0 = time.perf_counter()
    images = torch.empty((n, 1, a.image_size, a.image_size), dtype=torch.uint8)  # {0, 1}: 1 byte per pixel
    for s in progress(range(0, n, 16384), desc="rendering the shapes", unit="chunk"):
        images[s : s + 16384] = torch.from_numpy(shapes.images(index[s : s + 16384]).astype(np.uint8))
    factors = shapes.index_to_factors(index)
    print(f"demo: {', '.join(a.models)} on {n} shapes images of {a.image_size}x{a.image_size} (N = {n}, rendered "
          f"in {time.perf_counter() - t0:.0f} s), batch {a.batch}, {a.steps} steps each, seeds {a.seeds}, "
          f"device {a.device}, wide layers in {'bfloat16' if a.mixed else 'float32'}")
    all_results = {}
    for seed in a.seeds:
        results, models = {}, {}
        for name in a.models:
            model, info = train(name, images, a, seed)
            res = evaluate(model, images, factors, shapes, a, seed, family_of(name, a))
            res.update(info)
            results[name], models[name] = res, model
            print(f"  {name:10s} seed {seed}: recon {res['recon']:.1f}  data-set TC {res['dataset_tc']:.2f}  "
                  f"active {res['active']}  MIG {res['mig_sampling']:.3f} (sampling) {res['mig_histogram']:.3f} "
                  f"(histogram)  FactorVAE {res['factor_vae']:.3f}  minibatch self share "
                  f"{res['history'][-1]['self_share']:.2f}  [{res['train_seconds']:.0f} s]", flush=True)
        all_results[seed] = results
        if not a.no_pictures and seed == a.seeds[0] and len(models) == len(MODELS):
            paths = pictures(models, images, shapes, a, a.out, seed, results)
            print("  pictures: " + ", ".join(os.path.abspath(q) for q in paths))
    timing = loss_timing(n, a.batch, a.latent_dim, a.device)
    print(f"the β-TCVAE penalty at batch {a.batch}, D = {a.latent_dim}, forward + backward: "
          f"{timing['fused'] * 1e3:.1f} ms with the fused '{timing['backend']}' backend, "
          f"{timing['materialized'] * 1e3:.1f} ms with the materialized [B, B, D] formula of public code "
          f"({timing['materialized'] / timing['fused']:.1f}x)")
    with open(os.path.join(a.out, "result.json"), "w") as fh:
        json.dump({"args": vars(a), "results": all_results, "loss_timing": timing}, fh, indent=1)

    def mean(name, key):
        vals = [all_results[s][name][key] for s in a.seeds if name in all_results[s]]
        return sum(vals) / len(vals) if vals else math.nan

    parts = []
    for name in a.models:
        parts.append(f"{name} recon {mean(name, 'recon'):.1f} TC {mean(name, 'dataset_tc'):.2f} "
                     f"active {mean(name, 'active'):.1f} MIG {mean(name, 'mig_sampling'):.3f}/"
                     f"{mean(name, 'mig_histogram'):.3f} FactorVAE {mean(name, 'factor_vae'):.3f}")
    checks = target_checks(all_results)
    if checks:
        print("targets: " + "; ".join(checks))
    minutes = sum(r["train_seconds"] for res in all_results.values() for r in res.values()) / 60 / len(a.seeds)
    print(f"result: ({len(a.seeds)} seed{'s' if len(a.seeds) > 1 else ''}, {minutes:.1f} min of training per seed, "
          "MIG sampling/histogram) " + "; ".join(parts))
    return all_results


if __name__ == "__main__":
    main()
