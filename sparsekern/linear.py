"""``sparse_linear``: one entry point for every sparse format, chosen by the layout's type."""

from __future__ import annotations

import torch

from .block import BlockLayout, block_sparse_linear
from .element import ElementLayout, element_sparse_linear


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, layout, bias: torch.Tensor | None = None, *,
                  backend: str | None = None, dense_weight_grad: bool = False) -> torch.Tensor:
    """``x @ (weight * layout.to_mask()).T + bias``, for a ``BlockLayout`` (the block kernels)
    or an ``ElementLayout`` (the element kernels); the same semantics and arguments as
    ``block_sparse_linear``."""
    if isinstance(layout, ElementLayout):
        return element_sparse_linear(x, weight, layout, bias, backend=backend, dense_weight_grad=dense_weight_grad)
    if isinstance(layout, BlockLayout):
        return block_sparse_linear(x, weight, layout, bias, backend=backend, dense_weight_grad=dense_weight_grad)
    raise TypeError(f"layout must be a sparsekern.BlockLayout or sparsekern.ElementLayout, got {type(layout).__name__}")
