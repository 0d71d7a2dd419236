// The passes of the CPU top-k projection, compiled once per instruction set:
// topk_portable.cpp and topk_avx2.cpp each define SK_TOPK_NS (a namespace of their own)
// and include this file; topk.cpp checks the arguments and picks one at run time (the
// instruction set the block-sparse kernels use, see bsmm_cpu.h). The passes are plain
// loops written so the compiler vectorises them; AVX2 makes them about a quarter faster.
// Standard headers come first, so their inline code is built for the baseline set.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "../common/block_index.h"

#include "topk.h"

#ifndef SK_TOPK_NS
#error "define SK_TOPK_NS (the instruction-set namespace) before including topk_kernels.h"
#endif

namespace sparsekern {
namespace cpu {
namespace SK_TOPK_NS {
namespace {

constexpr int64_t kBins = 1 << 16;
// Chunks of at least this many entries (below, a thread costs more than it saves); the
// radix select, whose every chunk needs its own histograms, uses at most kRadixChunks.
constexpr int64_t kMinChunkElements = 1 << 18;
constexpr int64_t kRadixChunks = 16;
// The bracket pass: from this many entries on, with a sample of one key in kSampleStride, at
// least kMinSample and at most kMaxSample keys. A fixed 65536-key sample read every cache line of
// a 1M-entry weight and ranked 65536 keys twice, more than the pass itself (a 512 x 512 select,
// one thread: 0.99 ms with it, 0.67 ms with this rule, on a loaded 2-core Xeon); the wider bracket
// of a smaller sample costs little, its keys being collected from L1 in the same pass.
constexpr int64_t kBracketMinElements = 1 << 18;
constexpr int64_t kSampleStride = 64, kMinSample = 1 << 12, kMaxSample = 1 << 16;

// Counters. A histogram bin may hold every entry of a chunk, and a chunk may be the whole
// matrix (one row of 2^32 entries or more, an 8 GiB bf16 weight): bins are 64-bit. The hot
// sub-histograms of the first digit count in `Sub` (32 bits: half the cache of 64) over
// windows of at most Sub's maximum entries, so no counter can wrap, and are added into the
// 64-bit bins after each window. (tests/cuda_host/topk_counts_check.cpp runs them with 8-bit
// sub-counters.)
using HistCount = uint64_t;
using SubCount = uint32_t;
template <class Sub>
constexpr int64_t window_entries() {
  return static_cast<int64_t>(std::numeric_limits<Sub>::max());
}

// Keys are |w|'s bits; the forced key sits above every finite magnitude (NaN/Inf are
// rejected before any key is used, so it cannot collide with one).
struct F32Keys {
  using Bits = uint32_t;
  static constexpr uint32_t kMask = 0x7fffffffu, kForced = 0x7fffffffu, kInf = 0x7f800000u;
  static constexpr int kHighShift = 16;  // two 16-bit digits
};
struct F16Keys {
  using Bits = uint16_t;
  static constexpr uint32_t kMask = 0x7fffu, kForced = 0x7fffu, kInf = 0x7c00u;
  static constexpr int kHighShift = 0;  // one 16-bit digit
};
struct BF16Keys {
  using Bits = uint16_t;
  static constexpr uint32_t kMask = 0x7fffu, kForced = 0x7fffu, kInf = 0x7f80u;
  static constexpr int kHighShift = 0;
};

int64_t chunk_row(int64_t rows, int64_t n_chunks, int64_t c) { return rows * c / n_chunks; }

// Runs fn(c) for every chunk c < n_chunks on the caller's parallel loop (nullptr: in order,
// here). The binding passes at::parallel_for, torch's own thread pool, so no second pool
// competes with torch's threads for the cores. Each thread takes the next chunk when done
// with one rather than a fixed share, so a thread slowed by other work on the machine
// just takes fewer.
template <class F>
void run_chunks(ParallelFor parallel_for, int64_t n_chunks, const F& fn) {
  if (parallel_for == nullptr || n_chunks == 1) {
    for (int64_t c = 0; c < n_chunks; ++c) fn(static_cast<int>(c));
    return;
  }
  struct Shared {
    const F* fn;
    std::atomic<int64_t> next;
    int64_t n_chunks;
  } shared{&fn, {0}, n_chunks};
  parallel_for(
      n_chunks,
      [](void* ctx, int64_t, int64_t) {
        auto* s = static_cast<Shared*>(ctx);
        for (int64_t c; (c = s->next.fetch_add(1)) < s->n_chunks;) (*s->fn)(static_cast<int>(c));
      },
      &shared);
}

template <class K, bool kForcedMask>
inline uint32_t key_at(const typename K::Bits* p, const uint8_t* forced, int64_t i) {
  uint32_t u = p[i] & K::kMask;
  if (kForcedMask && forced[i]) u = K::kForced;
  return u;
}

// Histogram of the high digit of every key (hist: kBins, overwritten); returns whether any
// entry is NaN or Inf. Four interleaved sub-histograms: neighbouring entries often share a
// bin, and one histogram would serialise on that counter.
template <class K, bool kForcedMask, class Sub = SubCount>
bool high_digit_histogram(const typename K::Bits* p, const uint8_t* forced, int64_t begin, int64_t end,
                          HistCount* hist) {
  // Padded stride: sub-histograms exactly 256 KiB apart would share cache sets.
  constexpr int64_t kStride = kBins + 64;
  std::vector<Sub> sub(4 * kStride, 0);
  std::fill(hist, hist + kBins, HistCount{0});
  uint32_t bad = 0;
  for (int64_t w0 = begin; w0 < end; w0 += window_entries<Sub>()) {
    const int64_t w1 = std::min(end, w0 + window_entries<Sub>());
    int64_t i = w0;
    for (; i + 4 <= w1; i += 4) {
      for (int s = 0; s < 4; ++s) {
        const uint32_t raw = p[i + s] & K::kMask;
        bad |= raw >= K::kInf;
        const uint32_t u = (kForcedMask && forced[i + s]) ? K::kForced : raw;
        sub[s * kStride + (u >> K::kHighShift)]++;
      }
    }
    for (; i < w1; ++i) {
      const uint32_t raw = p[i] & K::kMask;
      bad |= raw >= K::kInf;
      sub[((kForcedMask && forced[i]) ? K::kForced : raw) >> K::kHighShift]++;
    }
    for (int64_t b = 0; b < kBins; ++b)
      hist[b] += HistCount{sub[b]} + sub[kStride + b] + sub[2 * kStride + b] + sub[3 * kStride + b];
    if (w1 < end) std::fill(sub.begin(), sub.end(), Sub{0});
  }
  return bad != 0;
}

// The smallest key and how often it occurs; returns whether any entry is NaN or Inf.
template <class K, bool kForcedMask>
bool smallest_key(const typename K::Bits* p, const uint8_t* forced, int64_t begin, int64_t end, uint32_t* smallest,
                  int64_t* count) {
  uint32_t bad = 0, m = 0xffffffffu;
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t raw = p[i] & K::kMask;
    bad |= raw >= K::kInf;
    m = std::min(m, (kForcedMask && forced[i]) ? K::kForced : raw);
  }
  int64_t n_m = 0;  // a second look at the chunk, from cache: two branch-free loops vectorise
  for (int64_t i = begin; i < end; ++i) n_m += key_at<K, kForcedMask>(p, forced, i) == m;
  *smallest = m;
  *count = n_m;
  return bad != 0;
}

// Histogram of the low 16 bits of the keys whose high digit is `high` (fp32 only).
template <class K, bool kForcedMask>
void low_digit_histogram(const typename K::Bits* p, const uint8_t* forced, int64_t begin, int64_t end,
                         uint32_t high, HistCount* hist) {
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t u = key_at<K, kForcedMask>(p, forced, i);
    if ((u >> 16) == high) hist[u & 0xffffu]++;
  }
}

// The bin holding the k-th largest key (k >= 1, k <= sum of total); `above` gets the
// number of keys in higher bins.
uint32_t find_bin(const std::vector<HistCount>& total, int64_t k, int64_t* above) {
  int64_t cum = 0;
  for (int64_t b = kBins - 1; b >= 0; --b) {
    if (cum + static_cast<int64_t>(total[b]) >= k) {
      *above = cum;
      return static_cast<uint32_t>(b);
    }
    cum += static_cast<int64_t>(total[b]);
  }
  *above = cum;  // unreachable for a valid k
  return 0;
}

std::vector<HistCount> merge(const std::vector<HistCount>& hists, int n_chunks) {
  std::vector<HistCount> total(kBins, 0);
  for (int c = 0; c < n_chunks; ++c)
    for (int64_t b = 0; b < kBins; ++b) total[b] += hists[c * kBins + b];
  return total;
}


// One read pass for a bracket [lo, hi] around the k-th key: counts keys above hi,
// collects the keys inside (in row-major order, per chunk), checks finiteness. Gives
// up collecting past `cap` keys (heavy ties), setting *overflow.
template <class K, bool kForcedMask>
bool bracket_pass(const typename K::Bits* p, const uint8_t* forced, int64_t begin, int64_t end, uint32_t lo,
                  uint32_t hi, size_t cap, int64_t* above, std::vector<uint32_t>* inside, bool* overflow) {
  const uint32_t width = hi - lo;  // u in [lo, hi]  <=>  u - lo <= width (unsigned)
  uint32_t bad = 0;
  int64_t n_above = 0;
  // Tiles of 32: a branch-free loop (it vectorises) counts the keys above and sets a bit for
  // each key inside; only the set bits are visited. (Re-reading a tile holding a key inside
  // with a branch per entry cost most of the pass: in a bracket around a density of 1/2 most
  // tiles hold one.)
  constexpr int64_t kTile = 32;
  int64_t t = begin;
  for (; t + kTile <= end; t += kTile) {
    uint32_t tile_above = 0, bits = 0;
    for (int64_t s = 0; s < kTile; ++s) {
      const uint32_t raw = p[t + s] & K::kMask;
      bad |= raw >= K::kInf;
      const uint32_t u = (kForcedMask && forced[t + s]) ? K::kForced : raw;
      tile_above += u > hi;
      bits |= static_cast<uint32_t>(u - lo <= width) << s;
    }
    n_above += tile_above;
    if (bits == 0 || *overflow) continue;
    if (inside->size() + __builtin_popcount(bits) > cap) {  // too many (heavy ties): give up on the bracket
      *overflow = true;
      inside->clear();
      continue;
    }
    for (; bits; bits &= bits - 1) inside->push_back(key_at<K, kForcedMask>(p, forced, t + __builtin_ctz(bits)));
  }
  for (; t < end; ++t) {
    const uint32_t raw = p[t] & K::kMask;
    bad |= raw >= K::kInf;
    const uint32_t u = (kForcedMask && forced[t]) ? K::kForced : raw;
    n_above += u > hi;
    if (u - lo > width || *overflow) continue;
    if (inside->size() + 1 > cap) {
      *overflow = true;
      inside->clear();
      continue;
    }
    inside->push_back(u);
  }
  *above = n_above;
  return bad != 0;
}

// Bracket [lo, hi] for the k-th largest key, from a strided sample: the sample's rank
// of k, widened by a few binomial standard deviations each way.
template <class K, bool kForcedMask>
void sample_bracket(const typename K::Bits* p, const uint8_t* forced, int64_t n, int64_t k, uint32_t* lo,
                    uint32_t* hi) {
  const int64_t size = std::min(kMaxSample, std::max(kMinSample, n / kSampleStride));
  std::vector<uint32_t> sample(size);
  // Entry s * n / size, stepped without a division per key (one took as long as the rest).
  const int64_t whole = n / size, part = n % size;
  for (int64_t s = 0, at = 0, carry = 0; s < size; ++s) {
    sample[s] = key_at<K, kForcedMask>(p, forced, at);
    at += whole;
    carry += part;
    if (carry >= size) {
      carry -= size;
      ++at;
    }
  }
  const double rank = static_cast<double>(k) * size / n;  // of the k-th largest, 1-based
  const double spread = 4.0 * std::sqrt(rank * (1.0 - rank / size)) + 16.0;
  const int64_t r_hi = static_cast<int64_t>(rank - spread), r_lo = static_cast<int64_t>(rank + spread);
  // The r_hi-th largest first; the r_lo-th (r_lo > r_hi) is then among the keys after it.
  auto from = sample.begin();
  auto largest = [&](int64_t r) {  // the r-th largest sample key (1-based)
    std::nth_element(from, sample.begin() + (r - 1), sample.end(), std::greater<uint32_t>());
    return sample[r - 1];
  };
  if (r_hi >= 1) {
    *hi = largest(r_hi);
    from = sample.begin() + r_hi;
  } else {
    *hi = 0xffffffffu;
  }
  *lo = r_lo <= size ? largest(r_lo) : 0u;
}

// Writes the plan for cutoff key `cutoff` with `above` keys greater than it and
// ties[c] keys equal to it in chunk c: the k - above tie slots go out in chunk order.
void write_plan(int64_t* plan, int64_t n_chunks, uint32_t cutoff, int64_t above, int64_t k, const int64_t* ties) {
  plan[kPlanCutoff] = cutoff;
  plan[kPlanGreater] = above;
  plan[kPlanTies] = k - above;
  plan[kPlanChunks] = n_chunks;
  int64_t left = k - above;
  for (int64_t c = 0; c < kTopkMaxChunks; ++c) {
    const int64_t in_chunk = c < n_chunks ? ties[c] : 0;
    const int64_t take = std::min(left, in_chunk);
    plan[kPlanQuota + c] = take;
    plan[kPlanChunkTies + c] = in_chunk;
    left -= take;
  }
}

// The bracket pass (see topk.h). Returns false, leaving the plan alone, when the bracket
// misses the k-th key or holds too many keys; *bad reports NaN/Inf either way.
template <class K, bool kForcedMask>
bool select_by_bracket(const typename K::Bits* p, int64_t rows, int64_t cols, const uint8_t* forced, int64_t k,
                       int64_t n_chunks, ParallelFor parallel_for, int64_t* plan, bool* bad) {
  const int64_t n = rows * cols;
  uint32_t lo = 0, hi = 0;
  sample_bracket<K, kForcedMask>(p, forced, n, k, &lo, &hi);
  std::vector<int64_t> above(n_chunks, 0);
  std::vector<std::vector<uint32_t>> inside(n_chunks);
  std::vector<char> bad_chunk(n_chunks, 0), overflow(n_chunks, 0);
  run_chunks(parallel_for, n_chunks, [&](int c) {
    const int64_t begin = chunk_row(rows, n_chunks, c) * cols, end = chunk_row(rows, n_chunks, c + 1) * cols;
    bool over = false;
    bad_chunk[c] = bracket_pass<K, kForcedMask>(p, forced, begin, end, lo, hi, static_cast<size_t>((end - begin) / 8),
                                                &above[c], &inside[c], &over);
    overflow[c] = over;
  });
  int64_t n_above = 0, n_inside = 0;
  bool overflowed = false;
  for (int64_t c = 0; c < n_chunks; ++c) {
    *bad |= bad_chunk[c] != 0;
    overflowed |= overflow[c] != 0;
    n_above += above[c];
    n_inside += static_cast<int64_t>(inside[c].size());
  }
  if (*bad || overflowed || n_above >= k || n_above + n_inside < k) return false;
  std::vector<uint32_t> all;
  all.reserve(n_inside);
  for (const auto& v : inside) all.insert(all.end(), v.begin(), v.end());
  const int64_t r = k - n_above;  // the r-th largest inside the bracket is the cutoff
  std::nth_element(all.begin(), all.begin() + (r - 1), all.end(), std::greater<uint32_t>());
  const uint32_t cutoff = all[r - 1];
  int64_t ties[kTopkMaxChunks] = {0};
  for (int64_t c = 0; c < n_chunks; ++c) {
    for (uint32_t u : inside[c]) {
      n_above += u > cutoff;
      ties[c] += u == cutoff;
    }
  }
  write_plan(plan, n_chunks, cutoff, n_above, k, ties);
  return true;
}

template <class K, bool kForcedMask, class Sub = SubCount>
TopkStatus select_impl(const typename K::Bits* p, int64_t rows, int64_t cols, const uint8_t* forced,
                       int64_t k, ParallelFor parallel_for, int64_t* plan) {
  const int64_t n = rows * cols;
  int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>({kTopkMaxChunks, rows, n / kMinChunkElements}));
  if (k == 0 || k == n) {  // nothing to select: one finiteness pass, which finds the smallest key
    std::vector<uint32_t> smallest(n_chunks);
    std::vector<int64_t> count(n_chunks, 0);
    std::vector<char> bad(n_chunks, 0);
    const int64_t nc = n_chunks;
    run_chunks(parallel_for, nc, [&](int c) {
      bad[c] = smallest_key<K, kForcedMask>(p, forced, chunk_row(rows, n_chunks, c) * cols,
                                            chunk_row(rows, n_chunks, c + 1) * cols, &smallest[c], &count[c]);
    });
    uint32_t m = 0xffffffffu;
    for (int c = 0; c < nc; ++c) {
      if (bad[c]) return kTopkNonFinite;
      m = std::min(m, smallest[c]);
    }
    int64_t ties[kTopkMaxChunks] = {0}, n_ties = 0;
    for (int c = 0; c < nc; ++c) n_ties += ties[c] = smallest[c] == m ? count[c] : 0;
    if (k == 0)  // a cutoff above every key: nothing is kept
      write_plan(plan, n_chunks, K::kForced + 1, 0, 0, ties);
    else  // the cutoff is the smallest key, and all its ties are kept
      write_plan(plan, n_chunks, m, n - n_ties, n, ties);
    return kTopkOk;
  }
  if (n >= kBracketMinElements) {
    bool bad = false;
    if (select_by_bracket<K, kForcedMask>(p, rows, cols, forced, k, n_chunks, parallel_for, plan, &bad))
      return kTopkOk;
    if (bad) return kTopkNonFinite;
  }
  n_chunks = std::min(n_chunks, kRadixChunks);
  const int64_t nc = n_chunks;
  // Radix select.
  std::vector<HistCount> hists(n_chunks * kBins, 0);
  std::vector<char> bad(n_chunks, 0);
  run_chunks(parallel_for, nc, [&](int c) {
    bad[c] = high_digit_histogram<K, kForcedMask, Sub>(p, forced, chunk_row(rows, n_chunks, c) * cols,
                                                       chunk_row(rows, n_chunks, c + 1) * cols, &hists[c * kBins]);
  });
  for (int c = 0; c < nc; ++c)
    if (bad[c]) return kTopkNonFinite;
  int64_t ties[kTopkMaxChunks] = {0};
  int64_t above = 0;
  uint32_t cutoff = find_bin(merge(hists, nc), k, &above);
  if (K::kHighShift > 0) {  // second digit, among the keys in the chosen high bin
    const uint32_t high = cutoff;
    std::fill(hists.begin(), hists.end(), HistCount{0});
    run_chunks(parallel_for, nc, [&](int c) {
      low_digit_histogram<K, kForcedMask>(p, forced, chunk_row(rows, n_chunks, c) * cols,
                                          chunk_row(rows, n_chunks, c + 1) * cols, high, &hists[c * kBins]);
    });
    int64_t above_low = 0;
    const uint32_t low = find_bin(merge(hists, nc), k - above, &above_low);
    cutoff = (high << 16) | low;
    above += above_low;
  }
  // The last histogram's bin, per chunk, counts that chunk's ties.
  for (int c = 0; c < nc; ++c) ties[c] = static_cast<int64_t>(hists[c * kBins + (cutoff & 0xffffu)]);
  write_plan(plan, n_chunks, cutoff, above, k, ties);
  return kTopkOk;
}

// Appends the columns of row's nonzeros to buf (from position listed on, growing it as
// needed) and their count to counts[r + 1]. Each group of 32 entries becomes a bit mask
// of its nonzeros (a loop the compiler vectorises), and only the set bits are visited:
// the cost follows the nonzeros, not the row's width.
template <class Bits, uint32_t kMask>
void list_row_impl(const Bits* row, int64_t cols, int64_t r, std::vector<int32_t>& buf, int64_t& listed,
                   int64_t* counts) {
  if (static_cast<int64_t>(buf.size()) < listed + cols) buf.resize(std::max<int64_t>(2 * buf.size(), listed + cols));
  int32_t* out = buf.data();
  int64_t n = listed;
  int64_t j0 = 0;
  for (; j0 + 32 <= cols; j0 += 32) {
    uint32_t bits = 0;
    for (int t = 0; t < 32; ++t) bits |= static_cast<uint32_t>((row[j0 + t] & kMask) != 0) << t;
    for (; bits; bits &= bits - 1) out[n++] = static_cast<int32_t>(j0 + __builtin_ctz(bits));
  }
  for (int64_t j = j0; j < cols; ++j) {
    out[n] = static_cast<int32_t>(j);
    n += (row[j] & kMask) != 0;
  }
  counts[r + 1] = n - listed;
  listed = n;
}

// The transposed index of a finished CSR, in index->col_ptr / row_idx: a counting sort by
// column over row ranges ("parts", each with its own column histogram, memory-capped), so
// rows stay ascending within a column.
void transpose_index(int64_t rows, int64_t cols, int64_t n_chunks, KeptIndex* index, ParallelFor parallel_for) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(n_chunks, (int64_t(1) << 24) / cols));
  std::vector<int64_t> starts(parts * cols, 0);
  const int64_t* row_ptr = index->row_ptr.data();
  const int32_t* col_idx = index->col_idx.data();
  run_chunks(parallel_for, parts, [&](int q) {
    int64_t* hist = &starts[q * cols];
    for (int64_t t = row_ptr[chunk_row(rows, parts, q)]; t < row_ptr[chunk_row(rows, parts, q + 1)]; ++t)
      hist[col_idx[t]]++;
  });
  index->col_ptr.assign(cols + 1, 0);
  for (int64_t j = 0; j < cols; ++j) {  // part q's entries of column j follow parts < q
    int64_t at = index->col_ptr[j];
    for (int64_t q = 0; q < parts; ++q) {
      const int64_t count = starts[q * cols + j];
      starts[q * cols + j] = at;
      at += count;
    }
    index->col_ptr[j + 1] = at;
  }
  index->row_idx.resize(index->col_idx.size());
  int32_t* row_idx = index->row_idx.data();
  run_chunks(parallel_for, parts, [&](int q) {
    int64_t* next = &starts[q * cols];
    for (int64_t r = chunk_row(rows, parts, q); r < chunk_row(rows, parts, q + 1); ++r)
      for (int64_t t = row_ptr[r]; t < row_ptr[r + 1]; ++t) row_idx[next[col_idx[t]]++] = static_cast<int32_t>(r);
  });
}

