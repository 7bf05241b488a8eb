"""Fused Triton kernels of ``log_qz`` (forward and backward) for NVIDIA GPUs.

Math: tcvae_kernels/reference.py. Same base-2 formulation as the CPU kernel (csrc/tcvae_cpu.cpp):
for query i, component j and dimension d,

    x2[i,j,d] = c2[d,j] - (z[i,d] - mu[d,j])^2 · h2[d,j] = l[i,j,d]·log2 e
                with h2 = 0.5·exp(-logvar)·log2 e, c2 = -0.5·(logvar + log 2π)·log2 e
    dw[i,j]   = (w_self - w_other)·log2 e at j = s_i, (w_next - w_other)·log2 e at j = s_i+1 mod K
    log_qz_dims[i,d] = w_other + ln2 · log2(sum_j 2^(x2 + dw))
    log_qz[i]        = w_other + ln2 · log2(sum_j 2^(S[i,j] + dw)),  S = sum_d x2  (online max)

2^x2 cannot overflow (finite h means x2 < 64 in float32), so the marginal sums need no running
maximum; sums that underflow below 2^-60 (z far from every component) are recomputed exactly.

Tiling (FlashAttention-like, with D as the reduction loop instead of a matmul): a program owns
BLOCK_M query rows and a slice of the components (split-K, so small batches still fill the GPU);
for each [BLOCK_M, BLOCK_K] tile it loops over d, adding x2 into the joint tile S (elementwise, in a
fixed order, so every kernel recomputes S bitwise) and adding the row sums of 2^(x2 + dw) into the
marginal accumulators (global [M, D] scratch owned by the program: any D works, there is no
[BLOCK_M, D] register tile; large D only lengthens the loop). Memory: O((M + K)·D + splits·M·D).

Rows whose marginal sum underflows 2^-60 (z far from every component) are recomputed
exactly by ``_marginal_exact_kernel`` (two passes: maximum, then sum); its programs exit at once
when their rows need nothing, so no host synchronisation is needed.

Backward (recompute): G = a_i·2^((S + dw - m_i) - r_i) + b_id·2^((x2 + dw - m_id) - r_id), with
the forward's saved (m, r). ``_bwd_rows_kernel`` accumulates grad_z; the column gradients (mu,
logvar) either come from the same kernel through atomics (default: one pass of exponentials) or,
with ``deterministic=True``, from ``_bwd_cols_kernel``, a second pass over the components that
reduces over queries in a fixed order (twice the exponentials, bitwise reproducible).

Runs unchanged under ``TRITON_INTERPRET=1`` on CPU tensors (how CI tests it, at small sizes).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._autograd import make_backward, no_double_backward, setup_context, setup_nothing

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
LOG_2PI = math.log(2.0 * math.pi)
TINY = 2.0**-60  # marginal sums below this are recomputed exactly

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: The autotuning set (keyed on D and dtype), each config also exercised by the interpreter tests.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_K=64, num_warps=4),
    dict(BLOCK_M=128, BLOCK_K=64, num_warps=8),
    dict(BLOCK_M=64, BLOCK_K=32, num_warps=4),
    dict(BLOCK_M=32, BLOCK_K=128, num_warps=4),
]


@triton.jit
def _weight_corrections(rows, cols, K, offset, consts_ptr):
    """dw [BLOCK_M, BLOCK_K] in base 2: the self / next corrections of rows at columns.
    consts_ptr: [3] in the compute dtype: (w_self - w_other)·log2e, (w_next - w_other)·log2e, 0.5·log2e."""
    d_self = tl.load(consts_ptr)
    d_next = tl.load(consts_ptr + 1)
    s = rows + offset
    has_self = (s >= 0) & (s < K)
    nxt = tl.where(s + 1 == K, 0, s + 1)
    is_self = (cols[None, :] == s[:, None]) & has_self[:, None]
    is_next = (cols[None, :] == nxt[:, None]) & has_self[:, None] & (nxt[:, None] != s[:, None])
    return tl.where(is_self, d_self, tl.where(is_next, d_next, 0.0))


@triton.jit
def _x2_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, d, K, D):
    """x2[rows, cols, d] as a [BLOCK_M, BLOCK_K] tile; masked components give -inf."""
    zd = tl.load(z_ptr + rows * D + d, mask=row_ok, other=0.0)  # z[rows, d]
    mu = tl.load(mu_ptr + d * K + cols, mask=col_ok, other=0.0)  # mu_t[d, cols]
    h2 = tl.load(h2_ptr + d * K + cols, mask=col_ok, other=1.0)  # h2_t[d, cols]
    c2 = tl.load(c2_ptr + d * K + cols, mask=col_ok, other=float("-inf"))  # c2_t[d, cols]
    diff = zd[:, None] - mu[None, :]
    return c2[None, :] - diff * diff * h2[None, :], diff, h2


@triton.jit
def _fwd_kernel(
    z_ptr,  # [M, D] queries, row-major
    mu_ptr,  # [D, K] component means, transposed
    h2_ptr,  # [D, K] 0.5·exp(-logvar)·log2 e
    c2_ptr,  # [D, K] -0.5·(logvar + log 2π)·log2 e
    acc_ptr,  # [SPLITS, M, D] out: marginal sums sum_j 2^(x2 + dw) over this split's components
    jm_ptr,  # [SPLITS, M] out: joint running maximum (base 2) of this split
    js_ptr,  # [SPLITS, M] out: joint sum of 2^(S + dw - jm) of this split
    M, K, D, offset, consts_ptr, SPLITS,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    k_per_split = tl.cdiv(tl.cdiv(K, SPLITS), BLOCK_K) * BLOCK_K  # components of this split
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    acc_base = acc_ptr + split * M * D
    m_run = tl.full([BLOCK_M], float("-inf"), z_ptr.dtype.element_ty)
    s_run = tl.zeros([BLOCK_M], z_ptr.dtype.element_ty)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        col_ok = cols < k_hi
        dw = _weight_corrections(rows, cols, K, offset, consts_ptr)
        S = tl.zeros([BLOCK_M, BLOCK_K], z_ptr.dtype.element_ty)
        for d in range(D):
            x, diff, h2 = _x2_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, d, K, D)
            S += x  # S[i, j] = sum_d x2, in the order d = 0, 1, ... (bitwise in every kernel)
            part = tl.sum(tl.exp2(x + dw), axis=1)  # marginal: 2^(x2 + dw) cannot overflow
            a_ptrs = acc_base + rows * D + d
            tl.store(a_ptrs, tl.load(a_ptrs, mask=row_ok, other=0.0) + part, mask=row_ok)
        L = S + dw
        m_new = tl.maximum(m_run, tl.max(L, axis=1), propagate_nan=tl.PropagateNan.ALL)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: shift by 0
        s_run = s_run * tl.exp2(m_run - m_safe) + tl.sum(tl.exp2(L - m_safe[:, None]), axis=1)
        m_run = m_new
    tl.store(jm_ptr + split * M + rows, m_run, mask=row_ok)
    tl.store(js_ptr + split * M + rows, s_run, mask=row_ok)


@triton.jit
def _marginal_exact_kernel(
    z_ptr, mu_ptr, h2_ptr, c2_ptr,  # as in _fwd_kernel
    acc_ptr,  # [M, D] marginal sums over all components
    m_ptr,  # [M, D] out (only where acc < tiny): exact maximum of x2 + dw over components
    r_ptr,  # [M, D] out (same rows): log2 sum_j 2^(x2 + dw - m)
    M, K, D, offset, consts_ptr, tiny,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    n_need = tl.full([], 0, tl.int32)
    for d in range(D):
        a = tl.load(acc_ptr + rows * D + d, mask=row_ok, other=1.0)
        n_need += tl.sum((a < tiny).to(tl.int32), axis=0)  # NaN < tiny is false: NaN stays NaN
    if n_need > 0:
        for d in range(D):
            a = tl.load(acc_ptr + rows * D + d, mask=row_ok, other=1.0)
            need = (a < tiny) & row_ok
            mx = tl.full([BLOCK_M], float("-inf"), z_ptr.dtype.element_ty)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
                col_ok = cols < K
                x, diff, h2 = _x2_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, d, K, D)
                x = x + _weight_corrections(rows, cols, K, offset, consts_ptr)
                mx = tl.maximum(mx, tl.max(x, axis=1), propagate_nan=tl.PropagateNan.ALL)
            m_safe = tl.where(mx == float("-inf"), 0.0, mx)
            sm = tl.zeros([BLOCK_M], z_ptr.dtype.element_ty)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
                col_ok = cols < K
                x, diff, h2 = _x2_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, d, K, D)
                x = x + _weight_corrections(rows, cols, K, offset, consts_ptr)
                sm += tl.sum(tl.exp2(x - m_safe[:, None]), axis=1)
            # all -inf: r = 0 (value -inf); a NaN term (max reductions may skip NaN) keeps r = NaN
            r = tl.where((mx == float("-inf")) & (sm == sm), 0.0, tl.log2(sm))
            tl.store(m_ptr + rows * D + d, mx, mask=need)
            tl.store(r_ptr + rows * D + d, r, mask=need)


@triton.jit
def _joint_softmax_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, dw, a, pm, pr, K, D):
    """a_i · 2^((S + dw - m_i) - r_i) [BLOCK_M, BLOCK_K], S = sum_d x2 recomputed as in the forward."""
    S = tl.zeros([rows.shape[0], cols.shape[0]], z_ptr.dtype.element_ty)
    for d in range(D):
        x, diff, h2 = _x2_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, d, K, D)
        S += x
    return a[:, None] * tl.exp2((S + dw - pm[:, None]) - pr[:, None])


@triton.jit
def _gradient_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, qm_ptr, qr_ptr, b_ptr, consts_ptr, rows, cols, row_ok, col_ok,
                   d, dw, P, K, D):
    """For dimension d: U = G·diff·h2 and V = G·(diff²·h2 - 0.5·log2e), G = P + b·2^((x2 + dw - m) - r)."""
    x, diff, h2 = _x2_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, d, K, D)
    qm = tl.load(qm_ptr + rows * D + d, mask=row_ok, other=0.0)
    qr = tl.load(qr_ptr + rows * D + d, mask=row_ok, other=0.0)
    bd = tl.load(b_ptr + rows * D + d, mask=row_ok, other=0.0)
    Q = tl.exp2((x + dw - qm[:, None]) - qr[:, None])  # marginal softmax
    G = tl.where(row_ok[:, None] & col_ok[None, :], P + bd[:, None] * Q, 0.0)
    U = G * diff * h2[None, :]
    V = G * (diff * diff * h2[None, :] - tl.load(consts_ptr + 2))
    return U, V


@triton.jit
def _bwd_rows_kernel(
    z_ptr, mu_ptr, h2_ptr, c2_ptr,  # as in _fwd_kernel
    jm_ptr, jr_ptr,  # [M] joint (m, r) saved by the forward
    qm_ptr, qr_ptr,  # [M, D] marginal (m, r) saved by the forward
    a_ptr,  # [M] upstream gradient of log_qz
    b_ptr,  # [M, D] upstream gradient of log_qz_dims
    gz_ptr,  # [SPLITS, M, D] out: sum_j U over this split's components (U = G·diff·h2)
    gmu_ptr,  # [D, K] out (ATOMIC): sum_i U, accumulated with atomics
    glv_ptr,  # [D, K] out (ATOMIC): sum_i G·(diff^2·h2 - 0.5·log2e)
    M, K, D, offset, consts_ptr, SPLITS,
    ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    k_per_split = tl.cdiv(tl.cdiv(K, SPLITS), BLOCK_K) * BLOCK_K  # components of this split
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    gz_base = gz_ptr + split * M * D
    a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)
    pm = tl.load(jm_ptr + rows, mask=row_ok, other=0.0)
    pr = tl.load(jr_ptr + rows, mask=row_ok, other=0.0)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        col_ok = cols < k_hi
        dw = _weight_corrections(rows, cols, K, offset, consts_ptr)
        P = _joint_softmax_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, dw, a, pm, pr, K, D)
        for d in range(D):
            U, V = _gradient_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, qm_ptr, qr_ptr, b_ptr, consts_ptr, rows, cols,
                                  row_ok, col_ok, d, dw, P, K, D)
            g_ptrs = gz_base + rows * D + d
            tl.store(g_ptrs, tl.load(g_ptrs, mask=row_ok, other=0.0) + tl.sum(U, axis=1), mask=row_ok)
            if ATOMIC:
                tl.atomic_add(gmu_ptr + d * K + cols, tl.sum(U, axis=0), mask=col_ok)
                tl.atomic_add(glv_ptr + d * K + cols, tl.sum(V, axis=0), mask=col_ok)


@triton.jit
def _bwd_cols_kernel(
    z_ptr, mu_ptr, h2_ptr, c2_ptr, jm_ptr, jr_ptr, qm_ptr, qr_ptr, a_ptr, b_ptr,  # as in _bwd_rows_kernel
    gmu_ptr,  # [SPLITS, D, K] out: sum over this split's queries of U
    glv_ptr,  # [SPLITS, D, K] out: sum over this split's queries of G·(diff^2·h2 - 0.5·log2e)
    M, K, D, offset, consts_ptr, SPLITS,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_k = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    col_ok = cols < K
    m_per_split = tl.cdiv(tl.cdiv(M, SPLITS), BLOCK_M) * BLOCK_M  # queries of this split
    m_lo = split * m_per_split
    m_hi = tl.minimum(m_lo + m_per_split, M)
    gmu_base = gmu_ptr + split * D * K
    glv_base = glv_ptr + split * D * K
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = rows < m_hi
        dw = _weight_corrections(rows, cols, K, offset, consts_ptr)
        a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)
        pm = tl.load(jm_ptr + rows, mask=row_ok, other=0.0)
        pr = tl.load(jr_ptr + rows, mask=row_ok, other=0.0)
        P = _joint_softmax_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, rows, cols, row_ok, col_ok, dw, a, pm, pr, K, D)
        for d in range(D):
            U, V = _gradient_tile(z_ptr, mu_ptr, h2_ptr, c2_ptr, qm_ptr, qr_ptr, b_ptr, consts_ptr, rows, cols,
                                  row_ok, col_ok, d, dw, P, K, D)
            p_mu = gmu_base + d * K + cols
            p_lv = glv_base + d * K + cols
            tl.store(p_mu, tl.load(p_mu, mask=col_ok, other=0.0) + tl.sum(U, axis=0), mask=col_ok)
            tl.store(p_lv, tl.load(p_lv, mask=col_ok, other=0.0) + tl.sum(V, axis=0), mask=col_ok)


@triton.jit
def _exp2_peak_kernel(out_ptr, n_iter, BLOCK: tl.constexpr):
    """BLOCK independent exp2 chains per program, n_iter exps each, values kept in registers."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.arange(0, BLOCK).to(tl.float32) * -1e-3
    acc = tl.zeros([BLOCK], tl.float32)
    for _ in range(n_iter):
        acc += tl.exp2(x)  # one MUFU op and two adds per element and iteration
        x = x - 1e-6
    tl.store(out_ptr + offs, acc)


