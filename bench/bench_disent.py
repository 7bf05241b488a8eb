"""disent's β-TCVAE TC term against the fused estimate, forward + backward, side by side in one
process (rounds alternating, medians): disent's ``BetaTcVae._betatc_compute_total_correlation``
(the [M, M, D] tensor) and ``tcvae_kernels.total_correlation(..., estimator="mws", backend="cpu")``
(the same gradients). Needs disent (Python >= 3.12): run it with make test-disent's venv,

    PYTHONPATH=. .venv-disent/bin/python bench/bench_disent.py [--sizes 256 1024 2048] [--dim 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from disent.frameworks.vae import BetaTcVae

import tcvae_kernels as tk


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"| M | D | disent ms | fused ms | disent / fused |  ({a.threads} thread(s), float32, forward + backward)")
    print("|---|---|---|---|---|")
    for m in a.sizes:
        g = torch.Generator().manual_seed(m)
        z, mu = (torch.randn(m, a.dim, generator=g).requires_grad_() for _ in range(2))
        lv = (torch.rand(m, a.dim, generator=g) - 1.0).requires_grad_()

        def theirs():
            BetaTcVae._betatc_compute_total_correlation(z, mu, lv).backward()

        def ours():
            tk.total_correlation(z, mu, lv, dataset_size=50 * m, estimator="mws", backend="cpu").backward()

        theirs(), ours()  # warm-up
        t_d, t_f = [], []
        for _ in range(a.rounds):
            t_d.append(_time(theirs, 3))
            t_f.append(_time(ours, 3))
        d, f = statistics.median(t_d), statistics.median(t_f)
        print(f"| {m} | {a.dim} | {d * 1e3:.2f} | {f * 1e3:.2f} | {d / f:.1f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
