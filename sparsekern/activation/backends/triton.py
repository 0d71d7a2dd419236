"""AbsTopK backend "triton": the kernel of ``sparsekern/activation/triton/abs_topk.py``, one program
per row (a radix select of the k-th largest magnitude, then one write pass).

The device rules of every "triton" backend (``sparsekern.backend.TritonRules``): CUDA tensors, and
CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``, for testing); chosen
automatically for CUDA tensors only. triton is imported when the op first runs, never at import.
Any row length: rows up to ``MAX_ONE_CHUNK`` (4096) stay in registers, longer ones are walked in
blocks. Compares bit patterns only, so every dtype is exact and values are x's bits.
"""

from __future__ import annotations

import torch

from ..._alloc import poisoned_output_or_none
from ...backend import TritonRules

# The kernel counts a row's keys in int32 (as the cpu and cuda backends do): rows up to 2^31 - 1.
MAX_ROW = 2**31 - 1


class AbsTopKTritonBackend(TritonRules):
    def forward(self, x2d: torch.Tensor, k: int):
        """``(values, kept)`` of ``x2d`` (contiguous ``[rows, n]``), ``0 <= k <= n``."""
        from ..triton.abs_topk import _abs_topk_kernel, abs_topk_config

        rows, n = x2d.shape
        if n > MAX_ROW:
            raise ValueError(f"x's rows must be shorter than 2^31 for the triton backend (int32 counts), got {n}")
        # Under the tests' poison switch both outputs come pre-filled (values NaN, kept True),
        # so an entry the kernel does not write shows.
        values = poisoned_output_or_none((rows, n), x2d)
        if values is None:
            values = torch.empty((rows, n), dtype=x2d.dtype, device=x2d.device)
            kept = torch.empty((rows, n), dtype=torch.bool, device=x2d.device)
        else:
            kept = torch.ones((rows, n), dtype=torch.bool, device=x2d.device)
        if rows == 0 or n == 0:
            return values, kept
        cfg = abs_topk_config(n, x2d.dtype)
        _abs_topk_kernel[(rows,)](x2d, values, kept, n, k, KEY_BITS=cfg["KEY_BITS"], BLOCK_N=cfg["BLOCK_N"],
                                  ONE_CHUNK=cfg["ONE_CHUNK"], num_warps=cfg["num_warps"],
                                  num_stages=cfg["num_stages"])
        return values, kept