def exp2_peak(device: torch.device, n_iter: int = 4096, block: int = 1024) -> float:
    """Measured exp2 throughput (exps/s) of the GPU: the MUFU peak the kernels are compared with."""
    programs = 8 * torch.cuda.get_device_properties(device).multi_processor_count
    out = torch.empty(programs * block, device=device)
    run = lambda: _exp2_peak_kernel[(programs,)](out, n_iter, BLOCK=block, num_warps=8)  # noqa: E731
    run()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        run()
        end.record()
        torch.cuda.synchronize(device)
        best = min(best, start.elapsed_time(end) / 1e3)
    return programs * block * n_iter / best


# ----------------------------------------------------------------------------- host side

_forced_config: dict | None = None
_forced_splits: int | None = None


class force_config:
    """Context manager: launch with one entry of CONFIGS instead of autotuning, and optionally a
    fixed number of split-K slices (tests: every config and the split path under the interpreter)."""

    def __init__(self, config: dict | None = None, splits: int | None = None):
        self.config, self.splits = config, splits

    def __enter__(self):
        global _forced_config, _forced_splits
        self.saved = (_forced_config, _forced_splits)
        _forced_config, _forced_splits = self.config, self.splits
        return self

    def __exit__(self, *exc):
        global _forced_config, _forced_splits
        _forced_config, _forced_splits = self.saved


