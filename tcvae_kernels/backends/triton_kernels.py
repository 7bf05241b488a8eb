"""Fused Triton kernels of ``log_qz`` (forward and backward) for NVIDIA GPUs.

The math: tcvae_kernels/reference.py; the design shared with the CUDA kernels (base 2, pre-scaled
components, no running maximum for the marginals, the exact fallback, split-K, the forward that sums
grad_z's terms): docs/kernels.md. What is particular to this file:

Layout, the point of the design: every reduction stays inside a thread. The forward works on
[BLOCK_K, BLOCK_M] tiles (components × queries) whose default layout gives each
thread whole columns (threadsPerWarp = [1, 32]): a thread owns BLOCK_M/(32·num_warps) queries and
loops over the tile's components in registers, so sums over components are register adds — no
shuffles, no barriers; sums of products are explicit FFMA chains (``_dot0``), one instruction per
element where ``tl.sum(a * b)``'s in-thread tree takes 1.5. The column backward uses [BLOCK_M, BLOCK_K] tiles (queries × components),
a thread owning components and summing over queries. Inputs are padded (queries to a multiple of
PAD_M, components to PAD_K) so no load or store needs a mask: padded components have s = 1, nm = 0,
c2 = -inf (x2 = -inf, weight 0); padded queries have z = 0 and zero upstream gradients.
    z_t   [D, MP]      queries transposed (contiguous over queries)
    comp  [D, 3, KP]   per dimension: s, nm, c2 over components
The weight corrections dw are non-zero on two components per query only: tiles that cannot hold
one (all but about BLOCK_M/BLOCK_K + 2 per row block) take a loop without them.

Forward: a program owns BLOCK_M queries and a slice of the components (split-K, so small batches
still fill the GPU); per tile it loops over d, adding x2 into the joint tile S (in the order
d = 0, 1, ..., so every kernel recomputes S bitwise) and the in-thread sums of 2^(x2 + dw) into the
marginal accumulators (global [SPLITS, D, MP] scratch owned by the program: any D works).
Backward: ``_fwd_kernel+grad`` sums grad_z's two terms (tn, jn) on its way; ``_bwd_cols_kernel``
(a program owns components, the reduction over queries in-thread) gives grad_mu and grad_logvar.

Runs unchanged under ``TRITON_INTERPRET=1`` on CPU tensors (how CI tests it, at small sizes);
``bench/gpu_report.py`` compiles every kernel and config for sm_80/sm_90 and reads
the machine code (registers, local memory, barriers, instructions per element).
"""

from __future__ import annotations

import math
import os

import torch
from torch.library import wrap_triton
import triton
import triton.language as tl

from .._autograd import make_backward, no_double_backward, setup_context, setup_nothing
from .._validation import accumulation_dtype
from ..estimators import LogWeights
from ..families import LAPLACE, get_family

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
LOG_2PI = math.log(2.0 * math.pi)
TINY = 2.0**-60  # marginal sums below this are recomputed exactly
PAD_M = 256  # queries are padded to a multiple of this (the largest BLOCK_M)
PAD_K = 256  # components likewise (the largest BLOCK_K)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: The autotuning sets (keyed on D, GRAD and dtype), each entry also exercised by the interpreter
#: tests. "rows": forward, tiles [BLOCK_K, BLOCK_M], a thread owning BLOCK_M/(32·num_warps) queries;
#: "cols": column backward, tiles [BLOCK_M, BLOCK_K], a thread owning BLOCK_K/(32·num_warps)
#: components. Every entry compiles without local memory and without barriers in its loops for
#: float32 at sm_80 and sm_90 (tests/kernels/test_gpu_code.py). maxnreg: ptxas otherwise stops at 128 or
#: 192 registers and spills. Pruned (bench/gpu_report.py): rows 256×32 and cols 32×256 / 64×128 (local
#: memory at 255 registers).
CONFIGS = [
    dict(rows=dict(BLOCK_M=128, BLOCK_K=32, num_warps=4, maxnreg=255),
         cols=dict(BLOCK_M=32, BLOCK_K=128, num_warps=4, maxnreg=255)),
    dict(rows=dict(BLOCK_M=256, BLOCK_K=16, num_warps=4, maxnreg=255),
         cols=dict(BLOCK_M=16, BLOCK_K=256, num_warps=4, maxnreg=255)),
    dict(rows=dict(BLOCK_M=64, BLOCK_K=32, num_warps=2, maxnreg=255),
         cols=dict(BLOCK_M=32, BLOCK_K=64, num_warps=2, maxnreg=255)),
]


#: Under TRITON_INTERPRET=1 (CPU tests) unless a test forces an entry of CONFIGS: 8 × 8 tiles, so
#: inputs pad to 8 and a case of 17 rows and components (3 tiles each way: interior, edge, and
#: tiles with and without the estimator's weights) costs the interpreter, whose cost is per
#: operation and tile, a fraction of what 32 × 32 tiles need for the same paths (65 rows).
INTERPRET_CONFIG = dict(rows=dict(BLOCK_M=8, BLOCK_K=8, num_warps=1, maxnreg=255),
                        cols=dict(BLOCK_M=8, BLOCK_K=8, num_warps=1, maxnreg=255))


