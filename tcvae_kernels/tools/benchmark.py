"""``python -m tcvae_kernels bench``: time forward and forward+backward of ``log_qz`` per method.

Methods, measured side by side in one run (each in its own worker process):

* ``eager``   — the materialized formula of public β-TCVAE code: the whole [M, K, D] tensor of
  log densities, then two logsumexps (what ``materialized_log_qz`` below computes).
* ``compile`` — ``torch.compile`` of that formula (warmed up before timing).
* ``keops``   — KeOps (pykeops) LazyTensors, when installed: joint logsumexp over j, and the
  marginals with D as a batch dimension (KeOps rejects vector-valued logsumexp); KeOps autodiff
  for the backward; compiled with ``CXXFLAGS="-march=native -ffast-math"`` on CPU.
* backends — ``torch``, ``cpu``, ``cuda``, ``triton``: ``tcvae_kernels.log_qz(..., backend=name)``.

Every method computes the same thing: MSS weights, N = 10·K, float32 by default; forward+backward
differentiates ``TC = mean(log_qz - sum_d log_qz_dims)`` w.r.t. z, mu and logvar.

Components: K = M (the batch) by default; ``--components K`` adds the shape of a component bank:
the batch's M components followed by K − M banked ones (a :class:`~tcvae_kernels.ComponentBank` for
the backends, the concatenation for the comparators), gradients w.r.t. the batch's z, mu, logvar.

Reported per (M, D): median time over repeats (after warm-up) and peak extra memory of one call.
CPU memory is the rise of the worker's peak RSS over its RSS before the call (``/proc/self/clear_refs``
resets the peak; ``MALLOC_MMAP_THRESHOLD_=1048576`` makes glibc return large blocks so RSS tracks
the live set); CUDA memory is ``max_memory_allocated`` minus the allocation before the call.
The exp floor is ``M·K·(D+1)`` exps (forward; twice that for forward+backward) at the
throughput of ``torch.exp`` measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from ..api import log_qz
from ..backends.base import backend_names
from ..bank import ComponentBank
from ..dispatch import backend_reasons
from ..estimators import log_weights, weight_matrix
from . import plain_text
from ..progress import progress
from ..reference import LOG_2PI, log_density
from ..testing import random_inputs

QUICK_SIZES = [256, 1024]
QUICK_DIMS = [10]
FULL_SIZES = [256, 1024, 2048, 4096]
FULL_DIMS = [10, 32]
GPU_FULL_SIZES = [1024, 4096, 16384]
GPU_FULL_DIMS = [10, 32, 64]
COMPARATORS = ("eager", "compile", "keops")


# ----------------------------------------------------------------------------- the methods


def dense_mss_log_weights(m: int, n: int, dtype, device) -> torch.Tensor:
    """[M, M] MSS log weights as public code builds them (but with the self weight on the diagonal)."""
    return weight_matrix(log_weights("mss", m, n), m, m, dtype=dtype, device=device)


def materialized_log_qz(z, mu, logvar, log_w):
    """The public-code formula: materialize l [M, K, D], then logsumexp over components."""
    l = log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # [M, K, D]
    log_qz = torch.logsumexp(l.sum(2) + log_w, dim=1)
    log_qz_dims = torch.logsumexp(l + log_w[:, :, None], dim=1)
    return log_qz, log_qz_dims


def keops_log_qz(z, mu, logvar, w):
    """KeOps formulation of the same estimator (structured weights via index arithmetic)."""
    from pykeops.torch import LazyTensor

    m, d = z.shape
    k = mu.shape[0]
    w_self, w_next, w_other = w.w_self, w.w_next, w.w_other
    iv = torch.exp(-logvar)
    c = -0.5 * (logvar + LOG_2PI)
    ii = torch.arange(m, dtype=z.dtype, device=z.device)[:, None]
    jj = torch.arange(k, dtype=z.dtype, device=z.device)[:, None]
    nn_ = (ii + 1) % k

    def weights(i_, j_, n_):  # indicator [j == i] as relu(1 - |j - i|) on integer-valued floats
        return w_other + (w_self - w_other) * (1 - (j_ - i_).abs()).relu() + (w_next - w_other) * (1 - (j_ - n_).abs()).relu()

    # joint: S_ij = sum_d l_ijd + w_ij, logsumexp over j
    zi, mj, ivj = LazyTensor(z[:, None, :]), LazyTensor(mu[None]), LazyTensor(iv[None])
    cj = LazyTensor(c.sum(1, keepdim=True)[None])
    wij = weights(LazyTensor(ii[:, None, :]), LazyTensor(jj[None, :, :]), LazyTensor(nn_[:, None, :]))
    log_qz = ((-0.5 * ((zi - mj) ** 2 * ivj).sum(-1)) + cj + wij).logsumexp(dim=1).view(m)
    # marginals: D as a batch dimension, [D, M, K] scalar formula
    zb = LazyTensor(z.t().contiguous()[:, :, None, None])
    mb = LazyTensor(mu.t().contiguous()[:, None, :, None])
    ivb = LazyTensor(iv.t().contiguous()[:, None, :, None])
    cb = LazyTensor(c.t().contiguous()[:, None, :, None])
    wb = weights(LazyTensor(ii[None, :, None, :]), LazyTensor(jj[None, None, :, :]), LazyTensor(nn_[None, :, None, :]))
    log_qz_dims = (-0.5 * (zb - mb) ** 2 * ivb + cb + wb).logsumexp(dim=2).view(d, m).t()
    return log_qz, log_qz_dims


def build_method(method: str, m: int, n: int, dtype, device, bank=None):
    """A callable (z, mu, logvar) -> (log_qz, log_qz_dims) for one method and batch size; ``bank``:
    None or the banked components (mu, logvar) [K − M, D] that follow the batch's."""
    k = m + (0 if bank is None else bank[0].shape[0])
    if method in COMPARATORS:

        def joint(mu, lv):  # [K, D]: the batch's components, then the bank's
            return (mu, lv) if bank is None else (torch.cat([mu, bank[0]]), torch.cat([lv, bank[1]]))

        log_w = weight_matrix(log_weights("mss", k, n), m, k, dtype=dtype, device=device)  # [M, K]
        if method == "eager":
            return lambda z, mu, lv: materialized_log_qz(z, *joint(mu, lv), log_w)
        if method == "compile":
            torch._dynamo.reset()  # a fresh compile per shape: no recompile-limit fallback to eager
            fn = torch.compile(materialized_log_qz, dynamic=False)
            return lambda z, mu, lv: fn(z, *joint(mu, lv), log_w)
        w = log_weights("mss", k, n)
        return lambda z, mu, lv: keops_log_qz(z, *joint(mu, lv), w)
    cb = None
    if bank is not None:
        cb = ComponentBank(bank[0].shape[0])
        cb.push(*bank)
    return lambda z, mu, lv: log_qz(z, mu, lv, dataset_size=n, estimator="mss", backend=method, bank=cb)


