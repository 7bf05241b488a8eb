// The CUDA kernels' per-thread code (tcvae_fused.h) and host orchestration (tcvae_fused_host.h),
// run serially on the CPU: every block, every thread, every shared-memory tile in the order and
// layout the kernels in tcvae_cuda.cu use. Registered as test-only ops
//   tcvae::_emulate_log_qz(z, mu, logvar, w_self, w_next, w_other, offset, splits)
//   tcvae::_emulate_log_qz_backward(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, w_self, w_next,
//                                   w_other, offset, splits)
// so CI checks the CUDA arithmetic, tiling, padding and split-K indexing against the reference
// without a GPU. (What it cannot check: launch configuration, synchronisation, real shared memory.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "tcvae_fused_host.h"

namespace tcvae {
namespace fused {
namespace {

struct Emulate {
  static int64_t splits(int64_t, int64_t, const at::Tensor&) { return 1; }

  template <typename T, int DP>
  static void forward(const T* z, const T* comp, T* part, T* jm, T* js, int64_t m, int64_t k, int d, int64_t offset,
                      T ds, T dn, int64_t splits, int64_t k_per_split, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    std::vector<T> tile(kTile * 3 * DP);
    for (int64_t split = 0; split < splits; ++split) {
      const int64_t k_lo = split * k_per_split, k_hi = std::min(k, k_lo + k_per_split);
      for (int64_t block = 0; block * NT < m; ++block) {
        std::vector<FwdThread<T, DP>> th(NT);
        for (int t = 0; t < NT; ++t) th[t].init(z, block * NT + t, m, k, d, offset);
        for (int64_t k0 = k_lo; k0 < k_hi; k0 += kTile) {
          const int n = int(std::min<int64_t>(kTile, k_hi - k0));
          std::copy(comp + k0 * 3 * DP, comp + (k0 + n) * 3 * DP, tile.begin());  // the cooperative load
          for (int t = 0; t < NT; ++t) th[t].consume(tile.data(), k0, n, d, ds, dn);
        }
        for (int t = 0; t < NT; ++t) th[t].store(block * NT + t, m, d, part + split * m * d, jm + split * m, js + split * m);
      }
    }
  }

  template <typename T, int DP>
  static void exact(const T* z, const T* comp, const T* acc, T* qm, T* qr, int64_t m, int64_t k, int d, int64_t offset,
                    T ds, T dn, T tiny, const at::Tensor&) {
    for (int64_t i = 0; i < m; ++i) exact_marginals<T, DP>(z, comp, acc, qm, qr, i, m, k, d, offset, ds, dn, tiny);
  }

  template <typename T, int DP>
  static void backward_rows(const T* z, const T* comp, const T* a, const T* aux_q, const T* bq, const T* qm, T* gz,
                            int64_t m, int64_t k, int d, int64_t offset, T ds, T dn, int64_t splits,
                            int64_t k_per_split, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    std::vector<T> tile(kTile * 3 * DP), bq_s(DP * NT), qm_s(DP * NT);
    for (int64_t split = 0; split < splits; ++split) {
      const int64_t k_lo = split * k_per_split, k_hi = std::min(k, k_lo + k_per_split);
      for (int64_t block = 0; block * NT < m; ++block) {
        std::vector<BwdRowThread<T, DP>> th(NT);
        for (int t = 0; t < NT; ++t) {
          const int64_t i = block * NT + t;
          th[t].init(z, a, aux_q, i, m, k, d, offset);
          for (int dd = 0; dd < DP; ++dd) {  // shared memory [DP][NT]: one column per thread
            bq_s[dd * NT + t] = i < m ? bq[i * DP + dd] : T(0);
            qm_s[dd * NT + t] = i < m ? qm[i * DP + dd] : T(0);
          }
        }
        for (int64_t k0 = k_lo; k0 < k_hi; k0 += kTile) {
          const int n = int(std::min<int64_t>(kTile, k_hi - k0));
          std::copy(comp + k0 * 3 * DP, comp + (k0 + n) * 3 * DP, tile.begin());
          for (int t = 0; t < NT; ++t) th[t].consume(tile.data(), k0, n, d, ds, dn, bq_s.data() + t, qm_s.data() + t, NT);
        }
        for (int t = 0; t < NT; ++t) th[t].store(block * NT + t, d, gz + split * m * d);
      }
    }
  }