@triton.jit
def _u(z, s, p, LAPLACE: tl.constexpr):
    """Normal: u = s·z + p (p = -mu·s, one FMA); Laplace: u = z - p (p = mu: exactly 0 at z = mu)."""
    if LAPLACE:
        return z - p
    else:
        return tl.fma(s, z, p)


@triton.jit
def _minus_pen(u, s, acc, LAPLACE: tl.constexpr):
    """acc - pen: pen = u² (Normal, one FMA) or |u|·s (Laplace); how every kernel forms
    x2 = c2 - pen and the joint sum Sq -= pen (so both are recomputed bitwise)."""
    if LAPLACE:
        return tl.fma(-tl.abs(u), s, acc)
    else:
        return tl.fma(-u, u, acc)


@triton.jit
def _slope(u, LAPLACE: tl.constexpr):
    """d pen / du up to the family's factor (2 for the Normal, 1 for the Laplace): u, or sign(u)
    with the subgradient 0 at u = 0."""
    if LAPLACE:
        return (u > 0).to(u.dtype) - (u < 0).to(u.dtype)
    else:
        return u


@triton.jit
def _pen_minus(u, s, c, LAPLACE: tl.constexpr):
    """pen - c (the logvar / log-scale term of the backward)."""
    if LAPLACE:
        return tl.fma(tl.abs(u), s, -c)
    else:
        return tl.fma(u, u, -c)


@triton.jit
def _x2(z2, s2, nm2, c2_2, LAPLACE: tl.constexpr):
    """u (:func:`_u`) and x2 = c2 - pen for broadcast operands: the single expression every kernel
    evaluates."""
    u = _u(z2, s2, nm2, LAPLACE)
    return u, _minus_pen(u, s2, c2_2, LAPLACE)


@triton.jit
def _dw(rows2, cols2, K, offset, consts_ptr):
    """dw for broadcast row / column indices: d_self at j = s_i = i + offset (0 <= s_i < K), d_next
    at j = s_i + 1 mod K (unless that is s_i itself, K = 1), else 0."""
    d_self = tl.load(consts_ptr)  # consts [3] in the compute dtype: d_self, d_next, log2(e)/2
    d_next = tl.load(consts_ptr + 1)
    s = rows2 + offset
    has_self = (s >= 0) & (s < K)
    nxt = tl.where(s + 1 == K, 0, s + 1)
    is_self = (cols2 == s) & has_self
    is_next = (cols2 == nxt) & has_self & (nxt != s)
    return tl.where(is_self, d_self, tl.where(is_next, d_next, 0.0))


@triton.jit
def _touches_weights(r0, k0, offset, BM: tl.constexpr, BK: tl.constexpr):
    """Whether the tile rows [r0, r0+BM) × columns [k0, k0+BK) may hold a self or next weight
    (conservative: the columns meet [r0+offset, r0+offset+BM], or hold column 0, where s+1 wraps)."""
    return ((k0 <= r0 + offset + BM) & (k0 + BK > r0 + offset)) | (k0 == 0)


