// Per-thread code of the fused CUDA kernels (tcvae_cuda.cu), written once for device and host: the
// same code also runs serially on the CPU (tcvae_emulate.cpp), which is how CI checks the CUDA
// kernels' arithmetic, tiling and indexing without a GPU.
//
// Design: every reduction stays inside a thread, and no register array is indexed by a run-time
// value (so nothing goes to local memory). A thread owns one query (forward) or one component
// (column backward) and walks the other side in register tiles of kTile<T>; for each tile it loops
// over the D dimensions at run time (any D), keeping the tile's joint sums in registers and its
// per-dimension sums in global scratch owned by the thread (one load and store per kTile<T>
// elements). The other side's values are read through the read-only cache: every lane of a warp
// reads the same address (a broadcast), 4 values per 16-byte load. No shared memory, no barriers,
// no atomics (deterministic).
//
// Layouts (T = float or double; MP, KP = M, K padded to multiples of kPad):
//   z_t   [D, MP]      queries, transposed (padding: 0)
//   comp  [D, 3, KP]   per dimension: s, nm, c2 over components (padding: 1, 0, -inf)
//                      Normal:  s = sqrt(h2), nm = -mu·s, c2 (FamilyTraits): x2 = c2 - u²
//                      Laplace: s = h2,       nm = mu (so u = z - mu), c2:  x2 = c2 - |u|·s
//   csum  [KP]         sum_d c2 (padding: -inf)
// Every kernel is instantiated per posterior family F (tcvae_math.h: diff_term, minus_pen,
// pen_minus, slope; the comments below are written for the Normal, pen = u²).
// Names used below (the design, in full: docs/kernels.md): u = z·s + nm, x2 = c2 - u², dw the
// self/next weight correction, L = (csum + Sq) + dw with Sq = -sum_d u² (the joint sum, recomputed
// bitwise), A = sum_j 2^(x2 + dw) the marginal sums, (m, s) the joint's online logsumexp, tn / jn the
// two grad_z terms the forward sums, G the column backward's coefficient.
#pragma once

#include "tcvae_math.h"

