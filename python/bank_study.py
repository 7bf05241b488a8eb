"""What a component bank (tcvae_kernels.ComponentBank, ``bank_size=``) buys, measured; the tables of
docs/estimators.md ("A component bank") and bench/RESULTS.md are this script's output.

(a) bias: synthetic posteriors (N = 50,000, D = 8: five active latents with AR(1)-correlated means,
    ρ = 0.9, three inactive), batches of M = 256, MSS; the batch's TC and MI estimates with K = M +
    len(bank) components (bank: other data points) against the exact mixture over all N components
    on the same queries ("uniform"), for two posterior widths σ. Mean over ``--batches`` batches.
(b) staleness, in training: the demo's data (32×32 shapes, N = 16,384) and model (MLP, D = 10),
    β-TCVAE β = 6, batch 256 drawn without replacement per epoch (DataLoader(shuffle=True)), Adam
    1e-3, β ramped over the first 20 % of the steps. At checkpoints, on the batch about to be
    trained on: TC and MI estimated without the bank, with the loss's bank as it is (stale: pushed
    by earlier encoders) and with the same data points re-encoded by the current encoder (fresh),
    beside the data-set value (tk.dataset_estimates, all N posteriors); the bank's mean age in steps.
(c) effect: β-TCVAE with and without the bank at the same β, ``--seeds`` seeds: data-set TC,
    reconstruction (nats per image), active latents at the end.
(d) cost: one training step with and without the bank, timed side by side (alternating); the
    penalty alone (forward + backward) fused against the materialized formula at the same K, with
    the materialized formula's peak memory.

    python python/bank_study.py [--parts a b c d] [--steps 1400] [--seeds 0 1 2] [--bank 4096] [--out bench/bank_study]
    python python/bank_study.py --render bench/bank_study.json   # the tables of a saved run

~19 minutes on 2 cores (bench/bank_study.md: the committed run). The staleness of a bank spanning
64 steps (16,384 = N / 4 at N = 65,536, batch 256; bench/bank_study_span.md, ~2 minutes):

    python python/bank_study.py --parts b --bank 16384 --train-size 65536 --out bench/bank_study_span
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tcvae_kernels as tk  # noqa: E402
from tcvae_kernels import data as tkdata  # noqa: E402
from tcvae_kernels.reference import log_qz_x_and_log_pz  # noqa: E402
from tcvae_kernels.tools.benchmark import materialized_log_qz, reset_peak_rss, rss_bytes  # noqa: E402


# ----------------------------------------------------------------------------- (a) bias


def correlated_posteriors(n: int, sigma: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """N Normal posteriors (mu [N, 8], logvar [N, 8], float64) in D = 8: five active latents whose
    means follow an AR(1) chain with ρ = 0.9 (corr(d, d') = 0.9^|d-d'|) and posterior std ``sigma``,
    three inactive ones (mean 0, variance 1: the prior). The data of the component bank's bias table
    (this script, docs/estimators.md) and of its test (tests/estimates/test_bank.py)."""
    active, d = 5, 8
    idx = torch.arange(active, dtype=torch.float64)
    corr = 0.9 ** (idx[:, None] - idx[None]).abs()
    mu = torch.zeros(n, d, dtype=torch.float64)
    mu[:, :active] = torch.randn(n, active, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(corr).T
    lv = torch.zeros(n, d, dtype=torch.float64)
    lv[:, :active] = 2 * math.log(sigma)
    return mu, lv


def _mi_tc(z, mu, lv, lqz, lqzd):
    lqzx, _ = log_qz_x_and_log_pz(z, mu, lv)
    return (lqzx - lqz).mean().item(), (lqz - lqzd.sum(1)).mean().item()


def bias_table(n=50_000, m=256, ks=(256, 1024, 4096, 16384), sigmas=(0.05, 0.2), batches=8, seed=0):
    rows = []
    for sigma in sigmas:
        g = torch.Generator().manual_seed(seed)
        mu, lv = (t.float() for t in correlated_posteriors(n, sigma, g))
        acc = collections.defaultdict(list)
        for _ in range(batches):
            perm = torch.randperm(n, generator=g)
            b = perm[:m]
            z = mu[b] + torch.exp(0.5 * lv[b]) * torch.randn(m, mu.shape[1], generator=g)
            t = time.perf_counter()
            exact = _mi_tc(z, mu[b], lv[b], *tk.log_qz(z, mu, lv, estimator="uniform"))
            acc["exact_ms"].append(1e3 * (time.perf_counter() - t))
            acc["exact"].append(exact)
            for k in ks:
                bank = None
                if k > m:
                    bank = tk.ComponentBank(k - m)
                    bank.push(mu[perm[m:k]], lv[perm[m:k]])  # other data points, as a bank holds
                t = time.perf_counter()
                est = _mi_tc(z, mu[b], lv[b], *tk.log_qz(z, mu[b], lv[b], dataset_size=n, bank=bank))
                acc[f"ms{k}"].append(1e3 * (time.perf_counter() - t))
                acc[k].append(est)
        mi_x, tc_x = (statistics.mean(v[i] for v in acc["exact"]) for i in (0, 1))
        rows.append({"sigma": sigma, "K": "exact (N)", "tc": tc_x, "mi": mi_x, "ms": statistics.median(acc["exact_ms"])})
        for k in ks:
            mi_k, tc_k = (statistics.mean(v[i] for v in acc[k]) for i in (0, 1))
            rows.append({"sigma": sigma, "K": k, "tc": tc_k, "mi": mi_k, "tc_bias": tc_k - tc_x, "mi_bias": mi_k - mi_x,
                         "tc_bias_rel": (tc_k - tc_x) / abs(tc_x), "ms": statistics.median(acc[f"ms{k}"])})
    return rows


# ----------------------------------------------------------------------------- (b), (c) training


def load_data(size=32, n=16384):
    """The demo's training subset: N = 16,384 shapes images (the same points for every seed)."""
    shapes = tkdata.Shapes(size)
    index = np.sort(np.random.default_rng(1234).choice(len(shapes), size=n, replace=False))
    return torch.from_numpy(shapes.images(index).astype(np.uint8)).view(n, 1, size, size)


def epoch_batches(n, m, generator):
    """Endless batches of indices, a fresh permutation per epoch, the last partial batch dropped."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n - m + 1, m):
            yield perm[s:s + m]


@torch.no_grad()
def encode_all(model, images, batch=4096):
    out = [model.encode(images[s:s + batch].float()) for s in range(0, images.shape[0], batch)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


@torch.no_grad()
def checkpoint(model, images, idx, loss_fn, recent, n, gen):
    """(b): estimates on the batch ``idx`` about to be trained on."""
    mu, lv = model.encode(images[idx].float())
    z = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=gen)
    row = {}
    opts = dict(dataset_size=n)
    row["mi_batch"], row["tc_batch"] = _mi_tc(z, mu, lv, *tk.log_qz(z, mu, lv, **opts))
    bank = loss_fn.bank
    if bank is not None and len(bank):
        row["mi_stale"], row["tc_stale"] = _mi_tc(z, mu, lv, *tk.log_qz(z, mu, lv, bank=bank, **opts))
        fresh = tk.ComponentBank(bank.size)
        fmu, flv = model.encode(images[torch.cat(list(recent))[-bank.size:]].float())
        fresh.push(fmu, flv)
        row["mi_fresh"], row["tc_fresh"] = _mi_tc(z, mu, lv, *tk.log_qz(z, mu, lv, bank=fresh, **opts))
        row["bank_age"] = bank.ages().double().mean().item()
    mu_all, lv_all = encode_all(model, images)
    full = tk.dataset_estimates.full_decomposition(mu_all, lv_all, samples=2048, generator=torch.Generator().manual_seed(7))
    row["mi_dataset"], row["tc_dataset"] = full.mi.value, full.tc.value
    return row


def train(images, seed, bank_size, steps, batch=256, checkpoints=0, beta=6.0):
    import demo  # python/demo.py: the demo's model

    n = images.shape[0]
    torch.manual_seed(seed)
    model = demo.MLPVAE(images[0].numel(), 10, 512)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = tk.BetaTCVAELoss(dataset_size=n, beta=beta, warmup_steps=int(0.2 * steps), bank_size=bank_size,
                               warn_regime=False)
    batches = epoch_batches(n, batch, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 100)
    recent = collections.deque(maxlen=max(1, math.ceil(bank_size / batch)))  # the bank's data points
    every = steps // checkpoints if checkpoints else 0
    rows, times = [], []
    idx = next(batches)
    for step in range(1, steps + 1):
        if every and (step == 1 or step % every == 0):
            rows.append({"step": step, **checkpoint(model, images, idx, loss_fn, recent, n, gen)})
        t = time.perf_counter()
        step_once(model, opt, loss_fn, images[idx])
        times.append(time.perf_counter() - t)
        recent.append(idx)
        idx = next(batches)
    return model, loss_fn, rows, times


def step_once(model, opt, loss_fn, x):
    x = x.float()
    mu, lv = model.encode(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * lv)
    recon = F.binary_cross_entropy_with_logits(model.decode(z, x.shape[1:]), x, reduction="sum") / x.shape[0]
    loss = recon + loss_fn(z, mu, lv)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@torch.no_grad()
def final_scores(model, images, seed):
    mu, lv = encode_all(model, images)
    full = tk.dataset_estimates.full_decomposition(mu, lv, samples=4096, generator=torch.Generator().manual_seed(seed + 1))
    sub = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(4321))[:4096]
    x = images[sub].float()
    m, v = model.encode(x)
    z = m + torch.exp(0.5 * v) * torch.randn(m.shape, generator=torch.Generator().manual_seed(seed + 2))
    recon = F.binary_cross_entropy_with_logits(model.decode(z, x.shape[1:]), x, reduction="sum").item() / x.shape[0]
    return {"dataset_tc": full.tc.value, "dataset_tc_se": full.tc.stderr, "dataset_mi": full.mi.value,
            "recon": recon, "active": int((mu.var(0) > 0.01).sum())}


# ----------------------------------------------------------------------------- (d) cost


def step_timing(images, bank_size, reps=40, batch=256):
    """Median seconds of one training step without and with the bank (full bank), alternating."""
    import demo

    n = images.shape[0]
    setups = {}
    for b in (0, bank_size):
        torch.manual_seed(0)
        model = demo.MLPVAE(images[0].numel(), 10, 512)
        loss_fn = tk.BetaTCVAELoss(dataset_size=n, bank_size=b, warn_regime=False)
        if b:
            mu, lv = encode_all(model, images[:b])
            loss_fn.bank.push(mu, lv)
        setups[b] = (model, torch.optim.Adam(model.parameters(), lr=1e-4), loss_fn)
    gen = torch.Generator().manual_seed(1)
    times = {b: [] for b in setups}
    for r in range(reps + 2):
        x = images[torch.randperm(n, generator=gen)[:batch]]
        for b, (model, opt, loss_fn) in setups.items():
            t = time.perf_counter()
            step_once(model, opt, loss_fn, x)
            if r >= 2:
                times[b].append(time.perf_counter() - t)
    return {b: statistics.median(v) for b, v in times.items()}


def penalty_cost(m=256, ks=(256, 4352, 16384), d=10, n=50_000, reps=5):
    """The penalty alone (TC, forward + backward): fused with the bank against the materialized
    [M, K, D] formula on the concatenated components; the latter's peak memory (RSS rise)."""
    from tcvae_kernels.estimators import log_weights, weight_matrix

    g = torch.Generator().manual_seed(0)
    rows = []
    for k in ks:
        mu = torch.randn(k, d, generator=g)
        lv = -1 + 0.5 * torch.rand(k, d, generator=g)
        z = mu[:m] + torch.exp(0.5 * lv[:m]) * torch.randn(m, d, generator=g)
        bank = None
        if k > m:
            bank = tk.ComponentBank(k - m)
            bank.push(mu[m:], lv[m:])
        log_w = weight_matrix(log_weights("mss", k, n), m, k, dtype=torch.float32)

        def fused():
            leaves = [t.clone().requires_grad_() for t in (z, mu[:m], lv[:m])]
            torch.autograd.grad(tk.total_correlation(*leaves, dataset_size=n, bank=bank), leaves)

        def dense():
            leaves = [t.clone().requires_grad_() for t in (z, mu[:m], lv[:m])]
            q, qd = materialized_log_qz(leaves[0], torch.cat([leaves[1], mu[m:]]), torch.cat([leaves[2], lv[m:]]), log_w)
            torch.autograd.grad((q - qd.sum(1)).mean(), leaves)

        row = {"M": m, "K": k, "D": d}
        for key, fn in (("fused", fused), ("materialized", dense)):
            fn()
            base = rss_bytes("VmRSS")
            reset_peak_rss()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            row[f"{key}_ms"] = 1e3 * statistics.median(ts)
            row[f"{key}_peak_mib"] = max(0, rss_bytes("VmHWM") - base) / 2**20
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output


def markdown(res) -> str:
    out = []
    if "bias" in res:
        out += ["(a) Bias of the batch estimate (M = 256, MSS) against the exact mixture (K = N = 50,000), "
                f"mean of {res['meta']['batches']} batches; ms: one log_qz call, {res['meta']['threads']} threads", "",
                "| σ | components K | TC | TC bias | MI bias | ms |", "|---|---|---|---|---|---|"]
        for r in res["bias"]:
            if r["K"] == "exact (N)":
                out.append(f"| {r['sigma']} | exact, K = N | {r['tc']:.2f} | – | – | {r['ms']:.0f} |")
            else:
                out.append(f"| {r['sigma']} | {r['K']:,} | {r['tc']:.2f} | {r['tc_bias']:+.2f} ({100 * r['tc_bias_rel']:+.0f} %) "
                           f"| {r['mi_bias']:+.2f} | {r['ms']:.1f} |")
        out.append("")
    if "staleness" in res:
        out += [f"(b) Training (seed {res['meta']['seeds'][0]}, bank {res['meta']['bank']:,}): estimates on the next "
                "batch vs the data-set value", "",
                "| step | bank age (steps) | TC data set | TC batch | TC stale bank | TC fresh bank | MI data set | MI batch | "
                "MI stale bank | MI fresh bank |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["staleness"]:
            g = lambda k: f"{r[k]:.2f}" if k in r else "–"  # noqa: E731
            age = f"{r['bank_age']:.1f}" if "bank_age" in r else "–"
            out.append(f"| {r['step']} | {age} | {g('tc_dataset')} | {g('tc_batch')} | {g('tc_stale')} | {g('tc_fresh')} | "
                       f"{g('mi_dataset')} | {g('mi_batch')} | {g('mi_stale')} | {g('mi_fresh')} |")
        out.append("")
    if "effect" in res:
        out += [f"(c) β-TCVAE β = 6, {res['meta']['steps']} steps, batch 256: without and with a bank of "
                f"{res['meta']['bank']:,}", "",
                "| bank | seed | data-set TC | data-set MI | recon (nats) | active latents |",
                "|---|---|---|---|---|---|"]
        for r in res["effect"]:
            out.append(f"| {r['bank']:,} | {r['seed']} | {r['dataset_tc']:.2f} ± {r['dataset_tc_se']:.2f} | "
                       f"{r['dataset_mi']:.2f} | {r['recon']:.1f} | {r['active']} |")
        for b in sorted({r["bank"] for r in res["effect"]}):
            sel = [r for r in res["effect"] if r["bank"] == b]
            out.append(f"| {b:,} | mean | {statistics.mean(r['dataset_tc'] for r in sel):.2f} | "
                       f"{statistics.mean(r['dataset_mi'] for r in sel):.2f} | {statistics.mean(r['recon'] for r in sel):.1f} | "
                       f"{statistics.mean(r['active'] for r in sel):.1f} |")
        out.append("")
    if "cost" in res:
        c = res["cost"]
        st = c["step_s"]
        out += [f"(d) Cost, {res['meta']['threads']} threads. Training step (demo model, batch 256), medians "
                "side by side: " + ", ".join(f"bank {int(b):,}: {1e3 * s:.1f} ms" for b, s in st.items())
                + f" ({max(st.values()) / min(st.values()):.2f}x)", "",
                "| M | K | fused ms | fused peak MiB | materialized ms | materialized peak MiB |", "|---|---|---|---|---|---|"]
        for r in c["penalty"]:
            mib = [("< 1" if v < 1 else f"{v:.0f}") for v in (r["fused_peak_mib"], r["materialized_peak_mib"])]
            out.append(f"| {r['M']} | {r['K']:,} | {r['fused_ms']:.1f} | {mib[0]} | {r['materialized_ms']:.1f} | {mib[1]} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bank", type=int, default=4096, help="the bank of (b)-(d)")
    p.add_argument("--checkpoints", type=int, default=7)
    p.add_argument("--batches", type=int, default=8, help="(a): batches per cell")
    p.add_argument("--bias-n", type=int, default=50_000)
    p.add_argument("--bias-ks", type=int, nargs="+", default=[256, 1024, 4096, 16384], help="(a): components K")
    p.add_argument("--timing-reps", type=int, default=40, help="(d): timed training steps per setup")
    p.add_argument("--cost-ks", type=int, nargs="+", default=[256, 4352, 16384], help="(d): components K")
    p.add_argument("--train-size", type=int, default=16384)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench/bank_study")
    p.add_argument("--render", metavar="JSON", help="only print the tables of an earlier run's JSON")
    a = p.parse_args(argv)
    if a.render:
        with open(a.render) as fh:
            print(markdown(json.load(fh)))
        return {}
    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"meta": {"threads": torch.get_num_threads(), "steps": a.steps, "seeds": a.seeds, "bank": a.bank,
                    "batches": a.batches, "torch": torch.__version__}}
    t0 = time.perf_counter()
    if "a" in a.parts:
        res["bias"] = bias_table(n=a.bias_n, ks=tuple(a.bias_ks), batches=a.batches)
        print(markdown({"meta": res["meta"], "bias": res["bias"]}), flush=True)
    if {"b", "c", "d"} & set(a.parts):
        images = load_data(n=a.train_size)
    if {"b", "c"} & set(a.parts):
        res["effect"] = []
        for seed in a.seeds if "c" in a.parts else a.seeds[:1]:
            for bank in (0, a.bank):
                ck = a.checkpoints if ("b" in a.parts and seed == a.seeds[0] and bank) else 0
                model, _, rows, times = train(images, seed, bank, a.steps, checkpoints=ck)
                if ck:
                    res["staleness"] = rows
                    print(markdown({"meta": res["meta"], "staleness": rows}), flush=True)
                row = {"seed": seed, "bank": bank, **final_scores(model, images, seed), "step_s": statistics.median(times)}
                res["effect"].append(row)
                print(f"seed {seed} bank {bank}: {row}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    if "d" in a.parts:
        res["cost"] = {"step_s": step_timing(images, a.bank, reps=a.timing_reps), "penalty": penalty_cost(ks=tuple(a.cost_ks))}
    res["meta"]["seconds"] = time.perf_counter() - t0
    text = markdown(res)
    print(text)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    with open(a.out + ".md", "w") as fh:
        fh.write(text + "\n")
    print(f"bank study: {res['meta']['seconds']:.0f} s; wrote {a.out}.json and {a.out}.md")
    return res


if __name__ == "__main__":
    main()
