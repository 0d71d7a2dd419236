"""AbsTopK, and GELU then AbsTopK, as torch operators in the ``sparsekern`` namespace.

It takes the backend's name and dispatches to it; the fake implementation gives the output
shapes to ``torch.compile`` and ``opcheck``. ``abs_topk.py`` and ``gelu_abs_topk.py`` call only
these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .backends import get_backend


def as_rows(x: Tensor) -> Tensor:
    """``x`` as the backends take it: contiguous 2-D rows of its last dimension."""
    # The row count is explicit, as reshape(-1, 0) is ambiguous.
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous()


def _shaped(values: Tensor, kept: Tensor, shape) -> tuple[Tensor, Tensor]:
    # Not .view: the outputs would be views of the backend's tensors, and a module returning a view
    # makes FSDP2 warn at every forward. Nothing else holds them, so _unsafe_view is safe.
    return torch.ops.aten._unsafe_view(values, shape), torch.ops.aten._unsafe_view(kept, shape)


@torch.library.custom_op("sparsekern::abs_topk", mutates_args=())
def abs_topk(x: Tensor, k: int, backend: str) -> tuple[Tensor, Tensor]:
    """``(values, kept)``, both x-shaped: each row's (last dimension's) ``k`` largest
    magnitudes, bit for bit, +0 elsewhere; ``kept`` the bool mask of them."""
    return _shaped(*get_backend(backend).forward(as_rows(x), k), x.shape)


@abs_topk.register_fake
def _(x, k, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.bool)


@torch.library.custom_op("sparsekern::gelu_abs_topk", mutates_args=())
def gelu_abs_topk(x: Tensor, k: int, approximate: str, backend: str) -> tuple[Tensor, Tensor]:
    """``abs_topk(F.gelu(x, approximate=approximate), k)``: the backend's fused pass where it has
    one, else its AbsTopK of torch's GELU."""
    x2d, chosen = as_rows(x), get_backend(backend)
    if hasattr(chosen, "gelu_forward"):
        return _shaped(*chosen.gelu_forward(x2d, k, approximate), x.shape)
    return _shaped(*chosen.forward(F.gelu(x2d, approximate=approximate), k), x.shape)


@gelu_abs_topk.register_fake
def _(x, k, approximate, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.bool)
