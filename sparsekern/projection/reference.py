"""Sort-based reference of the top-k projection: the oracle every fused backend is tested against.

Exact by construction: one stable descending sort decides everything, so ties go to
the lowest row-major index. Also the block-mode selection of every backend (block
scores are a small ``[block rows, block cols]`` grid, not worth a kernel).
"""

from __future__ import annotations

import torch

from ..block.layout import blocked


def block_norms(weight: torch.Tensor, block_size) -> torch.Tensor:
    """L2 norm of every block of ``weight``: ``[block rows, block cols]`` (edge blocks partial), fp32.

    A block's bits depend on its own entries only, never on the weight's width, the number
    of blocks, the device or the threads: the squares are summed by a fixed pairwise tree
    (rows halved, then columns; block sides are powers of two) of elementwise adds, where a
    torch reduction picks its order from the whole tensor's shape. So a block scored on one
    shard of a sharded weight ties with, and ranks like, the same block in the whole weight.
    A few block rows at a time, in one fp32 buffer: no copy of the whole weight.
    """
    grid = blocked(weight.detach(), block_size)  # [block rows, bo, block cols, bi], a view when no padding
    n_rows, bo, n_cols, bi = grid.shape
    norms = torch.empty((n_rows, n_cols), dtype=torch.float32, device=grid.device)
    step = max(1, min(n_rows, (1 << 20) // max(1, bo * n_cols * bi)))  # about 4 MiB of squares a step
    buffer = torch.empty((step, bo, n_cols, bi), dtype=torch.float32, device=grid.device)
    for start in range(0, n_rows, step):
        part = grid[start:start + step]
        squares = buffer[:part.shape[0]].copy_(part).square_()
        for dim in (1, 3):
            while squares.shape[dim] > 1:
                half = squares.shape[dim] // 2
                first = squares.narrow(dim, 0, half)
                first.add_(squares.narrow(dim, half, half))
                squares = first
        torch.sqrt(squares.squeeze(3).squeeze(1), out=norms[start:start + step])
    return norms


def _top_along(scores: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """Bool mask of the ``m`` largest scores of every row (``dim=1``) or column (``dim=0``)."""
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if m > 0:
        order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
        keep.scatter_(dim, order.narrow(dim, 0, m), True)
    return keep


def floor_mask(scores: torch.Tensor, min_per_row: int = 0, min_per_col: int = 0) -> torch.Tensor:
    """The floor set F: each row's ``min_per_row`` and each column's ``min_per_col`` largest
    scores (ties: lowest index), as a bool mask."""
    return _top_along(scores, min_per_row, 1) | _top_along(scores, min_per_col, 0)


def keep_mask(scores: torch.Tensor, k: int, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the ``k`` entries kept from non-negative ``scores`` (2-D): every ``forced``
    entry (the caller checks there are at most ``k``), then the largest of the rest, ties to
    the lowest row-major index."""
    ranked = scores.to(torch.float64)
    if forced is not None:  # floor entries rank above every score
        ranked = torch.where(forced, torch.inf, ranked)
    order = torch.sort(ranked.flatten(), descending=True, stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = True
    return keep.view(scores.shape)


def check_floor_count(n_forced: int, k: int, min_per_row: int, min_per_col: int, unit: str = "entries") -> None:
    if n_forced > k:
        raise ValueError(
            f"k={k} is smaller than the {n_forced} {unit} the floors min_per_row={min_per_row}, "
            f"min_per_col={min_per_col} keep"
        )


def topk_keep_mask(scores: torch.Tensor, k: int, min_per_row: int = 0, min_per_col: int = 0,
                   unit: str = "entries") -> torch.Tensor:
    """Bool mask of the ``k`` entries kept from non-negative ``scores`` (2-D).

    First the floor set F (see ``floor_mask``); then the largest remaining scores
    until ``k`` are kept, ties to the lowest row-major index. Raises ValueError when
    ``|F| > k``.
    """
    forced = floor_mask(scores, min_per_row, min_per_col)
    check_floor_count(int(forced.sum()), k, min_per_row, min_per_col, unit)
    return keep_mask(scores, k, forced)


def block_counts(weight: torch.Tensor, block_size) -> torch.Tensor:
    """Nonzeros in every block of ``weight``: ``[block rows, block cols]`` int32."""
    return blocked(weight != 0, block_size, torch.bool).sum(dim=(1, 3), dtype=torch.int32)


def top_blocks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest scores; ties go to the lowest row-major index."""
    return topk_keep_mask(scores, k)