template <class K, bool kForcedMask>
int64_t apply_impl(typename K::Bits* p, int64_t rows, int64_t cols, const uint8_t* forced, const int64_t* plan,
                   int64_t block_out, int64_t block_in, int32_t* block_counts, KeptIndex* index,
                   ParallelFor parallel_for) {
  const int64_t n_chunks = plan[kPlanChunks];
  const uint32_t cutoff = static_cast<uint32_t>(plan[kPlanCutoff]);
  const bool per_block = block_out > 0;
  const int64_t seg = per_block ? block_in : cols;
  const int64_t n_block_cols = index::ceil_div(cols, seg);
  std::vector<int64_t> nonzeros(n_chunks, 0);
  // Each chunk counts into its own block rows' slice; a block row split between two
  // chunks is summed after the join.
  std::vector<std::vector<int32_t>> local(n_chunks);
  // With an index: each chunk lists its kept columns, row by row, in its own buffer.
  std::vector<std::vector<int32_t>> kept(index ? n_chunks : 0);
  if (index) index->row_ptr.assign(rows + 1, 0);
  const int64_t expected_kept = plan[kPlanGreater] + plan[kPlanTies];
  run_chunks(parallel_for, n_chunks, [&](int c) {
    const int64_t r0 = chunk_row(rows, n_chunks, c), r1 = chunk_row(rows, n_chunks, c + 1);
    int64_t budget = plan[kPlanQuota + c];
    // Most chunks keep all their ties or none: then keep exactly the keys >= keep_from.
    const bool split_ties = budget > 0 && budget < plan[kPlanChunkTies + c];
    const uint32_t keep_from = budget > 0 ? cutoff : cutoff + 1;
    int64_t nz_total = 0, listed = 0;
    // (In double: expected_kept * (r1 - r0) could pass 2^63.)
    if (index) kept[c].resize(static_cast<int64_t>(1.25 * static_cast<double>(expected_kept) * (r1 - r0) / rows) + cols);
    const int64_t br0 = per_block ? r0 / block_out : 0;
    if (per_block && r1 > r0) local[c].assign(((r1 - 1) / block_out - br0 + 1) * n_block_cols, 0);
    for (int64_t r = r0; r < r1; ++r) {
      typename K::Bits* row = p + r * cols;
      const uint8_t* frow = kForcedMask ? forced + r * cols : nullptr;
      for (int64_t bc = 0; bc < n_block_cols; ++bc) {
        const int64_t j0 = bc * seg, j1 = std::min(cols, j0 + seg);
        int64_t nz = 0;
        if (split_ties) {
          for (int64_t j = j0; j < j1; ++j) {
            const uint32_t u = key_at<K, kForcedMask>(row, frow, j);
            bool keep = u > cutoff;
            if (u == cutoff) {
              keep = budget > 0;
              budget -= keep;
            }
            const typename K::Bits v = keep ? row[j] : typename K::Bits(0);
            row[j] = v;
            nz += (v & K::kMask) != 0;
          }
        } else {  // branch-free, so it vectorises
          for (int64_t j = j0; j < j1; ++j) {
            const typename K::Bits v = key_at<K, kForcedMask>(row, frow, j) >= keep_from ? row[j] : typename K::Bits(0);
            row[j] = v;
            nz += (v & K::kMask) != 0;
          }
        }
        nz_total += nz;
        if (per_block) local[c][(r / block_out - br0) * n_block_cols + bc] += static_cast<int32_t>(nz);
      }
      if (index) list_row_impl<typename K::Bits, K::kMask>(row, cols, r, kept[c], listed, index->row_ptr.data());
    }
    nonzeros[c] = nz_total;
    if (index) kept[c].resize(listed);
  });
  int64_t total = 0;
  for (int64_t c = 0; c < n_chunks; ++c) total += nonzeros[c];
  if (index) {
    for (int64_t r = 0; r < rows; ++r) index->row_ptr[r + 1] += index->row_ptr[r];
    index->col_idx.resize(total);
    run_chunks(parallel_for, n_chunks, [&](int c) {
      std::copy(kept[c].begin(), kept[c].end(), index->col_idx.begin() + index->row_ptr[chunk_row(rows, n_chunks, c)]);
    });
    transpose_index(rows, cols, n_chunks, index, parallel_for);
  }
  if (per_block) {
    const int64_t n_block_rows = index::ceil_div(rows, block_out);
    std::fill(block_counts, block_counts + n_block_rows * n_block_cols, 0);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t br0 = chunk_row(rows, n_chunks, c) / block_out;
      for (size_t i = 0; i < local[c].size(); ++i) block_counts[br0 * n_block_cols + i] += local[c][i];
    }
  }
  return total;
}


