// Host side of the fused (CUDA-style) kernels, device-agnostic: ATen ops prepare the padded,
// transposed layouts of tcvae_fused.h, allocate the split-K partial buffers, combine them, and call
// a launcher policy L:
//   L::forward<T, GRAD, F>(FwdArgs, splits, k_per_split), L::exact<T, GRAD, F>(...),
//   L::backward_cols<T, F>(BwdInputs, gmu, glv, splits, m_per_split, kpg), L::splits(rows, cols, like)
// (F: the posterior family, tcvae_math.h).
// tcvae_cuda.cu supplies the CUDA launcher; tcvae_emulate.cpp one that runs the same per-thread
// code (tcvae_fused.h) serially on the CPU, for tests.
//
// Outputs follow the op contract of tcvae_cpu.cpp: (log_qz, log_qz_dims, aux_q [M, 2], aux_qd
// [M, D, 4]) with aux = (m, r) in base 2, log_qz = w_other + ln2·(m + r), and aux_qd[..., 2:4] =
// (tn, jn), the two terms of grad_z the forward sums (zeros when grad_terms is false).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

#include "tcvae_fused.h"

namespace tcvae {
namespace fused {

constexpr double kTiny = 8.673617379884035e-19;  // 2^-60: smaller marginal sums are recomputed exactly

inline int64_t padded(int64_t n) { return std::max<int64_t>(kPad, (n + kPad - 1) / kPad * kPad); }

// z_t [D, MP] (zeros on padding), comp [D, 3, KP] = (s, p, c2) with s = sqrt(h2), p = -mu·s (Normal)
// or s = h2, p = mu (Laplace; tcvae_math.h: diff_term) (padding 1, 0, -inf: x2 = -inf
// for every z, also z = ±inf, where s = 0 would give 0·inf = NaN) and csum [KP] = sum_d c2
// (padding -inf), computed in float64 and rounded once to the compute dtype.
struct Layouts {
  at::Tensor z_t, comp, csum;
};

template <Family F>
Layouts make_layouts(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar, at::ScalarType acc) {
  using at::indexing::Slice;
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), mp = padded(m), kp = padded(k);
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor z_t = at::zeros({d, mp}, z.options().dtype(acc));
  z_t.index_put_({Slice(), Slice(0, m)}, z.t().to(acc));
  const at::Tensor lv = logvar.to(at::kDouble);
  const at::Tensor h2 = FamilyTraits<F>::h2(lv);
  const at::Tensor s = F == Family::Laplace ? h2 : at::sqrt(h2);  // x2 = c2 - pen(s·z + nm)
  const at::Tensor c2 = FamilyTraits<F>::c2(lv);
  at::Tensor comp = at::zeros({d, 3, kp}, mu.options().dtype(acc));
  comp.index_put_({Slice(), 0, Slice(k, kp)}, 1.0);
  comp.index_put_({Slice(), 2, Slice(k, kp)}, -inf);
  comp.index_put_({Slice(), 0, Slice(0, k)}, s.t().to(acc));
  const at::Tensor p = F == Family::Laplace ? mu.to(at::kDouble) : -mu.to(at::kDouble) * s;  // diff_term's p
  comp.index_put_({Slice(), 1, Slice(0, k)}, p.t().to(acc));
  comp.index_put_({Slice(), 2, Slice(0, k)}, c2.t().to(acc));
  at::Tensor csum = at::full({kp}, -inf, mu.options().dtype(acc));
  csum.index_put_({Slice(0, k)}, c2.sum(1).to(acc));
  return {z_t.contiguous(), comp.contiguous(), csum};
}

inline at::Tensor pad_last(const at::Tensor& t, int64_t n, double value) {  // [..., M] -> [..., n]
  return at::constant_pad_nd(t, {0, n - t.size(-1)}, value).contiguous();
}

template <class L, Family F>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_qz_forward(const at::Tensor& z, const at::Tensor& mu,
                                                                         const at::Tensor& logvar, const LogWeights& w,
                                                                         bool grad_terms, int64_t force_splits) {
  using at::indexing::Slice;
  const auto acc = accumulation_type(z.scalar_type());
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), mp = padded(m), kp = padded(k);
  const Layouts lay = make_layouts<F>(z, mu, logvar, acc);
  const int64_t tiles = kp / kSplitTile;
  const int64_t splits = force_splits > 0 ? std::min(force_splits, tiles) : L::splits(mp, kp, z);
  const int64_t k_per_split = (tiles + splits - 1) / splits * kSplitTile;  // a multiple of every kTile
  const auto opts = lay.z_t.options();
  at::Tensor part = at::zeros({splits, d, mp}, opts), jm = at::empty({splits, mp}, opts),
             js = at::empty({splits, mp}, opts);
  at::Tensor tpart = grad_terms ? at::zeros_like(part) : part, jpart = grad_terms ? at::zeros_like(part) : part;
  at::Tensor qm = at::zeros({d, mp}, opts);
  at::Tensor qr, tn;
  AT_DISPATCH_FLOATING_TYPES(acc, "tcvae_fused_forward", [&] {
    const int64_t offset = w.offset;
    const auto ds = scalar_t(w.d_self2()), dn = scalar_t(w.d_next2());
    const FwdArgs<scalar_t> args{lay.z_t.data_ptr<scalar_t>(), lay.comp.data_ptr<scalar_t>(),
                                 lay.csum.data_ptr<scalar_t>(), part.data_ptr<scalar_t>(),
                                 tpart.data_ptr<scalar_t>(),   jpart.data_ptr<scalar_t>(),
                                 jm.data_ptr<scalar_t>(),      js.data_ptr<scalar_t>(),
                                 m, mp, k, kp, offset, int(d), ds, dn};
    if (grad_terms)
      L::template forward<scalar_t, true, F>(args, splits, k_per_split, z);
    else
      L::template forward<scalar_t, false, F>(args, splits, k_per_split, z);
    const at::Tensor acc_sum = part.sum(0);  // [D, MP]
    qr = at::log2(acc_sum);
    tn = grad_terms ? tpart.sum(0) / acc_sum : qm;  // rows of the exact path overwritten next
    const scalar_t* zp = lay.z_t.data_ptr<scalar_t>();
    const scalar_t* cp = lay.comp.data_ptr<scalar_t>();
    if (grad_terms)
      L::template exact<scalar_t, true, F>(zp, cp, acc_sum.data_ptr<scalar_t>(), qm.data_ptr<scalar_t>(),
                                        qr.data_ptr<scalar_t>(), tn.data_ptr<scalar_t>(), m, mp, k, kp, int(d), offset,
                                        ds, dn, scalar_t(kTiny), z);
    else
      L::template exact<scalar_t, false, F>(zp, cp, acc_sum.data_ptr<scalar_t>(), qm.data_ptr<scalar_t>(),
                                         qr.data_ptr<scalar_t>(), qm.data_ptr<scalar_t>(), m, mp, k, kp, int(d), offset,
                                         ds, dn, scalar_t(kTiny), z);
  });
  // joint: combine the splits' (max, sum) states; all -inf gives (-inf, 0), NaN stays NaN
  jm = jm.index({Slice(), Slice(0, m)});
  js = js.index({Slice(), Slice(0, m)});
  const at::Tensor top = std::get<0>(jm.max(0));
  const at::Tensor neg_inf = top == -std::numeric_limits<double>::infinity();
  const at::Tensor top_safe = at::where(neg_inf, at::zeros_like(top), top);
  const at::Tensor scale = at::exp2(jm - top_safe);  // [S, M]
  const at::Tensor total = (js * scale).sum(0);
  at::Tensor r = at::log2(total);
  r = at::where(neg_inf & ~at::isnan(r), at::zeros_like(r), r);
  qm = qm.index({Slice(), Slice(0, m)}).t();
  qr = qr.index({Slice(), Slice(0, m)}).t();
  at::Tensor tn_m, jn;
  if (grad_terms) {
    tn_m = tn.index({Slice(), Slice(0, m)}).t();
    jn = (jpart.index({Slice(), Slice(), Slice(0, m)}) * scale.unsqueeze(1)).sum(0) / total;
    jn = at::where(total == 0, at::zeros_like(jn), jn).t();  // all -inf (non-finite inputs only)
  } else {
    tn_m = jn = at::zeros_like(qm);
  }
  const at::Tensor log_qz = (w.other + kLn2 * (top.to(at::kDouble) + r.to(at::kDouble))).to(acc);
  const at::Tensor log_qz_dims = (w.other + kLn2 * (qm.to(at::kDouble) + qr.to(at::kDouble))).to(acc);
  return {log_qz, log_qz_dims, at::stack({top, r}, 1), at::stack({qm, qr, tn_m, jn}, 2)};
}

