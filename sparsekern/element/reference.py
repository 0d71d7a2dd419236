"""Pure-PyTorch reference of the three element-sparse products: the fallback of last resort
and the oracle of every test. The dense weight is masked with ``torch.where`` (not a
multiply), so entries off the layout count as zero whatever they hold, NaN included.

The functions follow the element backend contract (``backends/__init__.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..block.reference import _expand_pointers


def _mask(ptr: torch.Tensor, idx: torch.Tensor, shape, transposed: bool = False) -> torch.Tensor:
    """The element mask of a ``shape`` weight from a compressed index over its rows (or, when
    ``transposed``, over its columns)."""
    outer = _expand_pointers(ptr)
    mask = torch.zeros(shape, dtype=torch.bool, device=idx.device)
    if transposed:
        mask[idx.long(), outer] = True
    else:
        mask[outer, idx.long()] = True
    return mask


def forward(x, weight, bias, row_ptr, col_idx):
    """``x @ (weight on the layout).T + bias``; the row-major index."""
    return F.linear(x, torch.where(_mask(row_ptr, col_idx, weight.shape), weight, 0), bias)


def grad_input(grad_out, weight, col_ptr, row_idx):
    """``grad_out @ (weight on the layout)``; the column-major index."""
    return grad_out @ torch.where(_mask(col_ptr, row_idx, weight.shape, transposed=True), weight, 0)


def grad_weight(grad_out, x, row_ptr, col_idx):
    """``grad_out.T @ x`` at the layout's entries, exact zeros elsewhere."""
    shape = (grad_out.shape[1], x.shape[1])
    return torch.where(_mask(row_ptr, col_idx, shape), grad_out.t() @ x, 0)
