"""Pure-PyTorch reference of the three products of a block-sparse linear layer.

It is the CPU fallback of last resort and the oracle of every test. It masks the
dense weight with ``torch.where`` (not a multiply), so entries outside the active
blocks count as zero whatever they hold, NaN and Inf included.

The functions follow the backend contract of ``sparsekern/block/backends/__init__.py``: 2-D
operands plus the index tensors each product walks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import block_grid, expand_block_mask


def _element_mask(block_rows, block_cols, shape, block_size) -> torch.Tensor:
    """Element mask of ``shape`` with the listed blocks active (edge blocks clipped)."""
    block_mask = torch.zeros(block_grid(tuple(shape), block_size), dtype=torch.bool, device=block_rows.device)
    block_mask[block_rows.long(), block_cols.long()] = True
    return expand_block_mask(block_mask, block_size, shape)


def _expand_pointers(ptr: torch.Tensor, listed: int | None = None) -> torch.Tensor:
    """CSR pointers -> the outer index of each listed block (or entry); ``listed``, their count
    when the caller knows it (saves a device sync for the output's size)."""
    counts = (ptr[1:] - ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), counts, output_size=listed)


def forward(x, weight, bias, row_ptr, col_idx, block_out, block_in):
    """``x @ (weight on the active blocks).T + bias``; the row-major index."""
    mask = _element_mask(_expand_pointers(row_ptr), col_idx, weight.shape, (block_out, block_in))
    return F.linear(x, torch.where(mask, weight, 0), bias)


def grad_input(grad_out, weight, col_ptr, row_idx, block_out, block_in):
    """``grad_out @ (weight on the active blocks)``; the column-major index."""
    mask = _element_mask(row_idx, _expand_pointers(col_ptr), weight.shape, (block_out, block_in))
    return grad_out @ torch.where(mask, weight, 0)


def grad_weight(grad_out, x, block_row, col_idx, block_out, block_in):
    """``grad_out.T @ x`` on the active blocks, exact zeros elsewhere."""
    shape = (grad_out.shape[1], x.shape[1])
    mask = _element_mask(block_row, col_idx, shape, (block_out, block_in))
    return torch.where(mask, grad_out.t() @ x, 0)
