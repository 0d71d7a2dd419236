// Launch plans of the element-sparse kernels, host side: argument checks, the kernel variant
// (dtype x pointer width), grids and the launch sequence of each product, with the launch
// itself left to `launch(kernel, grid, threads, params)`: a CUDA launch on a stream in
// esmm_fwd.cu / esmm_dw.cu (stream_launch.cuh), an emulated one in tests/cuda_host/. So the
// host emulation runs exactly the launchers' choices.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/block_index.h"
#include "esmm_cuda.h"
#include "esmm_dw_kernel.cuh"
#include "esmm_fwd_kernel.cuh"

namespace sparsekern {
namespace cuda {

using index::ceil_div;

// Calls run.template operator()<T, Ptr>() for the variant of (dtype, ptr_type).
template <class Run>
cudaError_t esmm_dispatch(DType dtype, PtrType ptr_type, Run&& run) {
  auto with_ptr = [&]<typename T>() {
    return ptr_type == PtrType::kInt64 ? run.template operator()<T, int64_t>() : run.template operator()<T, int32_t>();
  };
  switch (dtype) {
    case DType::kBFloat16:
      return with_ptr.template operator()<__nv_bfloat16>();
    case DType::kFloat16:
      return with_ptr.template operator()<__half>();
    default:
      return with_ptr.template operator()<float>();
  }
}

// What every launch needs of sizes and enums; grids: x up to 2^31 - 1 tiles of M, y up to
// 65535 feature groups; column indices (and K) fit an int.
inline cudaError_t esmm_check(DType dtype, PtrType ptr_type, int64_t nnz, int64_t M, int64_t K, int64_t N,
                              int64_t tile_m_fp32, int features_per_cta) {
  const bool dtype_ok = dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
  const bool ptr_ok = ptr_type == PtrType::kInt32 || ptr_type == PtrType::kInt64;
  if (!dtype_ok || !ptr_ok || nnz < 0 || M < 0 || K < 0 || N < 0) return cudaErrorInvalidValue;
  if (K > 0x7fffffff || ceil_div(M, tile_m_fp32) > 0x7fffffff || ceil_div(N, features_per_cta) > 65535 ||
      ceil_div(N, kEsmmWarps) > 0x7fffffff) {
    return cudaErrorInvalidConfiguration;
  }
  return cudaSuccess;
}

inline cudaError_t esmm_fwd_check(const EsmmFwdArgs& a) {
  return esmm_check(a.dtype, a.ptr_type, a.nnz, a.M, a.K, a.N, Words<float>::kRows, kEsmmWarps * kFwdFeaturesPerWarp);
}

inline cudaError_t esmm_dw_check(const EsmmDwArgs& a) {
  return esmm_check(a.dtype, a.ptr_type, a.nnz, a.M, a.K, a.N, Words<float>::kRows, kEsmmWarps * kDwFeaturesPerWarp);
}

// Forward / input gradient: pack B's values in index order, then the product.
template <typename Launch>
cudaError_t esmm_fwd_sequence(const EsmmFwdArgs& a, Launch&& launch) {
  if (const cudaError_t err = esmm_fwd_check(a); err != cudaSuccess) return err;
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  return esmm_dispatch(a.dtype, a.ptr_type, [&]<typename T, typename Ptr>() {
    const Ptr* ptr = static_cast<const Ptr*>(a.ptr);
    if (a.nnz > 0) {
      const EsmmGatherParams<T, Ptr> g{static_cast<const T*>(a.b), static_cast<T*>(a.packed), ptr, a.idx, a.nnz,
                                       a.N, a.K, a.sbn, a.sbk};
      const cudaError_t err = launch(esmm_gather_kernel<T, Ptr>, Grid{ceil_div(a.N, kEsmmWarps), 1},
                                     kEsmmThreads, g);
      if (err != cudaSuccess) return err;
    }
    const EsmmFwdParams<T, Ptr> p{static_cast<const T*>(a.a), static_cast<const T*>(a.packed),
                                  static_cast<const T*>(a.bias), static_cast<T*>(a.out), ptr, a.idx, a.nnz, a.M,
                                  a.K, a.N, a.sam, a.sak, a.som, a.son, a.sbias};
    const Grid grid{ceil_div(a.M, Words<T>::kRows), ceil_div(a.N, kEsmmWarps * kFwdFeaturesPerWarp)};
    return launch(esmm_fwd_kernel<T, Ptr>, grid, kEsmmThreads, p);
  });
}

// Weight gradient: partial sums into `sums`, then rounded into the output's entries.
template <typename Launch>
cudaError_t esmm_dw_sequence(const EsmmDwArgs& a, Launch&& launch) {
  if (const cudaError_t err = esmm_dw_check(a); err != cudaSuccess) return err;
  if (a.nnz == 0 || a.N == 0 || a.K == 0) return cudaSuccess;
  return esmm_dispatch(a.dtype, a.ptr_type, [&]<typename T, typename Ptr>() {
    const Ptr* ptr = static_cast<const Ptr*>(a.ptr);
    if (a.M > 0) {
      const EsmmDwParams<T, Ptr> p{static_cast<const T*>(a.g), static_cast<const T*>(a.x), a.sums, ptr, a.idx,
                                   a.nnz, a.M, a.N, a.K, a.sgm, a.sgn, a.sxm, a.sxk};
      const Grid grid{ceil_div(a.M, Words<T>::kRows), ceil_div(a.N, kEsmmWarps * kDwFeaturesPerWarp)};
      const cudaError_t err = launch(esmm_dw_kernel<T, Ptr>, grid, kEsmmThreads, p);
      if (err != cudaSuccess) return err;
    }
    const EsmmScatterParams<T, Ptr> s{a.sums, static_cast<T*>(a.out), ptr, a.idx, a.nnz, a.N, a.K, a.swn, a.swk};
    return launch(esmm_scatter_kernel<T, Ptr>, Grid{ceil_div(a.N, kEsmmWarps), 1}, kEsmmThreads, s);
  });
}

}  // namespace cuda
}  // namespace sparsekern
