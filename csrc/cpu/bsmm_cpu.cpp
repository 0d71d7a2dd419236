// Launchers of the CPU kernels: the run-time choice of instruction set, the O(nnz) index
// preparation and the scratch memory, then one of the per-ISA kernel units.
#include "bsmm_cpu.h"
#include "bsmm_amx.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../common/block_index.h"
#include "scratch.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdlib.h>

#define SK_DECLARE_KERNELS(ns)                                                                       \
  namespace sparsekern {                                                                             \
  namespace cpu {                                                                                    \
  namespace ns {                                                                                     \
  bool dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for, const int32_t* outer,    \
                    const int64_t* panel_offset, float* panels, int64_t br0, int64_t br1);           \
  bool sampled(const SampledProblem& p, ParallelFor parallel_for, float* dy_panels, float* x_panels,  \
               int64_t chunk_rows);                                                                  \
  }                                                                                                  \
  }                                                                                                  \
  }
SK_DECLARE_KERNELS(portable)
SK_DECLARE_KERNELS(avx2)
SK_DECLARE_KERNELS(avx512)
#undef SK_DECLARE_KERNELS

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define SK_X86 1
#include <cpuid.h>
#endif
#ifdef SK_AMX  // see bsmm_amx.h
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sparsekern {
namespace cpu {
namespace {

#ifdef SK_AMX
// AMX: the CPU has the tile unit, bf16 tiles and AVX-512 BW/VL/BF16 (for the packing and the
// conversions); the OS saves the tile state (XCR0 bits 17, 18) and lets this process use it.
bool amx_usable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), bf16_tiles = d & (1u << 22), bw = b & (1u << 30), vl = b & (1u << 31);
  if (!tile || !bf16_tiles || !bw || !vl) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;  // AVX512_BF16
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE, for xgetbv
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  // Linux hands out the tile state on request (once per process; torch's oneDNN asks too).
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#endif

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return true;
#ifdef SK_X86
    case Isa::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#ifdef SK_AMX
    case Isa::kAmx: {
      static const bool usable = cpu_has(Isa::kAvx512) && amx_usable();
      return usable;
    }
#endif
    default: return false;
  }
}

// The best set up to `cap` this CPU supports. Sets above the cap are not probed: asking for
// AMX changes the process (the OS then saves the tile state on every signal).
Isa best_isa_up_to(Isa cap) {
  for (int i = static_cast<int>(cap); i > 0; --i)
    if (cpu_has(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::kPortable;
}

// SPARSEKERN_CPU_ISA=portable|avx2|avx512|amx caps the choice (never above what the CPU has).
Isa initial_isa() {
  Isa cap = Isa::kAmx;
  if (const char* env = std::getenv("SPARSEKERN_CPU_ISA")) isa_from_name(env, &cap);
  return best_isa_up_to(cap);
}

std::atomic<int> g_isa{-1};

// Packed weight panels held at once (floats): 8 MiB.
constexpr int64_t PANEL_BUDGET = int64_t{2} << 20;
// Packed dy and x panels of the weight gradient, per chunk of M (floats): 16 MiB.
constexpr int64_t PACKED_CHUNK = int64_t{4} << 20;

// Freed outputs kept for the next call of the same size. A fresh 32 MiB output costs the
// kernel's zeroing of every page it faults in, about a tenth of a forward pass at density
// 1/16 (and of a backward, whose dW is 64 MiB); a reused one is already mapped. Bounded, so
// little memory stays held after the tensors are gone.
constexpr size_t OUTPUT_CACHE_SLOTS = 4;
constexpr size_t OUTPUT_CACHE_BYTES = size_t{256} << 20;

struct OutputCache {
  std::mutex mu;
  std::unordered_map<void*, size_t> live;      // outputs handed out -> bytes
  std::vector<std::pair<void*, size_t>> idle;  // freed outputs kept for reuse, oldest first
  size_t idle_bytes = 0;
};

OutputCache& output_cache() {
  static OutputCache* cache = new OutputCache;  // never destroyed: tensors may die after exit
  return *cache;
}

}  // namespace

void* alloc_output(int64_t bytes) {
  const size_t size = static_cast<size_t>(bytes > 0 ? bytes : 1);
  OutputCache& cache = output_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  void* p = nullptr;
  for (size_t i = 0; i < cache.idle.size(); ++i) {
    if (cache.idle[i].second != size) continue;
    p = cache.idle[i].first;
    cache.idle_bytes -= size;
    cache.idle.erase(cache.idle.begin() + static_cast<int64_t>(i));
    break;
  }
  if (p == nullptr) p = scratch(index::ceil_div(bytes, 4)).release();
  if (p != nullptr) cache.live.emplace(p, size);
  return p;
}

void free_output(void* p) {
  if (p == nullptr) return;
  OutputCache& cache = output_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  auto it = cache.live.find(p);
  const size_t size = it == cache.live.end() ? 0 : it->second;
  if (it != cache.live.end()) cache.live.erase(it);
  if (size == 0 || size > OUTPUT_CACHE_BYTES) {
    std::free(p);
    return;
  }
  // Make room by dropping the oldest idle outputs.
  while (!cache.idle.empty() &&
         (cache.idle.size() >= OUTPUT_CACHE_SLOTS || cache.idle_bytes + size > OUTPUT_CACHE_BYTES)) {
    std::free(cache.idle.front().first);
    cache.idle_bytes -= cache.idle.front().second;
    cache.idle.erase(cache.idle.begin());
  }
  cache.idle.emplace_back(p, size);
  cache.idle_bytes += size;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAmx: return "amx";
  }
  return "unknown";
}

