"""Bool masks as bits: the layout's form in a checkpoint (``SparseLinear``'s ``layout_mask``)
and on the wire (the sharded projection gathers the layout of every shard this way)."""

from __future__ import annotations

import math
import sys

import torch

from .block.reference import _expand_pointers

_BIT_VALUES = (1, 2, 4, 8, 16, 32, 64, 128)
_GATHER_BITS = 0x0102040810204080  # bits 7, 14, ..., 56


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool ``[rows, cols]`` -> uint8 ``[rows, ceil(cols / 8)]``: entry ``(r, 8 * b + j)`` is bit ``j``
    of byte ``(r, b)`` (little-endian along a row; the padding bits are 0). Any device."""
    rows, cols = mask.shape
    if rows == 0 or cols == 0:  # no int64 view of an empty tensor
        return torch.zeros((rows, math.ceil(cols / 8)), dtype=torch.uint8, device=mask.device)
    if cols % 8 == 0 and mask.is_contiguous() and mask.storage_offset() % 8 == 0:  # viewable as int64
        padded = mask.view(torch.uint8)
    else:
        padded = torch.zeros((rows, math.ceil(cols / 8) * 8), dtype=torch.uint8, device=mask.device)
        padded[:, :cols] = mask
    if sys.byteorder != "little":
        bits = torch.tensor(_BIT_VALUES, dtype=torch.uint8, device=mask.device)
        return (padded.view(rows, -1, 8) * bits).sum(-1, dtype=torch.uint8)
    # Each 8 bytes of 0/1 read as one little-endian int64: the multiply moves byte j's bit to bit
    # 56 + j, no two partial products meeting below bit 64 (no carries; what wraps above is
    # dropped), and the shift brings the 8 bits down. One pass, 4-6x the sum of 8 products.
    words = padded.view(torch.int64) * _GATHER_BITS
    return words.bitwise_right_shift_(56).to(torch.uint8)


def pack_entries(shape, row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """``pack_mask`` of the entries of a row-major index (``ElementLayout``'s ``row_ptr``,
    ``col_idx``: columns ascending within a row, none twice) without the ``[rows, cols]`` bool
    mask: a pass over the nonzeros and the packed bytes only (a layer adopts a layout after every
    projection; at 1/64 of 8192 x 2048 this takes about a tenth of the mask's time). Any device.
    Each entry must be listed once (an ``ElementLayout``'s index is): its bit is added, not or-ed."""
    rows, cols = shape
    width = math.ceil(cols / 8)
    packed = torch.zeros(rows * width, dtype=torch.uint8, device=col_idx.device)
    if col_idx.numel():
        row_of = _expand_pointers(row_ptr, col_idx.numel())
        col = col_idx.long()
        # Each entry is its own bit of its byte, so the sum of a byte's bits is their OR.
        packed.index_add_(0, row_of * width + (col >> 3), torch.bitwise_left_shift(1, col & 7).to(torch.uint8))
    return packed.view(rows, width)


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """The inverse of ``pack_mask``: the bool ``[rows, cols]`` mask (padding bits ignored)."""
    bits = torch.tensor(_BIT_VALUES, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) & bits) != 0).view(packed.shape[0], packed.shape[1] * 8)[:, :cols].contiguous()
