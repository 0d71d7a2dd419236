// The counters of the CPU top-k select (csrc/cpu/topk_kernels.h) cannot wrap: run with 8-bit
// sub-histogram counters (SubCount is 32-bit in the build), which wrap after 255 counts, the
// first digit's histogram and the whole radix select must still count every entry of a chunk
// far larger than that, as the 32-bit ones must for chunks of 2^32 entries and more (issue 13:
// an 8 GiB bf16 weight kept every entry). The bins themselves are 64-bit; find_bin is checked
// with bins above 2^32. tests/test_entry_points.py builds and runs this; it prints "ok".
#define SK_TOPK_NS counts_check
#include "../../csrc/cpu/topk_kernels.h"

#include <cstdio>
#include <cstring>
#include <vector>

using namespace sparsekern::cpu;
using namespace sparsekern::cpu::counts_check;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}

uint16_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

int main() {
  static_assert(sizeof(HistCount) == 8, "histogram bins must be 64-bit");
  // One chunk of 100003 keys: 70001 equal (one bin), the rest spread over a few bins.
  const int64_t n = 100003;
  std::vector<uint16_t> w(n);
  std::vector<uint64_t> expected(kBins, 0);
  for (int64_t i = 0; i < n; ++i) {
    w[i] = i % 10 < 7 ? bf16_bits(0.5f) : bf16_bits(static_cast<float>(1 + i % 5));
    expected[w[i] & 0x7fff]++;
  }
  std::vector<HistCount> hist(kBins, 12345);  // overwritten, not added to
  const bool bad = high_digit_histogram<BF16Keys, false, uint8_t>(w.data(), nullptr, 0, n, hist.data());
  expect(!bad, "finite keys reported as NaN/Inf");
  expect(hist == expected, "8-bit sub-counters: the first digit's histogram lost counts");

  // The whole select (radix path: one row, all of it one chunk) with 8-bit sub-counters, against
  // the build's 32-bit ones and against the count itself. k in the tied bin: all its ties
  // before, k - greater of them kept.
  const uint32_t tied = bf16_bits(0.5f);
  int64_t greater = 0;
  for (int64_t i = 0; i < n; ++i) greater += (w[i] & 0x7fff) > tied;
  for (int64_t k : {greater + 1, greater + 5000, n - 1}) {
    std::vector<int64_t> narrow(kTopkPlanLength), wide(kTopkPlanLength);
    expect(select_impl<BF16Keys, false, uint8_t>(w.data(), 1, n, nullptr, k, nullptr, narrow.data()) == kTopkOk,
           "select (8-bit) failed");
    expect(select_impl<BF16Keys, false>(w.data(), 1, n, nullptr, k, nullptr, wide.data()) == kTopkOk,
           "select (32-bit) failed");
    expect(narrow == wide, "8-bit and 32-bit sub-counters planned differently");
    expect(narrow[kPlanCutoff] == tied && narrow[kPlanGreater] == greater && narrow[kPlanTies] == k - greater,
           "the plan does not keep exactly k entries");
  }

  // Bins above 2^32: the cumulative count is 64-bit.
  std::vector<HistCount> total(kBins, 0);
  total[kBins - 1] = (uint64_t{1} << 32) + 7;
  total[3] = uint64_t{5} << 32;
  int64_t above = -1;
  expect(find_bin(total, (int64_t{1} << 32) + 8, &above) == 3 && above == (int64_t{1} << 32) + 7,
         "find_bin with bins above 2^32");
  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
