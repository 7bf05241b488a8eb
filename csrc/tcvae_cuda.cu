// CUDA kernels of tcvae::log_qz and tcvae::log_qz_backward (TORCH_LIBRARY_IMPL(tcvae, CUDA)).
//
// One thread per query (forward, row backward) or per component (column backward); the other side
// streams through shared-memory tiles of kTile components (or queries). Per-thread arithmetic is in
// tcvae_fused.h (shared with the CPU emulation that CI tests), the host orchestration (layouts,
// split-K partials, the exact fallback, combining) in tcvae_fused_host.h.
//   forward:        grid (ceil(M / NT), splits)  — split-K over components, partial sums combined
//   exact fallback: grid ceil(M / NT)            — only rows whose marginal sums underflowed work
//   row backward:   grid (ceil(M / NT), splits)  — grad_z partials per split
//   col backward:   grid (ceil(K / NT), splits)  — grad_mu / grad_logvar partials per query split
// The column gradients come from a second pass (no atomics): deterministic, at the price of
// recomputing the exponentials once more (atomics / split-K were not measured: no GPU so far).
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

template <typename T, int DP>
__global__ void __launch_bounds__(Threads<T>::value)
    forward_kernel(const T* __restrict__ z,     // [M, D]
                   const T* __restrict__ comp,  // [K, 3, DP]
                   T* __restrict__ part,        // [splits, M, D]
                   T* __restrict__ jm,          // [splits, M]
                   T* __restrict__ js,          // [splits, M]
                   int64_t m, int64_t k, int d, int64_t offset, T ds, T dn, int64_t k_per_split) {
  constexpr int NT = Threads<T>::value;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);  // [kTile, 3, DP]
  const int64_t i = int64_t(blockIdx.x) * NT + threadIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t k_lo = split * k_per_split, k_hi = min(k, k_lo + k_per_split);
  FwdThread<T, DP> th;
  th.init(z, i, m, k, d, offset);
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += kTile) {
    const int n = int(min(int64_t(kTile), k_hi - k0));
    for (int idx = threadIdx.x; idx < n * 3 * DP; idx += NT) tile[idx] = comp[k0 * 3 * DP + idx];
    __syncthreads();
    th.consume(tile, k0, n, d, ds, dn);
    __syncthreads();
  }
  th.store(i, m, d, part + split * m * d, jm + split * m, js + split * m);
}

template <typename T, int DP>
__global__ void __launch_bounds__(Threads<T>::value)
    exact_kernel(const T* __restrict__ z, const T* __restrict__ comp,
                 const T* __restrict__ acc,  // [M, D] marginal sums over all components
                 T* __restrict__ qm, T* __restrict__ qr,  // [M, D] out where acc < tiny
                 int64_t m, int64_t k, int d, int64_t offset, T ds, T dn, T tiny) {
  const int64_t i = int64_t(blockIdx.x) * Threads<T>::value + threadIdx.x;
  exact_marginals<T, DP>(z, comp, acc, qm, qr, i, m, k, d, offset, ds, dn, tiny);
}