@triton.jit
def _halves(a, R: tl.constexpr, N: tl.constexpr):
    """[R, N] -> a[:, 0::2], a[:, 1::2] ([R, N/2] each); in-thread when a thread holds whole rows."""
    return tl.split(tl.reshape(a, [R, N // 2, 2]))


@triton.jit
def _chain2(a, b, acc):
    a0, a1 = tl.split(a)
    b0, b1 = tl.split(b)
    return tl.fma(a1, b1, tl.fma(a0, b0, acc))


@triton.jit
def _chain4(a, b, acc, R: tl.constexpr):
    a0, a1 = _halves(a, R, 4)
    b0, b1 = _halves(b, R, 4)
    return _chain2(a1, b1, _chain2(a0, b0, acc))


@triton.jit
def _chain8(a, b, acc, R: tl.constexpr):
    a0, a1 = _halves(a, R, 8)
    b0, b1 = _halves(b, R, 8)
    return _chain4(a1, b1, _chain4(a0, b0, acc, R), R)


@triton.jit
def _chain16(a, b, acc, R: tl.constexpr):
    a0, a1 = _halves(a, R, 16)
    b0, b1 = _halves(b, R, 16)
    return _chain8(a1, b1, _chain8(a0, b0, acc, R), R)


@triton.jit
def _chain32(a, b, acc, R: tl.constexpr):
    a0, a1 = _halves(a, R, 32)
    b0, b1 = _halves(b, R, 32)
    return _chain16(a1, b1, _chain16(a0, b0, acc, R), R)


@triton.jit
def _chain64(a, b, acc, R: tl.constexpr):
    a0, a1 = _halves(a, R, 64)
    b0, b1 = _halves(b, R, 64)
    return _chain32(a1, b1, _chain32(a0, b0, acc, R), R)


@triton.jit
def _dot0(a, b, acc, N: tl.constexpr, R: tl.constexpr):
    """acc[r] + sum_n a[n, r]·b[n, r] for [N, R] tiles whose axis 0 lies in one thread, as one FFMA
    chain per r (fma(a_n, b_n, ...) in a fixed order). tl.sum(a * b, axis=0) is a tree that fuses
    only its leaves: 1.5 instructions per element against 1 here."""
    tl.static_assert(N >= 2 and N <= 64 and (N & (N - 1)) == 0, "_dot0: N must be a power of 2 in [2, 64]")
    at, bt = tl.trans(a), tl.trans(b)  # [R, N]
    if N == 2:
        return _chain2(at, bt, acc)
    elif N == 4:
        return _chain4(at, bt, acc, R)
    elif N == 8:
        return _chain8(at, bt, acc, R)
    elif N == 16:
        return _chain16(at, bt, acc, R)
    elif N == 32:
        return _chain32(at, bt, acc, R)
    else:
        return _chain64(at, bt, acc, R)


@triton.jit
def _fwd_dims(z_ptr, comp_ptr, acc_ptr, t_ptr, rows, cols, Sq, dw, MP, KP, D, WITH_DW: tl.constexpr,
              GRAD: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, LAPLACE: tl.constexpr):
    """The d loop of one forward tile [BK, BM]: Sq -= pen(u); acc[d, rows] += sum_j e, e = 2^(x2 + dw);
    with GRAD also t[d, rows] += sum_j e·slope(u)·s."""
    for d in range(D):
        zd = tl.load(z_ptr + d * MP + rows)  # z_t[d, rows]           [BM]
        cp = comp_ptr + d * 3 * KP + cols  # comp[d, :, cols]
        s = tl.load(cp)[:, None]
        u, x = _x2(zd[None, :], s, tl.load(cp + KP)[:, None], tl.load(cp + 2 * KP)[:, None], LAPLACE)
        Sq = _minus_pen(u, s, Sq, LAPLACE)
        if WITH_DW:
            x = x + dw
        e = tl.exp2(x)
        a_ptrs = acc_ptr + d * MP + rows
        tl.store(a_ptrs, tl.load(a_ptrs) + tl.sum(e, axis=0))  # in-thread sum over components
        if GRAD:
            t_ptrs = t_ptr + d * MP + rows
            tl.store(t_ptrs, _dot0(e * _slope(u, LAPLACE), tl.broadcast_to(s, [BK, BM]), tl.load(t_ptrs), BK, BM))
    return Sq


@triton.jit
def _fwd_joint_dims(z_ptr, comp_ptr, j_ptr, rows, cols, P, scale, MP, KP, D, BM: tl.constexpr, BK: tl.constexpr,
                    LAPLACE: tl.constexpr):
    """The joint gradient term of one forward tile: j[d, rows] = j·scale + sum_j P·slope(u)·s."""
    for d in range(D):
        zd = tl.load(z_ptr + d * MP + rows)
        cp = comp_ptr + d * 3 * KP + cols
        s = tl.load(cp)[:, None]
        u = _u(zd[None, :], s, tl.load(cp + KP)[:, None], LAPLACE)
        j_ptrs = j_ptr + d * MP + rows
        tl.store(j_ptrs, _dot0(P * _slope(u, LAPLACE), tl.broadcast_to(s, [BK, BM]), tl.load(j_ptrs) * scale, BK, BM))


@triton.jit
def _fwd_kernel(
    z_ptr,  # [D, MP] queries, transposed
    comp_ptr,  # [D, 3, KP] s, nm, c2
    csum_ptr,  # [KP] sum_d c2 (padding: -inf)
    acc_ptr,  # [SPLITS, D, MP] out: marginal sums sum_j e over this split's components, e = 2^(x2 + dw)
    t_ptr,  # [SPLITS, D, MP] out (GRAD): sum_j e·u·s
    j_ptr,  # [SPLITS, D, MP] out (GRAD): sum_j 2^(L - jm)·u·s, L = S + dw
    jm_ptr,  # [SPLITS, MP] out: joint running maximum (base 2) of this split
    js_ptr,  # [SPLITS, MP] out: joint sum of 2^(L - jm) of this split
    MP, KP, K, D, offset, consts_ptr, SPLITS,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GRAD: tl.constexpr, LAPLACE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    r0 = pid_m * BLOCK_M
    rows = tl.max_contiguous(r0 + tl.arange(0, BLOCK_M), 1)  # no vector accesses: one layout for all [BM]
    k_per_split = tl.cdiv(tl.cdiv(KP, SPLITS), BLOCK_K) * BLOCK_K  # components of this split
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, KP)
    base = split.to(tl.int64) * D * MP
    m_run = tl.full([BLOCK_M], float("-inf"), z_ptr.dtype.element_ty)
    s_run = tl.zeros([BLOCK_M], z_ptr.dtype.element_ty)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        Sq = tl.zeros([BLOCK_K, BLOCK_M], z_ptr.dtype.element_ty)
        csum = tl.load(csum_ptr + cols)[:, None]
        if _touches_weights(r0, k0, offset, BLOCK_M, BLOCK_K):
            dw = _dw(rows[None, :], cols[:, None], K, offset, consts_ptr)
            L = (_fwd_dims(z_ptr, comp_ptr, acc_ptr + base, t_ptr + base, rows, cols, Sq, dw, MP, KP, D, True, GRAD,
                           BLOCK_M, BLOCK_K, LAPLACE)
                 + csum) + dw
        else:
            L = _fwd_dims(z_ptr, comp_ptr, acc_ptr + base, t_ptr + base, rows, cols, Sq, 0.0, MP, KP, D, False,
                          GRAD, BLOCK_M, BLOCK_K, LAPLACE) + csum
        m_new = tl.maximum(m_run, tl.max(L, axis=0), propagate_nan=tl.PropagateNan.ALL)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: shift by 0
        scale = tl.exp2(m_run - m_safe)
        P = tl.exp2(L - m_safe[None, :])
        s_run = s_run * scale + tl.sum(P, axis=0)
        if GRAD:
            _fwd_joint_dims(z_ptr, comp_ptr, j_ptr + base, rows, cols, P, scale, MP, KP, D, BLOCK_M, BLOCK_K, LAPLACE)
        m_run = m_new
    tl.store(jm_ptr + split * MP + rows, m_run)
    tl.store(js_ptr + split * MP + rows, s_run)


@triton.jit
def _marginal_exact_kernel(
    z_ptr, comp_ptr,  # as in _fwd_kernel
    acc_ptr,  # [D, MP] marginal sums over all components
    m_ptr,  # [D, MP] out (only where acc < tiny): exact maximum of x2 + dw over components
    r_ptr,  # [D, MP] out (same entries): log2 sum_j 2^(x2 + dw - m)
    t_ptr,  # [D, MP] out (same entries, GRAD): sum_j 2^(x2 + dw - m - r)·u·s
    M, MP, KP, K, D, offset, consts_ptr, tiny,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GRAD: tl.constexpr, LAPLACE: tl.constexpr,
):
    """Two passes (maximum, then sum) for the rare rows whose marginal sums underflowed; programs
    whose rows need nothing exit after reading acc, so the host never synchronises."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    need_any = tl.zeros([BLOCK_M], tl.int32)
    for d in range(D):  # per-thread flags in the loop, one reduction across threads after it
        a = tl.load(acc_ptr + d * MP + rows)
        need_any = need_any | ((a < tiny) & row_ok).to(tl.int32)  # NaN < tiny is false: NaN stays
    if tl.sum(need_any, axis=0) > 0:
        for d in range(D):
            need = (tl.load(acc_ptr + d * MP + rows) < tiny) & row_ok
            zd = tl.load(z_ptr + d * MP + rows)
            mx = tl.full([BLOCK_M], float("-inf"), z_ptr.dtype.element_ty)
            for k0 in range(0, KP, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                cp = comp_ptr + d * 3 * KP + cols
                u, x = _x2(zd[None, :], tl.load(cp)[:, None], tl.load(cp + KP)[:, None], tl.load(cp + 2 * KP)[:, None],
                           LAPLACE)
                x = x + _dw(rows[None, :], cols[:, None], K, offset, consts_ptr)
                mx = tl.maximum(mx, tl.max(x, axis=0), propagate_nan=tl.PropagateNan.ALL)
            m_safe = tl.where(mx == float("-inf"), 0.0, mx)
            sm = tl.zeros([BLOCK_M], z_ptr.dtype.element_ty)
            st = tl.zeros([BLOCK_M], z_ptr.dtype.element_ty)
            for k0 in range(0, KP, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                cp = comp_ptr + d * 3 * KP + cols
                s = tl.load(cp)[:, None]
                u, x = _x2(zd[None, :], s, tl.load(cp + KP)[:, None], tl.load(cp + 2 * KP)[:, None], LAPLACE)
                x = x + _dw(rows[None, :], cols[:, None], K, offset, consts_ptr)
                e = tl.exp2(x - m_safe[None, :])
                sm += tl.sum(e, axis=0)
                if GRAD:
                    st += tl.sum(e * _slope(u, LAPLACE) * s, axis=0)
            # all -inf: r = 0 (value -inf); a NaN term (max reductions may skip NaN) keeps r = NaN
            r = tl.where((mx == float("-inf")) & (sm == sm), 0.0, tl.log2(sm))
            tl.store(m_ptr + d * MP + rows, mx, mask=need)
            tl.store(r_ptr + d * MP + rows, r, mask=need)
            if GRAD:
                tl.store(t_ptr + d * MP + rows, tl.where(sm > 0, st / sm, 0.0), mask=need)


@triton.jit
def _joint_sq(z_ptr, comp_ptr, z_rows, cols, Sq, MP, KP, D, LAPLACE: tl.constexpr):
    """Sq = -sum_d pen(u) over a [BM, BK] tile (column backward), recomputed exactly as in the forward."""
    for d in range(D):
        zd = tl.load(z_ptr + d * MP + z_rows)
        cp = comp_ptr + d * 3 * KP + cols
        s = tl.load(cp)[None, :]
        u = _u(zd[:, None], s, tl.load(cp + KP)[None, :], LAPLACE)
        Sq = _minus_pen(u, s, Sq, LAPLACE)
    return Sq


@triton.jit
def _bwd_cols_dims(z_ptr, comp_ptr, bq_ptr, qm_ptr, gmu_ptr, glv_ptr, rows, cols, P, dw, MP, KP, D, consts_ptr,
                   WITH_DW: tl.constexpr, WITH_QM: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                   LAPLACE: tl.constexpr):
    """gmu[d, cols] += sum_i G·slope(u) and glv[d, cols] += sum_i G·(pen(u) - c) over one [BM, BK] tile
    (Normal: u and u² - log2(e)/2; Laplace: sign(u) and |u| - log2(e); c = consts[2]),
    G = P + bq·2^(x2 + dw - qm) (WITH_QM: the tile holds rows of the exact path, else qm = 0)."""
    const_log2e = tl.load(consts_ptr + 2)
    for d in range(D):
        zd = tl.load(z_ptr + d * MP + rows)
        cp = comp_ptr + d * 3 * KP + cols
        s = tl.load(cp)[None, :]
        u, x = _x2(zd[:, None], s, tl.load(cp + KP)[None, :], tl.load(cp + 2 * KP)[None, :], LAPLACE)
        if WITH_DW:
            x = x + dw
        if WITH_QM:
            x = x - tl.load(qm_ptr + d * MP + rows)[:, None]
        bq = tl.load(bq_ptr + d * MP + rows)
        G = tl.fma(bq[:, None], tl.exp2(x), P)
        p_mu = gmu_ptr + d * KP + cols
        p_lv = glv_ptr + d * KP + cols
        tl.store(p_mu, _dot0(G, _slope(u, LAPLACE), tl.load(p_mu), BM, BK))  # in-thread sums over queries
        tl.store(p_lv, _dot0(G, _pen_minus(u, s, const_log2e, LAPLACE), tl.load(p_lv), BM, BK))


@triton.jit
def _bwd_cols_kernel(
    z_ptr, comp_ptr, csum_ptr,  # as in _fwd_kernel
    jm_ptr, jr_ptr,  # [MP] joint (m, r) saved by the forward (padded queries: m = +inf)
    a_ptr,  # [MP] upstream gradient of log_qz (0 on padded queries)
    bq_ptr,  # [D, MP] b·2^(-r) (b: upstream gradient of log_qz_dims)
    qm_ptr,  # [D, MP] marginal m saved by the forward (0 except on rows of the exact path)
    qflag_ptr,  # [MP] int32: 1 on rows of the exact path (some qm != 0)
    gmu_ptr,  # [SPLITS, D, KP] out: sum over this split's queries of G·u
    glv_ptr,  # [SPLITS, D, KP] out: sum over this split's queries of G·(u² - log2(e)/2)
    MP, KP, K, D, offset, consts_ptr, SPLITS,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, LAPLACE: tl.constexpr,
):
    pid_k = tl.program_id(0)
    split = tl.program_id(1)
    k0 = pid_k * BLOCK_K
    cols = tl.max_contiguous(k0 + tl.arange(0, BLOCK_K), 1)  # no vector accesses: one layout for all [BK]
    m_per_split = tl.cdiv(tl.cdiv(MP, SPLITS), BLOCK_M) * BLOCK_M  # queries of this split
    m_lo = split * m_per_split
    m_hi = tl.minimum(m_lo + m_per_split, MP)
    gmu_base = gmu_ptr + split.to(tl.int64) * D * KP
    glv_base = glv_ptr + split.to(tl.int64) * D * KP
    csum = tl.load(csum_ptr + cols)[None, :]
    for r0 in range(m_lo, m_hi, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        a = tl.load(a_ptr + rows)
        pm = tl.load(jm_ptr + rows)
        pr = tl.load(jr_ptr + rows)
        exact = tl.max(tl.load(qflag_ptr + rows), axis=0) > 0  # in-thread: a thread holds every row
        L = _joint_sq(z_ptr, comp_ptr, rows, cols, tl.zeros([BLOCK_M, BLOCK_K], z_ptr.dtype.element_ty),
                      MP, KP, D, LAPLACE) + csum
        if _touches_weights(r0, k0, offset, BLOCK_M, BLOCK_K):
            dw = _dw(rows[:, None], cols[None, :], K, offset, consts_ptr)
            P = a[:, None] * tl.exp2(((L + dw) - pm[:, None]) - pr[:, None])  # a_i · joint softmax
            _bwd_cols_dims(z_ptr, comp_ptr, bq_ptr, qm_ptr, gmu_base, glv_base, rows, cols, P, dw,
                           MP, KP, D, consts_ptr, True, True, BLOCK_M, BLOCK_K, LAPLACE)
        else:
            P = a[:, None] * tl.exp2((L - pm[:, None]) - pr[:, None])
            if exact:
                _bwd_cols_dims(z_ptr, comp_ptr, bq_ptr, qm_ptr, gmu_base, glv_base, rows, cols, P, 0.0,
                               MP, KP, D, consts_ptr, False, True, BLOCK_M, BLOCK_K, LAPLACE)
            else:
                _bwd_cols_dims(z_ptr, comp_ptr, bq_ptr, qm_ptr, gmu_base, glv_base, rows, cols, P, 0.0,
                               MP, KP, D, consts_ptr, False, False, BLOCK_M, BLOCK_K, LAPLACE)


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


def _autotuned(kernel, kind, reset):
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": c[kind]["BLOCK_M"], "BLOCK_K": c[kind]["BLOCK_K"]},
                               num_warps=c[kind]["num_warps"], maxnreg=c[kind]["maxnreg"]) for c in CONFIGS],
        key=["D", "GRAD", "LAPLACE"],  # and on the dtypes of the tensor arguments
        reset_to_zero=reset,
    )(kernel)


#: name -> (kernel, which CONFIGS entry it takes, its other constexprs); gpu_report compiles each.
#: "+grad": the forward that also sums the terms of grad_z (autograd's forward).
#: "+laplace": the Laplace posterior family (LAPLACE=True).
KERNELS = {
    "_fwd_kernel": (_fwd_kernel, "rows", {"GRAD": False, "LAPLACE": False}),
    "_fwd_kernel+grad": (_fwd_kernel, "rows", {"GRAD": True, "LAPLACE": False}),
    "_marginal_exact_kernel": (_marginal_exact_kernel, "rows", {"GRAD": True, "LAPLACE": False}),
    "_bwd_cols_kernel": (_bwd_cols_kernel, "cols", {"LAPLACE": False}),
    "_fwd_kernel+laplace": (_fwd_kernel, "rows", {"GRAD": False, "LAPLACE": True}),
    "_fwd_kernel+grad+laplace": (_fwd_kernel, "rows", {"GRAD": True, "LAPLACE": True}),
    "_marginal_exact_kernel+laplace": (_marginal_exact_kernel, "rows", {"GRAD": True, "LAPLACE": True}),
    "_bwd_cols_kernel+laplace": (_bwd_cols_kernel, "cols", {"LAPLACE": True}),
}
_TUNED = {
    _fwd_kernel: _autotuned(_fwd_kernel, "rows", ["acc_ptr", "t_ptr", "j_ptr"]),
    _bwd_cols_kernel: _autotuned(_bwd_cols_kernel, "cols", ["gmu_ptr", "glv_ptr"]),
}


def _launch_config(name: str, deterministic: bool) -> dict | None:
    """The CONFIGS entry kernel ``name`` runs with, or None for its autotuner: forced (tests), the
    interpreter's, CONFIGS[0] for kernels that are not autotuned and with ``deterministic`` (the
    autotuner picks by timing, so two processes may pick configs that round differently; a fixed
    config makes every result bitwise the same in every process on the same GPU and software)."""
    if _forced_config is not None:
        return _forced_config
    if INTERPRET:
        return INTERPRET_CONFIG
    return CONFIGS[0] if deterministic or KERNELS[name][0] not in _TUNED else None


def _launch(name, grid, *args, deterministic: bool = False, **const):
    """Launch kernel ``name`` with :func:`_launch_config`'s config, else through its autotuner."""
    raw, kind, fixed = KERNELS[name]
    const = {**fixed, **const}
    cfg = _launch_config(name, deterministic)
    if cfg is None:
        tuned = _TUNED[raw]
        wrap_triton(tuned)[grid](*args, **const)
    else:
        c = cfg[kind]
        meta = {"BLOCK_M": c["BLOCK_M"], "BLOCK_K": c["BLOCK_K"]}
        opts = {} if INTERPRET else {"maxnreg": c["maxnreg"]}
        wrap_triton(raw)[grid(meta)](*args, **const, **meta, num_warps=c["num_warps"], **opts)


def _num_splits(rows: int, cols: int, device: torch.device, kind: str) -> int:
    """Split the reduction axis so that about two programs per SM run (FlashDecoding-style),
    keeping at least 4 tiles of 128 per split. ``kind``: "rows" (the forward: programs of BLOCK_M
    queries) or "cols" (the column backward: programs of BLOCK_K components). Programs are counted
    with the block of the configuration in use where it is known (forced, or the interpreter's),
    else with the largest block any autotune candidate has: a smaller block the autotuner picks
    then only runs more programs per SM (an idle SM is the costly error, a larger partial buffer
    the cheap one)."""
    if _forced_splits is not None:
        return max(1, min(_forced_splits, cols))
    if device.type != "cuda":
        return 1
    axis = "BLOCK_M" if kind == "rows" else "BLOCK_K"
    cfg = _forced_config or (INTERPRET_CONFIG if INTERPRET else None)
    block = cfg[kind][axis] if cfg else max(c[kind][axis] for c in CONFIGS)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, triton.cdiv(rows, block)), triton.cdiv(cols, 512)))


