// Fused CPU kernels of the tcvae ops and the op schemas (TORCH_LIBRARY).
//
// Memory: O(M·D + K·D) plus per-thread buffers; the [M, K, D] tensor of log densities is never
// built. Forward: for a tile of queries, stream over blocks of components and keep, per (query,
// dimension) and per query, an online logsumexp state held per SIMD lane. Backward: recompute l
// block by block (FlashAttention style) and accumulate the column gradients (mu, logvar) into one
// partial buffer per chunk of queries, reduced in a fixed order afterwards; the chunks depend on
// the problem's size only, so results are bitwise the same for any thread count.
//
// SIMD: at::vec::Vectorized<T> (Sleef exp under AVX2/AVX512), vectorized along components j, on
// components transposed to [D, K_padded]; padding components have c = -inf (l = -inf).
//
// tcvae::log_qz_groups adds, in the same pass, the joints of groups of dimensions (HFVAE; struct
// Segments below); tcvae::log_qz is its case with no groups. (DimGroup / for_each_group are
// something else: runs of up to 4 dimensions evaluated together for instruction-level parallelism.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define TCVAE_HAS_MXCSR 1
#endif

#include "tcvae_math.h"

#ifndef TCVAE_CPU_CAPABILITY_NAME
#define TCVAE_CPU_CAPABILITY_NAME "default"
#endif

