"""BlockLayout: which blocks of a dense ``[out_features, in_features]`` weight are active.

The layout owns every index the kernels need, built once on the weight's device:

* row-major (CSR over the block grid): ``row_ptr``, ``col_idx`` and ``block_row``
  (the block row of each active block, for the weight gradient);
* column-major (the transposed index): ``col_ptr`` and ``row_idx``, which the
  input gradient walks with the same kernel as the forward pass.

All index tensors are int32. Shapes need not be multiples of the block: the last
block row and column are then partial, and every kernel masks them.
"""

from __future__ import annotations

import math
import numbers

import torch

BLOCK_SIDES = (16, 32, 64, 128)


def _is_int(value) -> bool:
    """An integer, Python's or numpy's (``numbers.Integral``), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def normalize_block_size(block_size, name: str = "block_size") -> tuple[int, int]:
    """``32 -> (32, 32)``; ``(16, 64) -> (16, 64)``; anything else raises."""
    if _is_int(block_size):
        sides = (int(block_size), int(block_size))
    elif isinstance(block_size, (tuple, list)) and len(block_size) == 2 and all(_is_int(s) for s in block_size):
        sides = (int(block_size[0]), int(block_size[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {block_size!r}")
    for side in sides:
        if side not in BLOCK_SIDES:
            raise ValueError(f"{name} sides must each be one of {BLOCK_SIDES}, got {block_size!r}")
    return sides


def check_density(density, name: str = "density") -> float:
    """A number in [0, 1] (any ``numbers.Real``, numpy's included, but not a bool), as a float."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {density!r}")
    if not (0.0 <= float(density) <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {density!r}")
    return float(density)


def count_for_density(density: float, n: int) -> int:
    """The number of entries (or blocks) kept at ``density`` out of ``n``.

    Every density-to-count conversion in sparsekern goes through here, so a layout,
    a projection and a module built at the same density agree exactly. It is Python's
    ``round``: exact halves go to the even count (0.5 of 5 blocks keeps 2, of 7 keeps 4).
    """
    return int(round(check_density(density) * n))


def _check_shape(shape, name: str = "shape") -> tuple[int, int]:
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 2
        or not all(_is_int(s) and s > 0 for s in shape)
    ):
        raise ValueError(f"{name} must be (out_features, in_features), two positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])


def block_grid(shape, block_size) -> tuple[int, int]:
    """Number of block rows and block columns covering ``shape`` (edge blocks partial)."""
    (rows, cols), (bo, bi) = shape, block_size
    return math.ceil(rows / bo), math.ceil(cols / bi)


def check_holds_data(t: torch.Tensor, name: str) -> None:
    """A layout is its entries: a meta tensor has none to build the index from."""
    if t.is_meta:
        raise ValueError(f"{name} is on the meta device, which holds no values to build a layout from: build "
                         "the layout on a real device (random layouts are drawn on the CPU, also under "
                         "torch.device('meta')), or materialise the weight first (to_empty, load_state_dict)")


def random_mask(n: int, count: int, *, generator=None, device=None) -> torch.Tensor:
    """A flat bool mask of ``n`` with ``count`` entries true, placed uniformly at random, on ``device``
    (default: torch's default device, or the CPU where that is meta: a layout needs values).
    Drawn on the generator's device (the CPU by default) whatever the default device, so a
    seed gives the same layout under ``torch.device("meta")`` as outside it."""
    draw_on = generator.device if generator is not None else "cpu"
    chosen = torch.randperm(n, generator=generator, device=draw_on)[:count]
    flat = torch.zeros(n, dtype=torch.bool, device=draw_on)
    flat[chosen] = True
    if device is None:
        device = torch.get_default_device()
        device = "cpu" if device.type == "meta" else device
    return flat.to(device)


def _index_pointers(counts: torch.Tensor) -> torch.Tensor:
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=counts.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


class BlockLayout:
    """The set of active blocks of a ``[out_features, in_features]`` weight."""

    def __init__(self, block_mask: torch.Tensor, block_size, shape):
        self.shape = _check_shape(shape)
        self.block_size = normalize_block_size(block_size)
        grid = block_grid(self.shape, self.block_size)
        if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
            raise TypeError(f"block_mask must be a bool tensor, got {getattr(block_mask, 'dtype', type(block_mask))}")
        check_holds_data(block_mask, "block_mask")
        if tuple(block_mask.shape) != grid:
            raise ValueError(
                f"block_mask must have shape {grid} (block rows, block columns) for shape {self.shape} "
                f"and block_size {self.block_size}, got {tuple(block_mask.shape)}"
            )
        self._block_mask = block_mask.clone()  # own copy: the caller's mask may change later
        # Row-major: nonzero() lists blocks in row-major order, columns ascending.
        rows, cols = self._block_mask.nonzero(as_tuple=True)
        self.block_row = rows.to(torch.int32)
        self.col_idx = cols.to(torch.int32)
        self.row_ptr = _index_pointers(self._block_mask.sum(1, dtype=torch.int32))
        # Column-major: the same blocks listed per block column, rows ascending.
        self.row_idx = self._block_mask.t().nonzero(as_tuple=True)[1].to(torch.int32)
        self.col_ptr = _index_pointers(self._block_mask.sum(0, dtype=torch.int32))

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_block_mask(cls, block_mask: torch.Tensor, block_size, shape) -> "BlockLayout":
        return cls(block_mask.to(torch.bool) if isinstance(block_mask, torch.Tensor) else block_mask, block_size, shape)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, block_size) -> "BlockLayout":
        """Active blocks are those holding any nonzero entry of ``weight``."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor, got {getattr(weight, 'shape', type(weight))}")
        check_holds_data(weight, "weight")
        bo, bi = normalize_block_size(block_size)
        shape = _check_shape(tuple(weight.shape), "weight.shape")
        return cls(blockwise_any(weight.detach() != 0, (bo, bi)), (bo, bi), shape)

    @classmethod
    def random(cls, shape, block_size, density, *, generator=None, device=None) -> "BlockLayout":
        """Exactly ``count_for_density(density, n_blocks)`` active blocks, uniformly at random, on
        ``device`` (see ``random_mask``: the CPU under ``torch.device("meta")``)."""
        shape = _check_shape(shape)
        block_size = normalize_block_size(block_size)
        density = check_density(density)
        n_rows, n_cols = block_grid(shape, block_size)
        n = n_rows * n_cols
        flat = random_mask(n, count_for_density(density, n), generator=generator, device=device)
        return cls(flat.view(n_rows, n_cols), block_size, shape)

    # -------------------------------------------------------------- properties
    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self._block_mask.shape)

    @property
    def nnz_blocks(self) -> int:
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        return self.nnz_blocks / self._block_mask.numel()

    @property
    def device(self) -> torch.device:
        return self._block_mask.device

    def to_block_mask(self) -> torch.Tensor:
        return self._block_mask.clone()

    def to_mask(self) -> torch.Tensor:
        """Element mask of the weight's shape (edge blocks clipped)."""
        return expand_block_mask(self._block_mask, self.block_size, self.shape)

    def to(self, device) -> "BlockLayout":
        device = torch.device(device)
        if device == self.device:
            return self
        return BlockLayout(self._block_mask.to(device), self.block_size, self.shape)

    def index_tensors(self) -> tuple[torch.Tensor, ...]:
        """``(row_ptr, col_idx, block_row, col_ptr, row_idx)``, the order the ops take them."""
        return self.row_ptr, self.col_idx, self.block_row, self.col_ptr, self.row_idx

    # ----------------------------------------------------------------- dunder
    def __eq__(self, other) -> bool:
        if not isinstance(other, BlockLayout):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.block_size == other.block_size
            and torch.equal(self._block_mask.cpu(), other._block_mask.cpu())
        )

    __hash__ = None  # mutable-content semantics: equal layouts need not hash alike

    def __repr__(self) -> str:
        return (
            f"BlockLayout(shape={self.shape}, block_size={self.block_size}, "
            f"nnz_blocks={self.nnz_blocks}/{self._block_mask.numel()}, density={self.density:.4g}, "
            f"device={self.device})"
        )


