"""Projection backend "cuda": CUDA C++ radix select and write pass (csrc/cuda/topk_*) from the compiled extension."""

from __future__ import annotations

import torch

from ..._extension import extension, unavailable_reason
from ...block.backends import get_backend
from ..keys import key_to_magnitude
from .base import ProjectionBackend


class CudaProjection(ProjectionBackend):
    """CUDA C++ radix select + write pass (csrc/cuda/topk_*), the Triton backend's algorithm;
    the plan stays on the device. Never run on a GPU yet, so after "triton" in the automatic order."""

    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    _KERNELS = ("topk_select_cuda", "topk_apply_cuda")

    def unavailable_reason(self):
        return unavailable_reason(*self._KERNELS)

    def device_reason(self, device):
        # The same extension and cubins as the matmul's CUDA backend: the same GPUs.
        return get_backend("cuda").device_reason(device)

    def plan(self, weight, k, forced):
        return forced, extension().topk_select_cuda(weight, forced, k)

    def apply(self, weight, plan, block_size, with_index=False):
        forced, (state, ties_before) = plan
        bo, bi = block_size if block_size is not None else (0, 0)
        nnz, counts = extension().topk_apply_cuda(weight, forced, state, ties_before, bo, bi)
        return key_to_magnitude(int(state[0]), weight.dtype), int(nnz), counts, None
