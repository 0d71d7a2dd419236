"""``topk_project_``: keep the k entries (or blocks) of largest magnitude of a weight, in place.

The rule, the same on every backend (the sort-based reference is its definition):

1. Floors. F is the union of every row's ``min_per_row`` and every column's
   ``min_per_col`` largest entries (ties: lowest index). ``|F| > k`` is an error.
2. Fill. The largest entries outside F are added until exactly ``k`` are kept; entries
   of equal magnitude go to the lowest row-major index first.
3. Everything not kept becomes exactly ``+0``; kept entries are untouched (a kept ``-0``
   stays ``-0``).

Magnitude is ``|w|`` per entry in element mode, the block's L2 norm in block mode. If
``k`` exceeds the nonzeros, some kept entries are zeros: ``nnz`` is then below ``k``.
Every check runs before anything is written, so a failed call changes nothing. An empty
weight keeps nothing (``k`` must be 0) and is left as it is.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import torch

from .._checks import check_floating, check_no_internal_overlap
from ..element.layout import ElementLayout
from ..block.layout import block_grid, expand_block_mask, normalize_block_size
from . import reference
from .backends import REGISTRY

GRANULARITIES = ("element", "block")


class ProjectionResult(NamedTuple):
    """What a projection kept.

    threshold: the smallest kept magnitude (|w|, or a block's L2 norm in block mode);
        inf when k = 0.
    k: how many entries (blocks) were kept.
    nnz: nonzero entries left in the weight (at most k in element mode).
    block_counts: nonzeros per block, ``[block rows, block cols]`` int32, when a
        block_size was given; None otherwise.
    element_layout: the ``ElementLayout`` of the nonzeros left, when asked for
        (``element_layout=True``); the CPU backend lists them in its write pass.
    """

    threshold: float
    k: int
    nnz: int
    block_counts: torch.Tensor | None
    element_layout: ElementLayout | None = None


def _check_count(value, name: str, upper: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= upper:
        raise ValueError(f"{name} must be in [0, {upper}] (the number of {what}), got {value}")
    return int(value)


def is_dtensor(weight) -> bool:
    """Whether ``weight`` is a ``torch.distributed.tensor.DTensor``, without importing it: a
    DTensor exists only once its module is imported."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    return dtensor is not None and isinstance(weight, dtensor)


def _stamp(weight: torch.Tensor) -> tuple:
    """What a plan depends on: the weight's storage, shape, strides, dtype and version counter
    (which every in-place change through torch bumps, the projection's own writes included);
    for a DTensor, its local shard's stamp, its placements and its global shape."""
    if is_dtensor(weight):
        with torch.no_grad():  # to_local() of a Parameter would record an autograd view
            local = weight.to_local()
        return _stamp(local), tuple(weight.placements), tuple(weight.shape)
    version = None if weight.is_inference() else weight._version
    return weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype, weight.device, version


def check_arguments(shape, k, granularity, block_size, min_per_row, min_per_col) -> tuple:
    """The argument checks of every projection, against the (global) 2-D weight ``shape``:
    ``(block_size, k, min_per_row, min_per_col)``, normalised; raises naming the argument."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if block_size is not None:
        block_size = normalize_block_size(block_size)
    elif granularity == "block":
        raise ValueError("block_size is required when granularity='block'")
    unit = "blocks" if granularity == "block" else "entries"
    rows, cols = block_grid(tuple(shape), block_size) if granularity == "block" else shape
    k = _check_count(k, "k", rows * cols, unit)
    min_per_row = _check_count(min_per_row, "min_per_row", cols, f"{unit} in a row")
    min_per_col = _check_count(min_per_col, "min_per_col", rows, f"{unit} in a column")
    return block_size, k, min_per_row, min_per_col


class _Prepared:
    """A checked, planned projection: nothing is written until ``apply()``, which refuses to run
    if the weight changed since (its storage, shape or values: the plan would keep the wrong
    entries), and so also runs at most once."""

    def __init__(self, weight, k, granularity, block_size, min_per_row, min_per_col, backend, element_layout):
        check_floating(weight, "weight")
        if weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor, got shape {tuple(weight.shape)}")
        # Written in place: a location shared by two entries would be ranked (and kept or
        # zeroed) twice.
        check_no_internal_overlap(weight, "weight")
        self.block_size, self.k, self.min_per_row, self.min_per_col = check_arguments(
            weight.shape, k, granularity, block_size, min_per_row, min_per_col)
        self.source, self.stamp = weight, _stamp(weight)  # the caller's tensor, as it is now
        self.weight = weight.detach()
        self.granularity = granularity
        self.element_layout = bool(element_layout)
        self.backend = REGISTRY.select(backend, weight.device, weight.dtype, None)
        if weight.numel() == 0:  # nothing to rank, nothing to write (k is 0)
            return
        # Block scores are a torch computation over the weight: check it first.
        if granularity == "block" or not self.backend.checks_finite:
            if not bool(torch.isfinite(self.weight).all()):
                raise ValueError("weight must be finite, but it holds NaN or Inf")
        if granularity == "block":
            self.scores = reference.block_norms(self.weight, self.block_size)
            self.keep = reference.topk_keep_mask(self.scores, self.k, self.min_per_row, self.min_per_col, "blocks")
            return
        self.forced, self.smallest_floor = None, float("inf")
        if self.min_per_row or self.min_per_col:
            self.forced, count, self.smallest_floor = self.backend.floors(self.weight, self.min_per_row,
                                                                          self.min_per_col)
            reference.check_floor_count(count, self.k, self.min_per_row, self.min_per_col)
        self.plan = self.backend.plan(self.weight, self.k, self.forced)

    def made_for(self, weight: torch.Tensor) -> bool:
        """Whether this plan was made for ``weight`` as it is now."""
        return _stamp(weight) == self.stamp

    def apply(self) -> ProjectionResult:
        if not self.made_for(self.source):
            raise RuntimeError("weight changed after this projection was planned (its storage, shape or values; "
                               "or the plan was applied already): plan it again")
        if self.weight.numel() == 0:
            counts = None
            if self.block_size is not None:
                counts = torch.zeros(block_grid(tuple(self.weight.shape), self.block_size), dtype=torch.int32,
                                     device=self.weight.device)
            return ProjectionResult(float("inf"), 0, 0, counts, self._layout(None))
        if self.granularity == "block":
            self.weight.masked_fill_(~expand_block_mask(self.keep, self.block_size, self.weight.shape), 0)
            kept = self.scores[self.keep]
            threshold = kept.min().item() if kept.numel() else float("inf")
            counts = reference.block_counts(self.weight, self.block_size)
            return ProjectionResult(threshold, self.k, int(counts.sum()), counts, self._layout(None))
        cutoff, nnz, counts, index = self.backend.apply(self.weight, self.plan, self.block_size,
                                                        self.element_layout)
        # Floor entries may be smaller than the fill's cutoff.
        return ProjectionResult(min(cutoff, self.smallest_floor), self.k, nnz, counts, self._layout(index))

    def _layout(self, index):
        if not self.element_layout:
            return None
        if index is None:  # a backend that does not list what it kept
            return ElementLayout.from_weight(self.weight)
        return ElementLayout._from_csr_csc(tuple(self.weight.shape), *index)


def prepare_projection(weight, k, *, granularity="element", block_size=None, min_per_row=0, min_per_col=0,
                       backend=None, element_layout=False):
    """Check and plan a projection without writing anything; ``.apply()`` runs it.
    ``element_layout=True``: the result carries the ``ElementLayout`` of what is left.

    A ``DTensor`` weight (2-D, a 1-D mesh, ``Shard(0)``, ``Shard(1)`` or ``Replicate()``) is
    projected onto its exact global top-k by ``sparsekern.projection.sharded``: every rank calls
    this in the same order (it runs collectives), with arguments that refer to the global
    weight; ``backend`` must be None, and ``SPARSEKERN_PROJECTION_BACKEND`` is ignored (the
    shards run their own selection; a replicated weight the automatic backend).
    """
    if is_dtensor(weight):
        from .sharded import ShardedProjection  # imports this module: not at the top

        return ShardedProjection(weight, k, granularity, block_size, min_per_row, min_per_col, backend,
                                 element_layout)
    return _Prepared(weight, k, granularity, block_size, min_per_row, min_per_col, backend, element_layout)


def topk_project_(weight: torch.Tensor, k: int, *, granularity: str = "element", block_size=None,
                  min_per_row: int = 0, min_per_col: int = 0, backend: str | None = None) -> ProjectionResult:
    """Keep the ``k`` entries (``granularity="element"``) or whole blocks (``"block"``, scored
    by L2 norm) of largest magnitude of the 2-D ``weight``, set the rest to zero, in place.

    ``block_size`` (int or pair, as in ``BlockLayout``): the blocks of block mode; in element
    mode, optional, the blocks whose nonzeros ``result.block_counts`` reports.
    ``min_per_row`` / ``min_per_col``: floors, in entries (blocks); they count towards ``k``.
    ``backend``: force one of ``projection_backends()``; None picks the fastest that can run.
    See the module docstring for the exact rule. Returns a ``ProjectionResult``. A ``DTensor``
    weight: see ``prepare_projection``.
    """
    return prepare_projection(weight, k, granularity=granularity, block_size=block_size,
                              min_per_row=min_per_row, min_per_col=min_per_col, backend=backend).apply()


def projection_backends(device="cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Projection backends that can run on ``device`` for ``dtype``, fastest first."""
    return REGISTRY.available(device, dtype, None)
