"""What every top-k projection backend is: a ``Backend`` (``sparsekern.backend``) with the
two-phase selection of ``__init__.py``'s contract, and the floor set computed in torch unless
the backend has a kernel for it."""

from __future__ import annotations

import torch

from ...backend import Backend
from .. import floors


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
