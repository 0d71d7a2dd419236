"""Projection backend "reference": the sort-based oracle (``sparsekern/projection/reference.py``)."""

from __future__ import annotations

import torch

from .. import reference
from .base import ProjectionBackend


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
