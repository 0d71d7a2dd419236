// Host emulation of the CUDA execution model, just enough to run csrc/cuda's kernels on the
// CPU: one std::thread per CUDA thread, std::barrier for __syncthreads, per-warp barriers for
// the warp-collective ldmatrix / mma.sync (modelled from the PTX ISA tables in ptx_model.h,
// not from the kernels' own fragment code) and warp shuffles / votes (full mask: every lane
// of the warp must call each one, in the same order, or the emulation hangs), and cp.async groups that land either at once or
// as late as cp.async.wait_group allows. Include it before any csrc/cuda header.
//
// It checks what it can on the way: 16-byte alignment of every cp.async and ldmatrix address,
// and (built with -fsanitize=address) that no global or shared access leaves its buffer.
#pragma once

#define SPARSEKERN_HOST_EMULATION 1

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <driver_types.h>  // cudaError_t, cudaStream_t
#include <vector_functions.h>  // make_uint4
#include <vector_types.h>      // uint3, uint4

#include "ptx_model.h"

// CUDA keywords on the host. __shared__ becomes static: one copy per kernel instantiation,
// shared by the threads of the CTA being emulated (CTAs run one after another).
#undef __device__
#undef __host__
#undef __global__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __align__
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;

namespace emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emulation check failed: %s\n", what);
  std::abort();
}

struct Warp {
  std::barrier<> bar{32};
  const void* ptr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  uint64_t exchange[32];  // one slot per lane for shuffles and votes
};

struct Copy {
  void* dst;
  const void* src;
  int bytes;
};

inline std::atomic<bool> late_copies{true};
inline std::atomic<int> cta_vote{0};  // __syncthreads_or  // cp.async lands at the wait (true) or at once
inline thread_local std::barrier<>* cta_barrier = nullptr;
inline thread_local Warp* warp = nullptr;
inline thread_local int lane = 0;
inline thread_local std::vector<Copy> open_group;
inline thread_local std::deque<std::vector<Copy>> groups;

inline void land(const Copy& c) {
  std::memcpy(c.dst, c.src, c.bytes);
  std::memset(static_cast<char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
}

// Runs kernel() as a grid of grid_x x grid_y CTAs of `threads` threads, one CTA at a time, on
// one pool of host threads (a thread is expensive under AddressSanitizer): each runs its CUDA
// thread of every CTA in turn, and none starts a CTA before all have finished the previous one
// (its shared memory, the kernel's statics, is then the next CTA's).
template <class Kernel>
void launch(int64_t grid_x, int64_t grid_y, int threads, Kernel&& kernel) {
  if (threads % 32 != 0) fail("block size not a multiple of the warp size");
  if (grid_x <= 0 || grid_y <= 0) return;
  std::barrier<> cta(threads), between(threads);
  std::unique_ptr<Warp[]> warps(new Warp[threads / 32]);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      threadIdx = uint3{static_cast<unsigned>(t), 0u, 0u};
      cta_barrier = &cta;
      warp = &warps[t / 32];
      lane = t % 32;
      for (int64_t by = 0; by < grid_y; ++by)
        for (int64_t bx = 0; bx < grid_x; ++bx) {
          blockIdx = uint3{static_cast<unsigned>(bx), static_cast<unsigned>(by), 0u};
          open_group.clear();
          groups.clear();
          kernel();
          if (!open_group.empty() || !groups.empty()) fail("cp.async copies never waited for");
          between.arrive_and_wait();
        }
    });
  for (auto& th : pool) th.join();
}

}  // namespace emu

inline void __syncthreads() { emu::cta_barrier->arrive_and_wait(); }

inline int __syncthreads_or(int predicate) {
  if (predicate) emu::cta_vote.store(1);
  __syncthreads();
  const int any = emu::cta_vote.load();
  __syncthreads();
  if (threadIdx.x == 0) emu::cta_vote.store(0);
  __syncthreads();  // the reset lands before any thread's next vote
  return any;
}

// Warp collectives over all 32 lanes (the kernels use the full mask only).
namespace emu {
inline void full_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail("warp collective with a partial mask");
}
template <typename V>
V exchange(V value, int src_lane) {
  static_assert(sizeof(V) <= sizeof(uint64_t));
  Warp& w = *warp;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof value);
  w.exchange[lane] = bits;
  w.bar.arrive_and_wait();
  V out;
  std::memcpy(&out, &w.exchange[src_lane & 31], sizeof out);
  w.bar.arrive_and_wait();
  return out;
}
}  // namespace emu

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::full_mask(mask);
  emu::warp->bar.arrive_and_wait();
}
template <typename V>
V __shfl_sync(unsigned mask, V value, int src_lane) {
  emu::full_mask(mask);
  return emu::exchange(value, src_lane);
}
template <typename V>
V __shfl_xor_sync(unsigned mask, V value, int lane_mask) {
  emu::full_mask(mask);
  return emu::exchange(value, emu::lane ^ lane_mask);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  emu::full_mask(mask);
  emu::Warp& w = *emu::warp;
  w.exchange[emu::lane] = predicate != 0;
  w.bar.arrive_and_wait();
  unsigned out = 0;
  for (int l = 0; l < 32; ++l) out |= static_cast<unsigned>(w.exchange[l]) << l;
  w.bar.arrive_and_wait();
  return out;
}
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}
inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return std::atomic_ref<unsigned long long>(*address).fetch_add(value);
}

