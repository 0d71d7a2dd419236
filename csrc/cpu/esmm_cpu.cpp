// Launchers of the CPU element-sparse kernels: the weight's nonzeros packed in index order,
// the scratch of the transposed tiles, then the kernels of the active instruction set (the
// run-time choice made in bsmm_cpu.cpp; AMX has no element kernels: it runs the AVX-512 ones).
#include "esmm_cpu.h"

#include "scratch.h"

#include <unistd.h>

#define SK_DECLARE_KERNELS(ns)                                                                             \
  namespace sparsekern {                                                                                   \
  namespace cpu {                                                                                          \
  namespace ns {                                                                                           \
  int64_t element_tile_rows(int64_t width, int64_t tile_bytes);                                            \
  void element_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for, int64_t tile_bytes,    \
                            const float* vals, float* at);                                                 \
  void element_sampled(const ElementSampled& p, ParallelFor parallel_for, int64_t tile_bytes, float* xt,  \
                       float* dyt, float* sums);                                                           \
  }                                                                                                        \
  }                                                                                                        \
  }
SK_DECLARE_KERNELS(portable)
SK_DECLARE_KERNELS(avx2)
SK_DECLARE_KERNELS(avx512)
#undef SK_DECLARE_KERNELS

namespace sparsekern {
namespace cpu {
namespace {

// A transposed tile takes a quarter of a core's L2 (measured best on a 512 KiB-L2 EPYC: half
// of it was 15% slower, an eighth twice as slow); 128 KiB where the size is not known.
int64_t tile_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 > 0) return static_cast<int64_t>(l2) / 4;
#endif
    return int64_t{128} << 10;
  }();
  return bytes;
}

int64_t tile_rows(Isa isa, int64_t width) {
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::element_tile_rows(width, tile_bytes());
    case Isa::kAvx2: return avx2::element_tile_rows(width, tile_bytes());
    default: return portable::element_tile_rows(width, tile_bytes());
  }
}

struct PackTask {
  const ElementDenseSparse* p;
  float* vals;
};

// vals[j] = w[row of j, idx[j]] for the rows [begin, end): one pass over the nonzeros, so the
// kernels read them in order instead of gathering from the dense weight once per tile of M.
void pack_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const PackTask*>(ctx);
  const StridedMatrix& w = c.p->w;
  for (int64_t r = begin; r < end; ++r)
    for (int64_t j = c.p->ptr[r]; j < c.p->ptr[r + 1]; ++j) {
      const int64_t at = r * w.stride_row + static_cast<int64_t>(c.p->idx[j]) * w.stride_col;
      if (w.dtype == DType::kFloat32) {
        c.vals[j] = static_cast<const float*>(w.data)[at];
      } else {
        const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(w.data)[at]) << 16;
        __builtin_memcpy(&c.vals[j], &bits, sizeof(float));
      }
    }
}

}  // namespace

bool esmm_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for) {
  const Isa isa = active_isa();
  const int64_t mt = tile_rows(isa, p.w.cols);
  thread_local KeptScratch kept;
  float* const vals = kept.at_least(p.nnz + p.w.cols * mt);
  if (vals == nullptr) return false;
  float* const at = vals + p.nnz;
  PackTask pack{&p, vals};
  parallel_for(p.w.rows, pack_task, &pack);
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512: avx512::element_dense_sparse(p, parallel_for, tile_bytes(), vals, at); break;
    case Isa::kAvx2: avx2::element_dense_sparse(p, parallel_for, tile_bytes(), vals, at); break;
    default: portable::element_dense_sparse(p, parallel_for, tile_bytes(), vals, at); break;
  }
  return true;
}

bool esmm_sampled(const ElementSampled& p, ParallelFor parallel_for) {
  const Isa isa = active_isa();
  const int64_t mt = tile_rows(isa, p.k);
  thread_local KeptScratch kept;
  float* const xt = kept.at_least(p.k * mt + p.n * mt + p.nnz);
  if (xt == nullptr) return false;
  float* const dyt = xt + p.k * mt;
  float* const sums = dyt + p.n * mt;
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512: avx512::element_sampled(p, parallel_for, tile_bytes(), xt, dyt, sums); break;
    case Isa::kAvx2: avx2::element_sampled(p, parallel_for, tile_bytes(), xt, dyt, sums); break;
    default: portable::element_sampled(p, parallel_for, tile_bytes(), xt, dyt, sums); break;
  }
  return true;
}

}  // namespace cpu
}  // namespace sparsekern