// Inserts (u, at) into the descending list keys[0..m) (filled entries so far), keeping
// its m largest; an equal key does not displace an earlier one (ties: lowest index).
inline void offer(uint32_t u, int64_t at, uint32_t* keys, int64_t* where, int64_t m, int64_t* filled) {
  int64_t pos;
  if (*filled < m) {
    pos = (*filled)++;
  } else {
    if (u <= keys[m - 1]) return;
    pos = m - 1;
  }
  while (pos > 0 && keys[pos - 1] < u) {
    keys[pos] = keys[pos - 1];
    where[pos] = where[pos - 1];
    --pos;
  }
  keys[pos] = u;
  where[pos] = at;
}

// The m-th largest of values[0..n) (1 <= m <= n); scratch holds n. A few floors per row are the
// usual case: a descending list of the m largest so far, which most values fail to enter (one
// compare), beats nth_element's partitioning of a row's few dozen block maxima.
inline uint32_t mth_largest(const uint32_t* values, int64_t n, int64_t m, uint32_t* scratch) {
  if (m > 16) {
    std::copy(values, values + n, scratch);
    std::nth_element(scratch, scratch + (m - 1), scratch + n, std::greater<uint32_t>());
    return scratch[m - 1];
  }
  int64_t filled = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = values[i];
    if (filled == m && v <= scratch[m - 1]) continue;
    int64_t pos = filled < m ? filled++ : m - 1;
    for (; pos > 0 && scratch[pos - 1] < v; --pos) scratch[pos] = scratch[pos - 1];
    scratch[pos] = v;
  }
  return scratch[m - 1];
}

