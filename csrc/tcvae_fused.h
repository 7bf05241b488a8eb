// Per-thread bodies of the CUDA kernels (tcvae_cuda.cu), written once for host and device so the
// same code also runs serially on the CPU (tcvae_emulate.cpp), which is how CI checks the CUDA
// kernels' arithmetic, tiling and indexing without a GPU.
//
// Layouts (T = float or double, DP = D rounded up to a multiple of 4, at most kMaxDP):
//   comp  [K, 3, DP]   per component: mu, h2 = 0.5·exp(-logvar)·log2e, c2 = -0.5·(logvar + log 2π)·log2e
//                      (padding dims: 0, 0, 0 so x2 = 0 there)
//   tile  [n, 3, DP]   a slice of comp in shared memory (forward and row-backward)
//   qtile [n, 3, DP]   per query: z, bq = b·2^(-r), qm (column-backward), plus qscal [n, 3]: a, m, r
// Math (base 2, see tcvae_math.h): x2 = c2 - (z - mu)^2·h2 = l·log2e; dw = self/next correction;
//   forward   acc[d] = sum_j 2^(x2 + dw),   joint: online logsumexp of S + dw, S = sum_d x2
//   backward  G = a·2^((S + dw - m) - r) + bq·2^(x2 + dw - qm),  U = G·diff·h2,
//             gz += U,  gmu += U,  glv += G·(diff^2·h2 - 0.5·log2e)
#pragma once

#include "tcvae_math.h"

namespace tcvae {
namespace fused {

constexpr int kMaxDP = 64;  // latent dims held in registers per thread
constexpr int kTile = 32;   // components (or queries) per shared-memory tile

template <typename T>
struct Threads {
  static constexpr int value = 128;  // threads per block: one query (or component) each
};
template <>
struct Threads<double> {
  static constexpr int value = 64;  // halves the shared memory of the double kernels
};

// dw for component j of a query with self index `self` and stratum index `next` (-1: none).
template <typename T>
TCVAE_HD T weight_correction(int64_t j, int64_t self, int64_t next, T d_self, T d_next) {
  return j == self ? d_self : (j == next ? d_next : T(0));
}

// S = sum_d x2 over the DP dims of one (query, component) pair, in the order d = 0, 1, ...
template <typename T, int DP>
TCVAE_HD T joint_sum(const T* z, const T* mu, const T* h2, const T* c2) {
  T s = T(0);
#pragma unroll
  for (int d = 0; d < DP; ++d) s += log2_density(z[d], mu[d], h2[d], c2[d]);
  return s;
}

// ---------------------------------------------------------------------------------------- forward

template <typename T, int DP>
struct FwdThread {
  T z[DP];
  T acc[DP];
  OnlineLse2<T> joint;
  int64_t self = -1, next = -1;

  TCVAE_HD void init(const T* z_rows, int64_t i, int64_t m_rows, int64_t k, int d, int64_t offset) {
    const bool valid = i < m_rows;
#pragma unroll
    for (int dd = 0; dd < DP; ++dd) {
      z[dd] = (valid && dd < d) ? z_rows[i * d + dd] : T(0);
      acc[dd] = T(0);
    }
    self = valid ? self_index(i, offset, k) : -1;
    next = next_index(self, k);
  }

  // Components k0 .. k0+n-1, whose [n, 3, DP] slice is `tile`; d: the true latent dimension.
  TCVAE_HD void consume(const T* tile, int64_t k0, int n, int d, T d_self, T d_next) {
    for (int jj = 0; jj < n; ++jj) {
      const T* c = tile + jj * 3 * DP;
      const T dw = weight_correction(k0 + jj, self, next, d_self, d_next);
      T s = T(0);
#pragma unroll
      for (int dd = 0; dd < DP; ++dd) {
        const T x = log2_density(z[dd], c[dd], c[DP + dd], c[2 * DP + dd]);  // 0 on padding dims
        s += x;
        if (dd < d) acc[dd] += exp2_(x + dw);  // marginal: cannot overflow (x2 < 64 for finite h)
      }
      joint.add(s + dw);
    }
  }

  // part [M, D] (this split's marginal sums), jm / js [M] (this split's joint max and sum).
  TCVAE_HD void store(int64_t i, int64_t m_rows, int d, T* part, T* jm, T* js) const {
    if (i >= m_rows) return;
    for (int dd = 0; dd < d; ++dd) part[i * d + dd] = acc[dd];
    jm[i] = joint.m;
    js[i] = joint.s;
  }
};

// Exact two-pass marginals of query i for every dim whose sum underflowed (acc < tiny): writes the
// maximum m and r = log2 sum 2^(x2 + dw - m) over all K components, read from global memory.
template <typename T, int DP>
TCVAE_HD void exact_marginals(const T* z_rows, const T* comp, const T* acc, T* qm, T* qr, int64_t i,
                              int64_t m_rows, int64_t k, int d, int64_t offset, T d_self, T d_next, T tiny) {
  if (i >= m_rows) return;
  const int64_t self = self_index(i, offset, k), next = next_index(self, k);
  const T inf = std::numeric_limits<T>::infinity();
  for (int dd = 0; dd < d; ++dd) {
    if (!(acc[i * d + dd] < tiny)) continue;  // NaN is not < tiny: stays NaN
    const T zv = z_rows[i * d + dd];
    T mx = -inf;
    bool nan = false;
    for (int64_t j = 0; j < k; ++j) {
      const T* c = comp + j * 3 * DP;
      const T x = log2_density(zv, c[dd], c[DP + dd], c[2 * DP + dd]) + weight_correction(j, self, next, d_self, d_next);
      nan |= (x != x);
      mx = x > mx ? x : mx;
    }
    T r = T(0);
    if (nan) {
      mx = r = std::numeric_limits<T>::quiet_NaN();
    } else if (mx != -inf) {
      T s = T(0);
      for (int64_t j = 0; j < k; ++j) {
        const T* c = comp + j * 3 * DP;
        s += exp2_(log2_density(zv, c[dd], c[DP + dd], c[2 * DP + dd]) +
                   weight_correction(j, self, next, d_self, d_next) - mx);
      }
      r = log2_(s);
    }
    qm[i * d + dd] = mx;
    qr[i * d + dd] = r;
  }
}

// ----------------------------------------------------------------------------------- row backward

// One query i: grad_z[i, :] (as sum_j U). bq and qm live outside the thread's registers (shared
// memory in the kernel): element dd at bq[dd * stride].
template <typename T, int DP>
struct BwdRowThread {
  T z[DP];
  T gz[DP];
  T a = T(0), pm = T(0), pr = T(0);
  int64_t self = -1, next = -1;
  bool valid = false;

