"""The dense format: ``F.linear`` on the weight masked by a layout, for the layers (and the
steps of a schedule) where the sparse kernels would cost more than dense.

It computes what the sparse formats compute: entries outside the layout count as zero
whatever they hold (NaN included), ``dW`` is zero outside the layout unless
``dense_weight_grad``. Pure torch, every device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_linear_args
from .._linear import autocast_args as _autocast, linear_backward, output_of_shape
from ..block.layout import BlockLayout
from ..element.layout import ElementLayout
from .layout import MaskLayout


class MaskedLinearFunction(torch.autograd.Function):
    """``y = x @ where(mask, W, 0).T + b`` with the sparse formats' weight gradient rule."""

    @staticmethod
    def forward(x, weight, bias, mask, dense_weight_grad):
        return F.linear(x, torch.where(mask, weight, 0), bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mask, dense = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.dense_weight_grad = dense
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask = ctx.saved_tensors
        dx, dw, db = linear_backward(
            ctx, grad_out, x,
            lambda g: g @ torch.where(mask, weight, 0),
            lambda g: torch.where(mask, g.t() @ x, 0))
        return dx, dw, db, None, None


def masked_dense_linear(x: torch.Tensor, weight: torch.Tensor, layout, bias: torch.Tensor | None = None, *,
                        mask: torch.Tensor | None = None, dense_weight_grad: bool = False) -> torch.Tensor:
    """``x @ (weight * layout.to_mask()).T + bias`` by dense ``F.linear``; ``layout`` a
    ``BlockLayout``, an ``ElementLayout`` or a ``MaskLayout``. ``mask``: ``layout.to_mask()``
    if the caller keeps it (``SparseLinear`` does, so a step does not rebuild it)."""
    x, weight, bias = _autocast(x, weight, bias)
    kinds = (ElementLayout, MaskLayout, BlockLayout)
    layout_type = next((kind for kind in kinds if isinstance(layout, kind)), BlockLayout)
    check_linear_args(x, weight, layout, bias, layout_type=layout_type)
    if mask is None:
        mask = layout.to_mask()
    x2d = x.reshape(-1, x.shape[-1])
    y = MaskedLinearFunction.apply(x2d, weight, bias, mask, dense_weight_grad)
    return output_of_shape(y, (*x.shape[:-1], weight.shape[0]))