template <class K>
TopkStatus floors_impl(const typename K::Bits* p, int64_t rows, int64_t cols, int64_t min_per_row,
                       int64_t min_per_col, ParallelFor parallel_for, uint8_t* mask, int64_t* count,
                       uint32_t* min_key) {
  const int64_t n = rows * cols;
  std::fill(mask, mask + n, uint8_t(0));
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(kTopkMaxChunks, n / kMinChunkElements));
  std::vector<int64_t> counts(n_chunks, 0);
  std::vector<uint32_t> mins(n_chunks, 0xffffffffu);
  std::vector<char> bad(n_chunks, 0);
  auto mark = [&](int c, int64_t i, uint32_t u) {
    if (!mask[i]) {
      mask[i] = 1;
      counts[c]++;
      mins[c] = std::min(mins[c], u);
    }
  };
  if (min_per_row > 0) {  // each chunk owns whole rows
    const int64_t m = std::min(min_per_row, cols);
    run_chunks(parallel_for, std::min(n_chunks, rows), [&](int c) {
      const int64_t nc = std::min(n_chunks, rows);
      std::vector<uint32_t> keys(m);
      std::vector<int64_t> where(m);
      const int64_t n_blocks = index::ceil_div(cols, int64_t(32));
      std::vector<uint32_t> maxima(n_blocks), ranked(n_blocks);
      uint32_t bad_bits = 0;
      for (int64_t r = chunk_row(rows, nc, c); r < chunk_row(rows, nc, c + 1); ++r) {
        int64_t filled = 0;
        const typename K::Bits* row = p + r * cols;
        // The m largest keys of a row lie in blocks (of 32 columns) whose maximum is at least
        // `bound`, the m-th largest block maximum, and are themselves at least `bound` (the m
        // block maxima above it are m distinct keys). So: one branch-free pass (it vectorises,
        // and checks for non-finite entries) takes every block's maximum; in the blocks that
        // reach the bound, a second sets a bit for each key that does, and only those, in
        // column order, go through `offer` (equal keys never displace earlier ones: ties keep
        // the lowest index). Offering a block's keys whenever its maximum could enter the list
        // so far, as before, offered most blocks of a 512-wide row, with a mispredicted branch
        // per entry: 19 ms for the demo's 12.7 M weights, against 4 ms for a read pass.
        for (int64_t b = 0; b < n_blocks; ++b) {
          const int64_t j0 = b * 32, j1 = std::min(cols, j0 + 32);
          uint32_t block_max = 0;
          for (int64_t j = j0; j < j1; ++j) {
            const uint32_t u = row[j] & K::kMask;
            block_max = std::max(block_max, u);
            bad_bits |= u >= K::kInf;
          }
          maxima[b] = block_max;
        }
        uint32_t bound = 0;
        if (n_blocks > m) bound = mth_largest(maxima.data(), n_blocks, m, ranked.data());
        for (int64_t b = 0; b < n_blocks; ++b) {
          if (maxima[b] < bound) continue;
          const int64_t j0 = b * 32, j1 = std::min(cols, j0 + 32);
          uint32_t bits = 0;  // keys are below 2^31 (the sign cleared): a signed compare vectorises
          for (int64_t j = j0; j < j1; ++j)
            bits |= static_cast<uint32_t>(static_cast<int32_t>(row[j] & K::kMask) >=
                                          static_cast<int32_t>(bound)) << (j - j0);
          for (; bits; bits &= bits - 1) {
            const int64_t j = j0 + __builtin_ctz(bits);
            offer(row[j] & K::kMask, j, keys.data(), where.data(), m, &filled);
          }
        }
        for (int64_t t = 0; t < filled; ++t) mark(c, r * cols + where[t], keys[t]);
      }
      bad[c] |= bad_bits != 0;
    });
  }
  if (min_per_col > 0) {  // each chunk owns a range of columns, walked down all rows
    const int64_t m = std::min(min_per_col, rows);
    const int64_t nc = std::min(n_chunks, cols);
    run_chunks(parallel_for, nc, [&](int c) {
      const int64_t j0 = chunk_row(cols, nc, c), j1 = chunk_row(cols, nc, c + 1), w = j1 - j0;
      std::vector<uint32_t> keys(w * m);
      std::vector<int64_t> where(w * m), filled(w, 0);
      uint32_t bad_bits = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = j0; j < j1; ++j) {
          const uint32_t u = p[r * cols + j] & K::kMask;
          bad_bits |= u >= K::kInf;
          const int64_t q = j - j0;
          if (filled[q] < m || u > keys[q * m + m - 1]) offer(u, r, &keys[q * m], &where[q * m], m, &filled[q]);
        }
      }
      for (int64_t q = 0; q < w; ++q)
        for (int64_t t = 0; t < filled[q]; ++t) mark(c, where[q * m + t] * cols + j0 + q, keys[q * m + t]);
      bad[c] |= bad_bits != 0;
    });
  }
  for (int64_t c = 0; c < n_chunks; ++c) {
    if (bad[c]) return kTopkNonFinite;
  }
  int64_t total = 0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    total += counts[c];
    if (counts[c]) *min_key = std::min(*min_key, mins[c]);
  }
  *count = total;
  return kTopkOk;
}