def method_unavailable(method: str, device: str) -> str | None:
    """Why a method cannot run here (None if it can)."""
    if method == "keops":
        try:
            import pykeops  # noqa: F401
        except Exception as e:  # pragma: no cover - optional
            return f"pykeops not installed ({type(e).__name__})"
        return None
    if method in ("eager", "compile"):
        return None
    probe = torch.zeros(2, 1, device=device)
    why = backend_reasons(method, probe, probe, probe)
    return "; ".join(why) if why else None


def estimated_bytes(method: str, mode: str, m: int, d: int, itemsize: int, k: int | None = None) -> int:
    """Rough peak memory of the materializing methods (others are O((M + K)·D))."""
    k = m if k is None else k
    if method == "eager":
        return (3 if mode == "fwd" else 6) * m * k * d * itemsize
    if method == "compile":
        return (1 if mode == "fwd" else 3) * m * k * d * itemsize
    return 0


# ----------------------------------------------------------------------------- measuring
# (the one set of timing and memory helpers: bench/'s scripts use these)


def rss_bytes(field: str) -> int:
    """This process's ``field`` of /proc/self/status in bytes: "VmRSS" (resident now), "VmHWM"
    (peak resident since the last :func:`reset_peak_rss`); 0 where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its RSS now (/proc/self/clear_refs); False where the
    kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU); ``device``: a name or torch.device."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def repeat_times(call, device, min_time: float, max_reps: int, min_reps: int = 3) -> list[float]:
    """Seconds of each call of ``call()`` (synchronized with ``device``): at least ``min_reps`` calls
    and until ``min_time`` seconds have passed, at most ``max_reps``."""
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def make_call(fn, mode, inputs):
    """A no-argument callable running ``fn`` once in ``mode``: "fwd" (no grad) or "fwdbwd"
    (grads of TC = mean(log_qz - sum_d log_qz_dims) w.r.t. all three inputs)."""

    def call():
        if mode == "fwd":
            with torch.no_grad():
                return fn(*inputs)
        leaves = [t.detach().requires_grad_() for t in inputs]
        q, qd = fn(*leaves)
        return torch.autograd.grad((q - qd.sum(1)).mean(), leaves)

    return call


def make_inputs(m, d, device, dtype, k=None):
    """Benchmark inputs (:func:`tcvae_kernels.testing.random_inputs`): z_i drawn from component i,
    logvar in [-2, 0], a seed fixed by the shape: [z, mu, logvar] [M, D], and with ``k`` > M the
    banked components (mu, logvar) [K − M, D] (None without)."""
    k = m if k is None else k
    g = torch.Generator().manual_seed(m * 1000 + d + 7919 * (k - m))
    z, mu, lv = random_inputs(k, k, d, dtype=dtype, device=device, generator=g, logvar_range=(-2.0, 0.0))
    bank = None if k == m else (mu[m:].contiguous(), lv[m:].contiguous())
    return [z[:m].contiguous(), mu[:m].contiguous(), lv[:m].contiguous()], bank


def measure(fn, mode, inputs, device, min_time, max_reps, min_reps=3):
    """Median seconds and peak extra bytes of one call of ``fn`` in ``mode`` ("fwd" or "fwdbwd")."""
    call = make_call(fn, mode, inputs)
    call()  # warm-up (compiles, JITs, allocates)
    sync(device)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes("VmRSS")
        reset_peak_rss()
    call()
    sync(device)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda") else rss_bytes("VmHWM")) - base
    times = repeat_times(call, device, min_time, max_reps, min_reps)
    return statistics.median(times), max(0, peak), len(times)


def exp_throughput(device: str, dtype, n: int = 1 << 18) -> float:
    """Exponentials per second: the machine's exp peak that the kernels are measured against.

    CPU: ``torch.exp`` on n values in [-20, 0] (no underflow slow path); n = 2^18 float32 keeps
    input and output in the L2 caches, so this measures the exp units rather than memory bandwidth
    (a 2^24 array measures ~3× lower on a 2-core machine). CUDA: ``torch.exp`` is memory-bound
    there, so a Triton kernel evaluates exp2 on register-resident values (the MUFU peak)."""
    if device.startswith("cuda"):
        from .exp2_peak import exp2_peak

        return exp2_peak(torch.device(device))
    x = -20 * torch.rand(n, device=device, dtype=torch.float32).to(dtype)
    y = torch.empty_like(x)
    inner = 64
    times = []
    for _ in range(7):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.exp(x, out=y)
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return n / statistics.median(times[1:])


def worker(spec: dict) -> list[dict]:
    """Run one method over all sizes and modes; returns one record per (M, D, mode)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    method = spec["method"]
    if method == "keops" and not device.startswith("cuda"):
        import pykeops

        pykeops.set_verbose(False)
        if spec.get("keops_cache"):
            pykeops.set_build_folder(spec["keops_cache"])
    if method == "exp":
        return [{"method": "exp", "exp_per_s": exp_throughput(device, dtype)}]
    records = []
    cells = [(d, m) for d in spec["dims"] for m in spec["sizes"]]
    for d, m in progress(cells, desc=f"[bench] {method}", unit="size"):
        k = spec.get("components") or m
        inputs, bank = make_inputs(m, d, device, dtype, k)
        fn = build_method(method, m, 10 * k, dtype, device, bank)
        for mode in spec["modes"]:
            rec = {"method": method, "M": m, "K": k, "D": d, "mode": mode}
            need = estimated_bytes(method, mode, m, d, inputs[0].element_size(), k)
            if need > 0.6 * _available_bytes(device):
                rec["skipped"] = f"needs ~{need / 2**30:.0f} GiB"
            else:
                try:
                    t, peak, reps = measure(fn, mode, inputs, device, spec["min_time"], spec["max_reps"])
                    rec.update(seconds=t, peak_bytes=peak, reps=reps)
                except (RuntimeError, MemoryError) as e:  # e.g. CUDA OOM
                    rec["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            records.append(rec)
    return records


def run_worker_process(spec: dict, timeout: float) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    if spec["method"] == "keops":
        env.setdefault("CXXFLAGS", "-march=native -ffast-math")
    cmd = [sys.executable, "-m", "tcvae_kernels.tools.benchmark", "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, timeout=timeout, check=True, text=True)
    except subprocess.TimeoutExpired:
        return [{"method": spec["method"], "skipped": f"worker timed out after {timeout:.0f}s"}]
    except subprocess.CalledProcessError as e:
        return [{"method": spec["method"], "skipped": f"worker failed (exit {e.returncode})"}]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- reporting


def exps_count(m, d, mode, k=None):
    return m * (m if k is None else k) * (d + 1) * (1 if mode == "fwd" else 2)


def _cell(rec):
    if rec is None:
        return "—"
    if "skipped" in rec:
        return f"skipped ({rec['skipped']})"
    return f"{rec['seconds'] * 1e3:.4g} ms / {rec['peak_bytes'] / 2**20:.0f} MiB"


def render(records, meta) -> str:
    methods = [m for m in meta["methods"] if m != "exp"]
    exp_rate = next((r["exp_per_s"] for r in records if r.get("method") == "exp"), None)
    idx = {(r["method"], r.get("M"), r.get("D"), r.get("mode")): r for r in records}
    kk = meta.get("components")  # None: K = M

    def shape(m, d):  # the row's leading cells
        return [str(m), str(d)] if kk is None else [str(m), f"{kk:,}", str(d)]

    lead = ["M", "D"] if kk is None else ["M", "K", "D"]
    lines = [
        f"### {meta['title']}",
        "",
        f"{meta['when']} · {meta['device_name']} · torch {meta['torch']} · {meta['dtype']} · "
        f"threads={meta['threads']} · median of ≥3 repeats (≥{meta['min_time']} s) · cell = median time / peak extra memory",
        "",
    ]
    if exp_rate:
        lines += [f"torch.exp throughput in this run: {exp_rate / 1e9:.2f} G exp/s.", ""]
    for mode, title in (("fwd", "Forward (no grad)"), ("fwdbwd", "Forward + backward (grads of TC w.r.t. z, mu, logvar)")):
        if mode not in meta["modes"]:
            continue
        head = lead + methods + (["exp floor"] if exp_rate else [])
        lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in meta["dims"]:
            for m in meta["sizes"]:
                row = shape(m, d) + [_cell(idx.get((meth, m, d, mode))) for meth in methods]
                if exp_rate:
                    row.append(f"{exps_count(m, d, mode, kk) / exp_rate * 1e3:.3g} ms")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        fused = [m for m in methods if m in ("cpu", "cuda", "triton")]
        for f in fused:
            others = [m for m in methods if m != f]
            head = lead + [f"÷ {o}" for o in others] + (["÷ exp floor"] if exp_rate else [])
            lines += [f"Speed-up of `{f}` ({title.split(' (')[0].lower()}): other method's time ÷ `{f}`'s; "
                      "last column: `" + f + "`'s time ÷ the exp floor", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for d in meta["dims"]:
                for m in meta["sizes"]:
                    me = idx.get((f, m, d, mode))
                    if not me or "seconds" not in me:
                        continue
                    row = shape(m, d)
                    for o in others:
                        r = idx.get((o, m, d, mode))
                        row.append(f"{r['seconds'] / me['seconds']:.1f}×" if r and "seconds" in r else "—")
                    if exp_rate:
                        row.append(f"{me['seconds'] / (exps_count(m, d, mode, kk) / exp_rate):.2f}")
                    lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(records, meta, path):
    """Time (one panel per mode) and, for the last mode, peak extra memory against M, two panels a row
    (readable at a page's width): one colour per method, solid and dashed lines for the first two D
    values, the legend in a panel of its own, the measured sizes as plain tick labels. None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        return None
    modes = [m for m in ("fwd", "fwdbwd") if m in meta["modes"]]
    methods = [m for m in meta["methods"] if m != "exp"]
    colours = plt.get_cmap("tab10").colors
    panels = [(mode, "seconds") for mode in modes] + [(modes[-1], "peak_bytes")]
    rows = (len(panels) + 2) // 2  # the panels and the legend, two a row
    fig, grid = plt.subplots(rows, 2, figsize=(10, 4.2 * rows), squeeze=False)
    axes = [list(grid.flat)]
    sizes = sorted({r["M"] for r in records if "seconds" in r})
    for ax, (mode, what) in zip(axes[0], panels):
        for i, meth in enumerate(methods):
            for j, d in enumerate(meta["dims"]):
                pts = sorted((r["M"], r[what]) for r in records if r.get("method") == meth and r.get("mode") == mode
                             and r.get("D") == d and what in r)
                scale = 1e3 if what == "seconds" else 1 / 2**20
                pts = [(m, v * scale) for m, v in pts if v * scale > 0]
                if pts:
                    ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="os^vD"[j % 5], markersize=4,
                              color=colours[i % len(colours)], linestyle=("-", "--", ":")[min(j, 2)],
                              label=f"{meth}, D={d}")
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{m:,}" for m in sizes])
        ax.set_xlabel("batch size M" + (" (= K)" if meta.get("components") is None else f" (K = {meta['components']:,})"))
        ax.set_ylabel("median time (ms)" if what == "seconds" else "peak extra memory (MiB; 0 not drawn)")
        ax.set_title({"fwd": "forward", "fwdbwd": "forward + backward"}[mode] + (" time" if what == "seconds"
                                                                                   else " memory"), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[0][len(panels):]:
        ax.axis("off")
    axes[0][len(panels)].legend(*axes[0][0].get_legend_handles_labels(), loc="center", fontsize=10, frameon=False,
                                ncol=2)
    fig.suptitle(f"{meta['device_name']}, {meta.get('dtype', 'float32')}, {meta.get('threads', '')} threads", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return f"{model} ({os.cpu_count()} cores)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcvae_kernels bench", description=plain_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true",
                   help=f"sizes M={FULL_SIZES}, D={FULL_DIMS} (CUDA: M={GPU_FULL_SIZES}, D={GPU_FULL_DIMS})")
    p.add_argument("--sizes", type=int, nargs="+", help=f"batch sizes (default {QUICK_SIZES})")
    p.add_argument("--dims", type=int, nargs="+", help=f"latent dims (default {QUICK_DIMS})")
    p.add_argument("--components", type=int, default=None, metavar="K",
                   help="K components per query: the batch's M then K - M banked ones (default K = M); K >= every M")
    p.add_argument("--methods", nargs="+", help="default: eager, compile, keops (if installed) and every available backend")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker (CPU)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per cell (at least 3 repeats)")
    p.add_argument("--max-reps", type=int, default=50)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per method worker")
    p.add_argument("--out", default=None, help="folder for results.md, results.json and results.png")
    p.add_argument("--title", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    gpu = a.device.startswith("cuda")
    sizes = a.sizes or ((GPU_FULL_SIZES if gpu else FULL_SIZES) if a.full else QUICK_SIZES)
    dims = a.dims or ((GPU_FULL_DIMS if gpu else FULL_DIMS) if a.full else QUICK_DIMS)
    if a.components is not None and a.components < max(sizes):
        p.error(f"--components {a.components} must be >= every batch size (the batch's components come first): "
                f"got --sizes {sizes}")
    if a.methods:
        methods = a.methods
    else:
        methods = ["eager", "compile", "keops"] + [b for b in backend_names() if b != "torch"] + ["torch"]
        methods = [m for m in methods if method_unavailable(m, a.device) is None]
        if a.device == "cpu":
            methods = [m for m in methods if m != "triton"]  # the interpreter is not a benchmark
    threads = a.threads or torch.get_num_threads()
    meta = dict(
        title=a.title or f"log_qz benchmark on {a.device}" + (f", K = {a.components:,} components (batch + bank)" if a.components else ""),
        when=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        device_name=device_name(a.device), torch=torch.__version__, dtype=a.dtype, threads=threads,
        min_time=a.min_time, sizes=sizes, dims=dims, modes=a.modes, methods=methods + ["exp"],
        components=a.components,
    )
    records = []
    out_dir = a.out
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    for meth in methods + ["exp"]:
        why = method_unavailable(meth, a.device) if meth != "exp" else None
        if why:
            records.append({"method": meth, "skipped": why})
            continue
        spec = dict(method=meth, device=a.device, dtype=a.dtype, threads=threads, sizes=sizes, dims=dims,
                    modes=a.modes, min_time=a.min_time, max_reps=a.max_reps, components=a.components,
                    keops_cache=os.path.abspath(os.path.join(out_dir or ".", "keops_cache")) if out_dir else None)
        records += run_worker_process(spec, a.timeout)
    text = render(records, meta)
    print(text)
    if out_dir:
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"meta": meta, "records": records}, f, indent=1)
        png = plot(records, meta, os.path.join(out_dir, "results.png"))
        print(f"\nwrote {out_dir}/results.md, results.json" + (", results.png" if png else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
