"""Backends of the top-k projection, in a registry of the same shape as the matmul's.

Each backend runs the element-mode selection in two phases, so the caller can check
many matrices before changing any (``Projector`` does):

``plan(weight, k, forced) -> plan``   read-only: finds what to keep. ``forced`` is the
    bool floor set F (kept first) or None. Backends with ``checks_finite`` reject NaN/Inf
    here, in their first read pass; for the others the caller checks.
``apply(weight, plan, block_size, with_index) -> (cutoff, nnz, block_counts, index)``   in place:
    zeroes what is not kept. ``cutoff`` is the k-th largest magnitude outside F (inf when the
    fill kept nothing); ``block_counts`` the nonzeros per block when ``block_size`` is given;
    ``index`` the nonzeros' ``(row_ptr, col_idx, col_ptr, row_idx)`` listed in the same pass,
    when asked and the backend can (else None: the caller builds it from the weight).
``floors(weight, min_per_row, min_per_col) -> (mask, count, smallest)``   the floor set F
    as a bool mask, its size and its smallest magnitude (inf when empty); read-only, and
    rejects NaN/Inf when ``checks_finite``.

Block mode needs no backend: block scores are a small grid (see ``topk_project``).
"""

from __future__ import annotations

import torch

from .._extension import extension, unavailable_reason
from ..backends import get_backend
from ..backends.base import Backend, Registry
from ..backends.triton import TritonBackend
from . import floors, reference

ENV_VAR = "SPARSEKERN_PROJECTION_BACKEND"

# Keys are |w|'s bits; floor entries get the largest key, above every finite magnitude.
FORCED_KEY = {torch.float32: 0x7FFFFFFF, torch.float16: 0x7FFF, torch.bfloat16: 0x7FFF}
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def key_to_magnitude(key: int, dtype: torch.dtype) -> float:
    """The magnitude whose bit pattern is ``key``; inf for the floor key and above."""
    if key >= FORCED_KEY[dtype]:
        return float("inf")
    return torch.tensor([key], dtype=_BITS[dtype]).view(dtype).item()


class ProjectionBackend(Backend):
    checks_finite = False

    def floors(self, weight, min_per_row, min_per_col):
        mag = weight.abs()
        mag = mag if mag.dtype in (torch.float32, torch.float64) else mag.float()
        mask = self._floor_mask(mag, min_per_row, min_per_col)
        count = int(mask.sum())
        return mask, count, mag[mask].min().item() if count else float("inf")

    def _floor_mask(self, mag, min_per_row, min_per_col):
        return floors.floor_mask(mag, min_per_row, min_per_col)

    def plan(self, weight, k, forced):
        raise NotImplementedError

    def apply(self, weight, plan, block_size, with_index=False):
        raise NotImplementedError


class ReferenceProjection(ProjectionBackend):
    """Sort-based, exact; any device and floating dtype."""

    name = "reference"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def device_reason(self, device):
        return None

    def _floor_mask(self, mag, min_per_row, min_per_col):
        return reference.floor_mask(mag, min_per_row, min_per_col)

    def plan(self, weight, k, forced):
        keep = reference.keep_mask(weight.abs(), k, forced)
        return keep, forced

    def apply(self, weight, plan, block_size, with_index=False):
        keep, forced = plan
        fill = keep if forced is None else keep & ~forced
        cutoff = weight.abs()[fill].min().item() if bool(fill.any()) else float("inf")
        weight.masked_fill_(~keep, 0)
        counts = reference.block_counts(weight, block_size) if block_size is not None else None
        return cutoff, int(torch.count_nonzero(weight)), counts, None


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


class TritonProjection(ProjectionBackend):
    """Triton radix select + write pass; CUDA tensors, or CPU ones under TRITON_INTERPRET=1."""

    name = "triton"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    # Availability, devices and automatic choice: exactly the matmul's Triton backend.
    unavailable_reason = TritonBackend.unavailable_reason
    device_reason = TritonBackend.device_reason
    automatic = TritonBackend.automatic

    def plan(self, weight, k, forced):
        from .topk_triton import topk_select

        return forced, topk_select(weight, k, forced)

    def apply(self, weight, plan, block_size, with_index=False):
        from .topk_triton import topk_apply

        forced, state = plan
        cutoff_key, nnz, counts = topk_apply(weight, forced, state, block_size)
        return key_to_magnitude(cutoff_key, weight.dtype), nnz, counts, None


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


REGISTRY = Registry(ENV_VAR)
REGISTRY.register(TritonProjection())
REGISTRY.register(CudaProjection())
REGISTRY.register(CpuProjection())
REGISTRY.register(ReferenceProjection())