def _autotuned(kernel, reset):
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_K": c["BLOCK_K"]}, num_warps=c["num_warps"])
                 for c in CONFIGS],
        key=["D"],  # the autotuner also keys on the dtypes of the tensor arguments
        reset_to_zero=reset,
    )(kernel)


_fwd_tuned = _autotuned(_fwd_kernel, ["acc_ptr"])
_bwd_rows_tuned = _autotuned(_bwd_rows_kernel, ["gz_ptr", "gmu_ptr", "glv_ptr"])
_bwd_cols_tuned = _autotuned(_bwd_cols_kernel, ["gmu_ptr", "glv_ptr"])


def _launch(raw, tuned, grid, *args, **const):
    """Launch ``raw`` with a fixed config (forced, or the first one under the interpreter), else ``tuned``."""
    from torch.library import wrap_triton

    cfg = _forced_config or (CONFIGS[0] if INTERPRET or tuned is None else None)
    if cfg is None:
        wrap_triton(tuned)[grid](*args, **const)
    else:
        meta = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_K": cfg["BLOCK_K"]}
        wrap_triton(raw)[grid(meta)](*args, **const, **meta, num_warps=cfg["num_warps"])


def _num_splits(rows: int, cols: int, device: torch.device, block: int = 64) -> int:
    """Split the reduction axis so that about two programs per SM run (FlashDecoding-style)."""
    if _forced_splits is not None:
        return max(1, min(_forced_splits, cols))
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(rows, block)
    return max(1, min(triton.cdiv(2 * sms, row_blocks), triton.cdiv(cols, 4 * block)))


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(mu, logvar, w_self, w_next, w_other):
    """Components transposed to [D, K] in base 2 (float64 arithmetic, then the compute dtype), and
    the constants (w_self - w_other)·log2e, (w_next - w_other)·log2e, 0.5·log2e."""
    acc = _acc_dtype(mu.dtype)
    lv = logvar.to(torch.float64)
    comps = (
        mu.to(acc).t().contiguous(),
        (0.5 * torch.exp(-lv) * LOG2E).to(acc).t().contiguous(),
        (-0.5 * (lv + LOG_2PI) * LOG2E).to(acc).t().contiguous(),
    )
    consts = torch.tensor([(w_self - w_other) * LOG2E, (w_next - w_other) * LOG2E, 0.5 * LOG2E],
                          dtype=acc, device=mu.device)
    return comps, consts