  TCVAE_HD void init(const T* z_rows, const T* a_rows, const T* aux_q, int64_t i, int64_t m_rows, int64_t k, int d,
                     int64_t offset) {
    valid = i < m_rows;
#pragma unroll
    for (int dd = 0; dd < DP; ++dd) {
      z[dd] = (valid && dd < d) ? z_rows[i * d + dd] : T(0);
      gz[dd] = T(0);
    }
    if (valid) {
      a = a_rows[i];
      pm = aux_q[2 * i];
      pr = aux_q[2 * i + 1];
    }
    self = valid ? self_index(i, offset, k) : -1;
    next = next_index(self, k);
  }

  TCVAE_HD void consume(const T* tile, int64_t k0, int n, int d, T d_self, T d_next, const T* bq, const T* qm,
                        int stride) {
    if (!valid) return;
    for (int jj = 0; jj < n; ++jj) {
      const T* c = tile + jj * 3 * DP;
      const T dw = weight_correction(k0 + jj, self, next, d_self, d_next);
      const T s = joint_sum<T, DP>(z, c, c + DP, c + 2 * DP);
      const T p = a * exp2_((s + dw - pm) - pr);  // a_i · joint softmax
#pragma unroll
      for (int dd = 0; dd < DP; ++dd) {
        if (dd >= d) continue;
        const T diff = z[dd] - c[dd];
        const T x = log2_density(z[dd], c[dd], c[DP + dd], c[2 * DP + dd]);
        const T g = fma_(bq[dd * stride], exp2_(x + dw - qm[dd * stride]), p);  // G[i, j, dd]
        gz[dd] += g * diff * c[DP + dd];
      }
    }
  }

  TCVAE_HD void store(int64_t i, int d, T* gz_rows) const {
    if (!valid) return;
    for (int dd = 0; dd < d; ++dd) gz_rows[i * d + dd] = gz[dd];
  }
};

// -------------------------------------------------------------------------------- column backward

// One component j: grad_mu[j, :], grad_logvar[j, :] (as sums over queries). The component's own
// mu / h2 / c2 live outside registers (shared memory in the kernel): element dd at [dd * stride].
template <typename T, int DP>
struct BwdColThread {
  T gmu[DP];
  T glv[DP];
  int64_t j = 0;
  bool valid = false;

  TCVAE_HD void init(int64_t j_, int64_t k) {
    j = j_;
    valid = j_ < k;
#pragma unroll
    for (int dd = 0; dd < DP; ++dd) gmu[dd] = glv[dd] = T(0);
  }

  // Queries i0 .. i0+n-1: qtile [n, 3, DP] (z, bq, qm), qscal [n, 3] (a, m, r).
  TCVAE_HD void consume(const T* qtile, const T* qscal, int64_t i0, int n, int64_t k, int d, int64_t offset,
                        T d_self, T d_next, T half_log2e, const T* mu, const T* h2, const T* c2, int stride) {
    if (!valid) return;
    for (int ii = 0; ii < n; ++ii) {
      const T* q = qtile + ii * 3 * DP;
      const int64_t self = self_index(i0 + ii, offset, k), next = next_index(self, k);
      const T dw = weight_correction(j, self, next, d_self, d_next);
      T s = T(0);
#pragma unroll
      for (int dd = 0; dd < DP; ++dd) s += log2_density(q[dd], mu[dd * stride], h2[dd * stride], c2[dd * stride]);
      const T p = qscal[ii * 3] * exp2_((s + dw - qscal[ii * 3 + 1]) - qscal[ii * 3 + 2]);
#pragma unroll
      for (int dd = 0; dd < DP; ++dd) {
        if (dd >= d) continue;
        const T muv = mu[dd * stride], hv = h2[dd * stride];
        const T diff = q[dd] - muv;
        const T x = log2_density(q[dd], muv, hv, c2[dd * stride]);
        const T g = fma_(q[DP + dd], exp2_(x + dw - q[2 * DP + dd]), p);
        gmu[dd] += g * diff * hv;
        glv[dd] += g * fma_(diff * diff, hv, -half_log2e);
      }
    }
  }

  TCVAE_HD void store(int d, T* gmu_rows, T* glv_rows) const {
    if (!valid) return;
    for (int dd = 0; dd < d; ++dd) {
      gmu_rows[j * d + dd] = gmu[dd];
      glv_rows[j * d + dd] = glv[dd];
    }
  }
};

}  // namespace fused
}  // namespace tcvae