extern "C" {
// An empty Python module _C: importing it loads this library, whose static initializers
// register the ops with the dispatcher (pattern of pytorch/extension-cpp).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace tcvae {
namespace {

using at::vec::Vectorized;

// Flush denormals to zero inside a kernel thread: softmax weights times upstream gradients go
// denormal in the backward and would run on microcode assists. Restored on exit.
struct DenormalsAreZero {
#ifdef TCVAE_HAS_MXCSR
  unsigned int saved = _mm_getcsr();
  DenormalsAreZero() { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
  ~DenormalsAreZero() { _mm_setcsr(saved); }
#endif
};

constexpr int64_t kQueryTile = 8;      // queries sharing one pass over a component block
constexpr int64_t kBlockFwd = 256;     // components per block in the forward
constexpr int64_t kBlockBwd = 128;     // components per block in the backward
// The backward's reduction over queries (grad_mu, grad_logvar): query tiles are cut into chunks, each
// summing into its own [2, D, Kp] partial, the partials summed in chunk order. The partition depends
// on the problem's size only, never on the thread count, so every result is bitwise the same for any
// number of threads: at least kMinTilesPerChunk tiles per chunk, at most kMaxChunks chunks (the
// parallelism of the backward) and kPartialBudget bytes of partials.
constexpr int64_t kMinTilesPerChunk = 8;  // 64 queries: below that, partials cost more than they save
constexpr int64_t kMaxChunks = 32;
constexpr int64_t kPartialBudget = int64_t(64) << 20;

// 2^x, exactly 0 below Exp2Floor (x < 128 here, see Components). float: round-to-nearest split x = n + f, a degree-6
// polynomial for 2^f, and 2^n built in the exponent bits ((n + 127) << 23: +0 at n = -127);
// NaN propagates (clamp_min keeps it, and NaN·scale is NaN). double: Sleef's exp2.
inline Vectorized<float> exp2_floor(const Vectorized<float>& x) {
  using Vec = Vectorized<float>;
  const Vec xc = at::vec::clamp_min(x, Vec(Exp2Floor<float>::value));  // max(lo, x): keeps NaN
  const Vec n = xc.round();
  const Vec f = xc - n;
  Vec p(kExp2Poly[6]);
  p = at::vec::fmadd(p, f, Vec(kExp2Poly[5]));
  p = at::vec::fmadd(p, f, Vec(kExp2Poly[4]));
  p = at::vec::fmadd(p, f, Vec(kExp2Poly[3]));
  p = at::vec::fmadd(p, f, Vec(kExp2Poly[2]));
  p = at::vec::fmadd(p, f, Vec(kExp2Poly[1]));
  p = at::vec::fmadd(p, f, Vec(kExp2Poly[0]));
  // bits of 2^n: (n + 127) << 23, formed as an exact float product then converted
  const Vec biased = at::vec::fmadd(n, Vec(8388608.0f), Vec(127.0f * 8388608.0f));
  const Vec scale = at::vec::cast<float>(at::vec::convert_to_int_of_same_size(biased));
  return p * scale;
}

inline Vectorized<double> exp2_floor(const Vectorized<double>& x) {
  using Vec = Vectorized<double>;
  return at::vec::clamp_min(x, Vec(Exp2Floor<double>::value)).exp2();
}

// Components transposed to [D, Kp] (component-contiguous), in base-2 units:
//   mu,  h2 = h·log2e,  c2 = c·log2e,  so that x2 = c2 - (z - mu)^2·h2 = l·log2e.
// The common weight w_other is factored out of every sum (log_qz = w_other + ln2·log2 sum 2^(...)),
// only the self/next corrections dw enter the exponents. 2^x2 cannot overflow: h finite means
// logvar > -88.7 (float32), so x2 <= c·log2e < 64 (float64: < 512), and a sum of K < 2^27 such
// terms stays finite; the marginal sums therefore need no running maximum (underflow, when z is far
// from every component, is caught and recomputed exactly). Padding components: c2 = -inf, h2 = 1.
template <typename T>
struct Components {
  at::Tensor buffer;  // [3, D, Kp]
  const T* mu;
  const T* h2;
  const T* c2;
  int64_t kp;
  double shift;  // w_other: log_qz = shift + ln2·log2(sum_j 2^(S + dw)), likewise per dimension
};

template <typename T, Family F>
Components<T> prepare_components(const at::Tensor& mu, const at::Tensor& logvar, double w_other) {
  constexpr int64_t V = Vectorized<T>::size();
  const int64_t k = mu.size(0), d = mu.size(1);
  const int64_t kp = (k + V - 1) / V * V;
  Components<T> cp;
  cp.buffer = at::empty({3, d, kp}, mu.options());
  cp.kp = kp;
  cp.shift = w_other;
  T* out = cp.buffer.template data_ptr<T>();
  const T* m = mu.template data_ptr<T>();
  const T* lv = logvar.template data_ptr<T>();
  at::parallel_for(0, d, 1, [&](int64_t d0, int64_t d1) {
    for (int64_t dd = d0; dd < d1; ++dd) {
      T* mu_t = out + dd * kp;
      T* h_t = out + (d + dd) * kp;
      T* c_t = out + (2 * d + dd) * kp;
      for (int64_t j = 0; j < k; ++j) {
        const double l = double(lv[j * d + dd]);
        mu_t[j] = m[j * d + dd];
        h_t[j] = T(FamilyTraits<F>::h2(l));
        c_t[j] = T(FamilyTraits<F>::c2(l));
      }
      for (int64_t j = k; j < kp; ++j) {  // padding: x2 = -inf for any z (h2 > 0 avoids inf·0)
        mu_t[j] = T(0);
        h_t[j] = T(1);
        c_t[j] = -std::numeric_limits<T>::infinity();
      }
    }
  });
  cp.mu = out;
  cp.h2 = out + d * kp;
  cp.c2 = out + 2 * d * kp;
  return cp;
}

// The weight corrections of one query within a block: dw (base 2) at the self and next
// components, as indices of the affected SIMD vectors (-1: none in this block).
template <typename T>
struct Specials {
  int64_t vec_a = -1, vec_b = -1;

  // Writes (w_self - w_other)·log2e / (w_next - w_other)·log2e into the zeroed scratch dw[0, nb).
  void set(T* dw, int64_t j0, int64_t nb, int64_t self, int64_t next, T d_self, T d_next) {
    constexpr int64_t V = Vectorized<T>::size();
    vec_a = vec_b = -1;
    if (self >= j0 && self < j0 + nb) {
      dw[self - j0] = d_self;
      vec_a = (self - j0) / V * V;
    }
    if (next >= j0 && next < j0 + nb && next != self) {
      dw[next - j0] = d_next;
      vec_b = (next - j0) / V * V;
    }
  }
  bool hit(int64_t v) const { return v == vec_a || v == vec_b; }
  void clear(T* dw) const {
    constexpr int64_t V = Vectorized<T>::size();
    if (vec_a >= 0) std::fill(dw + vec_a, dw + vec_a + V, T(0));
    if (vec_b >= 0) std::fill(dw + vec_b, dw + vec_b + V, T(0));
  }
};

template <typename T>
inline T hsum(const Vectorized<T>& v) {
  constexpr int64_t V = Vectorized<T>::size();
  T lanes[V];
  v.store(lanes);
  T sum = T(0);
  for (int64_t l = 0; l < V; ++l) sum += lanes[l];
  return sum;
}

// Folds one block of values x[0, nb) (joint or group sums, base 2) into a lane-wise online
// logsumexp (m, s): adds the weight corrections dw in place first (x then holds S + dw), takes the
// exact block maximum, rescales s. Works at any magnitude; all -inf lanes shift by 0. With
// add_into (a group's S_g), also add_into[j] += x[j] before the weights (S += S_g in the same pass).
// KEEP_E: x ends holding e = 2^(S + dw - m_new), the terms just added to s. Returns the rescale
// 2^(m_old - m_new) applied to what came before (the grad_z sums follow s with it).
template <typename T, bool KEEP_E = false>
inline Vectorized<T> block_lse(T* x, int64_t nb, const Specials<T>& sp, const T* dw, Vectorized<T>& m,
                               Vectorized<T>& s, T* add_into = nullptr) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec neg_inf(-std::numeric_limits<T>::infinity());
  Vec bmax = neg_inf;
  for (int64_t v = 0; v < nb; v += V) {
    Vec xv = Vec::loadu(x + v);
    if (add_into) (Vec::loadu(add_into + v) + xv).store(add_into + v);
    if (sp.hit(v)) xv = xv + Vec::loadu(dw + v);
    xv.store(x + v);
    bmax = at::vec::maximum(bmax, xv);
  }
  const Vec m_new = at::vec::maximum(m, bmax);
  const Vec m_safe = Vec::blendv(m_new, Vec(T(0)), m_new == neg_inf);
  Vec e0(T(0)), e1(T(0));
  for (int64_t v = 0; v < nb; v += V) {
    const Vec e = exp2_floor(Vec::loadu(x + v) - m_safe);
    if (KEEP_E) e.store(x + v);
    if ((v / V) & 1) e1 = e1 + e; else e0 = e0 + e;
  }
  const Vec scale = exp2_floor(m - m_safe);
  s = s * scale + e0 + e1;
  m = m_new;
  return scale;
}

// acc·scale + sum_v e[v]·t[v] over one block, lane-wise (a grad_z sum following its logsumexp state).
template <typename T>
inline Vectorized<T> fold_terms(Vectorized<T> acc, const Vectorized<T>& scale, const T* e, const T* t, int64_t nb) {
  using Vec = Vectorized<T>;
  acc = acc * scale;
  for (int64_t v = 0; v < nb; v += Vec::size()) acc = at::vec::fmadd(Vec::loadu(e + v), Vec::loadu(t + v), acc);
  return acc;
}

// Dimension groups (HFVAE): the host permutes the columns so that group g is the contiguous range
// [bounds[g], bounds[g+1]) for g < n_groups; dimensions past the last group form one more, plain
// segment. A group's sum S_g[j] = sum_{d in g} x2[d, j] is formed in a buffer of its own and then
// added into S; the plain segment is summed straight into S (same order in the forward and the
// backward, so both passes see bitwise equal S and S_g). No groups: one plain segment [0, D).
struct Segments {
  std::vector<int64_t> bounds;  // segment boundaries, bounds.front() = 0, bounds.back() = D
  int64_t n_groups = 0;         // segments [0, n_groups) carry a logsumexp of their own

  Segments(int64_t d, const std::vector<int64_t>& group_ends) : bounds{0}, n_groups(int64_t(group_ends.size())) {
    for (const int64_t e : group_ends) bounds.push_back(e);
    if (bounds.back() != d) bounds.push_back(d);
  }
  int64_t count() const { return int64_t(bounds.size()) - 1; }
  bool is_group(int64_t sg) const { return sg < n_groups; }
};

// A group of G latent dimensions of one query, evaluated together so that their contributions to
// S[j] = sum_d x2[d, j] are added pairwise (fewer roundings, fewer loads/stores of S). Forward and
// backward use this same code, so S and x2 are bitwise identical in both passes.
template <typename T, int G, Family F>
struct DimGroup {
  using Vec = Vectorized<T>;
  const T* mu[G];
  const T* h2[G];
  const T* c2[G];
  Vec zv[G];

  DimGroup(const Components<T>& cp, const T* z_row, int64_t d0, int64_t j0) {
    for (int g = 0; g < G; ++g) {
      mu[g] = cp.mu + (d0 + g) * cp.kp + j0;
      h2[g] = cp.h2 + (d0 + g) * cp.kp + j0;
      c2[g] = cp.c2 + (d0 + g) * cp.kp + j0;
      zv[g] = Vec(z_row[d0 + g]);
    }
  }
  // x[g] = c2 - pen · h2 at vector offset v, pen = (z - mu)^2 or |z - mu|; returns their pairwise sum.
  // TERMS: also t[g] = slope(z - mu)·h2 (z - mu, or its sign; -d x2/dz / kSlope, grad_z's terms),
  // stored at t_out + g·t_stride + v (in memory, not registers: the caller's loop is register-bound).
  template <bool TERMS = false>
  inline Vec values(int64_t v, Vec* x, T* t_out = nullptr, int64_t t_stride = 0) const {
    for (int g = 0; g < G; ++g) {
      const Vec diff = zv[g] - Vec::loadu(mu[g] + v);
      const Vec pen = F == Family::Laplace ? diff.abs() : diff * diff;
      const Vec hv = Vec::loadu(h2[g] + v);
      x[g] = at::vec::fnmadd(pen, hv, Vec::loadu(c2[g] + v));
      if constexpr (TERMS)
        ((F == Family::Laplace ? diff.gt(Vec(T(0))) - diff.lt(Vec(T(0))) : diff) * hv).store(t_out + g * t_stride + v);
    }
    if constexpr (G == 1) return x[0];
    if constexpr (G == 2) return x[0] + x[1];
    if constexpr (G == 3) return (x[0] + x[1]) + x[2];
    if constexpr (G == 4) return (x[0] + x[1]) + (x[2] + x[3]);
  }
};

constexpr int kGroup = 4;

template <int G>
using GroupSize = std::integral_constant<int, G>;

// Calls f(GroupSize<G>{}, d0) over groups of kGroup dimensions (the last one smaller).
template <typename F>
inline void for_each_group(int64_t d, F&& f) {
  int64_t d0 = 0;
  for (; d0 + kGroup <= d; d0 += kGroup) f(GroupSize<kGroup>{}, d0);
  switch (d - d0) {
    case 3: f(GroupSize<3>{}, d0); break;
    case 2: f(GroupSize<2>{}, d0); break;
    case 1: f(GroupSize<1>{}, d0); break;
    default: break;
  }
}

// Logsumexp state saved for the backward, in base 2: sum_j 2^(x_j) = 2^(m + r), with m an exact
// value recomputed identically in the backward (or 0), and r = log2 of the rest, so that the
// backward's softmax weights 2^((x - m) - r) stay exact at any magnitude of x.
template <typename T>
struct Lse2 {
  T m, r;
};

// Combine lane-wise (max, sum) states: m = max over lanes, r = log2(sum_l s_l · 2^(m_l - m)) in double.
template <typename T>
inline Lse2<T> combine_lanes(const Vectorized<T>& mv, const Vectorized<T>& sv) {
  constexpr int64_t V = Vectorized<T>::size();
  T ms[V], ss[V];
  mv.store(ms);
  sv.store(ss);
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  T top = -inf;
  for (int64_t l = 0; l < V; ++l) {
    if (std::isnan(ms[l]) || std::isnan(ss[l])) return {nan, nan};
    if (ss[l] != T(0)) top = std::max(top, ms[l]);
  }
  if (top == -inf) return {-inf, T(0)};
  double sum = 0.0;
  for (int64_t l = 0; l < V; ++l)
    if (ss[l] != T(0) && ms[l] != -inf) sum += double(ss[l]) * std::exp2(double(ms[l]) - double(top));
  return {top, T(std::log2(sum))};
}

// A grad_z sum normalised by its logsumexp state, from lane-wise (max m, sum s, terms a) of the same
// rescaling: sum_l a_l·2^(m_l - top) / sum_l s_l·2^(m_l - top), in double; 0 when the total is 0
// (every term -inf), NaN when a lane is.
template <typename T>
inline T normalised_lanes(const Vectorized<T>& mv, const Vectorized<T>& sv, const Vectorized<T>& av) {
  constexpr int64_t V = Vectorized<T>::size();
  T ms[V], ss[V], as[V];
  mv.store(ms);
  sv.store(ss);
  av.store(as);
  const T inf = std::numeric_limits<T>::infinity();
  T top = -inf;
  for (int64_t l = 0; l < V; ++l) {
    if (std::isnan(ms[l]) || std::isnan(ss[l]) || std::isnan(as[l])) return std::numeric_limits<T>::quiet_NaN();
    if (ss[l] != T(0)) top = std::max(top, ms[l]);
  }
  if (top == -inf) return T(0);
  double num = 0.0, den = 0.0;
  for (int64_t l = 0; l < V; ++l)
    if (ss[l] != T(0) && ms[l] != -inf) {
      const double f = std::exp2(double(ms[l]) - double(top));
      num += double(as[l]) * f;
      den += double(ss[l]) * f;
    }
  return T(num / den);
}

// Exact two-pass log-sum of one (query, dim) over all components, in base 2, for the rare rows whose
// sum lies below 2^-60 (z far from every component). x2 is computed by the
// same vector code as everywhere else, so the backward recomputes m bitwise. With tn: also the
// normalised grad_z sum over the components from `grad_from` on, sum_j 2^(x_j - m)·t_j / sum_j 2^(x_j - m).
template <typename T, Family F>
Lse2<T> exact_marginal(const T* z_row, const Components<T>& cp, int64_t dd, int64_t k, int64_t self, int64_t next,
                       T d_self, T d_next, std::vector<T>& buf, T* tn = nullptr, int64_t grad_from = 0) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  buf.resize(2 * cp.kp);
  T* tb = buf.data() + cp.kp;
  for (int64_t v = 0; v < cp.kp; v += V) {
    Vec x[1];
    DimGroup<T, 1, F>(cp, z_row, dd, 0).template values<true>(v, x, tb);
    x[0].store(buf.data() + v);
  }
  if (self >= 0) buf[self] += d_self;
  if (next >= 0 && next != self) buf[next] += d_next;
  const T inf = std::numeric_limits<T>::infinity();
  T mx = -inf;
  for (int64_t j = 0; j < k; ++j) {
    if (std::isnan(buf[j])) {
      if (tn) *tn = buf[j];
      return {buf[j], buf[j]};
    }
    mx = std::max(mx, buf[j]);
  }
  if (tn) *tn = T(0);
  if (mx == -inf) return {-inf, T(0)};
  double sum = 0.0, terms = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const double e = std::exp2(double(buf[j]) - double(mx));
    sum += e;
    if (j >= grad_from) terms += e * double(tb[j]);
  }
  if (tn) *tn = T(terms / sum);
  return {mx, T(std::log2(sum))};
}

