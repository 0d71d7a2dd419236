// The per-row passes of the CPU AbsTopK (the algorithm: abs_topk.h), compiled once per
// instruction set: abs_topk_portable.cpp and abs_topk_avx2.cpp each define SK_ABS_TOPK_NS (a
// namespace of their own) and include this file; abs_topk.cpp checks the arguments and picks
// one at run time. Plain loops written so the compiler vectorises the write pass (the
// histogram and the listing are scalar). Standard headers first: their inline code stays
// built for the baseline set.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <memory>
#include <new>

#include "abs_topk.h"

#ifndef SK_ABS_TOPK_NS
#error "define SK_ABS_TOPK_NS (the instruction-set namespace) before including abs_topk_kernels.h"
#endif

namespace sparsekern {
namespace cpu {
namespace SK_ABS_TOPK_NS {
namespace {

// Keys of one dtype: Bits its storage, Key a signed integer as wide (keys are non-negative, so
// signed compares, which every vector set has, order them); kNan the one key of every NaN
// (just above +Inf); kTopShift: the first histogram counts key >> kTopShift.
struct F32Keys {
  using Bits = uint32_t;
  using Key = int32_t;
  static constexpr Bits kMagnitude = 0x7fffffffu;
  static constexpr Key kNan = 0x7f800001;
  static constexpr int kBits = 31, kTopShift = 20;  // 11-bit top digit: exponent + 3 mantissa bits
};
struct F64Keys {
  using Bits = uint64_t;
  using Key = int64_t;
  static constexpr Bits kMagnitude = 0x7fffffffffffffffull;
  static constexpr Key kNan = 0x7ff0000000000001ll;
  static constexpr int kBits = 63, kTopShift = 51;  // 12 bits: exponent + 1 mantissa bit
};
struct F16Keys {
  using Bits = uint16_t;
  using Key = int16_t;
  static constexpr Bits kMagnitude = 0x7fff;
  static constexpr Key kNan = 0x7c01;
  static constexpr int kBits = 15, kTopShift = 4;  // 11 bits: exponent + 6 mantissa bits
};
struct BF16Keys {
  using Bits = uint16_t;
  using Key = int16_t;
  static constexpr Bits kMagnitude = 0x7fff;
  static constexpr Key kNan = 0x7f81;
  static constexpr int kBits = 15, kTopShift = 4;  // 11 bits: exponent + 3 mantissa bits
};

constexpr int kRefineBits = 11;  // the widest digit after the first (over the listed entries only)
constexpr int64_t kMaxBins = int64_t{1} << 12;
constexpr int64_t kMinParallelElements = int64_t{1} << 16;

template <class K>
inline typename K::Key key_of(typename K::Bits b) {
  using Key = typename K::Key;
  const Key u = static_cast<Key>(b & K::kMagnitude);
  return u < K::kNan ? u : K::kNan;  // every NaN bit pattern is above +Inf's: one key for all
}

// Where one row's kept set ends: entries with key > cut are kept, and those with key == cut
// at an index <= last (the first `need` of them).
template <class K>
struct Cutoff {
  typename K::Key cut;
  int64_t last;
};

// Small rows (1 <= k < n <= kAbsTopkSmallRow): every entry's rank, the number of entries
// ahead of it (a larger key, or an equal one at a lower index), by comparing all pairs in a
// vectorised loop; the entry of rank k - 1 is the last kept, and gives the cutoff.
template <class K>
Cutoff<K> select_small(const typename K::Bits* x, int64_t n, int64_t k) {
  using Key = typename K::Key;
  Key keys[kAbsTopkSmallRow];
  for (int64_t i = 0; i < n; ++i) keys[i] = key_of<K>(x[i]);
  for (int64_t i = 0; i < n; ++i) {
    const Key ki = keys[i];
    int32_t ahead = 0;
    for (int64_t j = 0; j < n; ++j) ahead += (keys[j] > ki) | ((keys[j] == ki) & (j < i));
    if (ahead == k - 1) return {ki, i};
  }
  return {keys[0], 0};  // unreachable: the ranks are 0 .. n - 1
}

// The bin, walking down from the top, where the count reaches `need`; *above gets the count of
// the bins above it. hist0 + hist1 (hist1 may be null) hold the counts.
inline int64_t find_bin(const uint32_t* hist0, const uint32_t* hist1, int64_t bins, int64_t need, int64_t* above) {
  int64_t cum = 0, b = bins - 1;
  for (; b > 0; --b) {
    const int64_t c = hist0[b] + (hist1 ? hist1[b] : 0u);
    if (cum + c >= need) break;
    cum += c;
  }
  *above = cum;
  return b;
}

// Radix select of one row (1 <= k < n, n > kAbsTopkSmallRow). hist: 2 * kMaxBins counters;
// digits: n; list: n indices.
template <class K>
Cutoff<K> select_radix(const typename K::Bits* x, int64_t n, int64_t k, uint32_t* hist, uint16_t* digits,
                       int32_t* list) {
  using Key = typename K::Key;
  constexpr int64_t bins = int64_t{1} << (K::kBits - K::kTopShift);
  // 1. The top digit of every key, in a vectorised loop (and their largest, where the walk
  // down the histogram starts), then counted in two interleaved histograms: neighbours often
  // share a bin, and one counter would serialise the increments.
  uint16_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t d = static_cast<uint16_t>(key_of<K>(x[i]) >> K::kTopShift);
    digits[i] = d;
    largest = std::max(largest, d);
  }
  const int64_t used = int64_t{largest} + 1;  // bins above the largest digit stay unread
  uint32_t* h0 = hist;
  uint32_t* h1 = hist + bins;
  std::memset(h0, 0, used * sizeof(uint32_t));
  std::memset(h1, 0, used * sizeof(uint32_t));
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    h0[digits[i]]++;
    h1[digits[i + 1]]++;
  }
  if (i < n) h0[digits[i]]++;
  int64_t above = 0;
  const int64_t top = find_bin(h0, h1, used, k, &above);
  int64_t need = k - above;
  uint64_t prefix = static_cast<uint64_t>(top);  // the key's bits found so far
  int shift = K::kTopShift;                       // bits still to find
  if (need == static_cast<int64_t>(h0[top] + h1[top]))  // the whole bin is kept
    return {static_cast<Key>(prefix << shift), n - 1};
  // 2. List the bin's entries in index order: 64 at a time, their flags (a vectorised compare)
  // packed into a word whose set bits are walked, so the cost follows the entries listed.
  int64_t m = 0;
  const uint16_t t = static_cast<uint16_t>(top);
  for (i = 0; i < n; i += 64) {
    alignas(8) uint8_t flag[64];
    if (i + 64 <= n) {
      for (int64_t j = 0; j < 64; ++j) flag[j] = digits[i + j] == t;
    } else {  // the row's last, partial group
      for (int64_t j = 0; j < 64; ++j) flag[j] = i + j < n && digits[i + j] == t;
    }
    uint64_t bits = 0;
    for (int w = 0; w < 8; ++w) {  // 8 flag bytes (0 or 1) -> 8 bits, by one multiplication
      uint64_t word;
      std::memcpy(&word, flag + 8 * w, 8);
      bits |= ((word * 0x0102040810204080ull) >> 56) << (8 * w);
    }
    for (; bits != 0; bits &= bits - 1) list[m++] = static_cast<int32_t>(i + __builtin_ctzll(bits));
  }
  // Further digits among the listed entries only, about as many bins as entries (at most
  // 2^kRefineBits), so a short list costs little more than its length.
  while (shift > 0) {
    const int fit = std::max(3, static_cast<int>(std::bit_width(static_cast<uint64_t>(m))));
    const int width = std::min({shift, kRefineBits, fit});
    const int next = shift - width;
    const int64_t sub_bins = int64_t{1} << width;
    const Key mask = static_cast<Key>(sub_bins - 1);
    std::memset(hist, 0, sub_bins * sizeof(uint32_t));
    int64_t sub_largest = 0;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t d = (key_of<K>(x[list[j]]) >> next) & mask;
      hist[d]++;
      sub_largest = std::max(sub_largest, d);
    }
    const int64_t d = find_bin(hist, nullptr, sub_largest + 1, need, &above);
    need -= above;
    prefix = (prefix << (shift - next)) | static_cast<uint64_t>(d);
    shift = next;
    if (need == static_cast<int64_t>(hist[d])) return {static_cast<Key>(prefix << shift), n - 1};
    int64_t kept_m = 0;
    for (int64_t j = 0; j < m; ++j) {
      const int32_t c = list[j];
      list[kept_m] = c;
      kept_m += ((key_of<K>(x[c]) >> next) & mask) == d;
    }
    m = kept_m;
  }
  // Every listed entry now has key == prefix; the first `need` of them are kept (need < m).
  return {static_cast<Key>(prefix), list[need - 1]};
}

// The write pass of one row: kept entries bit for bit, others +0, and the mask.
template <class K>
void write_row(const typename K::Bits* x, int64_t n, Cutoff<K> c, typename K::Bits* out, uint8_t* kept) {
  using Bits = typename K::Bits;
  const typename K::Key cut = c.cut;
  for (int64_t i = 0; i <= c.last; ++i) {
    const bool keep = key_of<K>(x[i]) >= cut;
    out[i] = keep ? x[i] : Bits{0};
    kept[i] = keep;
  }
  for (int64_t i = c.last + 1; i < n; ++i) {
    const bool keep = key_of<K>(x[i]) > cut;
    out[i] = keep ? x[i] : Bits{0};
    kept[i] = keep;
  }
}

template <class K>
struct Problem {
  const typename K::Bits* x;
  int64_t n, k;
  typename K::Bits* out;
  uint8_t* kept;
  std::atomic<bool> out_of_memory;
};

template <class K>
void rows_body(void* ctx, int64_t begin, int64_t end) {
  auto* p = static_cast<Problem<K>*>(ctx);
  using Bits = typename K::Bits;
  const int64_t n = p->n, k = p->k;
  const Bits* x = p->x + begin * n;
  Bits* out = p->out + begin * n;
  uint8_t* kept = p->kept + begin * n;
  const int64_t count = (end - begin) * n;
  if (k == 0) {  // nothing kept
    std::memset(out, 0, count * sizeof(Bits));
    std::memset(kept, 0, count);
    return;
  }
  if (k == n) {  // everything kept: a copy
    std::memcpy(out, x, count * sizeof(Bits));
    std::memset(kept, 1, count);
    return;
  }
  if (n <= kAbsTopkSmallRow) {
    for (int64_t r = 0; r < end - begin; ++r)
      write_row<K>(x + r * n, n, select_small<K>(x + r * n, n, k), out + r * n, kept + r * n);
    return;
  }
  std::unique_ptr<uint32_t[]> hist(new (std::nothrow) uint32_t[2 * kMaxBins]);
  std::unique_ptr<int32_t[]> list(new (std::nothrow) int32_t[n]);
  std::unique_ptr<uint16_t[]> digits(new (std::nothrow) uint16_t[n]);
  if (!hist || !list || !digits) {
    p->out_of_memory.store(true);
    return;
  }
  for (int64_t r = 0; r < end - begin; ++r)
    write_row<K>(x + r * n, n, select_radix<K>(x + r * n, n, k, hist.get(), digits.get(), list.get()), out + r * n,
                 kept + r * n);
}

template <class K>
AbsTopkStatus run(const void* x, int64_t rows, int64_t n, int64_t k, void* values, uint8_t* kept,
                  ParallelFor parallel_for) {
  Problem<K> p{static_cast<const typename K::Bits*>(x), n, k, static_cast<typename K::Bits*>(values), kept, {false}};
  // Small calls stay on this thread: waking the pool costs more than they do.
  if (parallel_for == nullptr || rows == 1 || rows * n < kMinParallelElements)
    rows_body<K>(&p, 0, rows);
  else
    parallel_for(rows, &rows_body<K>, &p);
  return p.out_of_memory.load() ? kAbsTopkOutOfMemory : kAbsTopkOk;
}

}  // namespace

AbsTopkStatus abs_topk(const void* x, AbsTopkDtype dtype, int64_t rows, int64_t n, int64_t k, void* values,
                       uint8_t* kept, ParallelFor parallel_for) {
  switch (dtype) {
    case kAbsTopkF32:
      return run<F32Keys>(x, rows, n, k, values, kept, parallel_for);
    case kAbsTopkF64:
      return run<F64Keys>(x, rows, n, k, values, kept, parallel_for);
    case kAbsTopkF16:
      return run<F16Keys>(x, rows, n, k, values, kept, parallel_for);
    case kAbsTopkBF16:
      return run<BF16Keys>(x, rows, n, k, values, kept, parallel_for);
  }
  return kAbsTopkBadArgument;
}

}  // namespace SK_ABS_TOPK_NS
}  // namespace cpu
}  // namespace sparsekern
