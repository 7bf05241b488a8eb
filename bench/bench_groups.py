"""Cost of the grouped op (HFVAE's log q(z_g)) on the CPU, side by side in one run:

* ``base``    — the op without groups (log q(z), log q(z_d)): the floor the grouped op is measured against;
* ``fused``   — the CPU backend's single pass with the group joints (tcvae::log_qz_groups);
* ``slices``  — the same outputs by one more fused pass per group on its dimension slice (what the
  GPU backends do: Backend.log_qz_groups' default);
* ``compile`` — torch.compile of the materialized formula with groups ([M, K, D] tensor, then
  logsumexps over the joint, each dimension and each group), the strongest no-custom-code peer.

Forward (no grad) and forward+backward of an HFVAE-like objective
``mean(log_qz - sum_g log_qz_groups) + 2·mean(sum_g log_qz_groups - sum_d log_qz_dims)``
w.r.t. z, mu and logvar. Median of repeats after a warm-up; float32; MSS weights, N = 10·M.

    .venv/bin/python bench/bench_groups.py [--sizes 1024 2048 4096] [--threads 2] [--no-compile]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import torch

from tcvae_kernels.api import normalize_groups
from tcvae_kernels.tools.benchmark import dense_mss_log_weights, make_inputs, repeat_times
from tcvae_kernels.backends.base import Backend, get_backend
from tcvae_kernels.estimators import log_weights
from tcvae_kernels.reference import log_density

CONFIGS = {10: [[5, 5], [2, 2, 2, 2, 2]], 32: [[16, 16], [8, 8, 8, 8]]}


def materialized_grouped(z, mu, logvar, log_w, groups):
    l = log_density(z[:, None, :], mu[None], logvar[None])  # [M, K, D]
    q = torch.logsumexp(l.sum(2) + log_w, dim=1)
    qd = torch.logsumexp(l + log_w[:, :, None], dim=1)
    qg = torch.stack([torch.logsumexp(l[:, :, g].sum(2) + log_w, dim=1) for g in groups], dim=1)
    return q, qd, qg


def build(method, m, groups, d):
    index = normalize_groups(groups, d)
    if method == "compile":
        torch._dynamo.reset()
        log_w = dense_mss_log_weights(m, 10 * m, torch.float32, "cpu")
        fn = torch.compile(materialized_grouped, dynamic=False)
        return lambda z, mu, lv: fn(z, mu, lv, log_w, index)
    cpu = get_backend("cpu")
    w = log_weights("mss", m, 10 * m)
    if method == "base":
        return lambda z, mu, lv: (*cpu.log_qz(z, mu, lv, w), None)
    if method == "fused":
        return lambda z, mu, lv: cpu.log_qz_groups(z, mu, lv, w, index)
    return lambda z, mu, lv: Backend.log_qz_groups(cpu, z, mu, lv, w, index)  # "slices"


def objective(q, qd, qg):
    if qg is None:  # the base op: TC
        return (q - qd.sum(1)).mean()
    sg = qg.sum(1)
    return (q - sg).mean() + 2 * (sg - qd.sum(1)).mean()


def make_call(fn, mode, inputs):
    """fwd: the outputs (run under no_grad by the caller); fwdbwd: gradients of objective()."""
    if mode == "fwd":
        return lambda: fn(*inputs)

    def call():
        leaves = [t.detach().requires_grad_() for t in inputs]
        return torch.autograd.grad(objective(*fn(*leaves)), leaves)

    return call


def median_ms(call, min_time, min_reps=3, max_reps=50):
    call()  # warm-up (compiles)
    return statistics.median(repeat_times(call, "cpu", min_time, max_reps, min_reps)) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = ["base", "fused", "slices"] + ([] if a.no_compile else ["compile"])
    cpu_name = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                    platform.processor())
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M} · {cpu_name} ({torch.get_num_threads()} threads) · torch "
          f"{torch.__version__} · float32 · median time (ms); ratios to `base` in brackets\n")
    print("| M | D | groups | mode | " + " | ".join(methods) + " |")
    print("|---|---|---|---|" + "---|" * len(methods))
    for d, configs in CONFIGS.items():
        for groups in configs:
            for m in a.sizes:
                inputs, _ = make_inputs(m, d, "cpu", torch.float32)
                for mode in ("fwd", "fwdbwd"):
                    times = {}
                    for method in methods:
                        if method == "compile" and m > 2048:
                            continue  # [M, M, D] tensors of several GiB in the backward
                        call = make_call(build(method, m, groups, d), mode, inputs)
                        with torch.set_grad_enabled(mode == "fwdbwd"):
                            times[method] = median_ms(call, a.min_time)
                    cells = []
                    for method in methods:
                        if method not in times:
                            cells.append("—")
                        elif method == "base":
                            cells.append(f"{times[method]:.3g}")
                        else:
                            cells.append(f"{times[method]:.3g} ({times[method] / times['base']:.2f}×)")
                    print(f"| {m} | {d} | {groups} | {mode} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
