"""Projection backend "cpu": C++ select and write pass (csrc/cpu/topk.cpp) from the compiled extension."""

from __future__ import annotations

import torch

from ..._extension import extension, unavailable_reason
from ..keys import key_to_magnitude
from .base import ProjectionBackend


class CpuProjection(ProjectionBackend):
    """C++ select without sorting + one write pass (csrc/cpu/topk.cpp), row chunks on torch's threads."""

    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    checks_finite = True
    _KERNELS = ("topk_floors_cpu", "topk_select_cpu", "topk_apply_cpu")

    def unavailable_reason(self):
        return unavailable_reason(*self._KERNELS)

    def floors(self, weight, min_per_row, min_per_col):
        mask, count, smallest = extension().topk_floors_cpu(weight.contiguous(), min_per_row, min_per_col)
        return mask, count, key_to_magnitude(smallest, weight.dtype) if count else float("inf")

    def plan(self, weight, k, forced):
        # The kernel walks row-major memory; a strided weight is projected in a copy.
        work = weight.contiguous()
        return work, forced, extension().topk_select_cpu(work, forced, k)

    def apply(self, weight, plan, block_size, with_index=False):
        work, forced, state = plan
        bo, bi = block_size if block_size is not None else (0, 0)
        nnz, counts, index = extension().topk_apply_cpu(work, forced, state, bo, bi, with_index)
        if work is not weight:
            weight.copy_(work)
        return key_to_magnitude(int(state[0]), weight.dtype), int(nnz), counts, index
