"""Laplace against Normal posteriors on the CPU: forward + backward of log_qz (the training step's
op) with the fused kernel and with torch.compile of the materialized formula, side by side in one
process, rounds alternating between the methods; medians.

    python bench/bench_laplace.py [--sizes 1024 2048] [--dims 10 32] [--rounds 15]

Prints a markdown table (bench/RESULTS.md, "Laplace posteriors"): per (M = K, D) the fused kernel's
median for each family, their ratio (the issue's target: Laplace within 1.2x of Normal), and
torch.compile's median for each family as a multiple of the fused kernel's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tcvae_kernels as tk
from tcvae_kernels.reference import log_density
from tcvae_kernels.testing import random_inputs
from tcvae_kernels.tools.benchmark import dense_mss_log_weights

FAMILIES = ("normal", "laplace")


def materialized(family):
    def fn(z, mu, lv, log_w):  # [M, K, D] log densities, then logsumexps: the public code's formula
        l = log_density(z[:, None, :], mu[None], lv[None], family)
        return torch.logsumexp(l.sum(2) + log_w, dim=1), torch.logsumexp(l + log_w[:, :, None], dim=1)

    return fn


def step(fn, z, mu, lv, ups):
    leaves = [t.detach().requires_grad_() for t in (z, mu, lv)]
    q, qd = fn(*leaves)
    torch.autograd.backward([q, qd], ups)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--dims", type=int, nargs="+", default=[10, 32])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    rows = []
    for m in a.sizes:
        for d in a.dims:
            n = 100 * m
            log_w = dense_mss_log_weights(m, n, torch.float32, "cpu")
            methods, inputs = {}, {}
            for fam in FAMILIES:
                inputs[fam] = random_inputs(m, m, d, dtype=torch.float32, family=fam,
                                            generator=torch.Generator().manual_seed(0))
                methods[("fused", fam)] = (lambda f: lambda z, mu, lv: tk.log_qz(
                    z, mu, lv, dataset_size=n, backend="cpu", family=f))(fam)
                if not a.no_compile:
                    torch._dynamo.reset()
                    comp = torch.compile(materialized(fam), dynamic=False)
                    methods[("compile", fam)] = (lambda c: lambda z, mu, lv: c(z, mu, lv, log_w))(comp)
            ups = [torch.randn(m, generator=torch.Generator().manual_seed(1)),
                   torch.randn(m, d, generator=torch.Generator().manual_seed(2))]
            times = {k: [] for k in methods}
            for key, fn in methods.items():  # warm-up: compiles, allocations
                step(fn, *inputs[key[1]], ups)
            for _ in range(a.rounds):
                for key, fn in methods.items():
                    t0 = time.perf_counter()
                    step(fn, *inputs[key[1]], ups)
                    times[key].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            row = {"M": m, "D": d, **{f"{k[0]}_{k[1]}_ms": v for k, v in med.items()}}
            row["laplace_over_normal"] = med[("fused", "laplace")] / med[("fused", "normal")]
            print(f"M=K={m} D={d}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items() if k.endswith("ms"))
                  + f", laplace/normal {row['laplace_over_normal']:.2f}", flush=True)
            rows.append(row)
    print(f"\n{torch.get_num_threads()} threads; forward + backward of log_qz, float32, MSS; medians of "
          f"{a.rounds} alternating rounds\n")
    print("| M = K | D | fused Normal ms | fused Laplace ms | Laplace / Normal | compile Normal (× fused) "
          "| compile Laplace (× fused) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cn = f"{r['compile_normal_ms']:.1f} ({r['compile_normal_ms'] / r['fused_normal_ms']:.1f}×)" if "compile_normal_ms" in r else "–"
        cl = f"{r['compile_laplace_ms']:.1f} ({r['compile_laplace_ms'] / r['fused_laplace_ms']:.1f}×)" if "compile_laplace_ms" in r else "–"
        print(f"| {r['M']} | {r['D']} | {r['fused_normal_ms']:.2f} | {r['fused_laplace_ms']:.2f} | "
              f"{r['laplace_over_normal']:.2f} | {cn} | {cl} |")
    return rows


if __name__ == "__main__":
    main()