namespace tcvae {
namespace fused {

// components (or queries) per register tile: 32 in float, 16 in double; the host splits the
// reduction axis in multiples of kSplitTile and flags queries in groups of kFlagTile
template <typename T>
constexpr int kTile = std::is_same<T, double>::value ? 16 : 32;
constexpr int kSplitTile = 32;
constexpr int kFlagTile = 16;
constexpr int kPad = 256;       // M and K are padded to multiples of this: kRows·threads, and of kTile<T>
// forward without gradient terms, float: 1 marginal exp2 in kPolyEvery on the FMA pipe (tuned with
// the throughput model: bench/poly_share.py; a value above kTile puts none there)
#ifndef TCVAE_POLY_EVERY
#define TCVAE_POLY_EVERY 8
#endif
constexpr int kPolyEvery = TCVAE_POLY_EVERY;

// queries (forward) or components (column backward) per thread: 2 in float; 1 in double, whose
// values take two registers each (so that no kernel needs local memory)
template <typename T>
constexpr int kRows = std::is_same<T, double>::value ? 1 : 2;

template <typename T>
struct Threads {
  static constexpr int value = 128;  // threads per block: kRows queries (or components) each
};

// 4 consecutive values in one load (LDG.128 for float; two for double).
template <typename T>
struct alignas(sizeof(T) * 4 > 16 ? 16 : sizeof(T) * 4) Quad {
  T v[4];
};

// kTile consecutive values of p (4-aligned) into registers.
template <typename T>
TCVAE_HD void load_tile(const T* __restrict__ p, T (&out)[kTile<T>]) {
  const Quad<T>* q = reinterpret_cast<const Quad<T>*>(p);
#pragma unroll
  for (int c = 0; c < kTile<T> / 4; ++c) {
    const Quad<T> v = q[c];
#pragma unroll
    for (int e = 0; e < 4; ++e) out[4 * c + e] = v.v[e];
  }
}

// Whether the queries [i0, i0 + kTile) hold a row of the exact path: qflag [MP / kFlagTile].
template <typename T>
TCVAE_HD bool tile_flag(const int32_t* __restrict__ qflag, int64_t i0) {
  int32_t f = 0;
#pragma unroll
  for (int n = 0; n < kTile<T> / kFlagTile; ++n) f |= qflag[i0 / kFlagTile + n];
  return f != 0;
}

// Whether any lane of the warp has `p` (the GPU), or this thread (the emulation, one at a time).
TCVAE_HD bool warp_any(bool p) {
#if defined(__CUDA_ARCH__)
  return __any_sync(0xffffffffu, p) != 0;
#else
  return p;
#endif
}

// dw for component j of a query with self index `self` and stratum index `next` (-1: none).
template <typename T>
TCVAE_HD T weight_correction(int64_t j, int64_t self, int64_t next, T d_self, T d_next) {
  return j == self ? d_self : (j == next ? d_next : T(0));
}

// Tile-local slot (0 .. kTile-1) of component index j of a tile starting at k0, or -1: 32-bit,
// so the diagonal tiles' loops hold two small integers instead of two 64-bit indices.
template <typename T>
TCVAE_HD int tile_slot(int64_t j, int64_t k0) {
  const int64_t l = j - k0;
  return (j >= 0 && l >= 0 && l < kTile<T>) ? int(l) : -1;
}

// Whether queries [r0, r0 + nr) × components [c0, c0 + nc) may hold a self or next weight
// (conservative: the components meet [r0 + offset, r0 + offset + nr], or hold component 0, where
// the next index wraps). Uniform over a block: tiles that cannot take the loop without dw.
TCVAE_HD bool touches_weights(int64_t r0, int64_t nr, int64_t c0, int64_t nc, int64_t offset) {
  return (c0 <= r0 + offset + nr && c0 + nc > r0 + offset) || c0 == 0;
}

// The marginal exp2 of tile slot jj: the FMA-pipe polynomial for one slot in kPolyEvery (float,
// when POLY), the special-function unit otherwise.
template <typename T, bool POLY>
TCVAE_HD T marginal_exp2(T x, int jj) {
  if constexpr (POLY && std::is_same<T, float>::value) {
    if (jj % kPolyEvery == kPolyEvery - 1) return exp2_fma(x);
  }
  return exp2_(x);
}

// One tile of the joint online logsumexp in base 2, value m + log2(s): L [kTile<T>] becomes
// P = 2^(L - m_new); returns the rescale 2^(m_old - m_new) of what came before. NaN propagates;
// all -inf so far leaves (-inf, 0) and P = 0.
template <typename T>
TCVAE_HD T joint_tile(T& m, T& s, T (&L)[kTile<T>]) {
  T mt = m;
#pragma unroll
  for (int n = 0; n < kTile<T>; ++n) mt = max_nan(L[n], mt);
  const T ms = mt == -std::numeric_limits<T>::infinity() ? T(0) : mt;  // all -inf: shift by 0
  const T scale = exp2_(m - ms);
  T sum = T(0);
#pragma unroll
  for (int n = 0; n < kTile<T>; ++n) {
    L[n] = exp2_(L[n] - ms);
    sum += L[n];
  }
  s = s * scale + sum;
  m = mt;
  return scale;
}

// ---------------------------------------------------------------------------------------- forward

// Inputs and this launch's scratch (split `split` at offset split·D·MP of acc, ta, ja).
template <typename T>
struct FwdArgs {
  const T* __restrict__ z_t;   // [D, MP]
  const T* __restrict__ comp;  // [D, 3, KP]
  const T* __restrict__ csum;  // [KP]
  T* __restrict__ acc;         // [S, D, MP] out: A = sum_j e over the split's components
  T* __restrict__ ta;          // [S, D, MP] out (GRAD): sum_j e·u·s
  T* __restrict__ ja;          // [S, D, MP] out (GRAD): sum_j 2^(L - m)·u·s, m the split's running max
  T* __restrict__ jm;          // [S, MP] out: the split's joint maximum m
  T* __restrict__ js;          // [S, MP] out: the split's joint sum of 2^(L - m)
  int64_t m, mp, k, kp, offset;
  int d;
  T ds, dn;  // dw at the self and next components
};

// kRows queries of a thread, i[r] = r0 + r·NT + t: their joint logsumexp states over the
// components seen; their sums in the scratch columns i[r] of this split (owned by this thread).
template <typename T, Family F>
struct FwdThread {
  T jmax[kRows<T>], jsum[kRows<T>];
  int64_t i[kRows<T>], self[kRows<T>], next[kRows<T>];

