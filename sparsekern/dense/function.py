"""The dense format: ``F.linear`` on the weight masked by a layout, for the layers (and the
steps of a schedule) where the sparse kernels would cost more than dense.

It computes what the sparse formats compute: entries outside the layout count as zero
whatever they hold (NaN included), ``dW`` is zero outside the layout unless
``dense_weight_grad``. Torch's products on every device and dtype; on the CPU in fp32 the
forward and the input gradient walk the zeros of a sparse input or output gradient where that
pays (``sparse_operand_mm.py``), as the dense weight gradient does (``dense_grad_weight.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_linear_args
from .._linear import autocast_args as _autocast, linear_backward, output_of_shape
from ..block.layout import BlockLayout
from ..element.layout import ElementLayout
from ..sparse_operand_mm import sparse_operand_mm, walkable
from .layout import MaskLayout


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def zero_outside(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, t, 0)``, bit for bit (``+0`` outside, NaN and Inf inside kept). On the
    CPU its bits, as integers, are multiplied by the mask (0 or 1; vectorised, branch-free): torch's
    CPU ``where`` loop branches on the mask, and a weight mid-way through the annealing (half its
    entries, at random) costs it 5-7x the multiply's time. Elsewhere, and wherever autograd must
    see ``t`` (the integer product is not differentiable), it is ``torch.where``."""
    if (t.device.type != "cpu" or mask.dtype != torch.bool or mask.shape != t.shape or t.dtype.is_complex
            or (t.requires_grad and torch.is_grad_enabled())):
        return torch.where(mask, t, 0)
    words = _SAME_SIZE_INT[t.element_size()]
    return (t.view(words) * mask).view(t.dtype)


def _times_masked(a: torch.Tensor, masked: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``a @ masked.T`` (the forward) or ``a @ masked`` (the input gradient), walking the zeros
    of ``a`` where it pays (AbsTopK before the layer, or after it: ``sparse_operand_mm.py``)."""
    if not torch.is_grad_enabled() and walkable(a, masked):  # create_graph: the op has no derivative
        return sparse_operand_mm(a, masked, transpose)
    return a @ (masked.t() if transpose else masked)


class MaskedLinearFunction(torch.autograd.Function):
    """``y = x @ where(mask, W, 0).T + b`` with the sparse formats' weight gradient rule."""

    @staticmethod
    def forward(x, weight, bias, mask, dense_weight_grad):
        masked = zero_outside(weight, mask)
        if not walkable(x, masked):
            return F.linear(x, masked, bias)
        y = _times_masked(x, masked, True)
        return y if bias is None else y.add_(bias)

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
            lambda g: _times_masked(g, zero_outside(weight, mask), False),
            lambda g: zero_outside(g.t() @ x, mask))
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