template <class K>
TopkStatus select_dispatch(const void* data, int64_t rows, int64_t cols, const uint8_t* forced, int64_t k,
                           ParallelFor parallel_for, int64_t* plan) {
  const auto* p = static_cast<const typename K::Bits*>(data);
  return forced ? select_impl<K, true>(p, rows, cols, forced, k, parallel_for, plan)
                : select_impl<K, false>(p, rows, cols, forced, k, parallel_for, plan);
}

template <class K>
int64_t apply_dispatch(void* data, int64_t rows, int64_t cols, const uint8_t* forced, const int64_t* plan,
                       int64_t block_out, int64_t block_in, int32_t* block_counts, KeptIndex* index,
                       ParallelFor parallel_for) {
  auto* p = static_cast<typename K::Bits*>(data);
  return forced ? apply_impl<K, true>(p, rows, cols, forced, plan, block_out, block_in, block_counts, index,
                                      parallel_for)
                : apply_impl<K, false>(p, rows, cols, forced, plan, block_out, block_in, block_counts, index,
                                       parallel_for);
}

}  // namespace

// The entry points of topk.h for this instruction set; topk.cpp checks the arguments.
TopkStatus select(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced, int64_t k,
                  ParallelFor parallel_for, int64_t* plan) {
  switch (dtype) {
    case kTopkF32: return select_dispatch<F32Keys>(data, rows, cols, forced, k, parallel_for, plan);
    case kTopkF16: return select_dispatch<F16Keys>(data, rows, cols, forced, k, parallel_for, plan);
    case kTopkBF16: return select_dispatch<BF16Keys>(data, rows, cols, forced, k, parallel_for, plan);
  }
  return kTopkBadArgument;
}

