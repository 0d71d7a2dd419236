"""Launchers of the Triton top-k projection (kernels: ``topk_kernels.py``).

``topk_select`` (read-only): a radix select, 8 bits a pass from the top (four passes for
fp32 keys, two for fp16/bf16), each a histogram kernel plus a one-program kernel that
picks the digit on the device, so nothing waits for the host; then per-program tie
counts and their exclusive scan. ``topk_apply``: one write pass.

Counts: a program counts at most ``BLOCK_C`` keys (int32), but the global histogram, the tie
scan and the nonzeros count the whole weight, 2^31 entries or more on a large GPU: ``COUNT``
(int64).
"""

from __future__ import annotations

import torch
import triton
from torch.autograd.graph import increment_version

from ..keys import FORCED_KEY
from .topk_kernels import _topk_apply_kernel, _topk_hist_kernel, _topk_pick_kernel, _topk_ties_kernel

_KEY_BITS = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16}
# Columns per program: a power of two from 128 (the widest block side, so a program
# always covers whole layout blocks) to 1024.
MIN_BLOCK_C, MAX_BLOCK_C = 128, 1024
COUNT = torch.int64  # the global histogram's, the tie scan's and the nonzero count's type


class TritonPlan:
    """What ``topk_apply`` needs: the selection state on the device and the tie scan."""

    def __init__(self, state, ties_before, block_c):
        self.state, self.ties_before, self.block_c = state, ties_before, block_c


def topk_select(weight: torch.Tensor, k: int, forced: torch.Tensor | None) -> TritonPlan:
    rows, cols = weight.shape
    key_bits = _KEY_BITS[weight.dtype]
    block_c = max(MIN_BLOCK_C, min(MAX_BLOCK_C, triton.next_power_of_2(cols)))
    grid = (rows, triton.cdiv(cols, block_c))
    common = dict(HAS_FORCED=forced is not None, KEY_BITS=key_bits, BLOCK_C=block_c)
    forced_arg = forced if forced is not None else weight
    state = torch.zeros(2, dtype=torch.int64, device=weight.device)
    ties_before = torch.zeros(grid[0] * grid[1], dtype=COUNT, device=weight.device)
    if k == 0:  # no key above the floor key and no tie slot: nothing kept (F is empty)
        state[0] = FORCED_KEY[weight.dtype]
        return TritonPlan(state, ties_before, block_c)
    state[1] = k
    hist = torch.zeros(256, dtype=COUNT, device=weight.device)
    for shift in range(key_bits - 8, -1, -8):
        _topk_hist_kernel[grid](weight, forced_arg, hist, state, cols, weight.stride(0), weight.stride(1),
                                SHIFT=shift, FIRST=shift == key_bits - 8, **common)
        _topk_pick_kernel[(1,)](hist, state)
    ties = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=weight.device)
    _topk_ties_kernel[grid](weight, forced_arg, ties, state, cols, weight.stride(0), weight.stride(1), **common)
    torch.cumsum(ties[:-1], 0, out=ties_before[1:])
    return TritonPlan(state, ties_before, block_c)


def topk_apply(weight: torch.Tensor, forced: torch.Tensor | None, plan: TritonPlan, block_size):
    """Returns (cutoff key, nonzeros left, per-block nonzeros or None)."""
    rows, cols = weight.shape
    bo, bi = block_size if block_size is not None else (1, 1)
    n_block_rows, n_block_cols = triton.cdiv(rows, bo), triton.cdiv(cols, bi)
    counts = torch.zeros((n_block_rows, n_block_cols) if block_size is not None else (1,), dtype=torch.int32,
                         device=weight.device)
    nnz = torch.zeros(1, dtype=COUNT, device=weight.device)
    grid = (rows, triton.cdiv(cols, plan.block_c))
    _topk_apply_kernel[grid](
        weight, forced if forced is not None else weight, plan.ties_before, plan.state, counts, nnz,
        cols, weight.stride(0), weight.stride(1), n_block_cols,
        HAS_FORCED=forced is not None, KEY_BITS=_KEY_BITS[weight.dtype], BLOCK_C=plan.block_c,
        COUNT_BLOCKS=block_size is not None, BLOCK_OUT=bo, BLOCK_IN=bi,
    )
    increment_version(weight)  # an in-place write, as torch's own would count it
    return int(plan.state[0]), int(nnz), counts if block_size is not None else None
