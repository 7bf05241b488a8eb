// CUDA kernels of tcvae::log_qz and tcvae::log_qz_backward (TORCH_LIBRARY_IMPL(tcvae, CUDA)).
//
// One thread per kRows = 2 queries (forward) or components (column backward), 1 in double, walking the other side in
// register tiles (tcvae_fused.h: the per-thread code, shared with the CPU emulation that CI tests;
// tcvae_fused_host.h: layouts, split-K partials, the exact fallback, combining).
//   forward:        grid (MP / 256, splits)  — split-K over components, partial sums combined; with
//                   grad_terms it also sums the two terms of grad_z (so no row backward pass)
//   exact fallback: grid ceil(M / 128)       — only rows whose marginal sums underflowed work
//   col backward:   grid (KPG / 256, splits) — grad_mu / grad_logvar partials per query split, over the
//                   first grad_components columns (KPG: padded to 256; a bank's rows need none)
// No shared memory, no barriers, no atomics (deterministic); any D. The float forward without
// gradient terms computes one marginal exp2 in kPolyEvery on the FMA pipe (exp2_fma).
// Only c10's CUDA headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers, which a
// toolkit with just nvcc (as on the CI machine) does not have.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "tcvae_fused_host.h"

namespace tcvae {
namespace fused {
namespace {

template <typename T, bool GRAD, Family F>
__global__ void __launch_bounds__(Threads<T>::value)
    forward_kernel(const FwdArgs<T> a, int64_t k_per_split) {  // pointer shapes: FwdArgs
  constexpr int NT = Threads<T>::value;
  const int64_t r0 = int64_t(blockIdx.x) * kRows<T> * NT, split = blockIdx.y;
  const int64_t lo = split * k_per_split, hi = min(a.kp, lo + k_per_split);
  forward_thread<T, GRAD, F>(a, r0, NT, int(threadIdx.x), split, lo, hi);
}

template <typename T, bool GRAD, Family F>
__global__ void __launch_bounds__(Threads<T>::value)
    exact_kernel(const T* __restrict__ z_t, const T* __restrict__ comp,
                 const T* __restrict__ acc,  // [D, MP] marginal sums over all components
                 T* __restrict__ qm, T* __restrict__ qr, T* __restrict__ tn,  // [D, MP] out where acc < tiny
                 int64_t m, int64_t mp, int64_t k, int64_t kp, int d, int64_t offset, T ds, T dn, T tiny) {
  const int64_t i = int64_t(blockIdx.x) * Threads<T>::value + threadIdx.x;
  exact_marginals<T, GRAD, F>(z_t, comp, acc, qm, qr, tn, i, m, mp, k, kp, d, offset, ds, dn, tiny);
}

template <typename T, Family F>
__global__ void __launch_bounds__(Threads<T>::value)
    backward_cols_kernel(const BwdInputs<T> in, T* __restrict__ gmu, T* __restrict__ glv,  // [splits, D, KP]
                         int64_t m_per_split) {
  constexpr int NT = Threads<T>::value;
  const int64_t c0 = int64_t(blockIdx.x) * kRows<T> * NT, split = blockIdx.y;
  const int64_t lo = split * m_per_split, hi = min(in.mp, lo + m_per_split);
  backward_cols_thread<T, F>(in, gmu, glv, c0, NT, int(threadIdx.x), split, lo, hi);
}

unsigned int blocks(int64_t n, int nt) { return unsigned(std::max<int64_t>(1, (n + nt - 1) / nt)); }

struct Cuda {
  // Split the reduction axis (cols, a multiple of kSplitTile) so that about two blocks per SM run,
  // keeping at least 4 tiles per split.
  static int64_t splits(int64_t rows, int64_t cols, const at::Tensor& like) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, like.device().index()));
    // rows one block covers: kRows·threads of the dtype that runs (double: 1 row per thread)
    const int64_t per_block = like.scalar_type() == at::kDouble ? kRows<double> * Threads<double>::value
                                                                 : kRows<float> * Threads<float>::value;
    const int64_t row_blocks = (rows + per_block - 1) / per_block;
    const int64_t want = (2 * sms + row_blocks - 1) / row_blocks;
    const int64_t cap = std::max<int64_t>(1, cols / (4 * kSplitTile));
    return std::max<int64_t>(1, std::min<int64_t>({want, cap, 65535}));
  }