template <typename T, int DP>
__global__ void __launch_bounds__(Threads<T>::value)
    backward_rows_kernel(const T* __restrict__ z, const T* __restrict__ comp,
                         const T* __restrict__ a,      // [M] upstream gradient of log_qz
                         const T* __restrict__ aux_q,  // [M, 2] joint (m, r)
                         const T* __restrict__ bq,     // [M, DP] b·2^(-r)
                         const T* __restrict__ qm,     // [M, DP] marginal m
                         T* __restrict__ gz,           // [splits, M, D]
                         int64_t m, int64_t k, int d, int64_t offset, T ds, T dn, int64_t k_per_split) {
  constexpr int NT = Threads<T>::value;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);  // [kTile, 3, DP]
  T* bq_s = tile + kTile * 3 * DP;           // [DP, NT]
  T* qm_s = bq_s + DP * NT;                  // [DP, NT]
  const int t = threadIdx.x;
  const int64_t i = int64_t(blockIdx.x) * NT + t;
  const int64_t split = blockIdx.y;
  const int64_t k_lo = split * k_per_split, k_hi = min(k, k_lo + k_per_split);
  BwdRowThread<T, DP> th;
  th.init(z, a, aux_q, i, m, k, d, offset);
  for (int dd = 0; dd < DP; ++dd) {
    bq_s[dd * NT + t] = i < m ? bq[i * DP + dd] : T(0);
    qm_s[dd * NT + t] = i < m ? qm[i * DP + dd] : T(0);
  }
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += kTile) {
    const int n = int(min(int64_t(kTile), k_hi - k0));
    for (int idx = t; idx < n * 3 * DP; idx += NT) tile[idx] = comp[k0 * 3 * DP + idx];
    __syncthreads();
    th.consume(tile, k0, n, d, ds, dn, bq_s + t, qm_s + t, NT);
    __syncthreads();
  }
  th.store(i, d, gz + split * m * d);
}

template <typename T, int DP>
__global__ void __launch_bounds__(Threads<T>::value)
    backward_cols_kernel(const T* __restrict__ comp,
                         const T* __restrict__ qpack,  // [M, 3, DP]: z, bq, qm
                         const T* __restrict__ qscal,  // [M, 3]: a, m, r
                         T* __restrict__ gmu, T* __restrict__ glv,  // [splits, K, D]
                         int64_t m, int64_t k, int d, int64_t offset, T ds, T dn, T half_log2e,
                         int64_t m_per_split) {
  constexpr int NT = Threads<T>::value;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* comp_s = reinterpret_cast<T*>(smem_raw);  // [3, DP, NT]: each thread's own component
  T* qtile = comp_s + 3 * DP * NT;             // [kTile, 3, DP]
  T* qs = qtile + kTile * 3 * DP;              // [kTile, 3]
  const int t = threadIdx.x;
  const int64_t j = int64_t(blockIdx.x) * NT + t;
  const int64_t split = blockIdx.y;
  const int64_t m_lo = split * m_per_split, m_hi = min(m, m_lo + m_per_split);
  BwdColThread<T, DP> th;
  th.init(j, k);
  for (int a = 0; a < 3; ++a)
    for (int dd = 0; dd < DP; ++dd) comp_s[(a * DP + dd) * NT + t] = j < k ? comp[(j * 3 + a) * DP + dd] : T(0);
  for (int64_t i0 = m_lo; i0 < m_hi; i0 += kTile) {
    const int n = int(min(int64_t(kTile), m_hi - i0));
    for (int idx = t; idx < n * 3 * DP; idx += NT) qtile[idx] = qpack[i0 * 3 * DP + idx];
    for (int idx = t; idx < n * 3; idx += NT) qs[idx] = qscal[i0 * 3 + idx];
    __syncthreads();
    th.consume(qtile, qs, i0, n, k, d, offset, ds, dn, half_log2e, comp_s + t, comp_s + DP * NT + t,
               comp_s + 2 * DP * NT + t, NT);
    __syncthreads();
  }
  th.store(d, gmu + split * k * d, glv + split * k * d);
}

