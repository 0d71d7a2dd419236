// AbsTopK activation sparsity on the CPU: in every row of a dense matrix, keep the k entries
// of largest magnitude, zero the others. Torch-free: raw pointers and sizes only;
// csrc/bindings.cpp wraps it for torch (sparsekern/activation/backends/cpu.py calls it).
//
// Order of magnitudes: an entry's key is |x|'s bit pattern read as an integer (sign cleared;
// for non-negative IEEE floats the bits order like the values), with every NaN mapped to one
// key just above +Inf. So NaN > +-Inf > finite by |x|, -0 and +0 tie, and NaNs tie among
// themselves. Ties go to the lowest index.
//
// Per row, no sort (abs_topk_kernels.h):
//   1. one read pass: a histogram of the keys' top 11 or 12 bits (2048 or 4096 bins);
//      walking it down from the top finds the bin that holds the k-th largest key;
//   2. one read pass lists the indices of the entries in that bin (in index order), and
//      further 11-bit digits refine among those only, until the k-th key T is exact; the
//      first `need` listed entries equal to T are kept, the last of them at index `last`;
//   3. one write pass: an entry is kept when its key > T, or key == T at index <= last;
//      kept entries are copied bit for bit, the others written +0, and the kept mask in the
//      same pass (both outputs fully written).
// Rows of at most kAbsTopkSmallRow entries rank every entry against every other instead (a
// histogram would cost more than the row). k = 0 and k = n need no selection (zeros; a copy).
// Rows are dealt to the caller's parallel loop (torch's threads) in contiguous ranges; calls of
// fewer than 2^16 entries run on the calling thread.
#pragma once

#include <cstdint>

#include "bsmm_cpu.h"  // ParallelFor: the caller's parallel loop (torch's thread pool); active_isa

namespace sparsekern {
namespace cpu {

enum AbsTopkDtype : int32_t { kAbsTopkF32 = 0, kAbsTopkF64 = 1, kAbsTopkF16 = 2, kAbsTopkBF16 = 3 };

enum AbsTopkStatus : int32_t { kAbsTopkOk = 0, kAbsTopkBadArgument = 1, kAbsTopkOutOfMemory = 2 };

constexpr int64_t kAbsTopkSmallRow = 32;

// x: rows x n, contiguous, row-major, of `dtype`; values: rows x n of the same dtype; kept:
// rows x n bytes (0 or 1). 0 <= k <= n, n < 2^31 (indices are int32); rows or n may be 0.
// values and kept must not overlap x. Rows run through parallel_for (nullptr: in order, on
// this thread). Every entry of values and kept is written.
AbsTopkStatus abs_topk(const void* x, AbsTopkDtype dtype, int64_t rows, int64_t n, int64_t k, void* values,
                       uint8_t* kept, ParallelFor parallel_for);

}  // namespace cpu
}  // namespace sparsekern