def _pads() -> tuple[int, int]:
    """Multiples the queries and components are padded to: every tile of the configuration in use
    (forced, or INTERPRET_CONFIG under the interpreter) fits, else every tile the autotuner may pick."""
    cfg = _forced_config or (INTERPRET_CONFIG if INTERPRET else None)
    if cfg is None:
        return PAD_M, PAD_K
    return (max(cfg["rows"]["BLOCK_M"], cfg["cols"]["BLOCK_M"]), max(cfg["rows"]["BLOCK_K"], cfg["cols"]["BLOCK_K"]))


def _padded(n: int, to: int) -> int:
    return max(to, triton.cdiv(n, to) * to)


def _prepare(z, mu, logvar, w: LogWeights, laplace: bool = False):
    """Padded, transposed inputs in the compute dtype (float64 arithmetic, one rounding):
    z_t [D, MP], comp [D, 3, KP] = (s, nm, c2) (padding: 1, 0, -inf), csum [KP] = sum_d c2
    (padding -inf), and consts [3] = ((w_self - w_other)·log2e, (w_next - w_other)·log2e, c·log2e)
    with c = 1/2 (Normal) or 1 (Laplace). Normal: s = sqrt(h2), h2 = 0.5·exp(-logvar)·log2e,
    c2 = -0.5·(logvar + log 2π)·log2e, comp[:, 1] = -mu·s; Laplace (logvar the log-scale b):
    s = h2 = exp(-b)·log2e, c2 = -(b + ln 2)·log2e, comp[:, 1] = mu (csrc/tcvae_math.h: FamilyTraits)."""
    acc = accumulation_dtype(z.dtype)
    m, d = z.shape
    k = mu.shape[0]
    pad_m, pad_k = _pads()
    mp, kp = _padded(m, pad_m), _padded(k, pad_k)
    z_t = torch.zeros((d, mp), dtype=acc, device=z.device)
    z_t[:, :m] = z.t()
    lv = logvar.to(torch.float64)
    if laplace:
        s = LOG2E * torch.exp(-lv)  # h2 = exp(-b)·log2e
        c2 = -LOG2E * (lv + LN2)
    else:
        s = torch.exp(-0.5 * lv) * math.sqrt(0.5 * LOG2E)  # sqrt(h2), h2 = 0.5·exp(-logvar)·log2e
        c2 = -0.5 * (lv + LOG_2PI) * LOG2E
    comp = torch.zeros((d, 3, kp), dtype=acc, device=z.device)
    comp[:, 0, k:] = 1.0  # padding (1, 0, -inf): x2 = -inf for every z (s = 0 would give 0·inf = NaN at z = ±inf)
    comp[:, 2, k:] = float("-inf")
    comp[:, 0, :k] = s.t().to(acc)
    comp[:, 1, :k] = (mu.to(torch.float64) if laplace else -mu.to(torch.float64) * s).t().to(acc)  # _u's p
    comp[:, 2, :k] = c2.t().to(acc)
    csum = torch.full((kp,), float("-inf"), dtype=acc, device=z.device)
    csum[:k] = c2.sum(dim=1).to(acc)
    consts = torch.tensor([(w.w_self - w.w_other) * LOG2E, (w.w_next - w.w_other) * LOG2E,
                           (1.0 if laplace else 0.5) * LOG2E],
                          dtype=acc, device=z.device)
    return z_t, comp, csum, mp, kp, consts


