// Host side of the fused (CUDA-style) kernels, device-agnostic: ATen ops prepare the component
// layout, allocate the split-K partial buffers, combine them, and call a launcher policy L:
//   L::forward<T, DP>, L::exact<T, DP>, L::backward_rows<T, DP>, L::backward_cols<T, DP>, L::splits
// tcvae_cuda.cu supplies the CUDA launcher; tcvae_emulate.cpp one that runs the same per-thread
// code (tcvae_fused.h) serially on the CPU, for tests.
//
// Outputs follow the op contract of tcvae_cpu.cpp: (log_qz, log_qz_dims, aux_q [M, 2], aux_qd
// [M, D, 2]) with aux = (m, r) in base 2 and log_qz = w_other + ln2·(m + r).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

#include "tcvae_fused.h"

namespace tcvae {
namespace fused {

constexpr double kTiny = 8.673617379884035e-19;  // 2^-60: smaller marginal sums are recomputed exactly

inline int64_t padded_dims(int64_t d) {
  const int64_t dp = d <= 8 ? 8 : (d <= 16 ? 16 : (d <= 32 ? 32 : 64));
  TORCH_CHECK(d <= kMaxDP, "tcvae: the CUDA kernels support D <= ", kMaxDP, " latent dimensions (got ", d,
              "); use backend='triton' for larger D");
  return dp;
}

// comp [K, 3, DP]: mu, h2 = 0.5·exp(-logvar)·log2e, c2 = -0.5·(logvar + log 2π)·log2e (float64 math,
// one rounding to the compute dtype), zeros on padding dims.
inline at::Tensor make_components(const at::Tensor& mu, const at::Tensor& logvar, int64_t dp, at::ScalarType acc) {
  const int64_t d = mu.size(1);
  const at::Tensor lv = logvar.to(at::kDouble);
  at::Tensor comp = at::zeros({mu.size(0), 3, dp}, mu.options().dtype(acc));
  using at::indexing::Slice;
  comp.index_put_({Slice(), 0, Slice(0, d)}, mu.to(acc));
  comp.index_put_({Slice(), 1, Slice(0, d)}, (0.5 * at::exp(-lv) * kLog2E).to(acc));
  comp.index_put_({Slice(), 2, Slice(0, d)}, (-0.5 * (lv + kLog2Pi) * kLog2E).to(acc));
  return comp;
}

inline at::Tensor pad_dims(const at::Tensor& t, int64_t dp) {  // [M, D] -> [M, DP], zeros appended
  return at::constant_pad_nd(t, {0, dp - t.size(1)}, 0).contiguous();
}

template <typename F>
inline void dispatch_dp(int64_t dp, F&& f) {
  switch (dp) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    default: f(std::integral_constant<int, 64>{}); break;
  }
}

template <class L>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_qz_forward(const at::Tensor& z, const at::Tensor& mu,
                                                                         const at::Tensor& logvar, double w_self,
                                                                         double w_next, double w_other, int64_t offset,
                                                                         int64_t force_splits) {
  const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), dp = padded_dims(d);
  const at::Tensor zc = z.to(acc).contiguous();
  const at::Tensor comp = make_components(mu, logvar, dp, acc);
  const int64_t splits = force_splits > 0 ? std::min(force_splits, k) : L::splits(m, k, z);
  const int64_t k_per_split = (k + splits - 1) / splits;
  const auto opts = zc.options();
  at::Tensor part = at::zeros({splits, m, d}, opts), jm = at::empty({splits, m}, opts), js = at::empty({splits, m}, opts);
  at::Tensor qm = at::zeros({m, d}, opts);
  at::Tensor qr;
  AT_DISPATCH_FLOATING_TYPES(acc, "tcvae_fused_forward", [&] {
    const auto ds = scalar_t((w_self - w_other) * kLog2E), dn = scalar_t((w_next - w_other) * kLog2E);
    dispatch_dp(dp, [&](auto dpc) {
      constexpr int DP = decltype(dpc)::value;
      L::template forward<scalar_t, DP>(zc.data_ptr<scalar_t>(), comp.data_ptr<scalar_t>(), part.data_ptr<scalar_t>(),
                                        jm.data_ptr<scalar_t>(), js.data_ptr<scalar_t>(), m, k, int(d), offset, ds, dn,
                                        splits, k_per_split, z);
      const at::Tensor acc_sum = part.sum(0);
      qr = at::log2(acc_sum);
      L::template exact<scalar_t, DP>(zc.data_ptr<scalar_t>(), comp.data_ptr<scalar_t>(), acc_sum.data_ptr<scalar_t>(),
                                      qm.data_ptr<scalar_t>(), qr.data_ptr<scalar_t>(), m, k, int(d), offset, ds, dn,
                                      scalar_t(kTiny), z);
    });
  });
  // joint: combine the splits' (max, sum) states; all -inf gives (-inf, 0), NaN stays NaN
  const at::Tensor top = std::get<0>(jm.max(0));
  const at::Tensor neg_inf = top == -std::numeric_limits<double>::infinity();
  const at::Tensor top_safe = at::where(neg_inf, at::zeros_like(top), top);
  at::Tensor r = at::log2((js * at::exp2(jm - top_safe)).sum(0));
  r = at::where(neg_inf & ~at::isnan(r), at::zeros_like(r), r);
  const at::Tensor log_qz = (w_other + kLn2 * (top.to(at::kDouble) + r.to(at::kDouble))).to(acc);
  const at::Tensor log_qz_dims = (w_other + kLn2 * (qm.to(at::kDouble) + qr.to(at::kDouble))).to(acc);
  return {log_qz, log_qz_dims, at::stack({top, r}, 1), at::stack({qm, qr}, 2)};
}

