"""``a @ b`` (or ``a @ b.T``) at the cost of the nonzeros of ``a``: the forward pass and the input
gradient of the dense format (``MaskedLinearFunction``) when the layer's input, or its output
gradient, comes out of AbsTopK or ReLU.

The dense format runs the layers (and the steps of an annealed schedule) whose weights are too
dense for the sparse kernels; with activation sparsity their products still have one sparse
operand. The CPU kernel is the dense weight gradient's (``csrc/cpu/esmm_sparse_operand.cpp``,
``dense_grad_weight.py``): ``a``'s nonzeros listed by chunk of its columns and by row (a is read
as the transpose of the walked side), each multiplied by a row of ``b`` (or of its transpose,
through register transposes) from a panel in L1. Same sum as the dense product, in another
order: within the fp32 tolerance, not bitwise. Which path runs is decided per call from a sample
of ``a``'s rows and the same cost model; where ``b`` holds an Inf or NaN (which a skipped zero
would meet: ``0 * inf`` is NaN in the dense product) the kernel finds it in its panels and the
dense product runs instead. Elsewhere (not the CPU, not fp32, no compiled extension, small
products, a dense ``a``) it is ``a @ b``.

The operator ``torch.ops.sparsekern.sparse_operand_mm`` (with a fake implementation) keeps the
data-dependent choice out of ``torch.compile``'s graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._extension import extension
from .dense_grad_weight import _MIN_WORK, _rows, modelled_cost, sampled_density


def _product(b: Tensor, transpose_b: bool) -> Tensor:
    return b.t() if transpose_b else b


def walkable(a: Tensor, b: Tensor) -> bool:
    """Whether the CPU kernel can run at all (before any pass over the data): callers that would
    otherwise run a fused torch op (``F.linear``) ask first."""
    return (a.device.type == "cpu" and b.device.type == "cpu" and a.dtype == torch.float32
            and b.dtype == torch.float32 and a.dim() == 2 and b.dim() == 2 and extension() is not None
            and hasattr(extension(), "esmm_sparse_operand_matmul_cpu")
            and a.shape[0] * b.numel() >= _MIN_WORK)  # multiply-adds of the dense product


def walks(a: Tensor, b: Tensor, transpose_b: bool = False) -> bool:
    """Whether ``sparse_operand_mm(a, b, transpose_b)`` walks ``a``'s nonzeros (rather than
    ``a @ b``), unless ``b`` turns out to hold an Inf or NaN (then ``a @ b`` runs)."""
    if not walkable(a, b):
        return False
    return _walks(_rows(a), _rows(b), transpose_b)


def _walks(a: Tensor, b: Tensor, transpose_b: bool) -> bool:
    """``walks`` for walkable operands with contiguous rows: a sample of ``a``'s."""
    dense_columns = b.shape[0 if transpose_b else 1]
    return bool(a.numel()) and modelled_cost(sampled_density(a), dense_columns, "transposed") < 1.0


def matmul(a: Tensor, b: Tensor, transpose_b: bool = False, walk: bool | None = None) -> Tensor:
    """``a @ b`` (``a @ b.T`` when ``transpose_b``), walking ``a``'s nonzeros where it pays; ``walk``
    forces the choice (True needs fp32 CPU tensors and the extension, and skips ``a``'s zeros
    whatever ``b`` holds)."""
    chosen = walk is None
    if chosen:
        if not walkable(a, b):
            return a @ _product(b, transpose_b)
        a, b = _rows(a), _rows(b)  # once, for the measurement and the product
        walk = _walks(a, b, transpose_b)
    if not walk:
        return a @ _product(b, transpose_b)
    ext = extension()
    if ext is None or not hasattr(ext, "esmm_sparse_operand_matmul_cpu"):
        raise RuntimeError("walk=True needs the compiled extension sparsekern._C")
    return ext.esmm_sparse_operand_matmul_cpu(_rows(a), _rows(b), transpose_b, dense_if_not_finite=chosen)


@torch.library.custom_op("sparsekern::sparse_operand_mm", mutates_args=())
def sparse_operand_mm(a: Tensor, b: Tensor, transpose_b: bool) -> Tensor:
    """``a @ b`` (``a @ b.T`` when ``transpose_b``): ``[T, D]``, exploiting exact zeros of ``a`` where it pays."""
    return matmul(a, b, transpose_b)


@sparse_operand_mm.register_fake
def _(a, b, transpose_b):
    return a.new_empty((a.shape[0], b.shape[0] if transpose_b else b.shape[1]))