@torch.library.triton_op("tcvae_triton::log_qz", mutates_args=())
def log_qz_op(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, weights: list[float], offset: int,
              deterministic: bool, grad_terms: bool = True, family: str = "normal",
              grad_components: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_qz [M], log_qz_dims [M, D], aux_q [M, 2], aux_qd [M, D, 4]) in the compute dtype. aux_q
    is the joint (m, r) logsumexp state in base 2, aux_qd the marginal one, (qm, qr), followed by the
    two terms of grad_z that the forward sums on the way (``grad_terms``; zeros without it):
    tn[i, d] = sum_j pi[i,j,d]·u·s and jn[i, d] = sum_j p[i,j]·u·s, pi and p the marginal and joint
    softmax weights over components. ``weights, offset``: the estimator's log weights as
    :meth:`tcvae_kernels.LogWeights.op_args` lays them out. ``deterministic``: launch with a fixed
    config instead of the autotuner's pick (:func:`_launch_config`). ``family``: "normal" or
    "laplace" (``logvar`` the log-scale; u·s becomes sign(u)·s in tn and jn). ``grad_components``:
    for the backward (the first so many components get d/dmu, d/dlogvar; -1: all)."""
    acc = accumulation_dtype(z.dtype)
    m, d = z.shape
    k = mu.shape[0]
    w = LogWeights.from_op_args(weights, offset)
    laplace = _is_laplace(family)
    z_t, comp, csum, mp, kp, consts = _prepare(z, mu, logvar, w, laplace)
    sfx = "+laplace" if laplace else ""
    splits = _num_splits(m, kp, z.device, "rows")
    part = torch.zeros((splits, d, mp), dtype=acc, device=z.device)
    tpart = torch.zeros_like(part) if grad_terms else part
    jpart = torch.zeros_like(part) if grad_terms else part
    jm = torch.empty((splits, mp), dtype=acc, device=z.device)
    js = torch.empty((splits, mp), dtype=acc, device=z.device)
    _launch(("_fwd_kernel+grad" if grad_terms else "_fwd_kernel") + sfx,
            lambda meta: (triton.cdiv(mp, meta["BLOCK_M"]), splits),
            z_t, comp, csum, part, tpart, jpart, jm, js, mp, kp, k, d, offset, consts, splits,
            deterministic=deterministic)
    jm, js = jm[:, :m], js[:, :m]
    # joint: combine the splits' (max, sum) states
    top = jm.max(dim=0).values
    top_safe = torch.where(top == float("-inf"), torch.zeros_like(top), top)
    scale = torch.exp2(jm - top_safe)  # [splits, M]
    total = (js * scale).sum(dim=0)
    r = torch.log2(total)
    r = torch.where((top == float("-inf")) & ~torch.isnan(r), torch.zeros_like(r), r)  # NaN stays NaN
    aux_q = torch.stack([top, r], dim=1)
    # marginals: sum of the splits; sums below 2^-60 recomputed exactly
    acc_sum = part.sum(dim=0)  # [D, MP]
    qm = torch.zeros((d, mp), dtype=acc, device=z.device)
    qr = torch.log2(acc_sum)
    if grad_terms:
        tn = tpart.sum(dim=0) / acc_sum  # exact rows (acc_sum < tiny, also 0) overwritten below
        jn = (jpart[:, :, :m] * scale[:, None, :]).sum(dim=0) / total
        jn = torch.where(total == 0, torch.zeros_like(jn), jn)  # all -inf (non-finite inputs only)
    else:
        tn = qm
    _launch("_marginal_exact_kernel" + sfx, lambda meta: (triton.cdiv(mp, meta["BLOCK_M"]),),
            z_t, comp, acc_sum, qm, qr, tn, m, mp, kp, k, d, offset, consts, TINY, GRAD=grad_terms,
            deterministic=deterministic)
    qm, qr = qm[:, :m].t(), qr[:, :m].t()
    if grad_terms:
        aux_qd = torch.stack([qm, qr, tn[:, :m].t(), jn.t()], dim=2)
    else:
        zero = torch.zeros_like(qm)
        aux_qd = torch.stack([qm, qr, zero, zero], dim=2)
    log_qz = (w.w_other + LN2 * (top.double() + r.double())).to(acc)
    log_qz_dims = (w.w_other + LN2 * (qm.double() + qr.double())).to(acc)
    return log_qz, log_qz_dims, aux_q, aux_qd


def _is_laplace(family: str) -> bool:
    """The kernels' LAPLACE constant for ``family`` (ValueError for an unknown one)."""
    return get_family(family) is LAPLACE