  TCVAE_HD void init(const FwdArgs<T>& a, int64_t i0, int stride) {
#pragma unroll
    for (int r = 0; r < kRows<T>; ++r) {
      jmax[r] = -std::numeric_limits<T>::infinity();
      jsum[r] = T(0);
      i[r] = i0 + int64_t(r) * stride;
      self[r] = i[r] < a.m ? self_index(i[r], a.offset, a.k) : -1;
      next[r] = next_index(self[r], a.k);
    }
  }

  // The d loop of one tile: Sq -= u² into L; acc += sum_j e; (GRAD) ta += sum_j e·u·s.
  template <bool WITH_DW, bool POLY, bool GRAD>
  TCVAE_HD void dims(const FwdArgs<T>& a, int64_t base, int64_t k0, T (&L)[kRows<T>][kTile<T>], const int (&js)[kRows<T>],
                     const int (&jn)[kRows<T>]) {
    const int64_t mp = a.mp, kp = a.kp;
    for (int dd = 0; dd < a.d; ++dd) {
      const T* c = a.comp + int64_t(dd) * 3 * kp + k0;
      T s[kTile<T>], nm[kTile<T>], c2[kTile<T>];
      load_tile(c, s);
      load_tile(c + kp, nm);
      load_tile(c + 2 * kp, c2);
#pragma unroll
      for (int r = 0; r < kRows<T>; ++r) {
        const int64_t at = base + dd * mp + i[r];
        const T zd = a.z_t[dd * mp + i[r]];
        T part = T(0), tpart = T(0);
#pragma unroll
        for (int jj = 0; jj < kTile<T>; ++jj) {
          const T u = diff_term<F>(s[jj], zd, nm[jj]);
          T x = minus_pen<F>(u, s[jj], c2[jj]);         // x2 = c2 - u²  (every kernel: the same FMAs)
          L[r][jj] = minus_pen<F>(u, s[jj], L[r][jj]);  // Sq -= u²
          if (WITH_DW) x += weight_correction<T>(jj, js[r], jn[r], a.ds, a.dn);
          const T e = marginal_exp2<T, POLY>(x, jj);  // cannot overflow: x2 < 64 for finite s
          part += e;
          if (GRAD) tpart = fma_(e * slope<F>(u), s[jj], tpart);
        }
        a.acc[at] += part;
        if (GRAD) a.ta[at] += tpart;
      }
    }
  }

  // Components [k0, k0 + kTile<T>) (k0 a multiple of kTile<T>, padding included); with_dw: the tile may
  // hold a self or next component of these queries (uniform over the block).
  template <bool POLY, bool GRAD>
  TCVAE_HD void tile(const FwdArgs<T>& a, int64_t split, int64_t k0, bool with_dw) {
    const int64_t mp = a.mp, kp = a.kp, base = split * a.d * mp;
    int js[kRows<T>], jn[kRows<T>];
    T L[kRows<T>][kTile<T>];
#pragma unroll
    for (int r = 0; r < kRows<T>; ++r) {
      js[r] = tile_slot<T>(self[r], k0);
      jn[r] = tile_slot<T>(next[r], k0);
#pragma unroll
      for (int jj = 0; jj < kTile<T>; ++jj) L[r][jj] = T(0);
    }
    if (with_dw)
      dims<true, POLY, GRAD>(a, base, k0, L, js, jn);
    else
      dims<false, POLY, GRAD>(a, base, k0, L, js, jn);
    T scale[kRows<T>];
    bool any = false;  // all P = 0: the maximum did not move (scale = 1), nothing to add
    {
      T cs[kTile<T>];
      load_tile(a.csum + k0, cs);
#pragma unroll
      for (int r = 0; r < kRows<T>; ++r) {
#pragma unroll
        for (int jj = 0; jj < kTile<T>; ++jj) {
          L[r][jj] = L[r][jj] + cs[jj];
          if (with_dw) L[r][jj] += weight_correction<T>(jj, js[r], jn[r], a.ds, a.dn);
        }
        scale[r] = joint_tile(jmax[r], jsum[r], L[r]);  // L[r] is now P
#pragma unroll
        for (int jj = 0; jj < kTile<T>; ++jj) any |= L[r][jj] != T(0);  // NaN != 0: NaN propagates
      }
    }
    if constexpr (GRAD) {
      if (warp_any(any)) joint_dims(a, base, k0, L, scale);
    }
  }