// Forward. Outputs log_qz [M], log_qz_dims [M, D], log_qz_groups [M, n_groups] and the saved
// states aux_q [M, 2], aux_qd [M, D, kAuxQd], aux_qg [M, n_groups, 2]. aux_qd[i, d] = (m, r, tn, jn,
// jg): the marginal logsumexp state, then (GRAD) the normalised grad_z sums over the components
// j >= grad_from, whose columns the backward leaves out (they need no d/dmu, d/dlogvar):
//   tn = sum_j Q·t,  jn = sum_j P·t,  jg = sum_j R_g(d)·t  (t = slope(z - mu)·h2; P, Q, R_g the
// joint, marginal and group softmax weights over all components; jg = 0 outside the groups).
constexpr int64_t kAuxQd = 5;

template <typename T, Family F, bool GRAD>
void forward_kernel(const T* z, const Components<T>& cp, const Segments& seg, int64_t m_rows, int64_t k, int64_t d,
                    T d_self, T d_next, int64_t offset, int64_t grad_from, T* out_q, T* out_qd, T* out_qg, T* aux_q,
                    T* aux_qd, T* aux_qg) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t kp = cp.kp, ng = seg.n_groups;
  const int64_t n_tiles = (m_rows + kQueryTile - 1) / kQueryTile;
  const T kTiny = T(std::ldexp(1.0, -60));  // smaller marginal sums are recomputed exactly
  at::parallel_for(0, n_tiles, 1, [&](int64_t t0, int64_t t1) {
    DenormalsAreZero ftz;
    std::vector<T> S(kBlockFwd), SG(ng ? kBlockFwd : 0), dw(kBlockFwd, T(0)), buf;
    std::vector<T> tb(GRAD ? d * kBlockFwd : 0);          // GRAD: t[d, j] of the block (0 left of grad_from)
    std::vector<Vec> acc(kQueryTile * d);                 // marginal sums 2^x2 per (query, d)
    std::vector<Vec> ta(GRAD ? kQueryTile * d : 0), ja(ta.size()), ga(ng ? ta.size() : 0);  // grad_z sums
    std::vector<Vec> jm(kQueryTile), js(kQueryTile);      // joint lane-wise (max, sum)
    std::vector<Vec> gm(kQueryTile * ng), gs(kQueryTile * ng);  // per (query, group) (max, sum)
    const Vec neg_inf(-std::numeric_limits<T>::infinity()), zero(T(0));
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t i0 = tile * kQueryTile, ib = std::min(kQueryTile, m_rows - i0);
      std::fill(acc.begin(), acc.end(), zero);
      std::fill(ta.begin(), ta.end(), zero);
      std::fill(ja.begin(), ja.end(), zero);
      std::fill(ga.begin(), ga.end(), zero);
      std::fill(jm.begin(), jm.end(), neg_inf);
      std::fill(js.begin(), js.end(), zero);
      std::fill(gm.begin(), gm.end(), neg_inf);
      std::fill(gs.begin(), gs.end(), zero);
      for (int64_t j0 = 0; j0 < kp; j0 += kBlockFwd) {
        const int64_t nb = std::min(kBlockFwd, kp - j0);  // a multiple of V
        // the grad_z sums of this block start at vector offset vg (grad_from is a multiple of V)
        const int64_t vg = std::clamp<int64_t>(grad_from - j0, 0, nb);
        const bool terms = GRAD && vg < nb;
        for (int64_t ii = 0; ii < ib; ++ii) {
          const int64_t i = i0 + ii;
          const int64_t self = self_index(i, offset, k), next = next_index(self, k);
          Specials<T> sp;
          sp.set(dw.data(), j0, nb, self, next, d_self, d_next);
          std::fill(S.begin(), S.begin() + nb, T(0));
          Vec* acc_row = acc.data() + ii * d;
          for (int64_t sg = 0; sg < seg.count(); ++sg) {
            const int64_t s0 = seg.bounds[sg];
            T* seg_sum = seg.is_group(sg) ? SG.data() : S.data();  // S_g[j], or S itself
            if (seg.is_group(sg)) std::fill(SG.begin(), SG.begin() + nb, T(0));
            for_each_group(seg.bounds[sg + 1] - s0, [&](auto group, int64_t r0) {
              constexpr int G = decltype(group)::value;
              const int64_t d0 = s0 + r0;
              const DimGroup<T, G, F> grp(cp, z + i * d, d0, j0);
              Vec a[G], at_[G];
              for (int g = 0; g < G; ++g) a[g] = at_[g] = zero;
              T* tg = tb.data() + d0 * kBlockFwd;  // this group's t rows (GRAD)
              // columns [v0, v1), with (TERMS) or without grad_z's terms; one loop per case
              auto sweep = [&](auto terms_c, int64_t v0, int64_t v1) {
                constexpr bool TERMS = decltype(terms_c)::value;
                for (int64_t v = v0; v < v1; v += V) {
                  Vec x[G];
                  const Vec sum = grp.template values<TERMS>(v, x, tg, kBlockFwd);
                  (Vec::loadu(seg_sum + v) + sum).store(seg_sum + v);  // S_g[j] += sum over the dims
                  if (sp.hit(v)) {
                    const Vec dwv = Vec::loadu(dw.data() + v);
                    for (int g = 0; g < G; ++g) x[g] = x[g] + dwv;
                  }
                  for (int g = 0; g < G; ++g) {
                    const Vec e = exp2_floor(x[g]);  // 2^(l·log2e + dw)
                    a[g] = a[g] + e;
                    if constexpr (TERMS) at_[g] = at::vec::fmadd(e, Vec::loadu(tg + g * kBlockFwd + v), at_[g]);
                  }
                }
              };
              if (terms) {  // the columns left of grad_from carry t = 0 (the backward sums theirs)
                for (int g = 0; g < G; ++g) std::fill(tg + g * kBlockFwd, tg + g * kBlockFwd + vg, T(0));
                sweep(std::false_type{}, 0, vg);
                sweep(std::true_type{}, vg, nb);
              } else {
                sweep(std::false_type{}, 0, nb);
              }
              for (int g = 0; g < G; ++g) {
                acc_row[d0 + g] = acc_row[d0 + g] + a[g];
                if (terms) ta[ii * d + d0 + g] = ta[ii * d + d0 + g] + at_[g];
              }
            });
            if (seg.is_group(sg)) {  // S[j] += S_g[j]; the group's logsumexp of S_g + dw
              if (terms) {
                const Vec sc = block_lse<T, true>(SG.data(), nb, sp, dw.data(), gm[ii * ng + sg], gs[ii * ng + sg],
                                                  S.data());
                for (int64_t dd = s0; dd < seg.bounds[sg + 1]; ++dd)
                  ga[ii * d + dd] = fold_terms(ga[ii * d + dd], sc, SG.data(), tb.data() + dd * kBlockFwd, nb);
              } else {
                const Vec sc = block_lse(SG.data(), nb, sp, dw.data(), gm[ii * ng + sg], gs[ii * ng + sg], S.data());
                if (GRAD)  // a block left of grad_from: the sums only follow the rescaling
                  for (int64_t dd = s0; dd < seg.bounds[sg + 1]; ++dd) ga[ii * d + dd] = ga[ii * d + dd] * sc;
              }
            }
          }
          // joint: L = S + dw; exact block maximum, lane-wise online logsumexp (any magnitude)
          if (terms) {
            const Vec sc = block_lse<T, true>(S.data(), nb, sp, dw.data(), jm[ii], js[ii]);
            for (int64_t dd = 0; dd < d; ++dd)
              ja[ii * d + dd] = fold_terms(ja[ii * d + dd], sc, S.data(), tb.data() + dd * kBlockFwd, nb);
          } else {
            const Vec sc = block_lse(S.data(), nb, sp, dw.data(), jm[ii], js[ii]);
            if (GRAD)
              for (int64_t dd = 0; dd < d; ++dd) ja[ii * d + dd] = ja[ii * d + dd] * sc;
          }
          sp.clear(dw.data());
        }
      }
      for (int64_t ii = 0; ii < ib; ++ii) {
        const int64_t i = i0 + ii;
        const int64_t self = self_index(i, offset, k), next = next_index(self, k);
        T* aq = aux_qd + kAuxQd * i * d;
        for (int64_t dd = 0; dd < d; ++dd) {
          const T s = hsum(acc[ii * d + dd]);
          Lse2<T> st{T(0), T(std::log2(s))};
          T tn = GRAD ? T(double(hsum(ta[ii * d + dd])) / double(s)) : T(0);
          if (!(s >= kTiny) && !std::isnan(s))
            st = exact_marginal<T, F>(z + i * d, cp, dd, k, self, next, d_self, d_next, buf, GRAD ? &tn : nullptr,
                                      grad_from);
          aq[kAuxQd * dd] = st.m;
          aq[kAuxQd * dd + 1] = st.r;
          aq[kAuxQd * dd + 2] = tn;
          aq[kAuxQd * dd + 3] = GRAD ? normalised_lanes(jm[ii], js[ii], ja[ii * d + dd]) : T(0);
          aq[kAuxQd * dd + 4] = T(0);
          out_qd[i * d + dd] = T(cp.shift + kLn2 * (double(st.m) + double(st.r)));
        }
        const Lse2<T> st = combine_lanes(jm[ii], js[ii]);
        aux_q[2 * i] = st.m;
        aux_q[2 * i + 1] = st.r;
        out_q[i] = T(cp.shift + kLn2 * (double(st.m) + double(st.r)));
        for (int64_t g = 0; g < ng; ++g) {
          const Lse2<T> sg = combine_lanes(gm[ii * ng + g], gs[ii * ng + g]);
          aux_qg[2 * (i * ng + g)] = sg.m;
          aux_qg[2 * (i * ng + g) + 1] = sg.r;
          out_qg[i * ng + g] = T(cp.shift + kLn2 * (double(sg.m) + double(sg.r)));
          if (GRAD)
            for (int64_t dd = seg.bounds[g]; dd < seg.bounds[g + 1]; ++dd)
              aq[kAuxQd * dd + 4] = normalised_lanes(gm[ii * ng + g], gs[ii * ng + g], ga[ii * d + dd]);
        }
      }
    }
  });
}