bool isa_from_name(const char* name, Isa* isa) {
  for (Isa each : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    if (std::strcmp(name, isa_name(each)) == 0) {
      *isa = each;
      return true;
    }
  }
  return false;
}

Isa best_isa() { return best_isa_up_to(Isa::kAmx); }

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(initial_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

bool set_active_isa(Isa isa) {
  if (!cpu_has(isa)) return false;
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

bool dense_sparse_takes_bf16(int64_t n_in, int64_t block_out, int64_t block_in) {
  // Whole tiles only: every block's k extent a multiple of 32 (so no tile reads past a row),
  // block rows a multiple of 16 columns.
  return active_isa() == Isa::kAmx && n_in % 32 == 0 && block_in % 32 == 0 && block_out % 16 == 0;
}

bool sampled_takes_bf16() { return active_isa() == Isa::kAmx; }

bool bsmm_dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for) {
  const bool on_amx = p.a_bf16 != nullptr;
  if (on_amx && (p.w.dtype != DType::kBFloat16 || !dense_sparse_takes_bf16(p.w.cols, p.block_out, p.block_in)))
    return false;  // the binding asks dense_sparse_takes_bf16 first
  const int64_t nb_out = index::num_blocks(p.w.rows, p.block_out);
  std::vector<int32_t> outer(p.nnz);
  index::expand_pointers(p.ptr, nb_out, outer.data());
  // Packed panels, one group of block rows at a time: a group holds at most PANEL_BUDGET floats
  // and at most half the weight (or one block row), so scratch never reaches the weight's size.
  const int64_t budget = std::min<int64_t>(PANEL_BUDGET, p.w.rows * p.w.cols / 2);
  std::vector<int64_t> offset(p.nnz);
  std::vector<int64_t> group_end;  // block row ending each group
  auto panel_floats = [&](int64_t j) { return index::block_extent(p.idx[j], p.block_in, p.w.cols) * p.block_out; };
  int64_t largest = 0, total = 0;
  for (int64_t br = 0; br < nb_out; ++br) {
    int64_t row_floats = 0;
    for (int64_t j = p.ptr[br]; j < p.ptr[br + 1]; ++j) row_floats += panel_floats(j);
    if (total > 0 && total + row_floats > budget) {
      group_end.push_back(br);
      largest = std::max(largest, total);
      total = 0;
    }
    for (int64_t j = p.ptr[br]; j < p.ptr[br + 1]; ++j) {
      offset[j] = total;
      total += panel_floats(j);
    }
  }
  group_end.push_back(nb_out);
  largest = std::max(largest, total);
  thread_local KeptScratch kept_panels;
  float* const panels = kept_panels.at_least(largest);
  if (panels == nullptr) return false;
  // A bf16 `a` goes to the AMX kernels, checked above (whatever the ISA is by now); an fp32
  // one to the kernels of the ISA read here.
  const Isa isa = on_amx ? Isa::kAmx : active_isa();
  int64_t br0 = 0;
  for (int64_t br1 : group_end) {
    bool ok;
    switch (isa) {
      case Isa::kAmx:
        if (on_amx) {
          ok = amx::dense_sparse(p, parallel_for, outer.data(), offset.data(), panels, br0, br1);
          break;
        }
        [[fallthrough]];
      case Isa::kAvx512: ok = avx512::dense_sparse(p, parallel_for, outer.data(), offset.data(), panels, br0, br1); break;
      case Isa::kAvx2: ok = avx2::dense_sparse(p, parallel_for, outer.data(), offset.data(), panels, br0, br1); break;
      default: ok = portable::dense_sparse(p, parallel_for, outer.data(), offset.data(), panels, br0, br1); break;
    }
    if (!ok) return false;
    br0 = br1;
  }
  return true;
}

namespace {

struct ZeroFill {
  const SampledProblem* p;
  const uint8_t* active;  // [nb_rows, nb_cols] grid of active blocks
  int64_t nb_cols;
};

// n zero bytes at p, the aligned middle with streaming stores: dw (64 MiB for the targets)
// cannot stay in cache, and ordinary stores would first read every line they overwrite.
// zero_inactive fences (stream_fence) before its task ends, so they are visible after it.
void zero_bytes(char* p, size_t n) {
#if defined(__SSE2__)
  constexpr size_t kVec = 16;
  const size_t head = std::min(n, (kVec - reinterpret_cast<uintptr_t>(p) % kVec) % kVec);
  std::memset(p, 0, head);
  size_t i = head;
  for (; i + kVec <= n; i += kVec) _mm_stream_si128(reinterpret_cast<__m128i*>(p + i), _mm_setzero_si128());
  std::memset(p + i, 0, n - i);
#else
  std::memset(p, 0, n);
#endif
}

void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Zeros of dw outside the active blocks, one block row per task (the kernels write the rest).
void zero_inactive(void* raw, int64_t br0, int64_t br1) {
  const auto& z = *static_cast<const ZeroFill*>(raw);
  const SampledProblem& p = *z.p;
  const size_t elem = p.dw_dtype == DType::kFloat32 ? 4 : 2;
  char* dw = static_cast<char*>(p.dw);
  for (int64_t br = br0; br < br1; ++br) {
    const int64_t r0 = index::block_start(br, p.block_out), rows = index::block_extent(br, p.block_out, p.n);
    for (int64_t c = 0; c < z.nb_cols;) {
      if (z.active[br * z.nb_cols + c]) {
        ++c;
        continue;
      }
      int64_t c1 = c;
      while (c1 < z.nb_cols && !z.active[br * z.nb_cols + c1]) ++c1;  // a run of inactive blocks
      const int64_t k0 = index::block_start(c, p.block_in);
      const int64_t k1 = std::min(index::block_start(c1, p.block_in), p.k);
      for (int64_t i = 0; i < rows; ++i)
        zero_bytes(dw + ((r0 + i) * p.ldw + k0) * elem, static_cast<size_t>(k1 - k0) * elem);
      c = c1;
    }
  }
  stream_fence();
}

}  // namespace

bool bsmm_sampled(const SampledProblem& p, ParallelFor parallel_for) {
  if (p.dy_bf16 != nullptr && !sampled_takes_bf16()) return false;  // the binding asks first
  if (p.n == 0 || p.k == 0) return true;  // dw is empty (and the panels' width below is 0)
  // An empty batch (m = 0) sums nothing: the active blocks are zeros too.
  const int64_t nnz = p.m > 0 ? p.nnz : 0;
  const int64_t nb_rows = index::num_blocks(p.n, p.block_out), nb_cols = index::num_blocks(p.k, p.block_in);
  // Scratch for the packed operands first, so that running out of memory leaves dw unwritten.
  // bf16 operands as they are (AMX): all of M at once. fp32: column panels of dy and x for a
  // chunk of rows of M, about PACKED_CHUNK floats, so they stay in the last-level cache; fp32
  // dw takes the chunks' sums in place. A bf16 dw would need an fp32 accumulator the size of
  // the active blocks instead, so it takes all of M at once.
  const bool on_amx = p.dy_bf16 != nullptr;
  int64_t chunk_rows = p.m;
  if (!on_amx && p.dw_dtype == DType::kFloat32) {
    const int64_t width = nb_rows * p.block_out + nb_cols * p.block_in;
    chunk_rows = std::max<int64_t>(128, PACKED_CHUNK / width / 128 * 128);
    chunk_rows = std::min(chunk_rows, std::max<int64_t>(p.m, 1));
  }
  const int64_t rows = std::max<int64_t>(chunk_rows, 1);
  const int64_t dy_floats = rows * nb_rows * p.block_out, x_floats = rows * nb_cols * p.block_in;
  thread_local KeptScratch kept_panels;
  float* const packed = nnz == 0 ? nullptr
                      : kept_panels.at_least(on_amx ? index::ceil_div(amx::sampled_scratch_elems(p), 2)
                                                    : dy_floats + x_floats);
  if (nnz > 0 && packed == nullptr) return false;

  std::vector<uint8_t> active(static_cast<size_t>(nb_rows * nb_cols), 0);
  for (int64_t j = 0; j < nnz; ++j) active[p.block_row[j] * nb_cols + p.col_idx[j]] = 1;
  ZeroFill z{&p, active.data(), nb_cols};
  if (nb_rows > 0) parallel_for(nb_rows, zero_inactive, &z);
  if (nnz == 0) return true;
  if (on_amx) return amx::sampled(p, parallel_for, reinterpret_cast<uint16_t*>(packed));
  float* const x_panels = packed + dy_floats;
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::sampled(p, parallel_for, packed, x_panels, rows);
    case Isa::kAvx2: return avx2::sampled(p, parallel_for, packed, x_panels, rows);
    default: return portable::sampled(p, parallel_for, packed, x_panels, rows);
  }
}

}  // namespace cpu
}  // namespace sparsekern
