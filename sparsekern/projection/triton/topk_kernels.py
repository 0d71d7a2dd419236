"""Triton kernels of the top-k projection (launchers: ``topk_launch.py``).

Every kernel runs on the same grid: one program per ``BLOCK_C`` columns of one row, so
program ids run in row-major order and per-program tie counts, scanned, give each
program its first tie's row-major rank. Keys are ``|w|``'s bit pattern as an int
(monotone in ``|w|`` for non-negative floats), ``FORCED_KEY`` for floor entries.
"""

import triton
import triton.language as tl


@triton.jit
def _keys(w_ptr, forced_ptr, row, cols, stride_r, stride_c, pid_c,
          HAS_FORCED: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's entries (pointers, validity, values) and their keys."""
    offs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    valid = offs < cols
    ptrs = w_ptr + row.to(tl.int64) * stride_r + offs.to(tl.int64) * stride_c
    w = tl.load(ptrs, mask=valid, other=0.0)
    if KEY_BITS == 32:
        key = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        forced_key = 0x7FFFFFFF
    else:
        key = w.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
        forced_key = 0x7FFF
    if HAS_FORCED:
        f = tl.load(forced_ptr + row.to(tl.int64) * cols + offs, mask=valid, other=0)
        key = tl.where(f != 0, forced_key, key)
    return ptrs, valid, w, key


@triton.jit
def _topk_hist_kernel(w_ptr, forced_ptr, hist_ptr, state_ptr, cols, stride_r, stride_c,
                      SHIFT: tl.constexpr, FIRST: tl.constexpr, HAS_FORCED: tl.constexpr,
                      KEY_BITS: tl.constexpr, BLOCK_C: tl.constexpr):
    # 256-bin histogram of the digit at SHIFT, over the keys whose higher digits equal
    # the prefix chosen so far (state[0]).
    row = tl.program_id(0)
    pid_c = tl.program_id(1)
    _, valid, _, key = _keys(w_ptr, forced_ptr, row, cols, stride_r, stride_c, pid_c,
                             HAS_FORCED, KEY_BITS, BLOCK_C)
    if FIRST:
        sel = valid
    else:
        prefix = tl.load(state_ptr).to(tl.int32)
        sel = valid & ((key >> (SHIFT + 8)) == prefix)
    digit = (key >> SHIFT) & 255
    counts = tl.histogram(digit, 256, mask=sel)  # at most BLOCK_C: int32 is enough here
    bins = tl.arange(0, 256)
    # The global bins count the whole weight: 64-bit (hist is int64).
    tl.atomic_add(hist_ptr + bins, counts.to(tl.int64), mask=counts > 0)


@triton.jit
def _topk_pick_kernel(hist_ptr, state_ptr):
    # One program: the digit holding the remaining-th largest key. state = [prefix,
    # remaining]: afterwards prefix gains the digit and remaining counts from its top.
    bins = tl.arange(0, 256)
    h = tl.load(hist_ptr + bins).to(tl.int64)
    remaining = tl.load(state_ptr + 1)
    at_least = tl.sum(h) - tl.cumsum(h, 0) + h  # keys with digit >= b
    digit = tl.sum((at_least >= remaining).to(tl.int32)) - 1
    above = tl.sum(tl.where(bins > digit, h, 0))
    prefix = tl.load(state_ptr)
    tl.store(state_ptr, prefix * 256 + digit)
    tl.store(state_ptr + 1, remaining - above)
    tl.store(hist_ptr + bins, tl.zeros_like(h))  # ready for the next digit


@triton.jit
def _topk_ties_kernel(w_ptr, forced_ptr, ties_ptr, state_ptr, cols, stride_r, stride_c,
                      HAS_FORCED: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK_C: tl.constexpr):
    # Per program: how many keys equal the cutoff (state[0]).
    row = tl.program_id(0)
    pid_c = tl.program_id(1)
    _, valid, _, key = _keys(w_ptr, forced_ptr, row, cols, stride_r, stride_c, pid_c,
                             HAS_FORCED, KEY_BITS, BLOCK_C)
    cutoff = tl.load(state_ptr).to(tl.int32)
    n = tl.sum((valid & (key == cutoff)).to(tl.int32))
    tl.store(ties_ptr + row * tl.num_programs(1) + pid_c, n)


@triton.jit
def _topk_apply_kernel(w_ptr, forced_ptr, ties_before_ptr, state_ptr, counts_ptr, nnz_ptr,
                       cols, stride_r, stride_c, n_block_cols,
                       HAS_FORCED: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK_C: tl.constexpr,
                       COUNT_BLOCKS: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr):
    # Keeps keys above the cutoff and the first state[1] keys equal to it (row-major),
    # zeroes the rest, counts the nonzeros left (per block when COUNT_BLOCKS).
    row = tl.program_id(0)
    pid_c = tl.program_id(1)
    ptrs, valid, w, key = _keys(w_ptr, forced_ptr, row, cols, stride_r, stride_c, pid_c,
                                HAS_FORCED, KEY_BITS, BLOCK_C)
    cutoff = tl.load(state_ptr).to(tl.int32)
    tie_slots = tl.load(state_ptr + 1)
    ties = valid & (key == cutoff)
    rank = tl.load(ties_before_ptr + row * tl.num_programs(1) + pid_c) + tl.cumsum(ties.to(tl.int64), 0)
    keep = valid & ((key > cutoff) | (ties & (rank <= tie_slots)))
    tl.store(ptrs, tl.where(keep, w, tl.zeros_like(w)), mask=valid)
    if KEY_BITS == 32:
        magnitude = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    else:
        magnitude = w.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    nonzero = (keep & (magnitude != 0)).to(tl.int32)
    tl.atomic_add(nnz_ptr, tl.sum(nonzero).to(tl.int64))
    if COUNT_BLOCKS:
        per_block = tl.sum(tl.reshape(nonzero, (BLOCK_C // BLOCK_IN, BLOCK_IN)), 1)
        block_col = pid_c * (BLOCK_C // BLOCK_IN) + tl.arange(0, BLOCK_C // BLOCK_IN)
        tl.atomic_add(counts_ptr + (row // BLOCK_OUT) * n_block_cols + block_col, per_block,
                      mask=(block_col < n_block_cols) & (per_block > 0))