def _pad_rows(t: torch.Tensor, mp: int, value: float) -> torch.Tensor:
    """[..., M] -> [..., MP], the padding filled with ``value``."""
    out = torch.full((*t.shape[:-1], mp), value, dtype=t.dtype, device=t.device)
    out[..., : t.shape[-1]] = t
    return out


@torch.library.triton_op("tcvae_triton::log_qz_backward", mutates_args=())
def log_qz_backward_op(grad_q: torch.Tensor, grad_qd: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
                       logvar: torch.Tensor, aux_q: torch.Tensor, aux_qd: torch.Tensor, weights: list[float],
                       offset: int, deterministic: bool, grad_terms: bool = True, family: str = "normal",
                       grad_components: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_z, grad_mu, grad_logvar) in the inputs' dtypes, bitwise reproducible for one launch
    config (no atomics; ``deterministic``: a fixed one, :func:`_launch_config`).
    grad_z = -2 ln2 · (a·jn + b·tn) from the forward's sums (a, b: the upstream gradients of log_qz
    and log_qz_dims; Laplace: -ln2); grad_mu and grad_logvar from one pass that sums over queries
    inside a thread, over the first ``grad_components`` components (-1: all; the other rows 0)."""
    if not grad_terms:
        raise RuntimeError("tcvae_triton::log_qz ran with grad_terms=False: its outputs have no backward")
    acc = accumulation_dtype(z.dtype)
    m, d = z.shape
    k = mu.shape[0]
    laplace = _is_laplace(family)
    slope_ln2 = (1.0 if laplace else 2.0) * LN2
    a0, b0 = grad_q.to(acc), grad_qd.to(acc)
    grad_z = -slope_ln2 * (a0[:, None] * aux_qd[..., 3].to(acc) + b0 * aux_qd[..., 2].to(acc))
    z_t, comp, csum, mp, kp, consts = _prepare(z, mu, logvar, LogWeights.from_op_args(weights, offset), laplace)
    inf = float("inf")
    a = _pad_rows(a0, mp, 0.0)
    jm = _pad_rows(aux_q[:, 0].to(acc), mp, inf)  # padded queries: P = 0·2^(-inf) = 0
    jr = _pad_rows(aux_q[:, 1].to(acc), mp, 0.0)
    qm0 = aux_qd[..., 0].to(acc).t()
    qm = _pad_rows(qm0, mp, 0.0)  # [D, MP]
    qflag = _pad_rows((qm0 != 0).any(dim=0).to(torch.int32), mp, 0)  # rows of the exact path
    bq = _pad_rows((b0 * torch.exp2(-aux_qd[..., 1].to(acc))).t(), mp, 0.0)  # b·2^(-r)
    if not -1 <= grad_components <= k:
        raise ValueError(f"grad_components must be -1 or in [0, K={k}], got {grad_components}")
    kg = k if grad_components < 0 else grad_components  # the column blocks of the first kg components only
    col_splits = _num_splits(max(kg, 1), mp, z.device, "cols")
    gmu = torch.zeros((col_splits, d, kp), dtype=acc, device=z.device)
    glv = torch.zeros((col_splits, d, kp), dtype=acc, device=z.device)
    _launch("_bwd_cols_kernel" + ("+laplace" if laplace else ""),
            lambda meta: (max(1, triton.cdiv(kg, meta["BLOCK_K"])), col_splits),
            z_t, comp, csum, jm, jr, a, bq, qm, qflag, gmu, glv, mp, kp, k, d, offset, consts, col_splits,
            deterministic=deterministic)
    keep = (torch.arange(kp, device=z.device) < kg).to(acc)  # rows >= kg: not asked for (a bank's), 0
    grad_mu = slope_ln2 * (gmu.sum(dim=0) * comp[:, 0] * keep)[:, :k].t()  # sum_i G·slope(u)·s
    grad_lv = LN2 * (glv.sum(dim=0) * keep)[:, :k].t()
    return grad_z.to(z.dtype), grad_mu.to(mu.dtype), grad_lv.to(logvar.dtype)


log_qz_op.register_autograd(make_backward(log_qz_backward_op), setup_context=setup_context)
for _dev in ("cuda", "cpu"):  # under torch.autocast: computed and returned in float32 (CPU: the interpreter)
    torch.library.register_autocast(log_qz_op, _dev, torch.float32)
log_qz_backward_op.register_autograd(no_double_backward, setup_context=setup_nothing)