  // The joint gradient term of a tile: ja = ja·scale + sum_j P·u·s (P in L).
  TCVAE_HD void joint_dims(const FwdArgs<T>& a, int64_t base, int64_t k0, const T (&L)[kRows<T>][kTile<T>],
                           const T (&scale)[kRows<T>]) {
    const int64_t mp = a.mp, kp = a.kp;
    for (int dd = 0; dd < a.d; ++dd) {
      const T* c = a.comp + int64_t(dd) * 3 * kp + k0;
      T s[kTile<T>], nm[kTile<T>];
      load_tile(c, s);
      load_tile(c + kp, nm);
#pragma unroll
      for (int r = 0; r < kRows<T>; ++r) {
        const T zd = a.z_t[dd * mp + i[r]];
        T jp = T(0);
#pragma unroll
        for (int jj = 0; jj < kTile<T>; ++jj) {
          const T u = diff_term<F>(s[jj], zd, nm[jj]);
          jp = fma_(L[r][jj] * slope<F>(u), s[jj], jp);
        }
        T& jd = a.ja[base + dd * mp + i[r]];
        jd = fma_(jd, scale[r], jp);
      }
    }
  }
};

// Exact two-pass marginals of query i for every dim whose sum underflowed (acc < tiny): writes the
// maximum m and r = log2 sum 2^(x2 + dw - m) over all K components, and (GRAD) the gradient term
// tn = sum_j 2^(x2 + dw - m - r)·u·s ([D, MP] layouts).
template <typename T, bool GRAD, Family F>
TCVAE_HD void exact_marginals(const T* z_t, const T* comp, const T* acc, T* qm, T* qr, T* tn, int64_t i, int64_t m,
                              int64_t mp, int64_t k, int64_t kp, int d, int64_t offset, T d_self, T d_next, T tiny) {
  if (i >= m) return;
  const int64_t self = self_index(i, offset, k), next = next_index(self, k);
  const T inf = std::numeric_limits<T>::infinity();
  for (int dd = 0; dd < d; ++dd) {
    if (!(acc[dd * mp + i] < tiny)) continue;  // NaN is not < tiny: stays NaN
    const T zd = z_t[dd * mp + i];
    const T* c = comp + int64_t(dd) * 3 * kp;
    T mx = -inf;
    bool nan = false;
    for (int64_t j = 0; j < k; ++j) {
      const T u = diff_term<F>(c[j], zd, c[kp + j]);
      const T x = minus_pen<F>(u, c[j], c[2 * kp + j]) + weight_correction(j, self, next, d_self, d_next);
      nan |= (x != x);
      mx = x > mx ? x : mx;
    }
    T r = T(0), t = T(0);
    if (nan) {
      mx = r = t = std::numeric_limits<T>::quiet_NaN();
    } else if (mx != -inf) {
      T sum = T(0);
      for (int64_t j = 0; j < k; ++j) {
        const T u = diff_term<F>(c[j], zd, c[kp + j]);
        const T e = exp2_(minus_pen<F>(u, c[j], c[2 * kp + j]) + weight_correction(j, self, next, d_self, d_next) - mx);
        sum += e;
        if (GRAD) t = fma_(e * slope<F>(u), c[j], t);
      }
      r = log2_(sum);
      t = t / sum;
    }
    qm[dd * mp + i] = mx;
    qr[dd * mp + i] = r;
    if (GRAD) tn[dd * mp + i] = t;
  }
}

// -------------------------------------------------------------------------------- column backward

// Per-query inputs of the backward: a [MP] (0 on padding), pm / pr [MP] joint (m, r) (padding:
// +inf / 0), bq [D, MP] = b·2^(-r_d) (padding 0), qm [D, MP] marginal m (0 except on rows of the
// exact path), qflag [MP / kFlagTile] (1: the group of queries holds such a row).
template <typename T>
struct BwdInputs {
  const T* __restrict__ z_t;
  const T* __restrict__ comp;
  const T* __restrict__ csum;
  const T* __restrict__ a;
  const T* __restrict__ pm;
  const T* __restrict__ pr;
  const T* __restrict__ bq;
  const T* __restrict__ qm;
  const int32_t* __restrict__ qflag;
  int64_t mp, kp, k, offset;
  int d;
  T ds, dn, const_log2e;  // const_log2e = FamilyTraits<F>::kConst·log2 e
};

// kRows<T> components of a thread, j[r] = c0 + r·NT + t: gmu, glv [D, KP] (this split's scratch) +=
// sums over a tile of queries of G·u and G·(u² - log2(e)/2) (slope(u) and pen(u) - kConst·log2 e).
template <typename T, Family F>
struct BwdColThread {
  int64_t j[kRows<T>];

