"""Cost of the global-batch estimator (tcvae_kernels.distributed) per step and rank, on CPU
processes with Gloo on localhost, side by side in one run:

* ``local``  — each rank estimates q(z) from its own M_local samples (what every public TC loss
  does under data parallelism): decompose + backward on [M_local] x [M_local];
* ``global`` — ``process_group=WORLD``: the differentiable all-gather of (mu, logvar), then
  [M_local] x [M_global] and the backward (whose all-gather backward is a reduce-scatter);
* ``gather`` — the all-gather alone (forward and backward), i.e. the communication share of ``global``.

One thread per rank, float32, MSS weights; median over repeats (every rank times the same steps;
rank 0 reports). Compute grows as M_local·M_global per rank: ``global`` should cost about
world × ``local`` plus ``gather``.

    .venv/bin/python bench/bench_distributed.py [--world 2] [--sizes 512 1024 2048] [--dim 10]
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tcvae_kernels as tk
from tcvae_kernels.distributed import gather_components


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median_ms(step, reps):
    step()  # warm-up
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _worker(rank, world, port, sizes, d, reps, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        for m_local in sizes:
            g = torch.Generator().manual_seed(1000 * rank + m_local)
            mu = torch.randn(m_local, d, generator=g)
            lv = -2 + 2 * torch.rand(m_local, d, generator=g)
            z = mu + torch.exp(0.5 * lv) * torch.randn(m_local, d, generator=g)
            n = 100 * m_local * world

            def step(group):
                leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
                p = tk.decompose(*leaves, dataset_size=n, backend="cpu", process_group=group)
                torch.autograd.grad(p.mi + 6 * p.tc + p.dim_kl, leaves)

            def gather():
                leaves = [t.clone().requires_grad_() for t in (mu, lv)]
                gm, glv, _ = gather_components(*leaves, dist.group.WORLD)
                torch.autograd.grad(gm.sum() + glv.sum(), leaves)

            row = {"M_local": m_local, "local": _median_ms(lambda: step(None), reps),
                   "global": _median_ms(lambda: step(dist.group.WORLD), reps), "gather": _median_ms(gather, reps)}
            if rank == 0:
                queue.put(row)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--reps", type=int, default=30)
    a = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(a.world, _free_port(), a.sizes, a.dim, a.reps, queue), nprocs=a.world, join=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M} · {cpu} · torch {torch.__version__} · Gloo, {a.world} ranks × 1 "
          f"thread · D = {a.dim} · float32 · median ms per step and rank (decompose + backward)\n")
    print("| M_local | M_global | local (M_local × M_local) | global (M_local × M_global) | global ÷ local | "
          "all-gather fwd+bwd | gathered per step |")
    print("|---|---|---|---|---|---|---|")
    while not queue.empty():
        r = queue.get()
        mg = r["M_local"] * a.world
        print(f"| {r['M_local']} | {mg} | {r['local']:.3g} | {r['global']:.3g} | {r['global'] / r['local']:.2f}× | "
              f"{r['gather']:.3g} | {2 * mg * a.dim * 4 / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
