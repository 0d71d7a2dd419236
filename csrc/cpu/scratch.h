// Scratch memory of the CPU launchers (bsmm_cpu.cpp, esmm_cpu.cpp): large buffers on huge
// pages, and a per-thread buffer kept between calls. Launcher units only (baseline ISA).
#pragma once

#include <stdint.h>
#include <stdlib.h>

#include <memory>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sparsekern {
namespace cpu {
namespace {

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

// Scratch of `floats` floats, uninitialised; large ones on 2 MiB boundaries with transparent
// huge pages requested (a fresh 64 MiB buffer otherwise costs 16k page faults per call).
std::unique_ptr<float, FreeDeleter> scratch(int64_t floats) {
  const size_t bytes = static_cast<size_t>(floats > 0 ? floats : 1) * sizeof(float);
  constexpr size_t kHuge = size_t{2} << 20;
  void* p = nullptr;
  if (bytes >= 2 * kHuge) {
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    if (posix_memalign(&p, kHuge, rounded) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
    madvise(p, rounded, MADV_HUGEPAGE);
#endif
  } else if (posix_memalign(&p, 64, bytes) != 0) {
    return nullptr;
  }
  return std::unique_ptr<float, FreeDeleter>(static_cast<float*>(p));
}

// Scratch kept by a thread between calls (thread_local at the call site): a fresh buffer of
// this size would cost its page faults and zeroing by the kernel on every call. It only grows.
struct KeptScratch {
  std::unique_ptr<float, FreeDeleter> buffer;
  int64_t floats = 0;
  float* at_least(int64_t n) {  // null when out of memory
    if (floats < n || !buffer) {
      buffer.reset();
      floats = 0;
      buffer = scratch(n);
      if (!buffer) return nullptr;
      floats = n;
    }
    return buffer.get();
  }
};

}  // namespace
}  // namespace cpu
}  // namespace sparsekern
