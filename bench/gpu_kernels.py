"""Each GPU kernel timed on the GPU and set beside the throughput model's prediction (needs a GPU).

For M = K = 16384 (``--m``), D ∈ {10, 32, 64}, float32, MSS weights: runs the forward without
gradient terms (evaluation), the forward with them (training) and the backward of every available
GPU backend (cuda, triton) under ``torch.profiler`` and reports per kernel the median device time
over ``--reps`` calls, the time ``bench/gpu_report.py`` predicts for it (the model's
clocks per element, with this GPU's SM count and the clock given by ``--clock-ghz``), their ratio,
and the measured time as a multiple of the measured MUFU floor: M·K·(D+1) exp2 at the rate of
``tcvae_kernels.tools.exp2_peak`` (per sweep; the training step has two sweeps' worth).

    python bench/gpu_kernels.py [--m 16384] [--dims 10 32 64] [--out bench/out/gpu/kernels.md] [--dry-run]

``--dry-run`` (no GPU needed; bench/gpu_check.sh --dry-run): the arguments, the imports, the
profiler's kernel-name mapping and the table's formatting on one made-up row, no timing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import gpu_report as gr  # noqa: E402  (bench/, beside this file)


def report_name(source: str, kernel: str, grad_terms: bool) -> str | None:
    """The report's name of a profiled kernel (Triton: the function's name, which does not tell the
    family: the calls here are the Normal's; CUDA: the demangled template, read as gpu_report reads
    the fatbin's, family included)."""
    if source == "triton":
        for k in ("_fwd_kernel", "_bwd_cols_kernel", "_marginal_exact_kernel"):
            if kernel.startswith(k):
                return k + ("+grad" if k == "_fwd_kernel" and grad_terms else "")
        return None
    got = gr._cuda_name(kernel)
    return got[0] if got else None


def make_calls(source: str, m: int, d: int, device):
    """(forward without grad terms, forward with them, backward) as callables for one backend."""
    from tcvae_kernels.estimators import log_weights

    g = torch.Generator(device="cpu").manual_seed(0)
    mu = torch.randn(m, d, generator=g)
    lv = torch.empty(m, d).uniform_(-2.0, 1.0, generator=g)
    z = mu + torch.exp(0.5 * lv) * torch.randn(m, d, generator=g)
    z, mu, lv = (t.to(device) for t in (z, mu, lv))
    w = log_weights("mss", m, 10 * m)
    args = w.op_args()
    if source == "cuda":
        fwd = lambda grad: torch.ops.tcvae.log_qz(z, mu, lv, *args, grad)  # noqa: E731
        bwd_op = lambda q, qd, aq, aqd: torch.ops.tcvae.log_qz_backward(  # noqa: E731
            a, b, z, mu, lv, aq, aqd, *args, True)
    else:
        from tcvae_kernels.backends import triton_kernels as tkn

        fwd = lambda grad: tkn.log_qz_op(z, mu, lv, *args, False, grad)  # noqa: E731
        bwd_op = lambda q, qd, aq, aqd: tkn.log_qz_backward_op(  # noqa: E731
            a, b, z, mu, lv, aq, aqd, *args, False, True)
    a = torch.randn(m, device=device) / m
    b = torch.randn(m, d, device=device) / m
    saved = fwd(True)
    return (lambda: fwd(False)), (lambda: fwd(True)), (lambda: bwd_op(*saved))