@torch.library.triton_op("tcvae_triton::log_qz", mutates_args=())
def log_qz_op(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, w_self: float, w_next: float,
              w_other: float, offset: int, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_qz [M], log_qz_dims [M, D], aux_q [M, 2], aux_qd [M, D, 2]) in the compute dtype; aux are
    the (m, r) logsumexp states in base 2 for the backward. ``deterministic`` only travels to it."""
    acc = _acc_dtype(z.dtype)
    m, d = z.shape
    k = mu.shape[0]
    (mu_t, h2_t, c2_t), consts = _prepare(mu, logvar, w_self, w_next, w_other)
    zc = z.to(acc).contiguous()
    splits = _num_splits(m, k, z.device)
    part = torch.zeros((splits, m, d), dtype=acc, device=z.device)
    jm = torch.empty((splits, m), dtype=acc, device=z.device)
    js = torch.empty((splits, m), dtype=acc, device=z.device)
    _launch(_fwd_kernel, _fwd_tuned, lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), splits),
            zc, mu_t, h2_t, c2_t, part, jm, js, m, k, d, offset, consts, splits)
    # joint: combine the splits' (max, sum) states
    top = jm.max(dim=0).values
    top_safe = torch.where(top == float("-inf"), torch.zeros_like(top), top)
    r = torch.log2((js * torch.exp2(jm - top_safe)).sum(dim=0))
    r = torch.where((top == float("-inf")) & ~torch.isnan(r), torch.zeros_like(r), r)  # NaN stays NaN
    aux_q = torch.stack([top, r], dim=1)
    # marginals: sum of the splits; sums below 2^-60 recomputed exactly
    acc_sum = part.sum(dim=0)
    qm = torch.zeros((m, d), dtype=acc, device=z.device)
    qr = torch.log2(acc_sum)
    _launch(_marginal_exact_kernel, None, lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),),
            zc, mu_t, h2_t, c2_t, acc_sum, qm, qr, m, k, d, offset, consts, TINY)
    aux_qd = torch.stack([qm, qr], dim=2)
    log_qz = (w_other + LN2 * (top.double() + r.double())).to(acc)
    log_qz_dims = (w_other + LN2 * (qm.double() + qr.double())).to(acc)
    return log_qz, log_qz_dims, aux_q, aux_qd


@torch.library.triton_op("tcvae_triton::log_qz_backward", mutates_args=())
def log_qz_backward_op(grad_q: torch.Tensor, grad_qd: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
                       logvar: torch.Tensor, aux_q: torch.Tensor, aux_qd: torch.Tensor, w_self: float,
                       w_next: float, w_other: float, offset: int,
                       deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_z, grad_mu, grad_logvar) in the inputs' dtypes."""
    acc = _acc_dtype(z.dtype)
    m, d = z.shape
    k = mu.shape[0]
    (mu_t, h2_t, c2_t), consts = _prepare(mu, logvar, w_self, w_next, w_other)
    zc = z.to(acc).contiguous()
    a = grad_q.to(acc).contiguous()
    b = grad_qd.to(acc).contiguous()
    jm, jr = aux_q[:, 0].contiguous(), aux_q[:, 1].contiguous()
    qm, qr = aux_qd[..., 0].contiguous(), aux_qd[..., 1].contiguous()
    splits = _num_splits(m, k, z.device)
    gz = torch.zeros((splits, m, d), dtype=acc, device=z.device)
    rows_grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), splits)  # noqa: E731
    common = (zc, mu_t, h2_t, c2_t, jm, jr, qm, qr, a, b)
    if deterministic:
        dummy = torch.zeros(1, dtype=acc, device=z.device)
        _launch(_bwd_rows_kernel, _bwd_rows_tuned, rows_grid, *common, gz, dummy, dummy,
                m, k, d, offset, consts, splits, ATOMIC=False)
        col_splits = _num_splits(k, m, z.device)
        gmu_p = torch.zeros((col_splits, d, k), dtype=acc, device=z.device)
        glv_p = torch.zeros((col_splits, d, k), dtype=acc, device=z.device)
        _launch(_bwd_cols_kernel, _bwd_cols_tuned, lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), col_splits),
                *common, gmu_p, glv_p, m, k, d, offset, consts, col_splits)
        gmu, glv = gmu_p.sum(dim=0), glv_p.sum(dim=0)
    else:
        gmu = torch.zeros((d, k), dtype=acc, device=z.device)
        glv = torch.zeros((d, k), dtype=acc, device=z.device)
        _launch(_bwd_rows_kernel, _bwd_rows_tuned, rows_grid, *common, gz, gmu, glv,
                m, k, d, offset, consts, splits, ATOMIC=True)
    grad_z = (-2.0 * LN2) * gz.sum(dim=0)
    grad_mu = (2.0 * LN2) * gmu.t()
    grad_lv = LN2 * glv.t()
    return grad_z.to(z.dtype), grad_mu.to(mu.dtype), grad_lv.to(logvar.dtype)


log_qz_op.register_autograd(make_backward(log_qz_backward_op), setup_context=setup_context)
log_qz_backward_op.register_autograd(no_double_backward, setup_context=setup_nothing)
