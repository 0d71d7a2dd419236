"""Bool masks as bits: the layout's form in a checkpoint (``SparseLinear``'s ``layout_mask``)
and on the wire (the sharded projection gathers the layout of every shard this way)."""

from __future__ import annotations

import math
import sys

import torch

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


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """The inverse of ``pack_mask``: the bool ``[rows, cols]`` mask (padding bits ignored)."""
    bits = torch.tensor(_BIT_VALUES, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) & bits) != 0).view(packed.shape[0], packed.shape[1] * 8)[:, :cols].contiguous()