// Backward, in base 2 with the saved states (m, r):
//   Q = 2^((x2 + dw - m_id) - r_id),  P = a_i·2^((S + dw - m_i) - r_i),
//   R_g = c_ig·2^((S_g + dw - m_ig) - r_ig),  G = P + R_g(d) + b_id·Q   (R = 0 outside groups)
//   U = G·diff·h2  (h = h2·ln2):  dz = -2ln2·sum_j U,  dmu = 2ln2·sum_i U,
//   dlogvar = ln2·sum_i G·(diff^2·h2 - 0.5·log2e)
// Laplace: U = G·sign(diff)·h2, dz = -ln2·sum_j U, dmu = ln2·sum_i U, db = ln2·sum_i G·(|diff|·h2 - log2e)
// (FamilyTraits: kSlope, kConst). Over the components j < kpg only (the ones that need d/dmu,
// d/dlogvar, padded to V): dz's sum over the others is the forward's (aux_qd's tn, jn, jg).
// partial: [n_chunks, 2, D, kpg].
template <typename T, Family F>
void backward_kernel(const T* z, const Components<T>& cp, const Segments& seg, int64_t m_rows, int64_t k, int64_t d,
                     T d_self, T d_next, int64_t offset, const T* aux_q, const T* aux_qd, const T* aux_qg, const T* a,
                     const T* b, const T* c, T* grad_z, T* partial, int64_t n_chunks, int64_t tiles_per_chunk,
                     int64_t kpg) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t kp = kpg, ng = seg.n_groups;
  const int64_t n_tiles = (m_rows + kQueryTile - 1) / kQueryTile;
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    DenormalsAreZero ftz;
    std::vector<T> X(d * kBlockBwd), S(kBlockBwd), P(kBlockBwd), dw(kBlockBwd, T(0));
    std::vector<T> SG(ng ? kBlockBwd : 0), PG(ng * kBlockBwd);  // S_g of one segment; P + R_g per group
    std::vector<const T*> coef(d);                                // per dimension: P, or P + R_g of its group
    std::vector<Vec> gz(kQueryTile * d);
    const Vec const_log2e(T(FamilyTraits<F>::kConst * kLog2E));
    const Vec zero(T(0));
    for (int64_t dd = 0; dd < d; ++dd) coef[dd] = P.data();
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t dd = seg.bounds[g]; dd < seg.bounds[g + 1]; ++dd) coef[dd] = PG.data() + g * kBlockBwd;
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      T* gmu_part = partial + chunk * 2 * d * kp;  // [D, Kp]: sum_i U
      T* glv_part = gmu_part + d * kp;             // [D, Kp]: sum_i G·(diff^2·h2 - 0.5·log2e)
      std::fill(gmu_part, gmu_part + 2 * d * kp, T(0));  // zeroed (first touched) by the thread using it
      const int64_t tile_end = std::min(n_tiles, (chunk + 1) * tiles_per_chunk);
      for (int64_t tile = chunk * tiles_per_chunk; tile < tile_end; ++tile) {
        const int64_t i0 = tile * kQueryTile, ib = std::min(kQueryTile, m_rows - i0);
        std::fill(gz.begin(), gz.end(), Vec(T(0)));
        for (int64_t j0 = 0; j0 < kp; j0 += kBlockBwd) {
          const int64_t nb = std::min(kBlockBwd, kp - j0);
          for (int64_t ii = 0; ii < ib; ++ii) {
            const int64_t i = i0 + ii;
            const int64_t self = self_index(i, offset, k), next = next_index(self, k);
            Specials<T> sp;
            sp.set(dw.data(), j0, nb, self, next, d_self, d_next);
            // pass A: x2[d, j] for the block, S_g[j] and S[j] (as in the forward), R_g[j]
            std::fill(S.begin(), S.begin() + nb, T(0));
            for (int64_t sg = 0; sg < seg.count(); ++sg) {
              const int64_t s0 = seg.bounds[sg];
              T* seg_sum = seg.is_group(sg) ? SG.data() : S.data();
              if (seg.is_group(sg)) std::fill(SG.begin(), SG.begin() + nb, T(0));
              for_each_group(seg.bounds[sg + 1] - s0, [&](auto group, int64_t r0) {
                constexpr int G = decltype(group)::value;
                const int64_t d0 = s0 + r0;
                const DimGroup<T, G, F> grp(cp, z + i * d, d0, j0);
                for (int64_t v = 0; v < nb; v += V) {
                  Vec x[G];
                  const Vec sum = grp.values(v, x);
                  (Vec::loadu(seg_sum + v) + sum).store(seg_sum + v);
                  for (int g = 0; g < G; ++g) x[g].store(X.data() + (d0 + g) * kBlockBwd + v);
                }
              });
              if (!seg.is_group(sg)) continue;
              // S[j] += S_g[j] (as in the forward); R_g[j] = c_ig · 2^((S_g + dw - m_ig) - r_ig)
              const Vec cv(c[i * ng + sg]), gm(aux_qg[2 * (i * ng + sg)]), gr(aux_qg[2 * (i * ng + sg) + 1]);
              T* rg = PG.data() + sg * kBlockBwd;
              for (int64_t v = 0; v < nb; v += V) {
                Vec x = Vec::loadu(SG.data() + v);
                (Vec::loadu(S.data() + v) + x).store(S.data() + v);
                if (sp.hit(v)) x = x + Vec::loadu(dw.data() + v);
                (cv * exp2_floor((x - gm) - gr)).store(rg + v);
              }
            }
            // P[j] = a_i · 2^((S + dw - m_i) - r_i); groups: PG_g = P + R_g
            const Vec av(a[i]), pm(aux_q[2 * i]), pr(aux_q[2 * i + 1]);
            for (int64_t v = 0; v < nb; v += V) {
              Vec x = Vec::loadu(S.data() + v);
              if (sp.hit(v)) x = x + Vec::loadu(dw.data() + v);
              const Vec p = av * exp2_floor((x - pm) - pr);
              p.store(P.data() + v);
              for (int64_t g = 0; g < ng; ++g) (p + Vec::loadu(PG.data() + g * kBlockBwd + v)).store(PG.data() + g * kBlockBwd + v);
            }
            // pass B: G = P (+ R_g) + b·Q, accumulate U and the logvar term
            for (int64_t dd = 0; dd < d; ++dd) {
              const Vec zv(z[i * d + dd]), bv(b[i * d + dd]);
              const Vec qm(aux_qd[kAuxQd * (i * d + dd)]), qr(aux_qd[kAuxQd * (i * d + dd) + 1]);
              const T* mu = cp.mu + dd * cp.kp + j0;
              const T* h2 = cp.h2 + dd * cp.kp + j0;
              const T* x_row = X.data() + dd * kBlockBwd;
              const T* pc = coef[dd];
              T* gmu = gmu_part + dd * kp + j0;
              T* glv = glv_part + dd * kp + j0;
              Vec accz(T(0));
              for (int64_t v = 0; v < nb; v += V) {
                Vec x = Vec::loadu(x_row + v);
                if (sp.hit(v)) x = x + Vec::loadu(dw.data() + v);
                const Vec q = exp2_floor((x - qm) - qr);
                const Vec g = at::vec::fmadd(bv, q, Vec::loadu(pc + v));  // G[i, j, d]
                const Vec diff = zv - Vec::loadu(mu + v);
                const Vec hv = Vec::loadu(h2 + v);
                const Vec u = F == Family::Laplace ? g * (diff.gt(zero) - diff.lt(zero)) * hv : g * diff * hv;
                accz = accz + u;
                (Vec::loadu(gmu + v) + u).store(gmu + v);
                // G·(pen·h2 - kConst·log2e): subtract before scaling by G (one rounding at the cancellation)
                const Vec pen = F == Family::Laplace ? diff.abs() : diff * diff;
                const Vec t = at::vec::fmsub(pen, hv, const_log2e);
                at::vec::fmadd(g, t, Vec::loadu(glv + v)).store(glv + v);
              }
              gz[ii * d + dd] = gz[ii * d + dd] + accz;
            }
            sp.clear(dw.data());
          }
        }
        for (int64_t ii = 0; ii < ib; ++ii)
          for (int64_t dd = 0; dd < d; ++dd) grad_z[(i0 + ii) * d + dd] = T(-FamilyTraits<F>::kSlope * kLn2) * hsum(gz[ii * d + dd]);
      }
    }
  });
}

