"""Side-by-side timing of two builds of the package: A/B of a kernel change on the same machine.

    python bench/compare_builds.py --a /tmp/before --b . --shapes 1024,1024,32 256,16384,32

Each tree must hold an importable ``tcvae_kernels`` with its extension built in place
(``python setup.py build_ext --inplace``). For every shape, ``--rounds`` rounds alternate one worker
process of A and one of B (so drifts of a shared machine hit both); a worker times ``--repeats``
calls of the fused CPU op's forward + backward (``log_qz`` at MSS, upstream gradients of ones)
after a warm-up and reports its median. Printed: per shape, the median over rounds of each build's
medians, and B ÷ A with the spread of the per-round ratios (min–max)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_WORKER = r"""
import json, sys, time
tree, m, k, d, threads, repeats, dtype = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7]
sys.path.insert(0, tree)
import torch
torch.set_num_threads(threads)
import tcvae_kernels as tk
from tcvae_kernels.backends import extension
assert tk.__file__.startswith(tree), tk.__file__
g = torch.Generator().manual_seed(0)
dt = getattr(torch, dtype)
mu, lv = torch.randn(k, d, generator=g, dtype=dt), torch.rand(k, d, generator=g, dtype=dt) - 1.5
z = (mu[torch.arange(m) % k] + torch.randn(m, d, generator=g, dtype=dt)).requires_grad_()
mu.requires_grad_(); lv.requires_grad_()
def step():
    q, qd = tk.log_qz(z, mu, lv, dataset_size=10 * max(m, k), estimator="mss", backend="cpu")
    torch.autograd.grad(q.sum() + qd.sum(), (z, mu, lv))
for _ in range(2):
    step()
times = []
for _ in range(repeats):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"median_s": times[len(times) // 2], "build": extension.build_info()}))
"""


def _run(tree: str, shape: tuple[int, int, int], threads: int, repeats: int, dtype: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", _WORKER, os.path.abspath(tree), *map(str, shape), str(threads),
                          str(repeats), dtype], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker for {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True, help="tree of build A (the baseline)")
    p.add_argument("--b", required=True, help="tree of build B")
    p.add_argument("--shapes", nargs="+", default=["1000,1000,17", "2048,2048,32", "256,16384,32", "4096,4096,10"],
                   help="M,K,D triples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = p.parse_args(argv)
    print(f"A = {args.a}, B = {args.b}; {args.dtype}, {args.threads} threads, forward + backward, "
          f"median of {args.repeats} calls per worker, {args.rounds} alternating rounds")
    print("\n| M | K | D | A | B | B ÷ A (min–max over rounds) |\n|---|---|---|---|---|---|")
    for text in args.shapes:
        shape = tuple(int(x) for x in text.split(","))
        a, b = [], []
        for _ in range(args.rounds):
            a.append(_run(args.a, shape, args.threads, args.repeats, args.dtype))
            b.append(_run(args.b, shape, args.threads, args.repeats, args.dtype))
        ratios = [y / x for x, y in zip(a, b)]
        print(f"| {shape[0]} | {shape[1]} | {shape[2]} | {statistics.median(a) * 1e3:.4g} ms | "
              f"{statistics.median(b) * 1e3:.4g} ms | {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}–{max(ratios):.3f}) |", flush=True)


if __name__ == "__main__":
    main()