def blocked(t: torch.Tensor, block_size, dtype=None) -> torch.Tensor:
    """``t [rows, cols]`` as ``[block rows, bo, block cols, bi]``, zero-padded only if the shape needs it."""
    bo, bi = block_size
    dtype = t.dtype if dtype is None else dtype
    n_rows, n_cols = block_grid(tuple(t.shape), (bo, bi))
    if (n_rows * bo, n_cols * bi) != tuple(t.shape):
        padded = t.new_zeros((n_rows * bo, n_cols * bi), dtype=dtype)
        padded[: t.shape[0], : t.shape[1]] = t
        t = padded
    return t.to(dtype).reshape(n_rows, bo, n_cols, bi)


def blockwise_any(mask: torch.Tensor, block_size) -> torch.Tensor:
    """``[rows, cols]`` bool -> ``[block rows, block cols]``: does each block hold any True."""
    return blocked(mask, block_size, torch.bool).any(dim=3).any(dim=1)


def expand_block_mask(block_mask: torch.Tensor, block_size, shape) -> torch.Tensor:
    """``[block rows, block cols]`` -> the element mask of ``shape`` (edge blocks clipped)."""
    bo, bi = block_size
    full = block_mask.repeat_interleave(bo, 0).repeat_interleave(bi, 1)
    return full[: shape[0], : shape[1]].contiguous()
