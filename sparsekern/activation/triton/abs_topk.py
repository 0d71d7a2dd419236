"""The AbsTopK kernel: per row of ``x[rows, n]``, keep the ``k`` entries of largest magnitude
(bitwise), zero the rest, and say which were kept (launcher: ``sparsekern/activation/backends/triton.py``).

One program per row. An entry's key is ``|x|``'s bit pattern as an int (monotone in ``|x|`` for
IEEE floats, ``-0`` and ``+0`` alike), every NaN mapped to one key above ``inf``'s, so NaNs rank
first and tie among themselves. A radix select from the top, 8 bits a pass (four passes for
fp32 keys, two for fp16/bf16), each a 256-bin ``tl.histogram`` of the digit over the keys whose
higher digits match the prefix chosen so far, finds the ``k``-th largest key (the threshold)
and how many of the keys equal to it to keep; one write pass then keeps the keys above it and
the first of those equal to it, lowest index first (a running ``tl.cumsum`` over the row).

``ONE_CHUNK``: the whole row is one block of ``BLOCK_N`` (a power of two >= n, up to
``MAX_ONE_CHUNK``), loaded once and kept in registers through every pass; longer rows are walked
``BLOCK_N`` = ``LOOP_BLOCK`` at a time, each pass reading the row again (from L2, mostly).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows up to this long are held in registers for the whole select; longer ones loop.
MAX_ONE_CHUNK = 4096
LOOP_BLOCK = 2048
KEY_BITS = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16}


def abs_topk_config(n: int, dtype: torch.dtype) -> dict:
    """Launch sizes for rows of length ``n`` (untuned: no GPU has timed them): at most 16 entries a
    thread, in one chunk (up to 8 warps for 4096) or in the loop (4 warps for 2048). ptxas -v for the
    two the ahead-of-time check compiles (sparsekern/triton/aot.py): 72-96 registers under triton 3.8,
    71-159 under 3.6 (the GPU machine's), no spills; 8192 in one chunk (16 warps) reaches the 128
    registers that 16 warps allow and spills under 3.6 on sm_80."""
    if n <= MAX_ONE_CHUNK:
        block = max(128, triton.next_power_of_2(n))
        return dict(BLOCK_N=block, ONE_CHUNK=True, KEY_BITS=KEY_BITS[dtype],
                    num_warps=max(1, min(8, block // 512)), num_stages=1)
    return dict(BLOCK_N=LOOP_BLOCK, ONE_CHUNK=False, KEY_BITS=KEY_BITS[dtype], num_warps=4, num_stages=1)


@triton.jit
def _abs_topk_load(x_ptr, base, start, n, KEY_BITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Entries [start, start + BLOCK_N) of the row at ``base``: offsets, validity, bits, keys."""
    offs = start + tl.arange(0, BLOCK_N)
    valid = offs < n
    x = tl.load(x_ptr + base + offs, mask=valid, other=0.0)
    if KEY_BITS == 32:
        bits = x.to(tl.int32, bitcast=True)
        key = bits & 0x7FFFFFFF
        key = tl.where(x != x, 0x7FFFFFFF, key)  # every NaN one key, above inf (0x7F800000)
    else:
        bits = x.to(tl.int16, bitcast=True)
        key = bits.to(tl.int32) & 0x7FFF
        key = tl.where(x != x, 0x7FFF, key)
    return offs, valid, bits, key


@triton.jit
def _abs_topk_digits(key, valid, prefix, SHIFT: tl.constexpr, FIRST: tl.constexpr):
    """256-bin histogram of the digit at SHIFT of the valid keys whose higher digits are ``prefix``."""
    if FIRST:
        sel = valid
    else:
        sel = valid & ((key >> (SHIFT + 8)) == prefix)
    return tl.histogram((key >> SHIFT) & 255, 256, mask=sel)


@triton.jit
def _abs_topk_kernel(x_ptr, values_ptr, kept_ptr, n, k,
                     KEY_BITS: tl.constexpr, BLOCK_N: tl.constexpr, ONE_CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * n
    bins = tl.arange(0, 256)
    if ONE_CHUNK:
        offs, valid, bits, key = _abs_topk_load(x_ptr, base, 0, n, KEY_BITS, BLOCK_N)
    # The select: after the pass at SHIFT, `prefix` holds the threshold's digits above SHIFT and
    # `remaining` how many keys with that prefix are still to keep (1 <= remaining <= their count).
    prefix = 0
    remaining = k
    for p in tl.static_range(KEY_BITS // 8):
        shift = KEY_BITS - 8 * (p + 1)  # a constexpr, as p is
        if ONE_CHUNK:
            hist = _abs_topk_digits(key, valid, prefix, shift, p == 0)
        else:
            hist = tl.zeros([256], dtype=tl.int32)
            for start in range(0, n, BLOCK_N):
                _, c_valid, _, c_key = _abs_topk_load(x_ptr, base, start, n, KEY_BITS, BLOCK_N)
                hist += _abs_topk_digits(c_key, c_valid, prefix, shift, p == 0)
        at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # keys of this prefix with digit >= b
        digit = tl.sum((at_least >= remaining).to(tl.int32), 0) - 1
        above = tl.sum(tl.where(bins > digit, hist, 0), 0)
        prefix = prefix * 256 + digit  # k = 0 leaves garbage here: nothing is kept below
        remaining = remaining - above
    # The write pass: keys above the threshold, and the first `remaining` equal to it.
    if ONE_CHUNK:
        ties = valid & (key == prefix)
        rank = tl.cumsum(ties.to(tl.int32), 0)
        keep = valid & ((key > prefix) | (ties & (rank <= remaining))) & (k > 0)
        tl.store(values_ptr + base + offs, tl.where(keep, bits, 0).to(bits.dtype).to(x_ptr.dtype.element_ty,
                                                                                      bitcast=True), mask=valid)
        tl.store(kept_ptr + base + offs, keep, mask=valid)
    else:
        before = 0  # ties in the chunks before this one
        for start in range(0, n, BLOCK_N):
            c_offs, c_valid, c_bits, c_key = _abs_topk_load(x_ptr, base, start, n, KEY_BITS, BLOCK_N)
            ties = c_valid & (c_key == prefix)
            t32 = ties.to(tl.int32)
            rank = before + tl.cumsum(t32, 0)
            keep = c_valid & ((c_key > prefix) | (ties & (rank <= remaining))) & (k > 0)
            out = tl.where(keep, c_bits, 0).to(c_bits.dtype).to(x_ptr.dtype.element_ty, bitcast=True)
            tl.store(values_ptr + base + c_offs, out, mask=c_valid)
            tl.store(kept_ptr + base + c_offs, keep, mask=c_valid)
            before += tl.sum(t32, 0)