// ----------------------------------------------------------------------------- op implementations

void check_args(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  TORCH_CHECK(z.dim() == 2 && mu.dim() == 2 && logvar.dim() == 2, "tcvae: z, mu, logvar must be 2-D");
  TORCH_CHECK(mu.sizes() == logvar.sizes(), "tcvae: mu and logvar must have the same shape");
  TORCH_CHECK(z.size(1) == mu.size(1), "tcvae: z and mu must have the same number of columns D");
  TORCH_CHECK(z.scalar_type() == mu.scalar_type() && z.scalar_type() == logvar.scalar_type(),
              "tcvae: z, mu, logvar must share one dtype");
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), "tcvae: inputs must be floating point");
  TORCH_CHECK(z.size(0) > 0 && mu.size(0) > 0 && z.size(1) > 0, "tcvae: empty inputs");
}

at::ScalarType acc_type(const at::Tensor& t) { return accumulation_type(t.scalar_type()); }

void check_group_ends(at::IntArrayRef group_ends, int64_t d) {
  int64_t prev = 0;
  for (const int64_t e : group_ends) {
    TORCH_CHECK(e > prev && e <= d, "tcvae: group_ends must be strictly increasing in [1, D], got ", group_ends);
    prev = e;
  }
}

// The columns that get d/dmu, d/dlogvar (grad_component_count), padded to the SIMD width and capped at kp.
int64_t grad_columns(int64_t grad_components, int64_t k, int64_t kp, int64_t width) {
  const int64_t n = grad_component_count(grad_components, k);
  return std::min(kp, (n + width - 1) / width * width);
}