  TCVAE_HD void init(int64_t j0, int stride) {
#pragma unroll
    for (int r = 0; r < kRows<T>; ++r) j[r] = j0 + int64_t(r) * stride;
  }

  // dw of query i at component jc (diagonal tiles only: recomputed, not held in registers)
  TCVAE_HD static T dw(int64_t i, int64_t jc, const BwdInputs<T>& in) {
    const int64_t self = self_index(i, in.offset, in.k);
    return weight_correction(jc, self, next_index(self, in.k), in.ds, in.dn);
  }

  // The second d loop of a tile: gmu, glv += sums over the tile's queries. EXACT: the tile holds
  // rows of the exact path (qm != 0 there); else qm = 0 is not read.
  template <bool WITH_DW, bool EXACT>
  TCVAE_HD void dims(const BwdInputs<T>& in, T* __restrict__ gmu, T* __restrict__ glv, int64_t i0,
                     const T (&P)[kRows<T>][kTile<T>]) {
    const int64_t mp = in.mp, kp = in.kp;
    for (int dd = 0; dd < in.d; ++dd) {
      T zt[kTile<T>], bq[kTile<T>];
      const T* qm = in.qm + dd * mp + i0;  // EXACT only: read per element (a broadcast load; rare tiles), so
                                           // no third tile of registers (the Laplace instantiation spilled)
      load_tile(in.z_t + dd * mp + i0, zt);
      load_tile(in.bq + dd * mp + i0, bq);
#pragma unroll
      for (int r = 0; r < kRows<T>; ++r) {
        const T* c = in.comp + int64_t(dd) * 3 * kp + j[r];
        const T s = c[0], nm = c[kp], c2 = c[2 * kp];
        T gm = T(0), gl = T(0);
#pragma unroll
        for (int ii = 0; ii < kTile<T>; ++ii) {
          const T u = diff_term<F>(s, zt[ii], nm);
          T x = minus_pen<F>(u, s, c2);
          if (WITH_DW) x += dw(i0 + ii, j[r], in);
          if (EXACT) x -= qm[ii];
          const T G = fma_(bq[ii], exp2_(x), P[r][ii]);
          gm = fma_(G, slope<F>(u), gm);
          gl = fma_(G, pen_minus<F>(u, s, in.const_log2e), gl);
        }
        gmu[dd * kp + j[r]] += gm;
        glv[dd * kp + j[r]] += gl;
      }
    }
  }