def profile(call, reps: int, source: str, grad_terms: bool) -> dict[str, float]:
    """Median device milliseconds per call of each kernel the call launches."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    call()
    torch.cuda.synchronize()
    per_call = collections.defaultdict(list)
    for _ in range(reps):
        with prof(activities=[ProfilerActivity.CUDA]) as p:
            call()
            torch.cuda.synchronize()
        got = collections.Counter()
        for e in p.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                name = report_name(source, e.name, grad_terms)
                if name:
                    got[name] += e.device_time_total / 1e3 if hasattr(e, "device_time_total") else e.cuda_time_total / 1e3
        for k, v in got.items():
            per_call[k].append(v)
    return {k: statistics.median(v) for k, v in per_call.items()}


def table(rows: list[dict], device: str, sms: int, clock_ghz: float, m: int, peak: float) -> str:
    """The markdown table of ``rows`` (one per backend, D and kernel)."""
    lines = [f"Kernels on {device} ({sms} SMs; model clock {clock_ghz} GHz), M = K = {m}, "
             f"float32; measured exp2 peak {peak / 1e12:.2f} T/s\n",
             "| backend | D | kernel | measured ms | predicted ms (bound) | measured / predicted | × MUFU floor (one sweep) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        pred = f"{r['predicted_ms']:.2f} ({r['bound']})" if r["predicted_ms"] else "—"
        ratio = f"{r['measured_ms'] / r['predicted_ms']:.2f}" if r["predicted_ms"] else "—"
        lines.append(f"| {r['source']} | {r['D']} | {r['kernel']} | {r['measured_ms']:.2f} | {pred} | {ratio} | "
                     f"{r['x_mufu_floor']:.2f} |")
    return "\n".join(lines)


def dry_run(args) -> int:
    """Everything but the GPU: the mapping of profiler names, the table, the output files."""
    cuda = "void tcvae::fused::(anonymous namespace)::forward_kernel<float, true, (tcvae::Family)0>(int, float*)"
    assert report_name("cuda", cuda, True) == "forward_kernel+grad", report_name("cuda", cuda, True)
    assert report_name("triton", "_bwd_cols_kernel_0d1d", True) == "_bwd_cols_kernel"
    rows = [{"source": "triton", "D": d, "kernel": "_fwd_kernel", "measured_ms": 1.0, "predicted_ms": 0.8,
             "bound": "mufu", "config_of_prediction": "128x32x4w", "x_mufu_floor": 1.1} for d in args.dims]
    text = "dry run, made-up figures: " + table(rows, "no GPU", 132, args.clock_ghz, args.m, 4.2e12)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        open(args.out, "w").write(text + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--dims", type=int, nargs="+", default=[10, 32, 64])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock of the model (H100/H200 SXM boost: 1.98)")
    ap.add_argument("--out", default=None, help="markdown file for the table (a .json beside it)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check the script's own parts (no timing)")
    args = ap.parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("bench/gpu_kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import tcvae_kernels as tk

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    arch = props.major * 10 + props.minor
    machine = {"name": props.name, "sms": props.multi_processor_count, "clock_hz": args.clock_ghz * 1e9}
    from tcvae_kernels.tools.exp2_peak import exp2_peak

    peak = exp2_peak(dev)
    reports = gr.triton_reports((arch,)) + gr.cuda_reports((arch,))
    sources = [s for s in ("cuda", "triton") if s in tk.available_backends()]
    rows: list[dict] = []
    text = table(rows, props.name, machine["sms"], args.clock_ghz, args.m, peak)
    for source in sources:
        for d in args.dims:
            m = k = args.m
            preds = {}
            for r in reports:
                if r.source == source and r.hot is not None and (source == "triton" or r.config == "float"):
                    clk, pipe = gr.clocks_per_warp_element(r.per_element(d))
                    ms = clk * m * k * d / 32 / machine["sms"] / machine["clock_hz"] * 1e3
                    if r.name not in preds or ms < preds[r.name][0]:
                        preds[r.name] = (ms, pipe, r.config)
            floor_ms = m * k * (d + 1) / peak * 1e3
            ev, train_fwd, bwd = make_calls(source, m, d, dev)
            measured = {}
            for call, grad in ((ev, False), (train_fwd, True), (bwd, True)):
                measured.update(profile(call, args.reps, source, grad))
            for name, ms in sorted(measured.items()):
                p = preds.get(name)
                rows.append({"source": source, "D": d, "kernel": name, "measured_ms": ms,
                             "predicted_ms": p[0] if p else None, "bound": p[1] if p else None,
                             "config_of_prediction": p[2] if p else None,
                             "x_mufu_floor": ms / floor_ms})
            del ev, train_fwd, bwd
            torch.cuda.empty_cache()
            text = table(rows, props.name, machine["sms"], args.clock_ghz, args.m, peak)
            if args.out:  # after every (backend, D): a run stopped at its time limit keeps what it measured
                os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
                with open(args.out, "w") as f:
                    f.write(text + "\n")
                with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
                    json.dump({"device": props.name, "exp2_peak": peak, "rows": rows}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