// (log_qz [M], log_qz_dims [M, D], log_qz_groups [M, G], aux_q [M, 2], aux_qd [M, D, 5], aux_qg [M, G, 2]);
// group g covers dimensions [group_ends[g-1], group_ends[g]) (group_ends[-1] = 0), G = len(group_ends).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_qz_groups_cpu(
    const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar, at::IntArrayRef group_ends,
    at::ArrayRef<double> weights, int64_t offset, c10::string_view family, bool grad_terms, int64_t grad_components) {
  check_args(z, mu, logvar);
  const LogWeights w = parse_log_weights(weights, offset);
  const Family fam = parse_family(std::string(family));
  const auto acc = acc_type(z);
  const at::Tensor zc = z.to(acc).contiguous(), muc = mu.to(acc).contiguous(), lvc = logvar.to(acc).contiguous();
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), ng = int64_t(group_ends.size());
  check_group_ends(group_ends, d);
  const Segments seg(d, group_ends.vec());
  at::Tensor out_q = at::empty({m}, zc.options()), out_qd = at::empty({m, d}, zc.options());
  at::Tensor out_qg = at::empty({m, ng}, zc.options());
  at::Tensor aux_q = at::empty({m, 2}, zc.options()), aux_qd = at::empty({m, d, kAuxQd}, zc.options());
  at::Tensor aux_qg = at::empty({m, ng, 2}, zc.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "tcvae_log_qz_cpu", [&] {
    dispatch_family(fam, [&](auto f) {
      constexpr Family F = decltype(f)::value;
      const auto cp = prepare_components<scalar_t, F>(muc, lvc, w.other);
      const int64_t grad_from = grad_columns(grad_components, k, cp.kp, Vectorized<scalar_t>::size());
      auto run = [&](auto grad) {
        forward_kernel<scalar_t, F, decltype(grad)::value>(
            zc.data_ptr<scalar_t>(), cp, seg, m, k, d, scalar_t(w.d_self2()), scalar_t(w.d_next2()), w.offset,
            grad_from, out_q.data_ptr<scalar_t>(), out_qd.data_ptr<scalar_t>(), out_qg.data_ptr<scalar_t>(),
            aux_q.data_ptr<scalar_t>(), aux_qd.data_ptr<scalar_t>(), aux_qg.data_ptr<scalar_t>());
      };
      // the forward sums grad_z's terms only over the columns the backward leaves out
      if (grad_terms && grad_from < cp.kp)
        run(std::true_type{});
      else
        run(std::false_type{});
    });
  });
  return {out_q, out_qd, out_qg, aux_q, aux_qd, aux_qg};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_qz_cpu(const at::Tensor& z, const at::Tensor& mu,
                                                                      const at::Tensor& logvar, at::ArrayRef<double> weights,
                                                                      int64_t offset, bool grad_terms,
                                                                      c10::string_view family, int64_t grad_components) {
  auto out = log_qz_groups_cpu(z, mu, logvar, {}, weights, offset, family, grad_terms, grad_components);
  return {std::get<0>(out), std::get<1>(out), std::get<3>(out), std::get<4>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_groups_backward_cpu(
    const at::Tensor& grad_q, const at::Tensor& grad_qd, const at::Tensor& grad_qg, const at::Tensor& z,
    const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& aux_q, const at::Tensor& aux_qd,
    const at::Tensor& aux_qg, at::IntArrayRef group_ends, at::ArrayRef<double> weights, int64_t offset,
    c10::string_view family, bool grad_terms, int64_t grad_components) {
  check_args(z, mu, logvar);
  const LogWeights w = parse_log_weights(weights, offset);
  const Family fam = parse_family(std::string(family));
  const auto acc = acc_type(z);
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), ng = int64_t(group_ends.size());
  check_group_ends(group_ends, d);
  TORCH_CHECK(grad_q.numel() == m && grad_qd.numel() == m * d && grad_qg.numel() == m * ng,
              "tcvae: upstream gradient shapes");
  TORCH_CHECK(aux_q.numel() == 2 * m && aux_qd.numel() == kAuxQd * m * d && aux_qg.numel() == 2 * m * ng &&
                  aux_q.scalar_type() == acc && aux_qd.scalar_type() == acc && aux_qg.scalar_type() == acc,
              "tcvae: saved logsumexp states must come from tcvae::log_qz on the same inputs");
  const Segments seg(d, group_ends.vec());
  const at::Tensor zc = z.to(acc).contiguous(), muc = mu.to(acc).contiguous(), lvc = logvar.to(acc).contiguous();
  const at::Tensor a = grad_q.to(acc).contiguous(), b = grad_qd.to(acc).contiguous(), c = grad_qg.to(acc).contiguous();
  const at::Tensor sq = aux_q.contiguous(), sqd = aux_qd.contiguous(), sqg = aux_qg.contiguous();
  at::Tensor grad_z = at::empty({m, d}, zc.options());
  at::Tensor grad_mu = at::empty({k, d}, zc.options()), grad_lv = at::empty({k, d}, zc.options());
  double slope_ln2 = 0.0;
  int64_t kpg = 0, kp = 0;
  AT_DISPATCH_FLOATING_TYPES(acc, "tcvae_log_qz_backward_cpu", [&] {
   dispatch_family(fam, [&](auto f) {
    constexpr Family F = decltype(f)::value;
    slope_ln2 = FamilyTraits<F>::kSlope * kLn2;
    const auto cp = prepare_components<scalar_t, F>(muc, lvc, w.other);
    kp = cp.kp;
    kpg = grad_columns(grad_components, k, cp.kp, Vectorized<scalar_t>::size());
    TORCH_CHECK(grad_terms || kpg == cp.kp,
                "tcvae: the forward ran with grad_terms=False: it summed no grad_z terms for the columns the backward "
                "leaves out");
    const int64_t n_tiles = (m + kQueryTile - 1) / kQueryTile;
    const int64_t per_chunk_bytes = std::max<int64_t>(1, 2 * d * kpg * int64_t(sizeof(scalar_t)));
    const int64_t most = std::max<int64_t>(1, std::min(kMaxChunks, kPartialBudget / per_chunk_bytes));
    const int64_t tiles_per_chunk = std::max((n_tiles + most - 1) / most, kMinTilesPerChunk);
    const int64_t n_chunks = std::max<int64_t>(1, (n_tiles + tiles_per_chunk - 1) / tiles_per_chunk);
    at::Tensor partial = at::empty({n_chunks, 2, d, kpg}, zc.options());
    backward_kernel<scalar_t, F>(zc.data_ptr<scalar_t>(), cp, seg, m, k, d, scalar_t(w.d_self2()), scalar_t(w.d_next2()),
                              w.offset, sq.data_ptr<scalar_t>(),
                              sqd.data_ptr<scalar_t>(), sqg.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                              b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), grad_z.data_ptr<scalar_t>(),
                              partial.data_ptr<scalar_t>(), n_chunks, tiles_per_chunk, kpg);
    // grad_mu[j, d] = 2ln2 · sum over chunks c of partial[c, 0, d, j], in chunk order (deterministic);
    // grad_logvar likewise from partial[c, 1]. Parallel over (d, block of j): contiguous reads.
    const scalar_t* p = partial.data_ptr<scalar_t>();
    scalar_t* gmu = grad_mu.data_ptr<scalar_t>();
    scalar_t* glv = grad_lv.data_ptr<scalar_t>();
    const int64_t kg = std::min(k, kpg), jb = 512, n_jb = (kg + jb - 1) / jb;
    at::parallel_for(0, d * n_jb, 1, [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> sm(jb), sl(jb);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t dd = t / n_jb, j0 = (t % n_jb) * jb, nj = std::min(jb, kg - j0);
        std::fill(sm.begin(), sm.end(), scalar_t(0));
        std::fill(sl.begin(), sl.end(), scalar_t(0));
        for (int64_t ci = 0; ci < n_chunks; ++ci) {
          const scalar_t* pm = p + ((ci * 2 + 0) * d + dd) * kpg + j0;
          const scalar_t* pl = p + ((ci * 2 + 1) * d + dd) * kpg + j0;
          for (int64_t j = 0; j < nj; ++j) {
            sm[j] += pm[j];
            sl[j] += pl[j];
          }
        }
        for (int64_t j = 0; j < nj; ++j) {
          gmu[(j0 + j) * d + dd] = scalar_t(FamilyTraits<F>::kSlope * kLn2) * sm[j];
          glv[(j0 + j) * d + dd] = scalar_t(kLn2) * sl[j];
        }
      }
    });
   });
  });
  // rows [0, kpg) hold the reduction; the rows the caller asked none of (a bank's) are 0
  const int64_t g_rows = std::min(grad_components < 0 ? k : grad_components, kpg);
  if (g_rows < k) {
    grad_mu.narrow(0, g_rows, k - g_rows).zero_();
    grad_lv.narrow(0, g_rows, k - g_rows).zero_();
  }
  if (kpg < kp) {  // d/dz over the columns the backward left out: the forward's normalised sums
    const at::Tensor tn = sqd.select(2, 2), jn = sqd.select(2, 3), jg = sqd.select(2, 4);
    at::Tensor coef = b * tn + a.unsqueeze(1) * jn;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t lo = g == 0 ? 0 : group_ends[g - 1], hi = group_ends[g];
      coef.narrow(1, lo, hi - lo).add_(c.select(1, g).unsqueeze(1) * jg.narrow(1, lo, hi - lo));
    }
    grad_z.sub_(slope_ln2 * coef);
  }
  return {grad_z.to(z.scalar_type()), grad_mu.to(mu.scalar_type()), grad_lv.to(logvar.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_backward_cpu(
    const at::Tensor& grad_q, const at::Tensor& grad_qd, const at::Tensor& z, const at::Tensor& mu,
    const at::Tensor& logvar, const at::Tensor& aux_q, const at::Tensor& aux_qd, at::ArrayRef<double> weights,
    int64_t offset, bool grad_terms, c10::string_view family, int64_t grad_components) {
  const at::Tensor none = aux_q.new_empty({z.size(0), 0});
  return log_qz_groups_backward_cpu(grad_q, grad_qd, none, z, mu, logvar, aux_q, aux_qd, none.unsqueeze(2), {},
                                    weights, offset, family, grad_terms, grad_components);
}

std::string build_info() {
  std::string info = std::string("cpu_capability=") + TCVAE_CPU_CAPABILITY_NAME;
#ifdef TCVAE_WITH_CUDA
  info += ";cuda=1";
#else
  info += ";cuda=0";
#endif
#ifdef TCVAE_SANITIZE_NAME
  info += std::string(";sanitize=") + TCVAE_SANITIZE_NAME;
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(tcvae, m) {
  // log_qz returns (log_qz [M], log_qz_dims [M, D], aux_q [M, 2], aux_qd [M, D, A]); the aux tensors
  // are the kernel's saved logsumexp states and the forward's sums of grad_z terms (CPU: A = 5, the
  // sums over the components the backward leaves out; CUDA: A = 4, over all), meaningful only to
  // log_qz_backward of the same device. grad_terms: whether a backward will follow (the forward then
  // sums those terms; False skips them, and the backward).
  // weights, offset: the estimator's structured log weights [w_self, w_next, w_other] and the
  // offset s_i - i (tcvae_math.h: LogWeights; Python: tcvae_kernels.LogWeights.op_args).
  // family: "normal" (logvar the log-variance) or "laplace" (logvar holds the log-scale b).
  // grad_components: the backward's d/dmu, d/dlogvar cover the first grad_components components
  // (-1: all); the others' rows are 0 and only enter d/dz (a component bank's detached rows).
  m.def("log_qz(Tensor z, Tensor mu, Tensor logvar, float[] weights, int offset,"
        " bool grad_terms=True, str family=\"normal\", int grad_components=-1) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("log_qz_backward(Tensor grad_log_qz, Tensor grad_log_qz_dims, Tensor z, Tensor mu, Tensor logvar,"
        " Tensor aux_q, Tensor aux_qd, float[] weights, int offset,"
        " bool grad_terms=True, str family=\"normal\", int grad_components=-1) -> (Tensor, Tensor, Tensor)");
  // The same with a partition of (some of) the dimensions into groups: group g covers dimensions
  // [group_ends[g-1], group_ends[g]) (from 0), the rest belongs to no group. Adds log_qz_groups [M, G]
  // and its saved state aux_qg [M, G, 2] (outputs 3 and 6). CPU only.
  m.def("log_qz_groups(Tensor z, Tensor mu, Tensor logvar, int[] group_ends, float[] weights,"
        " int offset, str family=\"normal\", bool grad_terms=True, int grad_components=-1)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("log_qz_groups_backward(Tensor grad_log_qz, Tensor grad_log_qz_dims, Tensor grad_log_qz_groups, Tensor z,"
        " Tensor mu, Tensor logvar, Tensor aux_q, Tensor aux_qd, Tensor aux_qg, int[] group_ends, float[] weights,"
        " int offset, str family=\"normal\", bool grad_terms=True, int grad_components=-1) -> (Tensor, Tensor, Tensor)");
  m.def("build_info() -> str", &build_info);
}

TORCH_LIBRARY_IMPL(tcvae, CPU, m) {
  m.impl("log_qz", &log_qz_cpu);
  m.impl("log_qz_backward", &log_qz_backward_cpu);
  m.impl("log_qz_groups", &log_qz_groups_cpu);
  m.impl("log_qz_groups_backward", &log_qz_groups_backward_cpu);
}

}  // namespace tcvae
