// Warp-level primitives of the CUDA kernels: cp.async, ldmatrix, mma.sync (sm_80 and later).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" and "... m16n8k8"),
// with g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group):
//
// mma.m16n8k16, .bf16/.f16 inputs, fp32 accumulator. Each .b32 register holds two
// 16-bit elements, the lower column (A) / lower row (B) in the low half.
//   A (16 x 16, row-major)   a[0] = A[g    ][2t, 2t+1]      a[1] = A[g + 8][2t, 2t+1]
//                            a[2] = A[g    ][2t+8, 2t+9]    a[3] = A[g + 8][2t+8, 2t+9]
//   B (16 x 8, "col")        b[0] = B[2t, 2t+1    ][g]      b[1] = B[2t+8, 2t+9][g]
//   C/D (16 x 8, fp32)       c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
//
// mma.m16n8k8, .tf32 inputs (one element per .b32 register), fp32 accumulator:
//   A (16 x 8)               a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]
//   B (8 x 8)                b[0] = B[t][g]  b[1] = B[t+4][g]
//   C/D                      as for m16n8k16.
//
// ldmatrix.sync.aligned.m8n8.x4.b16: four 8 x 8 matrices of 16-bit elements. Lane l gives
// the shared address of row (l % 8) of matrix (l / 8); rows are 16 contiguous bytes. Each
// lane receives one register per matrix q:
//   plain:   reg q = M_q[l / 4][2 (l % 4)], M_q[l / 4][2 (l % 4) + 1]      (row g, columns 2t, 2t+1)
//   .trans:  reg q = M_q[2 (l % 4)][l / 4], M_q[2 (l % 4) + 1][l / 4]      (rows 2t, 2t+1, column g)
// So a plain load of row-major 8 x 8 pieces gives A or B fragments directly when the
// contraction dimension (k) is contiguous in shared memory, and .trans gives them when
// the other dimension is contiguous. The callers (tile.cuh) choose which row each lane
// points at so that matrix q lands in fragment register q.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sparsekern {
namespace cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; only the first `src_bytes` (0..16) are read,
// the rest of the 16 bytes is zero-filled. Both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d = a * b + d, m16n8k16, 16-bit inputs of type T (bf16 or fp16), fp32 accumulator.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d = a * b + d, m16n8k8, tf32 inputs (already rounded by to_tf32), fp32 accumulator.
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// fp32 -> tf32, rounded to nearest (ties away), as cuBLAS and Triton do; the mma itself
// would truncate.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

}  // namespace cuda
}  // namespace sparsekern
