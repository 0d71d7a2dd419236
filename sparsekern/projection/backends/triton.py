"""Projection backend "triton": the radix select and write pass of ``sparsekern/projection/triton/``.
triton is imported when a projection first runs, never at import."""

from __future__ import annotations

import torch

from ...backend import TritonRules
from ..keys import key_to_magnitude
from .base import ProjectionBackend


class TritonProjection(ProjectionBackend):
    """Triton radix select + write pass; CUDA tensors, or CPU ones under TRITON_INTERPRET=1."""

    name = "triton"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    # Availability, devices and automatic choice: exactly the matmul's Triton backends.
    unavailable_reason = TritonRules.unavailable_reason
    device_reason = TritonRules.device_reason
    automatic = TritonRules.automatic

    def plan(self, weight, k, forced):
        from ..triton.topk_launch import topk_select

        return forced, topk_select(weight, k, forced)

    def apply(self, weight, plan, block_size, with_index=False):
        from ..triton.topk_launch import topk_apply

        forced, state = plan
        cutoff_key, nnz, counts = topk_apply(weight, forced, state, block_size)
        return key_to_magnitude(cutoff_key, weight.dtype), nnz, counts, None