// The primitives of csrc/cuda/mma.cuh, same names and signatures.
namespace sparsekern {
namespace cuda {

inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16) {
    emu::fail("cp.async address not 16-byte aligned");
  }
  if (src_bytes <= 0 || src_bytes > 16) emu::fail("cp.async source size outside 1..16");
  const emu::Copy c{dst, src, src_bytes};
  if (emu::late_copies) {
    emu::open_group.push_back(c);
  } else {
    emu::land(c);
  }
}

inline void cp_async_commit() {
  emu::groups.push_back(std::move(emu::open_group));
  emu::open_group.clear();
}

template <int N>
inline void cp_async_wait() {
  while (emu::groups.size() > static_cast<size_t>(N)) {
    for (const emu::Copy& c : emu::groups.front()) emu::land(c);
    emu::groups.pop_front();
  }
}

inline void ldmatrix_model(uint32_t (&r)[4], const void* p, bool trans) {
  if (reinterpret_cast<uintptr_t>(p) % 16) emu::fail("ldmatrix row address not 16-byte aligned");
  emu::Warp& w = *emu::warp;
  w.ptr[emu::lane] = p;
  w.bar.arrive_and_wait();
  for (int q = 0; q < 4; ++q) {
    r[q] = 0;
    for (int h = 0; h < 2; ++h) {
      const ptx::Coord e = ptx::ldmatrix_element(emu::lane, h, trans);
      const uint16_t* row = static_cast<const uint16_t*>(w.ptr[8 * q + e.row]);
      r[q] |= static_cast<uint32_t>(row[e.col]) << (16 * h);
    }
  }
  w.bar.arrive_and_wait();
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ldmatrix_model(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { ldmatrix_model(r, p, true); }

inline float half_bits_to_float(uint16_t bits, __half*) {
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}
inline float half_bits_to_float(uint16_t bits, __nv_bfloat16*) {
  __nv_bfloat16 h;
  std::memcpy(&h, &bits, 2);
  return __bfloat162float(h);
}

// Which lane and element hold each matrix element, inverted from the PTX tables.
struct Owner {
  int lane, elem;
};
struct Owners {
  Owner a16[16][16], b16[16][8], atf[16][8], btf[8][8];
  Owners() {
    for (int l = 0; l < 32; ++l) {
      for (int i = 0; i < 8; ++i) a16[ptx::a16(l, i).row][ptx::a16(l, i).col] = {l, i};
      for (int i = 0; i < 4; ++i) b16[ptx::b16(l, i).row][ptx::b16(l, i).col] = {l, i};
      for (int i = 0; i < 4; ++i) atf[ptx::a_tf32(l, i).row][ptx::a_tf32(l, i).col] = {l, i};
      for (int i = 0; i < 2; ++i) btf[ptx::b_tf32(l, i).row][ptx::b_tf32(l, i).col] = {l, i};
    }
  }
};
inline const Owners owners;

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::Warp& w = *emu::warp;
  std::memcpy(w.a[emu::lane], a, sizeof(a));
  std::memcpy(w.b[emu::lane], b, sizeof(b));
  w.bar.arrive_and_wait();
  auto elem = [](uint32_t reg, int half) { return static_cast<uint16_t>(reg >> (16 * half)); };
  for (int i = 0; i < 4; ++i) {
    const ptx::Coord mn = ptx::c(emu::lane, i);
    float sum = 0.0f;
    for (int k = 0; k < 16; ++k) {
      const Owner oa = owners.a16[mn.row][k], ob = owners.b16[k][mn.col];
      const float av = half_bits_to_float(elem(w.a[oa.lane][oa.elem / 2], oa.elem % 2), static_cast<T*>(nullptr));
      const float bv = half_bits_to_float(elem(w.b[ob.lane][ob.elem / 2], ob.elem % 2), static_cast<T*>(nullptr));
      sum += av * bv;
    }
    d[i] += sum;
  }
  w.bar.arrive_and_wait();
}

inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::Warp& w = *emu::warp;
  std::memcpy(w.a[emu::lane], a, sizeof(a));
  std::memcpy(w.b[emu::lane], b, sizeof(b));
  w.bar.arrive_and_wait();
  auto as_float = [](uint32_t bits) {  // the tensor core reads 19 bits (tf32) of each
    bits &= 0xffffe000u;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  };
  for (int i = 0; i < 4; ++i) {
    const ptx::Coord mn = ptx::c(emu::lane, i);
    float sum = 0.0f;
    for (int k = 0; k < 8; ++k) {
      const Owner oa = owners.atf[mn.row][k], ob = owners.btf[k][mn.col];
      sum += as_float(w.a[oa.lane][oa.elem]) * as_float(w.b[ob.lane][ob.elem]);
    }
    d[i] += sum;
  }
  w.bar.arrive_and_wait();
}

// cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest, ties away from zero.
inline uint32_t to_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf / nan unchanged
  return (u + 0x1000u) & 0xffffe000u;
}

}  // namespace cuda
}  // namespace sparsekern
