"""The floor set F without sorting, for the fused backends (the reference sorts instead).

Per row (column): the m-th largest magnitude t from ``torch.topk`` values (which do not
depend on how topk orders ties), then every entry above t plus the first ties equal
to t, in index order, until m: the same set as a stable sort picks.
"""

from __future__ import annotations

import torch


def _top_along(mag: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    t = torch.topk(mag, m, dim=dim).values.narrow(dim, m - 1, 1)
    greater = mag > t
    ties = mag == t
    room = m - greater.sum(dim, keepdim=True, dtype=torch.int32)
    return greater | (ties & (ties.cumsum(dim, dtype=torch.int32) <= room))


def floor_mask(mag: torch.Tensor, min_per_row: int, min_per_col: int) -> torch.Tensor:
    """Bool mask of F for non-negative ``mag`` (2-D)."""
    mask = torch.zeros(mag.shape, dtype=torch.bool, device=mag.device)
    for m, dim in ((min_per_row, 1), (min_per_col, 0)):
        if m > 0:
            mask.logical_or_(_top_along(mag, m, dim))
    return mask
