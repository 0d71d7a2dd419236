// where(mask, t, 0) bit for bit (zero_outside.h). Each word is and-ed with all ones or all zeros
// from its mask byte: no branch to mispredict on a random mask, and a loop the compiler vectorises
// at the baseline instruction set, enough for a pass bound by memory (1 + w bytes read and w
// written per entry, where torch's product of the bits by a bool mask first converts the mask to
// w-byte integers, and torch's CPU where branches on every entry).
#include "zero_outside.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sparsekern {
namespace cpu {
namespace {

template <class Word>
void zero_outside_as(const void* src, const uint8_t* kept, void* dst, int64_t begin, int64_t end) {
  const Word* __restrict__ s = static_cast<const Word*>(src);
  Word* __restrict__ d = static_cast<Word*>(dst);
  for (int64_t i = begin; i < end; ++i) d[i] = s[i] & static_cast<Word>(Word{0} - static_cast<Word>(kept[i] != 0));
}

// 32 entries at a time become a mask of the kept ones (a loop that vectorises), and only its set
// bits are visited: the cost follows the kept entries, not a mispredicted branch per entry.
inline uint32_t kept_mask(const uint8_t* kept, int64_t i) {
#if defined(__SSE2__)  // the x86-64 baseline: two compares and byte masks (the compiler's loop did not vectorise)
  const __m128i zero = _mm_setzero_si128();
  const auto low = static_cast<uint32_t>(_mm_movemask_epi8(
      _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kept + i)), zero)));
  const auto high = static_cast<uint32_t>(_mm_movemask_epi8(
      _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kept + i + 16)), zero)));
  return ~(low | high << 16);
#else
  uint32_t mask = 0;
  for (int j = 0; j < 32; ++j) mask |= static_cast<uint32_t>(kept[i + j] != 0) << j;
  return mask;
#endif
}

template <class Word>
int64_t pack_kept_as(const void* src, const uint8_t* kept, void* packed, int64_t begin, int64_t end) {
  const Word* __restrict__ s = static_cast<const Word*>(src);
  Word* __restrict__ p = static_cast<Word*>(packed);
  int64_t n = 0, i = begin;
  for (; i + 32 <= end; i += 32)
    for (uint32_t mask = kept_mask(kept, i); mask != 0; mask &= mask - 1) p[n++] = s[i + __builtin_ctz(mask)];
  for (; i < end; ++i)
    if (kept[i]) p[n++] = s[i];
  return n;
}

template <class Word>
void expand_kept_as(const void* packed, const uint8_t* kept, void* dst, int64_t begin, int64_t end) {
  const Word* __restrict__ p = static_cast<const Word*>(packed);
  Word* __restrict__ d = static_cast<Word*>(dst);
  int64_t n = 0, i = begin;
  for (; i + 32 <= end; i += 32) {
    for (int j = 0; j < 32; ++j) d[i + j] = Word{0};
    for (uint32_t mask = kept_mask(kept, i); mask != 0; mask &= mask - 1) d[i + __builtin_ctz(mask)] = p[n++];
  }
  for (; i < end; ++i) d[i] = kept[i] ? p[n++] : Word{0};
}

// Calls f(Word{}) with the unsigned word of `word_bytes` bytes; false for another size.
template <class F>
bool by_word(int64_t word_bytes, const F& f) {
  switch (word_bytes) {
    case 1: f(uint8_t{}); return true;
    case 2: f(uint16_t{}); return true;
    case 4: f(uint32_t{}); return true;
    case 8: f(uint64_t{}); return true;
  }
  return false;
}

}  // namespace

int64_t pack_kept(const void* src, const uint8_t* kept, void* packed, int64_t begin, int64_t end, int64_t word_bytes) {
  int64_t count = -1;
  by_word(word_bytes, [&](auto word) {
    count = pack_kept_as<decltype(word)>(src, kept, packed, begin, end);
  });
  return count;
}

bool expand_kept(const void* packed, const uint8_t* kept, void* dst, int64_t begin, int64_t end, int64_t word_bytes) {
  return by_word(word_bytes, [&](auto word) { expand_kept_as<decltype(word)>(packed, kept, dst, begin, end); });
}

bool zero_outside(const void* src, const uint8_t* kept, void* dst, int64_t begin, int64_t end, int64_t word_bytes) {
  return by_word(word_bytes, [&](auto word) { zero_outside_as<decltype(word)>(src, kept, dst, begin, end); });
}

}  // namespace cpu
}  // namespace sparsekern
