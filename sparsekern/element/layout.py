"""ElementLayout: which entries of a dense ``[out_features, in_features]`` weight are nonzero.

It owns the indices the element kernels walk, built once on the layout's device:

* row-major (CSR): ``row_ptr`` [out + 1] and ``col_idx`` [nnz], columns ascending within a
  row; the forward pass and the weight gradient walk it;
* column-major (CSC, the transposed index): ``col_ptr`` [in + 1] and ``row_idx`` [nnz], rows
  ascending within a column; the input gradient walks it with the forward kernel.

Indices are int32; the pointers are int32 while the nonzeros fit (below 2^31), int64 beyond.
"""

from __future__ import annotations

import torch

from ..block.layout import _check_shape, check_density, check_holds_data, count_for_density, random_mask
from .reference import _mask as index_mask  # the oracle's own index-to-mask step

_INT32_MAX = 2**31 - 1


def _pointers(counts: torch.Tensor, nnz: int) -> torch.Tensor:
    dtype = torch.int32 if nnz <= _INT32_MAX else torch.int64
    ptr = torch.zeros(counts.numel() + 1, dtype=dtype, device=counts.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


class ElementLayout:
    """The set of nonzero entries of a ``[out_features, in_features]`` weight."""

    def __init__(self, mask: torch.Tensor):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.dim() != 2:
            raise ValueError(f"mask must be 2-D [out_features, in_features], got shape {tuple(mask.shape)}")
        check_holds_data(mask, "mask")
        self.shape = _check_shape(tuple(mask.shape), "mask.shape")
        out_features, in_features = self.shape
        if max(out_features, in_features) > _INT32_MAX:
            raise ValueError(f"mask.shape sides must be below 2^31, got {self.shape}")
        # nonzero() lists entries in row-major order: columns ascending within each row.
        rows, cols = mask.nonzero(as_tuple=True)
        self._set_index(rows, cols)

    def _set_index(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Both indices from the entries listed row-major (columns ascending within a row)."""
        out_features, in_features = self.shape
        self.nnz = int(cols.numel())
        self.col_idx = cols.to(torch.int32)
        self.row_ptr = _pointers(torch.bincount(rows, minlength=out_features), self.nnz)
        # The transposed index: a stable sort by column keeps rows ascending within a column
        # (O(nnz), where walking the transposed mask reads every entry with a stride).
        order = torch.argsort(self.col_idx, stable=True)
        self.row_idx = rows[order].to(torch.int32)
        self.col_ptr = _pointers(torch.bincount(cols, minlength=in_features), self.nnz)

    @classmethod
    def _from_csr_csc(cls, shape, row_ptr, col_idx, col_ptr, row_idx) -> "ElementLayout":
        """A layout from indices a kernel built and vouches for (the projection's own pass):
        nothing is rechecked. Pointers are narrowed to int32 where the nonzeros fit."""
        layout = cls.__new__(cls)
        layout.shape = tuple(shape)
        layout.nnz = int(col_idx.numel())
        narrow = torch.int32 if layout.nnz <= _INT32_MAX else torch.int64
        layout.row_ptr, layout.col_ptr = row_ptr.to(narrow), col_ptr.to(narrow)
        layout.col_idx, layout.row_idx = col_idx, row_idx
        return layout

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "ElementLayout":
        """The entries where ``mask`` (bool, or anything nonzero) is true."""
        if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
            mask = mask != 0
        return cls(mask)

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> "ElementLayout":
        """The nonzero entries of ``weight`` (NaN counts as nonzero)."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor, got {getattr(weight, 'shape', type(weight).__name__)}")
        check_holds_data(weight, "weight")
        return cls(weight.detach() != 0)

    @classmethod
    def from_entries(cls, shape, rows: torch.Tensor, cols: torch.Tensor) -> "ElementLayout":
        """The entries ``(rows[j], cols[j])`` of a ``shape`` weight, listed row-major (rows
        ascending, columns ascending within a row, none twice): the index without a
        ``[out, in]`` mask, for callers that hold the entries already (the sharded projection)."""
        shape = _check_shape(tuple(shape), "shape")
        for name, t in (("rows", rows), ("cols", cols)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex \
                    or t.dtype == torch.bool:
                raise TypeError(f"{name} must be a 1-D integer tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
        if rows.numel() != cols.numel() or rows.device != cols.device:
            raise ValueError(f"rows and cols must list as many entries on one device, got {rows.numel()} on "
                             f"{rows.device} and {cols.numel()} on {cols.device}")
        if max(shape) > _INT32_MAX:
            raise ValueError(f"shape sides must be below 2^31, got {shape}")
        rows, cols = rows.long(), cols.long()
        if rows.numel():
            if int(rows.min()) < 0 or int(rows.max()) >= shape[0] or int(cols.min()) < 0 or int(cols.max()) >= shape[1]:
                raise ValueError(f"rows and cols must index a {shape} weight")
            key = rows * shape[1] + cols
            if bool((key[1:] <= key[:-1]).any()):
                raise ValueError("rows and cols must list the entries row-major, each once")
        layout = cls.__new__(cls)
        layout.shape = shape
        layout._set_index(rows, cols)
        return layout

    @classmethod
    def random(cls, shape, density, *, generator=None, device=None) -> "ElementLayout":
        """Exactly ``count_for_density(density, out * in)`` nonzeros, placed uniformly at random, on
        ``device`` (see ``random_mask``: the CPU under ``torch.device("meta")``)."""
        out_features, in_features = _check_shape(shape)
        n = out_features * in_features
        flat = random_mask(n, count_for_density(check_density(density), n), generator=generator, device=device)
        return cls(flat.view(out_features, in_features))

    # -------------------------------------------------------------- properties
    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def device(self) -> torch.device:
        return self.col_idx.device

    def to_mask(self) -> torch.Tensor:
        return index_mask(self.row_ptr, self.col_idx, self.shape)

    def to(self, device) -> "ElementLayout":
        device = torch.device(device)
        if device == self.device:
            return self
        return ElementLayout(self.to_mask().to(device))

    def index_tensors(self) -> tuple[torch.Tensor, ...]:
        """``(row_ptr, col_idx, col_ptr, row_idx)``, the order the ops take them."""
        return self.row_ptr, self.col_idx, self.col_ptr, self.row_idx

    # ----------------------------------------------------------------- dunder
    def __eq__(self, other) -> bool:
        if not isinstance(other, ElementLayout):
            return NotImplemented
        return (self.shape == other.shape and self.nnz == other.nnz
                and torch.equal(self.row_ptr.cpu().long(), other.row_ptr.cpu().long())
                and torch.equal(self.col_idx.cpu(), other.col_idx.cpu()))

    __hash__ = None  # mutable-content semantics, as BlockLayout

    def __repr__(self) -> str:
        return (f"ElementLayout(shape={self.shape}, nnz={self.nnz}/{self.shape[0] * self.shape[1]}, "
                f"density={self.density:.4g}, device={self.device})")