  // Queries [i0, i0 + kTile<T>); with_dw: the tile may hold a query whose self or next component is
  // one of this block's (uniform over the block); exact: the tile holds rows of the exact path.
  TCVAE_HD void tile(const BwdInputs<T>& in, T* __restrict__ gmu, T* __restrict__ glv, int64_t i0, bool with_dw,
                     bool exact) {
    const int64_t mp = in.mp, kp = in.kp;
    T P[kRows<T>][kTile<T>];
#pragma unroll
    for (int r = 0; r < kRows<T>; ++r)
#pragma unroll
      for (int ii = 0; ii < kTile<T>; ++ii) P[r][ii] = T(0);
    for (int dd = 0; dd < in.d; ++dd) {  // Sq = -sum_d u², as in the forward
      T zt[kTile<T>];
      load_tile(in.z_t + dd * mp + i0, zt);
#pragma unroll
      for (int r = 0; r < kRows<T>; ++r) {
        const T* c = in.comp + int64_t(dd) * 3 * kp + j[r];
        const T s = c[0], nm = c[kp];
#pragma unroll
        for (int ii = 0; ii < kTile<T>; ++ii) {
          const T u = diff_term<F>(s, zt[ii], nm);
          P[r][ii] = minus_pen<F>(u, s, P[r][ii]);
        }
      }
    }
    {
      T a[kTile<T>], pm[kTile<T>], pr[kTile<T>];
      load_tile(in.a + i0, a);
      load_tile(in.pm + i0, pm);
      load_tile(in.pr + i0, pr);
#pragma unroll
      for (int r = 0; r < kRows<T>; ++r) {
        const T cs = in.csum[j[r]];
#pragma unroll
        for (int ii = 0; ii < kTile<T>; ++ii) {
          T L = P[r][ii] + cs;
          if (with_dw) L += dw(i0 + ii, j[r], in);
          P[r][ii] = a[ii] * exp2_((L - pm[ii]) - pr[ii]);  // a_i · joint softmax
        }
      }
    }
    if (with_dw)
      dims<true, true>(in, gmu, glv, i0, P);
    else if (exact)
      dims<false, true>(in, gmu, glv, i0, P);
    else
      dims<false, false>(in, gmu, glv, i0, P);
  }
};

// ------------------------------------------------------------------------- one thread of a launch
// What one thread of each kernel does, for the CUDA kernels and the emulation alike. Block b of NT
// threads owns rows [r0, r0 + kRows<T>·NT), r0 = b·kRows<T>·NT, thread t the rows r0 + r·NT + t; split s
// owns [lo, hi) of the other axis.

// forward: POLY (a share of the exp2s on the FMA pipe) only without the gradient terms, where the
// special-function unit, not the issue rate, bounds the loop (python -m tcvae_kernels gpu-report).
template <typename T, bool GRAD, Family F>
TCVAE_HD void forward_thread(const FwdArgs<T>& a, int64_t r0, int nt, int t, int64_t split, int64_t lo, int64_t hi) {
  constexpr bool POLY = !GRAD && std::is_same<T, float>::value;
  FwdThread<T, F> th;
  th.init(a, r0 + t, nt);
  for (int64_t k0 = lo; k0 < hi; k0 += kTile<T>)
    th.template tile<POLY, GRAD>(a, split, k0, touches_weights(r0, kRows<T> * nt, k0, kTile<T>, a.offset));
#pragma unroll
  for (int r = 0; r < kRows<T>; ++r) {
    a.jm[split * a.mp + th.i[r]] = th.jmax[r];
    a.js[split * a.mp + th.i[r]] = th.jsum[r];
  }
}

// column backward: block b owns components [c0, c0 + kRows<T>·NT); gmu, glv [S, D, KP]
template <typename T, Family F>
TCVAE_HD void backward_cols_thread(const BwdInputs<T>& in, T* __restrict__ gmu, T* __restrict__ glv, int64_t c0,
                                   int nt, int t, int64_t split, int64_t lo, int64_t hi) {
  BwdColThread<T, F> th;
  th.init(c0 + t, nt);
  T* gm = gmu + split * in.d * in.kp;
  T* gl = glv + split * in.d * in.kp;
  for (int64_t i0 = lo; i0 < hi; i0 += kTile<T>)
    th.tile(in, gm, gl, i0, touches_weights(i0, kTile<T>, c0, kRows<T> * nt, in.offset), tile_flag<T>(in.qflag, i0));
}

}  // namespace fused
}  // namespace tcvae