template <class L, Family F>
std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_backward(const at::Tensor& grad_q, const at::Tensor& grad_qd,
                                                               const at::Tensor& z, const at::Tensor& mu,
                                                               const at::Tensor& logvar, const at::Tensor& aux_q,
                                                               const at::Tensor& aux_qd, const LogWeights& w,
                                                               bool grad_terms, int64_t force_splits,
                                                               int64_t grad_components) {
  using at::indexing::Slice;
  TORCH_CHECK(grad_terms, "tcvae: the forward ran with grad_terms=False: its outputs have no backward");
  TORCH_CHECK(aux_qd.dim() == 3 && aux_qd.size(2) == 4, "tcvae: aux_qd [M, D, 4] of the fused forward expected");
  const auto acc = accumulation_type(z.scalar_type());
  const int64_t m = z.size(0), k = mu.size(0), d = z.size(1), mp = padded(m), kp = padded(k);
  const at::Tensor a0 = grad_q.to(acc), b0 = grad_qd.to(acc), aq = aux_qd.to(acc);
  // grad_z = -kSlope·ln2 · (a·jn + b·tn): the forward summed both terms
  const double slope_ln2 = FamilyTraits<F>::kSlope * kLn2;
  const at::Tensor grad_z = (-slope_ln2) * (a0.unsqueeze(1) * aq.select(2, 3) + b0 * aq.select(2, 2));
  const Layouts lay = make_layouts<F>(z, mu, logvar, acc);
  const double inf = std::numeric_limits<double>::infinity();
  // per query, padded: a (0), joint m (+inf: P = 0·2^-inf = 0) and r; bq = b·2^(-r) (0), qm (0)
  const at::Tensor a = pad_last(a0, mp, 0.0);
  const at::Tensor pm = pad_last(aux_q.select(1, 0).to(acc), mp, inf);
  const at::Tensor pr = pad_last(aux_q.select(1, 1).to(acc), mp, 0.0);
  const at::Tensor qm0 = aq.select(2, 0).t();
  const at::Tensor qm = pad_last(qm0, mp, 0.0);
  const at::Tensor bq = pad_last((b0 * at::exp2(-aq.select(2, 1))).t(), mp, 0.0);
  // qflag [MP / kFlagTile]: groups of queries that hold a row of the exact path (qm != 0)
  const at::Tensor qflag = pad_last((qm0 != 0).any(0).to(at::kInt), mp, 0.0).view({mp / kFlagTile, kFlagTile}).amax(1)
                               .contiguous();
  // the columns that need d/dmu, d/dlogvar (grad_component_count), padded to kPad
  const int64_t kg = grad_component_count(grad_components, k), kpg = std::min(kp, padded(std::max<int64_t>(kg, 1)));
  const int64_t col_splits = force_splits > 0 ? std::min(force_splits, mp / kSplitTile) : L::splits(kpg, mp, z);
  const auto opts = lay.z_t.options();
  at::Tensor gmu = at::zeros({col_splits, d, kp}, opts), glv = at::zeros({col_splits, d, kp}, opts);
  AT_DISPATCH_FLOATING_TYPES(acc, "tcvae_fused_backward", [&] {
    BwdInputs<scalar_t> in{lay.z_t.data_ptr<scalar_t>(), lay.comp.data_ptr<scalar_t>(), lay.csum.data_ptr<scalar_t>(),
                           a.data_ptr<scalar_t>(), pm.data_ptr<scalar_t>(), pr.data_ptr<scalar_t>(),
                           bq.data_ptr<scalar_t>(), qm.data_ptr<scalar_t>(), qflag.data_ptr<int32_t>(),
                           mp, kp, k, w.offset, int(d), scalar_t(w.d_self2()), scalar_t(w.d_next2()),
                           scalar_t(FamilyTraits<F>::kConst * kLog2E)};
    L::template backward_cols<scalar_t, F>(in, gmu.data_ptr<scalar_t>(), glv.data_ptr<scalar_t>(), col_splits,
                                        (mp / kSplitTile + col_splits - 1) / col_splits * kSplitTile, kpg, z);
  });
  // rows >= kg: not computed (their partials stay 0), zeroed here
  const at::Tensor keep = (at::arange(kp, gmu.options().dtype(at::kLong)) < kg).to(gmu.scalar_type());
  const at::Tensor grad_mu = slope_ln2 * (gmu.sum(0) * lay.comp.select(1, 0) * keep).index({Slice(), Slice(0, k)}).t();
  const at::Tensor grad_lv = kLn2 * (glv.sum(0) * keep).index({Slice(), Slice(0, k)}).t();
  return {grad_z.to(z.scalar_type()), grad_mu.to(mu.scalar_type()), grad_lv.to(logvar.scalar_type())};
}

// The ops' entry points: the run-time family selects the instantiation.
template <class L>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_qz_forward(const at::Tensor& z, const at::Tensor& mu,
                                                                         const at::Tensor& logvar, const LogWeights& w,
                                                                         bool grad_terms, int64_t force_splits,
                                                                         Family family) {
  return dispatch_family(family, [&](auto f) {
    return log_qz_forward<L, decltype(f)::value>(z, mu, logvar, w, grad_terms, force_splits);
  });
}

template <class L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_backward(const at::Tensor& grad_q, const at::Tensor& grad_qd,
                                                               const at::Tensor& z, const at::Tensor& mu,
                                                               const at::Tensor& logvar, const at::Tensor& aux_q,
                                                               const at::Tensor& aux_qd, const LogWeights& w,
                                                               bool grad_terms, int64_t force_splits, Family family,
                                                               int64_t grad_components = -1) {
  return dispatch_family(family, [&](auto f) {
    return log_qz_backward<L, decltype(f)::value>(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, w, grad_terms,
                                                  force_splits, grad_components);
  });
}

}  // namespace fused
}  // namespace tcvae
