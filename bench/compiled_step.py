"""The demo's training step with the β-TCVAE loss, eager and under ``torch.compile``, side by side.

The model of ``python/demo.py`` (MLP 1024 → 512 → 512 → 2·10 and back, Bernoulli likelihood),
``BetaTCVAELoss(dataset_size=16384, beta=6, warmup_steps=steps // 5)``, Adam; per ``--banks``
(0: no bank) and per mode, a fresh model and loss (same seed) run ``--steps`` training steps:

- ``eager``: the step as written (encoder, reparameterisation, decoder, loss, backward, Adam).
- ``compile``: ``torch.compile(step)`` of that whole step, default options, as a user first writes it
  (``loss.backward()`` and torch's ``optimizer.step`` break the graph; the loss should add nothing).
- ``fullgraph``: ``torch.compile(fwd_bwd, fullgraph=True)`` of forward and backward, with
  ``torch._dynamo.config.trace_autograd_ops = True`` (dynamo traces ``backward()``), and
  ``torch.compile(optimizer.step)`` (torch's optimizer breaks the graph by design: pytorch#104053).
- ``reduce-overhead`` (CUDA only): ``fullgraph`` with ``mode="reduce-overhead"`` (CUDA graphs).

Reported per run: the median step time after the first ``--warmup`` steps, the first call's time
(the compile), dynamo's graphs after the first step and the frames compiled after it (recompiles;
0 is the target), graph breaks, and the first step's loss against eager's (relative).

    python bench/compiled_step.py [--device cpu] [--steps 200] [--batch 1024] [--banks 0 4096]
                                  [--modes eager compile fullgraph] [--out bench/out/compiled_step.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from tcvae_kernels.tools.benchmark import sync  # noqa: E402

MODES = ("eager", "compile", "fullgraph", "reduce-overhead")
DATASET_SIZE = 16384  # the demo's training subset


def make_run(mode: str, device: torch.device, batch: int, bank: int, steps: int, seed: int):
    """(step callable taking (x, eps), the loss module): a fresh model, loss and optimizer for ``mode``."""
    import tcvae_kernels as tk
    from demo import MLPVAE

    torch.manual_seed(seed)
    model = MLPVAE(32 * 32).to(device)
    loss_fn = tk.BetaTCVAELoss(dataset_size=DATASET_SIZE, beta=6.0, warmup_steps=max(1, steps // 5),
                               bank_size=bank).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def fwd(x, eps):
        mu, logvar = model.encode(x)
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = model.decode(z, x.shape[1:])
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        return recon + loss_fn(z, mu, logvar)

    def fwd_bwd(x, eps):
        loss = fwd(x, eps)
        loss.backward()
        return loss.detach()

    def step(x, eps):
        loss = fwd_bwd(x, eps)
        opt.step()
        opt.zero_grad()
        return loss

    if mode == "eager":
        return step, loss_fn
    if mode == "compile":
        return torch.compile(step), loss_fn
    torch._dynamo.config.trace_autograd_ops = True
    graph = torch.compile(fwd_bwd, fullgraph=True, mode="reduce-overhead" if mode == "reduce-overhead" else None)
    opt_step = torch.compile(opt.step)

    def compiled(x, eps):
        loss = graph(x, eps)
        opt_step()
        opt.zero_grad()
        return loss

    return compiled, loss_fn


def run(mode: str, device: torch.device, batch: int, bank: int, steps: int, warmup: int, seed: int = 0) -> dict:
    """Time ``steps`` training steps of ``mode``; the losses (float) of every step for the comparison."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch._dynamo.config.trace_autograd_ops = False
    step, loss_fn = make_run(mode, device, batch, bank, steps, seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    # inputs and the reparameterisation's noise drawn outside the step: the same numbers in every mode
    pool = [((torch.rand(batch, 1, 32, 32, generator=g) < 0.2).float().to(device),
             torch.randn(batch, 10, generator=g).to(device)) for _ in range(4)]
    losses, times = [], []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        loss = step(*pool[i % len(pool)])
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        if i == 0:
            graphs_first = counters["stats"]["unique_graphs"]
            frames_first = counters["frames"]["total"]
    return {
        "mode": mode, "bank": bank, "device": str(device), "batch": batch, "steps": steps,
        "median_ms": statistics.median(times[warmup:]) * 1e3 if steps > warmup else None,
        "first_s": times[0],
        "graphs": graphs_first, "recompiles": counters["frames"]["total"] - frames_first,
        "graph_breaks": sum(counters["graph_break"].values()),
        "loss_step": int(loss_fn.step), "losses": losses,
    }


def table(rows: list[dict], device_name: str) -> str:
    """The markdown table: one row per (bank, mode); the step time as a multiple of eager's."""
    eager = {r["bank"]: r for r in rows if r["mode"] == "eager" and "error" not in r}
    lines = [f"Training step of the demo's model on {device_name}: batch {rows[0]['batch']}, D = 10, "
             f"{rows[0]['steps']} steps per run (medians after the warm-up steps)\n",
             "| bank | mode | median step ms | × eager | first call s | graphs | recompiles | graph breaks | "
             "first loss vs eager (relative) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = eager.get(r["bank"])
        if "error" in r:
            lines.append(f"| {r['bank']} | {r['mode']} | fails: {r['error'][:120]} |||||||")
            continue
        ratio = f"{r['median_ms'] / e['median_ms']:.2f}" if e and r["median_ms"] and e["median_ms"] else "—"
        # the first step's loss: later ones follow trajectories that rounding moves apart (Adam's first
        # updates are ±lr whatever the gradient's size), so they compare the optimiser, not the loss
        diff = abs(r["losses"][0] - e["losses"][0]) / abs(e["losses"][0]) if e else float("nan")
        med = f"{r['median_ms']:.1f}" if r["median_ms"] else "—"
        graphs = "—" if r["mode"] == "eager" else r["graphs"]
        lines.append(f"| {r['bank']} | {r['mode']} | {med} | {ratio} | {r['first_s']:.2f} | {graphs} | "
                     f"{r['recompiles']} | {r['graph_breaks']} | {diff:.2e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the median (default 10)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--banks", type=int, nargs="+", default=[0, 4096])
    ap.add_argument("--modes", nargs="+", default=None, choices=MODES,
                    help="default: every mode the device supports (reduce-overhead needs CUDA)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="markdown file for the table (a .json beside it)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes or [m for m in MODES if m != "reduce-overhead" or device.type == "cuda"]
    if "reduce-overhead" in modes and device.type != "cuda":
        ap.error("mode reduce-overhead needs --device cuda (CUDA graphs)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rows = []
    for bank in args.banks:
        for mode in modes:
            try:
                r = run(mode, device, args.batch, bank, args.steps, args.warmup)
            except Exception as e:  # noqa: BLE001 (a mode that fails to compile is a result: its row says why)
                r = {"mode": mode, "bank": bank, "device": str(device), "batch": args.batch, "steps": args.steps,
                     "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"}
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
            if args.out:  # after every run: a call stopped at its time limit keeps what it measured
                os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
                with open(args.out, "w") as f:
                    f.write(table(rows, name) + "\n")
                with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
                    json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(table(rows, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