TopkStatus floors(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, int64_t min_per_row,
                  int64_t min_per_col, ParallelFor parallel_for, uint8_t* mask, int64_t* count, uint32_t* min_key) {
  switch (dtype) {
    case kTopkF32:
      return floors_impl<F32Keys>(static_cast<const uint32_t*>(data), rows, cols, min_per_row, min_per_col,
                                  parallel_for, mask, count, min_key);
    case kTopkF16:
      return floors_impl<F16Keys>(static_cast<const uint16_t*>(data), rows, cols, min_per_row, min_per_col,
                                  parallel_for, mask, count, min_key);
    case kTopkBF16:
      return floors_impl<BF16Keys>(static_cast<const uint16_t*>(data), rows, cols, min_per_row, min_per_col,
                                   parallel_for, mask, count, min_key);
  }
  return kTopkBadArgument;
}

int64_t apply(void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced, const int64_t* plan,
              int64_t block_out, int64_t block_in, int32_t* block_counts, KeptIndex* index,
              ParallelFor parallel_for) {
  switch (dtype) {
    case kTopkF32:
      return apply_dispatch<F32Keys>(data, rows, cols, forced, plan, block_out, block_in, block_counts, index,
                                     parallel_for);
    case kTopkF16:
      return apply_dispatch<F16Keys>(data, rows, cols, forced, plan, block_out, block_in, block_counts, index,
                                     parallel_for);
    case kTopkBF16:
      return apply_dispatch<BF16Keys>(data, rows, cols, forced, plan, block_out, block_in, block_counts, index,
                                      parallel_for);
  }
  return -1;
}

}  // namespace SK_TOPK_NS
}  // namespace cpu
}  // namespace sparsekern
