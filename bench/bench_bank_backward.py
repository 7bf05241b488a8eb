"""The cost of a component bank's backward: the forward alone against forward + backward at a
bank's shape, and the demo's training step with and without a bank, for one or two source trees
side by side (A/B of a change: rounds alternate one worker process per tree).

    python bench/bench_bank_backward.py [--trees . /tmp/before] [--dims 10 32] [--rounds 5]

Per tree and D: M = 256 queries against K = 16,384 components (the batch and a full bank of
16,128), float32, MSS, the fused backend of the machine (``backend="auto"``): the median of
``--repeats`` calls of ``tk.decompose`` without gradients (the forward) and of forward + backward
(gradients of MI + 6·TC + dim-KL w.r.t. z, mu, logvar; the bank's rows carry none); and the demo's
eager training step (bench/compiled_step.py's model, batch 256) without a bank and with one of
4,096 (N / 4), full. Printed: medians over rounds, and the ratios the bank issue set targets for
(forward + backward ≤ 1.5× the forward; the step with the bank ≤ 1.25× the step without).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_WORKER = r"""
import json, os, statistics, sys, time
tree, d, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
sys.path.insert(0, os.path.join(tree, "python"))
import torch
torch.set_num_threads(threads)
import tcvae_kernels as tk
assert tk.__file__.startswith(os.path.abspath(tree)), tk.__file__
m, k, n = 256, 16384, 60000
g = torch.Generator().manual_seed(0)
bank = tk.ComponentBank(k - m)
bank.push(torch.randn(k - m, d, generator=g), torch.rand(k - m, d, generator=g) - 2.0)
mu, lv = torch.randn(m, d, generator=g), torch.rand(m, d, generator=g) - 2.0
z = mu + torch.randn(m, d, generator=g) * torch.exp(0.5 * lv)
def median(fn):
    fn(); fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3
def fwd():
    with torch.no_grad():
        tk.decompose(z, mu, lv, dataset_size=n, bank=bank)
leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
def fwd_bwd():
    p = tk.decompose(*leaves, dataset_size=n, bank=bank)
    torch.autograd.grad(p.mi + 6 * p.tc + p.dim_kl, leaves)
out = {"forward_ms": median(fwd), "fwd_bwd_ms": median(fwd_bwd)}
if d == 10:  # the demo's training step, eager, batch 256, without and with a full bank of N / 4
    import compiled_step as cs
    from torch.nn import functional as F
    from demo import MLPVAE
    for size in (0, 4096):
        torch.manual_seed(0)
        model = MLPVAE(32 * 32)
        loss_fn = tk.BetaTCVAELoss(dataset_size=16384, beta=6.0, bank_size=size, warn_regime=False)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = (torch.rand(256, 1, 32, 32, generator=g) < 0.2).float()
        eps = torch.randn(256, 10, generator=g)
        def step():
            mu_, lv_ = model.encode(x)
            zz = mu_ + eps * torch.exp(0.5 * lv_)
            loss = F.binary_cross_entropy_with_logits(model.decode(zz, x.shape[1:]), x, reduction="sum") / 256
            (loss + loss_fn(zz, mu_, lv_)).backward()
            opt.step(); opt.zero_grad()
        for _ in range(size // 256 + 1):
            step()  # fill the bank
        out[f"step_bank{size}_ms"] = median(step)
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", nargs="+", default=["."])
    ap.add_argument("--dims", type=int, nargs="+", default=[10, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    trees = [os.path.abspath(t) for t in args.trees]
    here = os.path.dirname(os.path.abspath(__file__))
    results = {(t, d): [] for t in trees for d in args.dims}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    for _ in range(args.rounds):
        for d in args.dims:
            for t in trees:
                # the worker imports compiled_step and demo from the tree's bench/ and python/ (or this one's)
                src = t if os.path.exists(os.path.join(t, "bench", "compiled_step.py")) else os.path.dirname(here)
                env["PYTHONPATH"] = os.path.join(src, "bench")
                r = subprocess.run([sys.executable, "-c", _WORKER, t, str(d), str(args.repeats), str(args.threads)],
                                   capture_output=True, text=True, env=env, check=True)
                results[t, d].append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"M = 256 against K = 16384 (a full bank of 16128), float32, {args.threads} threads, "
          f"medians of {args.rounds} rounds × {args.repeats} calls\n")
    print("| tree | D | forward ms | fwd+bwd ms | fwd+bwd ÷ forward | demo step, no bank ms | with 4096 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for (t, d), rows in results.items():
        med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        step = (f"{med['step_bank0_ms']:.1f} | {med['step_bank4096_ms']:.1f} | "
                f"{med['step_bank4096_ms'] / med['step_bank0_ms']:.2f}") if "step_bank0_ms" in med else "— | — | —"
        print(f"| {os.path.relpath(t) if t.startswith(os.getcwd()) else t} | {d} | {med['forward_ms']:.1f} | "
              f"{med['fwd_bwd_ms']:.1f} | {med['fwd_bwd_ms'] / med['forward_ms']:.2f} | {step} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
