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
from .._extension import extension
from .._linear import autocast_args as _autocast, linear_backward, output_of_shape
from ..block.layout import BlockLayout
from ..element.layout import ElementLayout
from ..sparse_operand_mm import sparse_operand_mm, walkable
from .layout import MaskLayout


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def zero_outside(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, t, 0)``, bit for bit (``+0`` outside, NaN and Inf inside kept). On the
    CPU, torch's ``where`` loop branches on the mask: a weight mid-way through the annealing (half
    its entries, at random) costs it 5-7x a branch-free pass. There, contiguous operands go through
    the extension's one pass (``zero_outside_cpu``: each entry's bits and-ed with its mask byte; a
    1M-entry fp32 weight out of cache, one thread, 2-core Zen 4: 0.7 ms, against 4.3 ms for the bits
    times the mask in torch, which first converts the mask to integers, and about 15 ms for
    ``where``); others have their bits, as integers, multiplied by the mask. Elsewhere, and wherever
    autograd must see ``t`` (neither is differentiable), it is ``torch.where``."""
    if (t.device.type != "cpu" or mask.dtype != torch.bool or mask.shape != t.shape or t.dtype.is_complex
            or (t.requires_grad and torch.is_grad_enabled())):
        return torch.where(mask, t, 0)
    ext = extension()
    # (A traced graph gets torch's ops, which its compiler fuses.)
    if (not torch.compiler.is_compiling() and ext is not None and hasattr(ext, "zero_outside_cpu")
            and mask.device.type == "cpu" and t.is_contiguous() and mask.is_contiguous()):
        return ext.zero_outside_cpu(t, mask)
    words = _SAME_SIZE_INT[t.element_size()]
    return (t.view(words) * mask).view(t.dtype)


def _times_masked(a: torch.Tensor, masked: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``a @ masked.T`` (the forward) or ``a @ masked`` (the input gradient), walking the zeros
    of ``a`` where it pays (AbsTopK before the layer, or after it: ``sparse_operand_mm.py``)."""
    if not torch.is_grad_enabled() and walkable(a, masked):  # create_graph: the op has no derivative
        return sparse_operand_mm(a, masked, transpose)
    return a @ (masked.t() if transpose else masked)


class MaskedLinearFunction(torch.autograd.Function):
    """``y = x @ where(mask, W, 0).T + b`` with the sparse formats' weight gradient rule. Returns
    ``(y, masked weight)``: the masked weight is saved for the input gradient (a second masking
    pass over the weight would cost as much as the first) and is not differentiable."""

    @staticmethod
    def forward(x, weight, bias, mask, dense_weight_grad):
        masked = zero_outside(weight, mask)
        if not walkable(x, masked):
            return F.linear(x, masked, bias), masked
        y = _times_masked(x, masked, True)
        return (y if bias is None else y.add_(bias)), masked

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mask, dense = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, weight, mask, output[1])
        ctx.dense_weight_grad = dense
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out, _grad_masked):
        x, weight, mask, masked = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: dx must stay a function of the weight
            masked = zero_outside(weight, mask)
        dx, dw, db = linear_backward(
            ctx, grad_out, x,
            lambda g: _times_masked(g, masked, False),
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
    y, _ = MaskedLinearFunction.apply(x2d, weight, bias, mask, dense_weight_grad)
    return output_of_shape(y, (*x.shape[:-1], weight.shape[0]))