template <class L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_backward(const at::Tensor& grad_q, const at::Tensor& grad_qd,
                                                               const at::Tensor& z, const at::Tensor& mu,
                                                               const at::Tensor& logvar, const at::Tensor& aux_q,
                                                               const at::Tensor& aux_qd, double w_self, double w_next,
                                                               double w_other, int64_t offset, int64_t force_splits) {
  const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), dp = padded_dims(d);
  const at::Tensor zc = z.to(acc).contiguous();
  const at::Tensor comp = make_components(mu, logvar, dp, acc);
  const at::Tensor a = grad_q.to(acc).contiguous(), aq = aux_q.to(acc).contiguous();
  // bq = b·2^(-r) and qm per (query, dim), padded to DP with zeros
  const at::Tensor qm = aux_qd.select(2, 0).to(acc), qr = aux_qd.select(2, 1).to(acc);
  const at::Tensor bq = pad_dims(grad_qd.to(acc) * at::exp2(-qr), dp), qm_p = pad_dims(qm, dp);
  const int64_t row_splits = force_splits > 0 ? std::min(force_splits, k) : L::splits(m, k, z);
  const int64_t col_splits = force_splits > 0 ? std::min(force_splits, m) : L::splits(k, m, z);
  const auto opts = zc.options();
  at::Tensor gz = at::zeros({row_splits, m, d}, opts);
  at::Tensor gmu = at::zeros({col_splits, k, d}, opts), glv = at::zeros({col_splits, k, d}, opts);
  // per query for the column pass: [M, 3, DP] (z, bq, qm) and [M, 3] (a, m, r)
  const at::Tensor qpack = at::stack({pad_dims(zc, dp), bq, qm_p}, 1).contiguous();
  const at::Tensor qscal = at::stack({a, aq.select(1, 0), aq.select(1, 1)}, 1).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "tcvae_fused_backward", [&] {
    const auto ds = scalar_t((w_self - w_other) * kLog2E), dn = scalar_t((w_next - w_other) * kLog2E);
    dispatch_dp(dp, [&](auto dpc) {
      constexpr int DP = decltype(dpc)::value;
      L::template backward_rows<scalar_t, DP>(zc.data_ptr<scalar_t>(), comp.data_ptr<scalar_t>(),
                                              a.data_ptr<scalar_t>(), aq.data_ptr<scalar_t>(), bq.data_ptr<scalar_t>(),
                                              qm_p.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(), m, k, int(d), offset,
                                              ds, dn, row_splits, (k + row_splits - 1) / row_splits, z);
      L::template backward_cols<scalar_t, DP>(comp.data_ptr<scalar_t>(), qpack.data_ptr<scalar_t>(),
                                              qscal.data_ptr<scalar_t>(), gmu.data_ptr<scalar_t>(),
                                              glv.data_ptr<scalar_t>(), m, k, int(d), offset, ds, dn,
                                              scalar_t(0.5 * kLog2E), col_splits, (m + col_splits - 1) / col_splits, z);
    });
  });
  const at::Tensor grad_z = (-2.0 * kLn2) * gz.sum(0);
  const at::Tensor grad_mu = (2.0 * kLn2) * gmu.sum(0);
  const at::Tensor grad_lv = kLn2 * glv.sum(0);
  return {grad_z.to(z.scalar_type()), grad_mu.to(mu.scalar_type()), grad_lv.to(logvar.scalar_type())};
}

}  // namespace fused
}  // namespace tcvae
