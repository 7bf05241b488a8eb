// The CUDA kernels' per-thread code (tcvae_fused.h) and host orchestration (tcvae_fused_host.h),
// run on the CPU: every block, every thread, every register tile in the order and layout the
// kernels in tcvae_cuda.cu use (a block's threads one after another; blocks in parallel, as they
// share nothing). A warp vote is each thread's own vote here, with the same results (see
// FwdThread::tile). Registered as test-only ops
//   tcvae::_emulate_log_qz(z, mu, logvar, weights, offset, splits, grad_terms, family)
//   tcvae::_emulate_log_qz_backward(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, weights, offset,
//                                   splits, grad_terms, family, grad_components)
// so CI checks the CUDA arithmetic, tiling, padding and split-K indexing against the reference
// without a GPU. (What it cannot check: the launch configuration and the GPU's own arithmetic: MUFU
// exp2 and flush-to-zero.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "tcvae_fused_host.h"

namespace tcvae {
namespace fused {
namespace {

struct Emulate {
  static int64_t splits(int64_t, int64_t, const at::Tensor&) { return 1; }

  // grid (MP / NT, splits): every thread of every block; blocks in parallel (each thread writes
  // only its own scratch columns)
  template <typename T, bool GRAD, Family F>
  static void forward(const FwdArgs<T>& a, int64_t splits, int64_t k_per_split, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    for (int64_t split = 0; split < splits; ++split) {
      const int64_t lo = split * k_per_split, hi = std::min(a.kp, lo + k_per_split);
      at::parallel_for(0, a.mp / (kRows<T> * NT), 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          for (int t = 0; t < NT; ++t) forward_thread<T, GRAD, F>(a, b * kRows<T> * NT, NT, t, split, lo, hi);
      });
    }
  }

  template <typename T, bool GRAD, Family F>
  static void exact(const T* z_t, const T* comp, const T* acc, T* qm, T* qr, T* tn, int64_t m, int64_t mp, int64_t k,
                    int64_t kp, int d, int64_t offset, T ds, T dn, T tiny, const at::Tensor&) {
    for (int64_t i = 0; i < m; ++i)
      exact_marginals<T, GRAD, F>(z_t, comp, acc, qm, qr, tn, i, m, mp, k, kp, d, offset, ds, dn, tiny);
  }

  template <typename T, Family F>
  static void backward_cols(const BwdInputs<T>& in, T* gmu, T* glv, int64_t splits, int64_t m_per_split,
                            int64_t kpg, const at::Tensor&) {  // the blocks of the first kpg columns
    constexpr int NT = Threads<T>::value;
    for (int64_t split = 0; split < splits; ++split) {
      const int64_t lo = split * m_per_split, hi = std::min(in.mp, lo + m_per_split);
      at::parallel_for(0, kpg / (kRows<T> * NT), 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          for (int t = 0; t < NT; ++t) backward_cols_thread<T, F>(in, gmu, glv, b * kRows<T> * NT, NT, t, split, lo, hi);
      });
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emulate_log_qz(const at::Tensor& z, const at::Tensor& mu,
                                                                         const at::Tensor& logvar, at::ArrayRef<double> weights,
                                                                         int64_t offset, int64_t splits, bool grad_terms,
                                                                         c10::string_view family) {
  TORCH_CHECK(z.device().is_cpu(), "tcvae::_emulate_log_qz runs on CPU tensors");
  return log_qz_forward<Emulate>(z, mu, logvar, parse_log_weights(weights, offset), grad_terms, splits,
                                 parse_family(std::string(family)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_log_qz_backward(
    const at::Tensor& grad_q, const at::Tensor& grad_qd, const at::Tensor& z, const at::Tensor& mu,
    const at::Tensor& logvar, const at::Tensor& aux_q, const at::Tensor& aux_qd, at::ArrayRef<double> weights,
    int64_t offset, int64_t splits, bool grad_terms, c10::string_view family, int64_t grad_components) {
  TORCH_CHECK(z.device().is_cpu(), "tcvae::_emulate_log_qz_backward runs on CPU tensors");
  return log_qz_backward<Emulate>(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, parse_log_weights(weights, offset),
                                  grad_terms, splits, parse_family(std::string(family)), grad_components);
}

}  // namespace
}  // namespace fused

TORCH_LIBRARY_FRAGMENT(tcvae, m) {
  m.def("_emulate_log_qz(Tensor z, Tensor mu, Tensor logvar, float[] weights, int offset, int splits,"
        " bool grad_terms=True, str family=\"normal\") -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_emulate_log_qz_backward(Tensor grad_log_qz, Tensor grad_log_qz_dims, Tensor z, Tensor mu, Tensor logvar,"
        " Tensor aux_q, Tensor aux_qd, float[] weights, int offset, int splits, bool grad_terms=True,"
        " str family=\"normal\", int grad_components=-1) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tcvae, CPU, m) {
  m.impl("_emulate_log_qz", &fused::emulate_log_qz);
  m.impl("_emulate_log_qz_backward", &fused::emulate_log_qz_backward);
}

}  // namespace tcvae

// The FMA-pipe exp2 of the CUDA kernels (tcvae_math.h), elementwise on a float32 CPU tensor: its
// error bound is tested on every float32 input (tests/kernels/test_exp2_fma.py).
namespace tcvae {
namespace {
at::Tensor exp2_fma_op(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "tcvae::_exp2_fma takes a float32 CPU tensor");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  const float* src = xc.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, xc.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) dst[n] = exp2_fma(src[n]);
  });
  return out;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(tcvae, m) { m.def("_exp2_fma(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(tcvae, CPU, m) { m.impl("_exp2_fma", &exp2_fma_op); }
}  // namespace tcvae