  template <typename T, int DP>
  static void backward_cols(const T* comp, const T* qpack, const T* qscal, T* gmu, T* glv, int64_t m, int64_t k, int d,
                            int64_t offset, T ds, T dn, T half_log2e, int64_t splits, int64_t m_per_split,
                            const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    std::vector<T> comp_s(3 * DP * NT), qtile(kTile * 3 * DP), qs(kTile * 3);
    for (int64_t split = 0; split < splits; ++split) {
      const int64_t m_lo = split * m_per_split, m_hi = std::min(m, m_lo + m_per_split);
      for (int64_t block = 0; block * NT < k; ++block) {
        std::vector<BwdColThread<T, DP>> th(NT);
        for (int t = 0; t < NT; ++t) {
          const int64_t j = block * NT + t;
          th[t].init(j, k);
          for (int a = 0; a < 3; ++a)  // shared memory [3][DP][NT]: the thread's own component
            for (int dd = 0; dd < DP; ++dd) comp_s[(a * DP + dd) * NT + t] = j < k ? comp[(j * 3 + a) * DP + dd] : T(0);
        }
        for (int64_t i0 = m_lo; i0 < m_hi; i0 += kTile) {
          const int n = int(std::min<int64_t>(kTile, m_hi - i0));
          std::copy(qpack + i0 * 3 * DP, qpack + (i0 + n) * 3 * DP, qtile.begin());
          std::copy(qscal + i0 * 3, qscal + (i0 + n) * 3, qs.begin());
          for (int t = 0; t < NT; ++t)
            th[t].consume(qtile.data(), qs.data(), i0, n, k, d, offset, ds, dn, half_log2e, comp_s.data() + t,
                          comp_s.data() + DP * NT + t, comp_s.data() + 2 * DP * NT + t, NT);
        }
        for (int t = 0; t < NT; ++t) th[t].store(d, gmu + split * k * d, glv + split * k * d);
      }
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emulate_log_qz(const at::Tensor& z, const at::Tensor& mu,
                                                                         const at::Tensor& logvar, double w_self,
                                                                         double w_next, double w_other, int64_t offset,
                                                                         int64_t splits) {
  TORCH_CHECK(z.device().is_cpu(), "tcvae::_emulate_log_qz runs on CPU tensors");
  return log_qz_forward<Emulate>(z, mu, logvar, w_self, w_next, w_other, offset, splits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_log_qz_backward(
    const at::Tensor& grad_q, const at::Tensor& grad_qd, const at::Tensor& z, const at::Tensor& mu,
    const at::Tensor& logvar, const at::Tensor& aux_q, const at::Tensor& aux_qd, double w_self, double w_next,
    double w_other, int64_t offset, int64_t splits) {
  TORCH_CHECK(z.device().is_cpu(), "tcvae::_emulate_log_qz_backward runs on CPU tensors");
  return log_qz_backward<Emulate>(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, w_self, w_next, w_other, offset,
                                  splits);
}

}  // namespace
}  // namespace fused

TORCH_LIBRARY_FRAGMENT(tcvae, m) {
  m.def("_emulate_log_qz(Tensor z, Tensor mu, Tensor logvar, float w_self, float w_next, float w_other, int offset,"
        " int splits) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_emulate_log_qz_backward(Tensor grad_log_qz, Tensor grad_log_qz_dims, Tensor z, Tensor mu, Tensor logvar,"
        " Tensor aux_q, Tensor aux_qd, float w_self, float w_next, float w_other, int offset, int splits)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tcvae, CPU, m) {
  m.impl("_emulate_log_qz", &fused::emulate_log_qz);
  m.impl("_emulate_log_qz_backward", &fused::emulate_log_qz_backward);
}

}  // namespace tcvae