// Opt in to more than 48 KiB of dynamic shared memory when a kernel needs it.
template <typename K>
void prepare_smem(K kernel, size_t bytes) {
  int dev = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  TORCH_CHECK(bytes <= size_t(limit), "tcvae: the CUDA kernel needs ", bytes, " bytes of shared memory, the device "
              "allows ", limit, "; use backend='triton'");
  if (bytes > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

unsigned int blocks(int64_t n, int nt) { return unsigned(std::max<int64_t>(1, (n + nt - 1) / nt)); }

struct Cuda {
  // Split the reduction axis so that about two blocks per SM run.
  static int64_t splits(int64_t rows, int64_t cols, const at::Tensor& like) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, like.device().index()));
    const int64_t row_blocks = (rows + 127) / 128;
    const int64_t want = (2 * sms + row_blocks - 1) / row_blocks;
    const int64_t cap = std::max<int64_t>(1, (cols + 4 * kTile - 1) / (4 * kTile));
    return std::max<int64_t>(1, std::min<int64_t>({want, cap, 65535}));
  }

  template <typename T, int DP>
  static void forward(const T* z, const T* comp, T* part, T* jm, T* js, int64_t m, int64_t k, int d, int64_t offset,
                      T ds, T dn, int64_t splits, int64_t k_per_split, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    const size_t smem = sizeof(T) * kTile * 3 * DP;
    prepare_smem(forward_kernel<T, DP>, smem);
    forward_kernel<T, DP><<<dim3(blocks(m, NT), unsigned(splits)), NT, smem, c10::cuda::getCurrentCUDAStream()>>>(
        z, comp, part, jm, js, m, k, d, offset, ds, dn, k_per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, int DP>
  static void exact(const T* z, const T* comp, const T* acc, T* qm, T* qr, int64_t m, int64_t k, int d, int64_t offset,
                    T ds, T dn, T tiny, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    exact_kernel<T, DP><<<blocks(m, NT), NT, 0, c10::cuda::getCurrentCUDAStream()>>>(z, comp, acc, qm, qr, m, k, d,
                                                                                    offset, ds, dn, tiny);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, int DP>
  static void backward_rows(const T* z, const T* comp, const T* a, const T* aux_q, const T* bq, const T* qm, T* gz,
                            int64_t m, int64_t k, int d, int64_t offset, T ds, T dn, int64_t splits,
                            int64_t k_per_split, const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    const size_t smem = sizeof(T) * (kTile * 3 * DP + 2 * DP * NT);
    prepare_smem(backward_rows_kernel<T, DP>, smem);
    backward_rows_kernel<T, DP><<<dim3(blocks(m, NT), unsigned(splits)), NT, smem,
                                  c10::cuda::getCurrentCUDAStream()>>>(z, comp, a, aux_q, bq, qm, gz, m, k, d, offset,
                                                                      ds, dn, k_per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, int DP>
  static void backward_cols(const T* comp, const T* qpack, const T* qscal, T* gmu, T* glv, int64_t m, int64_t k, int d,
                            int64_t offset, T ds, T dn, T half_log2e, int64_t splits, int64_t m_per_split,
                            const at::Tensor&) {
    constexpr int NT = Threads<T>::value;
    const size_t smem = sizeof(T) * (3 * DP * NT + kTile * 3 * DP + kTile * 3);
    prepare_smem(backward_cols_kernel<T, DP>, smem);
    backward_cols_kernel<T, DP><<<dim3(blocks(k, NT), unsigned(splits)), NT, smem,
                                  c10::cuda::getCurrentCUDAStream()>>>(comp, qpack, qscal, gmu, glv, m, k, d, offset,
                                                                      ds, dn, half_log2e, m_per_split);
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
                                                                      const at::Tensor& logvar, double w_self,
                                                                      double w_next, double w_other, int64_t offset) {
  check_cuda_args(z, mu, logvar);
  const c10::cuda::CUDAGuard guard(z.device());
  return log_qz_forward<Cuda>(z, mu, logvar, w_self, w_next, w_other, offset, 0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_qz_backward_cuda(
    const at::Tensor& grad_q, const at::Tensor& grad_qd, const at::Tensor& z, const at::Tensor& mu,
    const at::Tensor& logvar, const at::Tensor& aux_q, const at::Tensor& aux_qd, double w_self, double w_next,
    double w_other, int64_t offset) {
  check_cuda_args(z, mu, logvar);
  const c10::cuda::CUDAGuard guard(z.device());
  return log_qz_backward<Cuda>(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, w_self, w_next, w_other, offset, 0);
}

}  // namespace
}  // namespace fused

TORCH_LIBRARY_IMPL(tcvae, CUDA, m) {
  m.impl("log_qz", &fused::log_qz_cuda);
  m.impl("log_qz_backward", &fused::log_qz_backward_cuda);
}

}  // namespace tcvae