  template <typename T, bool GRAD, Family F>
  static void forward(const FwdArgs<T>& a, int64_t splits, int64_t k_per_split, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    forward_kernel<T, GRAD, F><<<dim3(blocks(a.mp, kRows<T> * NT), unsigned(splits)), NT, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a, k_per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, bool GRAD, Family F>
  static void exact(const T* z_t, const T* comp, const T* acc, T* qm, T* qr, T* tn, int64_t m, int64_t mp, int64_t k,
                    int64_t kp, int d, int64_t offset, T ds, T dn, T tiny, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    exact_kernel<T, GRAD, F><<<blocks(m, NT), NT, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z_t, comp, acc, qm, qr, tn, m, mp, k, kp, d, offset, ds, dn, tiny);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, Family F>
  static void backward_cols(const BwdInputs<T>& in, T* gmu, T* glv, int64_t splits, int64_t m_per_split,
                            int64_t kpg, const at::Tensor&) {  // the blocks of the first kpg columns only
    constexpr int NT = Threads<T>::value;
    backward_cols_kernel<T, F><<<dim3(blocks(kpg, kRows<T> * NT), unsigned(splits)), NT, 0,
                              c10::cuda::getCurrentCUDAStream()>>>(in, gmu, glv, m_per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_cuda_args(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  TORCH_CHECK(z.is_cuda() && mu.is_cuda() && logvar.is_cuda(), "tcvae: CUDA kernel needs CUDA tensors");
  TORCH_CHECK(z.dim() == 2 && mu.dim() == 2 && mu.sizes() == logvar.sizes() && z.size(1) == mu.size(1),
              "tcvae: z [M, D], mu and logvar [K, D] expected");
  TORCH_CHECK(z.scalar_type() == mu.scalar_type() && z.scalar_type() == logvar.scalar_type() &&
                  at::isFloatingType(z.scalar_type()),
              "tcvae: z, mu, logvar must share one floating dtype");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_qz_cuda(const at::Tensor& z, const at::Tensor& mu,
                                                                      const at::Tensor& logvar, at::ArrayRef<double> weights,
                                                                      int64_t offset, bool grad_terms,
                                                                      c10::string_view family, int64_t) {
  check_cuda_args(z, mu, logvar);
  const c10::cuda::CUDAGuard guard(z.device());
  return log_qz_forward<Cuda>(z, mu, logvar, parse_log_weights(weights, offset), grad_terms, 0,
                              parse_family(std::string(family)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_backward_cuda(
    const at::Tensor& grad_q, const at::Tensor& grad_qd, const at::Tensor& z, const at::Tensor& mu,
    const at::Tensor& logvar, const at::Tensor& aux_q, const at::Tensor& aux_qd, at::ArrayRef<double> weights,
    int64_t offset, bool grad_terms, c10::string_view family, int64_t grad_components) {
  check_cuda_args(z, mu, logvar);
  const c10::cuda::CUDAGuard guard(z.device());
  return log_qz_backward<Cuda>(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, parse_log_weights(weights, offset),
                               grad_terms, 0, parse_family(std::string(family)), grad_components);
}

}  // namespace
}  // namespace fused

TORCH_LIBRARY_IMPL(tcvae, CUDA, m) {
  m.impl("log_qz", &fused::log_qz_cuda);
  m.impl("log_qz_backward", &fused::log_qz_backward_cuda);
}

}  // namespace tcvae
