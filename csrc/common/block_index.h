// Index logic over a block layout, shared by the CPU and CUDA kernels.
//
// A weight W[rows, cols] is cut into blocks of block_out x block_in; the last block
// row / column is partial when the side does not divide the extent (edge blocks).
// The layout lists its active blocks twice (see sparsekern/layout.py):
//   row-major  : row_ptr[n_block_rows + 1], col_idx[nnz], block_row[nnz]
//   column-major (the transposed index): col_ptr[n_block_cols + 1], row_idx[nnz]
// Every function here is host/device-compatible and touches no torch type, so the
// CPU build tests the same code the CUDA kernels run.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SK_HOST_DEVICE static __host__ __device__ __forceinline__
#else
// static: each translation unit keeps its own copy, so a copy compiled for AVX-512
// in one unit can never be linked into the portable one.
#define SK_HOST_DEVICE static inline
#endif

namespace sparsekern {
namespace index {

// a >= 0, b > 0. Never overflows (a + b - 1 would, for a or b near INT64_MAX).
SK_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// The block sides the kernels are built for.
SK_HOST_DEVICE bool valid_block_side(int64_t side) { return side == 16 || side == 32 || side == 64 || side == 128; }

// Number of blocks of `side` covering `extent` (the last one may be partial).
SK_HOST_DEVICE int64_t num_blocks(int64_t extent, int64_t side) { return ceil_div(extent, side); }

// First element of block `b`.
SK_HOST_DEVICE int64_t block_start(int64_t b, int64_t side) { return b * side; }

// Elements of block `b` inside `extent`: `side`, or fewer for the partial edge block.
// This is the edge-block mask: kernels touch only the first block_extent() elements.
SK_HOST_DEVICE int64_t block_extent(int64_t b, int64_t side, int64_t extent) {
  const int64_t rest = extent - b * side;
  return rest < side ? rest : side;
}

// The blocks of outer index `o` (a block row in the row-major index, a block column
// in the transposed one) are positions [segment_begin, segment_end) of the inner index.
SK_HOST_DEVICE int64_t segment_begin(const int32_t* ptr, int64_t o) { return ptr[o]; }
SK_HOST_DEVICE int64_t segment_end(const int32_t* ptr, int64_t o) { return ptr[o + 1]; }

// Outer index of every listed block (block_row from row_ptr, block column from col_ptr).
SK_HOST_DEVICE void expand_pointers(const int32_t* ptr, int64_t n_outer, int32_t* outer) {
  for (int64_t o = 0; o < n_outer; ++o)
    for (int64_t j = ptr[o]; j < ptr[o + 1]; ++j) outer[j] = static_cast<int32_t>(o);
}

// Validation, O(n_outer + nnz): what a kernel needs to index in bounds.
enum IndexError : int {
  kIndexOk = 0,
  kPtrFirstNotZero = 1,   // ptr[0] != 0
  kPtrLastNotNnz = 2,     // ptr[n_outer] != nnz
  kPtrDecreasing = 3,     // ptr not non-decreasing
  kInnerOutOfRange = 4,   // an inner index outside [0, n_inner)
  kInnerNotAscending = 5, // inner indices of one segment not strictly ascending
  kOuterOutOfRange = 6,   // an outer index outside [0, n_outer)
  kNotRowMajor = 7,       // coordinates not in strictly ascending (outer, inner) order
};

SK_HOST_DEVICE const char* describe(int error) {
  switch (error) {
    case kIndexOk: return "ok";
    case kPtrFirstNotZero: return "pointers must start at 0";
    case kPtrLastNotNnz: return "the last pointer must equal the number of indices";
    case kPtrDecreasing: return "pointers must be non-decreasing";
    case kInnerOutOfRange: return "an index is out of range of the block grid";
    case kInnerNotAscending: return "indices within one block row/column must be strictly ascending";
    case kOuterOutOfRange: return "a block row index is out of range of the block grid";
    case kNotRowMajor: return "blocks must be listed once each, in row-major order (rows, then columns ascending)";
    default: return "unknown index error";
  }
}

// Compressed index (ptr, idx): the pointers bound every segment inside idx[0, nnz),
// and every index lies in [0, n_inner), ascending within its segment (no duplicate block).
// Ptr: int32_t (the block layouts), or int64_t (element layouts of 2^31 nonzeros or more).
template <typename Ptr>
SK_HOST_DEVICE int check_compressed(const Ptr* ptr, int64_t n_outer, const int32_t* idx, int64_t nnz,
                                    int64_t n_inner) {
  if (ptr[0] != 0) return kPtrFirstNotZero;
  if (ptr[n_outer] != nnz) return kPtrLastNotNnz;
  for (int64_t o = 0; o < n_outer; ++o) {
    if (ptr[o + 1] < ptr[o]) return kPtrDecreasing;
  }
  for (int64_t o = 0; o < n_outer; ++o) {
    for (int64_t j = ptr[o]; j < ptr[o + 1]; ++j) {
      if (idx[j] < 0 || idx[j] >= n_inner) return kInnerOutOfRange;
      if (j > ptr[o] && idx[j] <= idx[j - 1]) return kInnerNotAscending;
    }
  }
  return kIndexOk;
}

// Coordinate list (outer[j], inner[j]): in range of the grid, in strictly ascending row-major
// order (so no block is listed twice and no two threads write the same block).
SK_HOST_DEVICE int check_coordinates(const int32_t* outer, const int32_t* inner, int64_t nnz, int64_t n_outer,
                                     int64_t n_inner) {
  for (int64_t j = 0; j < nnz; ++j) {
    if (outer[j] < 0 || outer[j] >= n_outer) return kOuterOutOfRange;
    if (inner[j] < 0 || inner[j] >= n_inner) return kInnerOutOfRange;
    if (j > 0 && (outer[j] < outer[j - 1] || (outer[j] == outer[j - 1] && inner[j] <= inner[j - 1])))
      return kNotRowMajor;
  }
  return kIndexOk;
}

}  // namespace index
}  // namespace sparsekern
