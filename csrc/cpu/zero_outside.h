// where(mask, t, 0) bit for bit: the dense format's masked weight, AbsTopK's backward (the gradient
// where kept) and the GELU-AbsTopK backward's last step. Torch-free; csrc/bindings.cpp wraps it.
#pragma once

#include <cstdint>

namespace sparsekern {
namespace cpu {

// dst[i] = kept[i] ? src[i] : 0 (all bits zero: +0 for floats) for begin <= i < end, entries of
// word_bytes = 1, 2, 4 or 8 bytes; kept holds bytes, nonzero meaning kept. Returns false (writing
// nothing) for another word size.
bool zero_outside(const void* src, const uint8_t* kept, void* dst, int64_t begin, int64_t end, int64_t word_bytes);

// The kept entries of src[begin, end) packed, in order, into packed[0, count); returns count (-1 for
// another word size). expand_kept is its inverse with zeros: dst[i] for begin <= i < end is the
// next packed entry where kept[i], all bits zero elsewhere. Together they let an elementwise
// function run on the kept entries only (the GELU-AbsTopK backward: a quarter of them).
int64_t pack_kept(const void* src, const uint8_t* kept, void* packed, int64_t begin, int64_t end, int64_t word_bytes);
bool expand_kept(const void* packed, const uint8_t* kept, void* dst, int64_t begin, int64_t end, int64_t word_bytes);

}  // namespace cpu
}  // namespace sparsekern
