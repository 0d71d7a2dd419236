"""The dense weight gradient ``dW = grad_out.T @ x`` of ``dense_weight_grad=True``, at the cost of
the nonzeros of its sparser operand.

With activation sparsity (AbsTopK, ReLU) a layer's input has rows of mostly exact zeros, and
when its output feeds an AbsTopK so has its output gradient. The product then needs only the
terms whose sparse-side factor is nonzero: the CPU kernel (``csrc/cpu/esmm_sparse_operand.cpp``)
lists that side's nonzeros by chunk of rows and column, and multiplies each by a row of the other
side read densely from a panel that sits in L1, one vector FMA per vector loaded. The result is
the same sum as the dense product's (fp32 accumulation, in another order: within the fp32
tolerance, not bitwise). Only one side's zeros can be skipped at the vector unit's rate: skipping
the other side's too would take a scatter per product, slower than the dense product's FMAs.

Which side, if any, is decided per call from a sample of each operand's rows (``operand_stats``:
the nonzeros of one row in 16, at least 128 rows; a sixteenth of a pass) and the cost model below;
a dense input takes ``grad_out.T @ x`` as before. Skipping zeros changes the result only where a
skipped zero meets an Inf or NaN of the other side (``0 * inf`` is NaN in the dense product): the
kernel checks the side it reads densely as it copies it into its panels (every entry passes through
one), and when it finds an Inf or NaN the dense product runs instead. Elsewhere (CUDA, where
tensor-core dense wins at these densities; bf16 and fp16; no compiled extension) the dense
product runs.

The operator ``torch.ops.sparsekern.dense_grad_weight`` (with a fake implementation) keeps the
data-dependent choice out of ``torch.compile``'s graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._extension import extension

SIDES = ("dense", "input", "grad_out")

# Time of the sparse-operand product relative to the dense one, for the walked side's density d
# (nonzeros / entries) and the dense side's column count e: per_density * d + listing / e + floor.
# The listing, a pass over the walked side, is paid once whatever e is, so it weighs more against a
# narrow product; in the weight gradient it reads the walked side's rows as they lie, in the forward
# pass and input gradient (sparse_operand_mm) pieces of a's rows, as its transpose. Fitted against
# MKL's product at 2048 tokens, 2 threads, walking 2048 or 8192 columns (alike within the noise):
# the weight gradient on the 2-core AMD EPYC (AVX2, 512 KiB L2) at d = 1/4, 0.78-0.86x dense time
# with 512 dense columns, 0.50-0.54x with 2048, 0.38-0.42x with 8192 (and 0.21x at d = 0.1, 0.71x at
# 1/2, 1.1x at 3/4); the transposed listing on the 2-core Xeon (AVX-512) at d = 1/4, 1.16x with 512,
# 0.72x with 2048, 0.6x with 8192.
# On the 2-core AMD EPYC Zen 4 (AVX-512 without AMX, 1 MiB L2; 2026-12-03, after the listing was
# made 2-2.5x faster) both listings weigh less against MKL: at d = 1/4, 1 thread and 1024 tokens or
# 2 threads and 2048, the weight gradient 0.50-0.56x dense time with 512 dense columns (listing
# ~60-90 columns' worth), the transposed product 0.57-0.66x (~110-170), where the fit above would
# keep both dense (1.17x modelled for the transposed one). That machine's kernels run "avx512";
# the Xeon's run "amx" and keep the fit above, not measured again since the listing changed.
_PER_DENSITY = 1.35
LISTING_COLUMNS = {"rows": 200.0, "transposed": 400.0}
_LISTING_COLUMNS_BY_ISA = {"avx512": {"rows": 80.0, "transposed": 160.0}}
_FLOOR = 0.05
# Below this many multiply-adds the dense product is cheap enough that a pass to measure the
# operands is not worth making.
_MIN_WORK = 1 << 24
# The choice reads every row_step-th row of an operand, row_step = rows // _SAMPLE_ROWS (at least 1).
_SAMPLE_ROWS = 128


def _walkable(grad_out: Tensor, x: Tensor) -> bool:
    """Whether the CPU kernel can run at all (before any pass over the data)."""
    return (grad_out.device.type == "cpu" and grad_out.dtype == torch.float32 and x.dtype == torch.float32
            and grad_out.dim() == 2 and x.dim() == 2 and extension() is not None
            and hasattr(extension(), "esmm_sparse_operand_grad_weight_cpu")
            and grad_out.shape[0] * grad_out.shape[1] * x.shape[1] >= _MIN_WORK)


def modelled_cost(density: float, dense_columns: int, listing: str = "rows") -> float:
    """Modelled time of walking a side of ``density`` against a dense side of ``dense_columns``
    columns, relative to the dense product; ``listing``: ``"rows"`` (the weight gradient) or
    ``"transposed"`` (``sparse_operand_mm``)."""
    isa = extension().cpu_isa() if extension() is not None else None
    listing_columns = _LISTING_COLUMNS_BY_ISA.get(isa, LISTING_COLUMNS)[listing]
    return _PER_DENSITY * density + listing_columns / max(dense_columns, 1) + _FLOOR


def choose_side(grad_out: Tensor, x: Tensor) -> str:
    """``"input"``, ``"grad_out"`` (the side walked sparsely) or ``"dense"``, for these operands."""
    if not _walkable(grad_out, x):
        return "dense"
    return _choose(_rows(grad_out), _rows(x))


def sampled_density(t: Tensor) -> float:
    """The fraction of nonzeros of a walkable operand (fp32 CPU, rows contiguous), from every
    ``rows // 128``-th row: what the choice needs, at a fraction of a pass. 1.0 when empty."""
    step = max(1, t.shape[0] // _SAMPLE_ROWS)
    seen = -(-t.shape[0] // step) * t.shape[1]
    return extension().operand_stats_cpu(t, step)[0] / seen if seen else 1.0


def _choose(grad_out: Tensor, x: Tensor) -> str:
    """``choose_side`` for walkable operands with contiguous rows: a sample of each."""
    costs = {"dense": 1.0}
    if x.numel():
        costs["input"] = modelled_cost(sampled_density(x), grad_out.shape[1])
    if grad_out.numel():
        costs["grad_out"] = modelled_cost(sampled_density(grad_out), x.shape[1])
    return min(costs, key=costs.get)


def _rows(t: Tensor) -> Tensor:
    """The kernel reads rows: a copy only when they are not contiguous."""
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def grad_weight(grad_out: Tensor, x: Tensor, side: str | None = None) -> Tensor:
    """``grad_out.T @ x`` (``[M, N]``, ``[M, K]`` -> ``[N, K]``), walking the nonzeros of ``side``
    (``"input"``: x, ``"grad_out"``, ``"dense"``: neither); ``None`` chooses (``choose_side``).
    A forced sparse side needs what the CPU kernel needs (fp32 CPU tensors, the extension) and
    skips that side's zeros whatever the other side holds: where the other side has an Inf or
    NaN, the NaNs of ``0 * inf`` that the dense product has are not produced (with ``None`` the
    dense product runs then)."""
    if side is not None and side not in SIDES:
        raise ValueError(f"side must be one of {SIDES} or None, got {side!r}")
    chosen = side is None
    if chosen:
        if not _walkable(grad_out, x):
            return grad_out.t() @ x
        grad_out, x = _rows(grad_out), _rows(x)  # once, for the measurement and the product
        side = _choose(grad_out, x)
    if side == "dense":
        return grad_out.t() @ x
    ext = extension()
    if ext is None or not hasattr(ext, "esmm_sparse_operand_grad_weight_cpu"):
        raise RuntimeError(f"side={side!r} needs the compiled extension sparsekern._C")
    return ext.esmm_sparse_operand_grad_weight_cpu(_rows(grad_out), _rows(x), side == "input",
                                                   dense_if_not_finite=chosen)


@torch.library.custom_op("sparsekern::dense_grad_weight", mutates_args=())
def dense_grad_weight(grad_out: Tensor, x: Tensor) -> Tensor:
    """``grad_out.T @ x``: ``[N, K]``, exploiting exact zeros of either operand where it pays."""
    return grad_weight(grad_out, x)


@dense_grad_weight.register_fake
def _(grad_out, x):
    return x.new_empty((grad_out.shape[1], x.shape[1]))
