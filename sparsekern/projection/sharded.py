"""The exact global top-k projection of a sharded weight: a ``DTensor`` on a 1-D device mesh,
placed ``Shard(0)`` (rows split), ``Shard(1)`` (columns split) or ``Replicate()``.

``prepare_projection`` / ``topk_project_`` hand a DTensor here. Every rank calls them in the
same order, with arguments that refer to the global weight; the entries (blocks) kept are
bitwise those ``topk_project_`` keeps on the whole weight (the rule of ``topk_project``: the
floors, then the fill, ties to the lowest global row-major index; a row or a column split
across shards is floored as a whole). The weight is never gathered. The plan does, over the
mesh's process group:

1. ``arguments``: one all-gather of a small table (every rank's arguments, global shape,
   dtype, placement, shard shape, and whether its shard holds NaN/Inf or overlapping memory;
   for ``Replicate()`` a checksum of its bits). Every rank checks the same table and so
   raises the same error (ranks that disagree, bad input, replicas that differ) before any
   other collective: nothing hangs, nothing is written.
2. ``floors`` (only with a floor along the split dimension: ``min_per_col`` for ``Shard(0)``,
   ``min_per_row`` for ``Shard(1)``): each rank's own ``m`` largest keys of every split line,
   all-gathered; the global top ``m`` of a line is among their union, and the ties go in rank
   order, which is the global index order along the line.
3. ``select``: a radix select of the fill's cutoff among the keys outside the floors, 8 bits a
   pass, each pass's 256-bin int64 histogram all-reduced (the first one's top bin counts the
   floors); keys are ``|w|``'s bits (``keys.py``; 4 passes for fp32, 2 for fp16/bf16), in
   block mode the bits of the fp32 block norms (4 passes).
4. ``ties``: each rank's count of the keys equal to the cutoff (per row for ``Shard(1)``, where
   the global row-major order visits the ranks within every row) and its smallest floor key,
   all-gathered: each rank keeps the first of its ties the global order gives it.

``apply()`` writes the local shard in place and does one collective, which also carries every
rank's "weight changed since it was planned" flag, so that all ranks refuse or none does:
``layout``, an all-gather of the packed bits of each shard's nonzeros (padded to the largest
shard) when the ``ElementLayout`` is asked for, else ``counts``, an all-reduce of the nonzero
count and the per-block counts. A ``Replicate()`` weight is projected by the normal path on
every rank (the same bits everywhere); its apply all-reduces the flag alone.

The communication of a projection (``last_communication()`` records it, as this rank's input
bytes to each collective; a ring all-reduce sends about twice that, an all-gather ``p - 1``
times it): with ``p`` ranks, a ``[R, C]`` weight, units ``[UR, UC] = [R, C]`` (element mode)
or the block grid (block mode), key bytes ``b`` (4, or 2 for fp16/bf16 entries) and ``P = b``
passes:

=============  ======  =====================================================================
step           rounds  bytes sent by each rank
=============  ======  =====================================================================
arguments      1       ``8 * TABLE_FIELDS`` (168)
floors         0 or 1  ``m * UC * b`` for ``Shard(0)``, ``m * UR * b`` for ``Shard(1)``
                       (``m`` the floor along the split dimension; none when it is 0)
select         ``P``   ``8 * 256 * P``
ties           1       16 for ``Shard(0)``, ``8 * (UR + 1)`` for ``Shard(1)``
layout         1       ``ceil(R / p) * ceil(C / 8) + 1`` for ``Shard(0)``,
                       ``R * ceil(ceil(C / p) / 8) + 1`` for ``Shard(1)``
or counts      1       ``8 * (2 + n_blocks)`` (``n_blocks`` the blocks of ``block_size``, 0
                       without one)
=============  ======  =====================================================================

``Replicate()``: ``arguments`` and an 8-byte ``apply``. An empty weight: ``arguments`` only.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist

from .._checks import check_floating, has_internal_overlap
from ..block.layout import block_grid, expand_block_mask, normalize_block_size
from ..element.layout import ElementLayout
from ..mask_bits import pack_mask, unpack_mask
from . import floors, reference
from .backends import REGISTRY
from .keys import _BITS, key_to_magnitude
from .topk_project import GRANULARITIES, ProjectionResult, _Prepared, _stamp, check_arguments

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PLACEMENTS = ("Shard(0)", "Shard(1)", "Replicate()")
# Above every key (and at least keys.FORCED_KEY, so key_to_magnitude reads it as inf): "none".
_NO_KEY = 2**31 - 1
_INVALID = -(2**63)  # a table entry for an argument that is no int (the checks then name it)


class Communication(NamedTuple):
    """What this rank sent in one sharded projection (its plan and its apply): ``calls`` lists
    ``(step, collective, bytes)``, the bytes being this rank's input to the collective."""

    calls: tuple

    @property
    def rounds(self) -> int:
        return len(self.calls)

    @property
    def bytes_sent(self) -> int:
        return sum(size for _, _, size in self.calls)


_last_calls: list = []


def last_communication() -> Communication:
    """The communication of the sharded projection planned or applied last in this process."""
    return Communication(tuple(_last_calls))


def _record_into(calls: list) -> None:
    global _last_calls
    _last_calls = calls


class _Wire:
    """The collectives of one projection over the mesh's process group, each one recorded."""

    def __init__(self, group, calls: list):
        self.group, self.calls = group, calls
        self.world = dist.get_world_size(group)
        self.order = None  # group ranks in mesh-coordinate order, once the table told them

    def all_gather(self, step: str, tensor: torch.Tensor) -> torch.Tensor:
        """``[world, *tensor.shape]``: every rank's ``tensor`` (one shape on all), in mesh order.
        Sent as bytes: gloo has no 16-bit integers."""
        data = tensor.contiguous().view(-1).view(torch.uint8)
        out = torch.empty(self.world * data.numel(), dtype=torch.uint8, device=data.device)
        dist.all_gather_single(out, data, group=self.group)
        self.calls.append((step, "all_gather", data.numel()))
        gathered = out.view(tensor.dtype).view(self.world, *tensor.shape)
        return gathered if self.order is None else gathered[self.order]

    def all_reduce(self, step: str, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of the int64 ``tensor``, in place."""
        dist.all_reduce(tensor, group=self.group)
        self.calls.append((step, "all_reduce", tensor.numel() * tensor.element_size()))
        return tensor


# ----------------------------------------------------------------------------- the table
# Fields every rank must agree on, then each rank's own.
AGREED = ("placement", "ndim", "rows", "cols", "dtype", "granularity", "k", "block_rows", "block_cols",
          "min_per_row", "min_per_col", "element_layout", "backend")
OWN = ("rank", "coordinate", "local_rows", "local_cols", "overlap", "nonfinite", "checksum_a", "checksum_b")
TABLE_FIELDS = len(AGREED) + len(OWN)


def _count_entry(value) -> int:
    """A count as the table holds it: the int, or ``_INVALID`` when it is none (not an int,
    or beyond int64); the argument checks then raise on every rank."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) < value < 2**63:
        return _INVALID
    return value


def _block_entry(block_size) -> tuple[int, int]:
    if block_size is None:
        return 0, 0
    try:
        return normalize_block_size(block_size)
    except (TypeError, ValueError):
        return _INVALID, _INVALID


def _placement_code(placement, ndim: int) -> int:
    from torch.distributed.tensor import Replicate, Shard

    if type(placement) is Shard and ndim == 2:  # not a subclass: they lay shards out otherwise
        return placement.dim % 2
    return 2 if isinstance(placement, Replicate) else len(PLACEMENTS)


def _replica_checksum(t: torch.Tensor) -> tuple[int, int]:
    """Two sums of the raw bits weighted by position, modulo 2^31 - 1, exact in int64 (no
    product overflows): equal replicas give equal sums, different ones almost surely not."""
    prime, chunk = 2**31 - 1, 1 << 22
    ints = {2: torch.int16, 4: torch.int32}[t.element_size()]
    bits = t.detach().reshape(-1).view(ints)
    sums = [0, 0]
    for start in range(0, bits.numel(), chunk):
        part = bits[start:start + chunk].to(torch.int64) & (2 ** (8 * t.element_size()) - 1)
        position = torch.arange(start, start + part.numel(), dtype=torch.int64, device=t.device)
        for i, multiplier in enumerate((48271, 69621)):
            weight = (position * multiplier) % prime + 1
            sums[i] = (sums[i] + int(((part * weight) % prime).sum())) % prime
    return sums[0], sums[1]


def _describe(field: str, value: int) -> str:
    if value == _INVALID:
        return "not an int" if field in ("k", "min_per_row", "min_per_col") else "invalid"
    if field == "placement":
        return PLACEMENTS[value] if value < len(PLACEMENTS) else "another placement"
    if field == "dtype":
        return str(DTYPES[value]).replace("torch.", "") if value >= 0 else "another dtype"
    if field == "granularity":
        return repr(GRANULARITIES[value]) if value >= 0 else "invalid"
    if field == "backend":
        return "forced" if value else "None"
    if field == "element_layout":
        return str(bool(value))
    return str(value)


def _disagreements(table: torch.Tensor) -> list[str]:
    """Every agreed field on which the ranks differ, each with every rank's value."""
    ranks = table[:, OWN.index("rank") + len(AGREED)].tolist()
    found = []
    for i, field in enumerate(AGREED):
        values = table[:, i].tolist()
        if len(set(values)) > 1:
            listed = ", ".join(f"rank {r}: {_describe(field, v)}" for r, v in zip(ranks, values))
            found.append(f"{field} ({listed})")
    return found


def _expected_sizes(n: int, world: int) -> list[int]:
    """The shard sizes DTensor's ``Shard`` gives ``n`` lines on ``world`` ranks (torch.chunk's)."""
    size = math.ceil(n / world) if world else 0
    return [max(0, min(size, n - i * size)) for i in range(world)]


# ----------------------------------------------------------------------------- selection
# Each step reads the shard a few times at most (they are what a projection costs): index
# lists where few entries qualify (ties, floors), instead of masks and cumsums over all.
def _first_in_lines(line: torch.Tensor, position: torch.Tensor, n_lines: int, allowed: torch.Tensor):
    """Of the entries ``(line, position)``, listed line by line in index order, the first
    ``allowed[l]`` of every line ``l``."""
    counts = torch.bincount(line, minlength=n_lines)
    rank = torch.arange(line.numel(), device=line.device) - (counts.cumsum(0) - counts)[line]
    chosen = rank < allowed[line]
    return line[chosen], position[chosen]


def _split_floors(wire, keys, split_dim, me, m, wire_dtype):
    """The floor of ``m`` per split line (a column for Shard(0), a row for Shard(1)) on this
    shard, as (rows, cols), from every rank's candidates: its own ``m`` largest keys of each line."""
    along = keys.t() if split_dim == 0 else keys  # [lines, local length]
    lines = along.shape[0]  # every split line crosses this shard
    # Padding -1 is below every key: never among a line's m largest (a line has >= m entries).
    candidates = torch.full((lines, m), -1, dtype=keys.dtype, device=keys.device)
    take = min(m, along.shape[1])
    if take:
        candidates[:, :take] = torch.topk(along, take, dim=1).values
    gathered = wire.all_gather("floors", candidates.to(wire_dtype))  # [world, lines, m]
    cutoff = torch.topk(gathered.permute(1, 0, 2).reshape(lines, -1), m, dim=1).values[:, m - 1:]  # m-th largest
    room = m - (gathered > cutoff).sum((0, 2))
    # A rank's candidates hold all its keys above the cutoff and enough of its ties: whatever
    # it left out, the ranks before it (first in the line's index order) already fill the room.
    ties = (gathered == cutoff).sum(2)  # [world, lines]
    allotted = (room - (ties.cumsum(0) - ties)[me]).clamp(min=0).minimum(ties[me])
    line, position = torch.nonzero(along > cutoff, as_tuple=True)
    tie_line, tie_position = _first_in_lines(*torch.nonzero(along == cutoff, as_tuple=True), lines, allotted)
    line, position = torch.cat([line, tie_line]), torch.cat([position, tie_position])
    return (position, line) if split_dim == 0 else (line, position)


def _digit(bits: torch.Tensor, index: int) -> torch.Tensor:
    """Digit ``index`` (0: the most significant) of the key of every entry of the 1-D ``bits``
    (raw bits: the key is them without the sign), as uint8: the byte itself, read through a
    uint8 view, so no shift and no key array over the whole shard."""
    width = bits.element_size()
    byte = width - 1 - index if sys.byteorder == "little" else index
    digit = bits.view(torch.uint8).view(-1, width)[:, byte]
    return digit & 0x7F if index == 0 else digit.contiguous()  # a copy: never writes the weight


def _radix_select(wire, bits, floor_keys, k, min_per_row, min_per_col, unit):
    """The fill's cutoff key among the keys outside the floors (global, from this shard's raw
    ``bits``), how many of its ties the fill takes, the fill's size, and the flat row-major
    positions on this shard of the keys equal to the cutoff and of those above it (floor
    entries included; None and empty when the fill is empty). Raises on every rank when the
    floors exceed k. ``floor_keys``: the keys of this shard's floor entries, taken out of every
    histogram."""
    candidates, floor_candidates, positions, above = bits.reshape(-1), floor_keys, None, []
    cutoff, remaining, fill = 0, 0, 0
    for index in range(bits.element_size()):
        digit, floor_digit = _digit(candidates, index), _digit(floor_candidates, index)
        hist = torch.bincount(digit, minlength=256) - torch.bincount(floor_digit, minlength=256)
        if index == 0:  # the top digit is below 128 (no sign): the top bin is free to count the floors
            hist[255] = floor_keys.numel()
        hist = wire.all_reduce("select", hist).cpu()
        if index == 0:
            n_forced = int(hist[255])
            reference.check_floor_count(n_forced, k, min_per_row, min_per_col, unit)
            remaining = fill = k - n_forced
            hist[255] = 0
        if remaining > 0:  # the bin holding the remaining-th largest key
            at_or_above = hist.flip(0).cumsum(0)
            j = int(torch.searchsorted(at_or_above, remaining))
            remaining -= int(at_or_above[j]) - int(hist[255 - j])
            b = 255 - j
            cutoff = (cutoff << 8) | b
            # One scan for both: the fill takes every key above the bin, the next pass looks into it.
            reached = torch.nonzero(digit >= b).squeeze(1)
            reached_digit = digit[reached]
            chosen, higher = reached[reached_digit == b], reached[reached_digit > b]
            above.append(higher if positions is None else positions[higher])
            positions = chosen if positions is None else positions[chosen]
            candidates, floor_candidates = candidates[chosen], floor_candidates[floor_digit == b]
        else:
            cutoff <<= 8
    empty = torch.zeros(0, dtype=torch.int64, device=bits.device)
    return cutoff, remaining, fill, positions, torch.cat([empty, *above])


def _place_ties(wire, forced, positions, need, split_dim, me, smallest_floor):
    """The fill's ties at the cutoff kept on this shard, as flat row-major positions, in the
    global row-major order, and the global smallest floor key (from every rank's
    ``smallest_floor``). ``positions``: this shard's keys equal to the cutoff (None: no fill)."""
    rows_here, cols_here = forced.shape
    if positions is None:
        positions = torch.zeros(0, dtype=torch.int64, device=forced.device)
    positions = positions[~forced.view(-1)[positions]]  # ascending: row-major
    smallest = torch.tensor([smallest_floor], dtype=torch.int64, device=forced.device)
    if split_dim == 0:  # rank order is the global order
        mine = torch.tensor([positions.numel()], dtype=torch.int64, device=forced.device)
        gathered = wire.all_gather("ties", torch.cat([mine, smallest]))
        positions = positions[:max(0, need - int(gathered[:me, 0].sum()))]
    else:  # row by row, and within a row rank by rank
        rows, cols = positions // max(cols_here, 1), positions % max(cols_here, 1)
        counts = torch.bincount(rows, minlength=rows_here)
        gathered = wire.all_gather("ties", torch.cat([counts, smallest]))
        counts = gathered[:, :-1]  # [world, rows]
        by_row = counts.t().reshape(-1)
        before = (by_row.cumsum(0) - by_row).view(counts.shape[1], -1)[:, me]
        rows, cols = _first_in_lines(rows, cols, rows_here, (need - before).clamp(min=0).minimum(counts[me]))
        positions = rows * cols_here + cols
    return positions, int(gathered[:, -1].min())


def _layout_from_bits(packed_parts, offsets, split_dim, shape) -> tuple:
    """The global ``ElementLayout`` from every shard's packed bits, and its entries (rows, cols)
    in row-major order: only the nonzero bytes are unpacked (at density 1/64, one in eight)."""
    empty = torch.zeros(0, dtype=torch.int64, device=packed_parts[0].device)
    rows, cols = [empty], [empty]
    in_byte = torch.arange(8, device=packed_parts[0].device)
    for packed, offset in zip(packed_parts, offsets):
        flat = packed.reshape(-1)
        at = torch.nonzero(flat).squeeze(1)
        if not at.numel():  # (unpack_mask cannot shape zero rows)
            continue
        hit = unpack_mask(flat[at].view(-1, 1), 8)  # [bytes, 8]: byte b holds columns 8b ... 8b + 7
        bit = (at.unsqueeze(1) * 8 + in_byte)[hit]  # row-major bit index in the padded shard
        width = packed.shape[1] * 8
        row, col = bit // width, bit % width
        rows.append(row + offset if split_dim == 0 else row)
        cols.append(col + offset if split_dim == 1 else col)
    rows, cols = torch.cat(rows), torch.cat(cols)
    if split_dim == 1:  # rank by rank within a row: row-major is a stable sort by row
        order = torch.argsort(rows, stable=True)
        rows, cols = rows[order], cols[order]
    return ElementLayout.from_entries(shape, rows, cols), rows, cols


# ----------------------------------------------------------------------------- the plan
class ShardedProjection:
    """A checked, planned projection of a DTensor weight (see the module docstring), with the
    interface of a plain tensor's plan: ``granularity``, ``made_for(weight)``, ``apply()``
    (refused, on every rank, when the weight changed on any rank since it was planned), and
    ``communication``, what this rank sent for it."""

    def __init__(self, weight, k, granularity, block_size, min_per_row, min_per_col, backend, element_layout):
        self.calls: list = []
        _record_into(self.calls)
        mesh = weight.device_mesh
        if mesh.ndim != 1:  # the same mesh on every rank: all raise here, before any collective
            raise ValueError(f"weight is a DTensor on a {mesh.ndim}-D device mesh {tuple(mesh.shape)}; the sharded "
                             "projection takes a 1-D mesh (Shard(0), Shard(1) or Replicate())")
        self.source, self.stamp = weight, _stamp(weight)
        with torch.no_grad():
            self.local = weight.to_local().detach()
        self.granularity = granularity
        self.element_layout = bool(element_layout)
        self.inner = None  # the normal plan of a Replicate() weight
        self.wire = _Wire(mesh.get_group(), self.calls)
        placement = weight.placements[0]
        table = self._exchange_table(weight, mesh, placement, k, granularity, block_size, min_per_row, min_per_col,
                                     backend)
        self._check_table(weight, table, placement, backend, k, granularity, block_size, min_per_row, min_per_col)
        if self.placement == 2:
            # Every replica is the whole weight (bitwise equal: checked): the normal path, with
            # the automatic backend whatever SPARSEKERN_PROJECTION_BACKEND says.
            automatic = REGISTRY.automatic_choice(self.local.device, self.local.dtype, None)
            self.inner = _Prepared(self.local, k, granularity, block_size, min_per_row, min_per_col, automatic,
                                   element_layout)
            return
        if math.prod(self.shape) == 0:  # nothing to rank (k is 0)
            return
        self._select()

    @property
    def communication(self) -> Communication:
        return Communication(tuple(self.calls))

    # ------------------------------------------------------------------ the table
    def _exchange_table(self, weight, mesh, placement, k, granularity, block_size, min_per_row, min_per_col,
                        backend) -> torch.Tensor:
        local, shape = self.local, tuple(weight.shape)
        code = _placement_code(placement, len(shape))
        dims = (list(shape) + [0, 0])[:2]
        local_dims = (list(local.shape) + [0, 0])[:2]
        checksum = (0, 0)
        if code == 2 and local.dtype in DTYPES:
            checksum = _replica_checksum(local)
        agreed = [code, len(shape), *dims, DTYPES.index(local.dtype) if local.dtype in DTYPES else -1,
                  GRANULARITIES.index(granularity) if granularity in GRANULARITIES else -1, _count_entry(k),
                  *_block_entry(block_size), _count_entry(min_per_row), _count_entry(min_per_col),
                  int(self.element_layout), int(backend is not None)]
        overlap = local.dim() == 2 and has_internal_overlap(local)
        nonfinite = False
        if local.is_floating_point() and local.numel():  # NaN and Inf reach the min or the max
            nonfinite = not bool(torch.isfinite(torch.stack(torch.aminmax(local))).all())
        own = [dist.get_rank(), mesh.get_local_rank(), *local_dims, int(overlap), int(nonfinite), *checksum]
        table = torch.tensor(agreed + own, dtype=torch.int64, device=local.device)
        table = self.wire.all_gather("arguments", table).cpu()
        # Gathered in group-rank order; shards go in mesh-coordinate order.
        order = torch.argsort(table[:, len(AGREED) + OWN.index("coordinate")])
        self.wire.order = order.to(local.device)
        return table[order]

    def _own(self, table, field) -> list[int]:
        return table[:, len(AGREED) + OWN.index(field)].tolist()

    def _check_table(self, weight, table, placement, backend, k, granularity, block_size, min_per_row,
                     min_per_col) -> None:
        """Every check, on the same table on every rank: the same error everywhere."""
        differ = _disagreements(table)
        if differ:
            raise ValueError("ranks disagree on " + "; ".join(differ) + ": every rank must project the same "
                             "weight (global shape, dtype, placement) with the same arguments, in the same order")
        self.ranks = ranks = self._own(table, "rank")
        if weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor, got shape {tuple(weight.shape)}")
        self.placement = int(table[0, 0])
        if self.placement == len(PLACEMENTS):
            raise ValueError(f"weight's placement {placement!r} is not supported: the sharded projection takes "
                             "Shard(0), Shard(1) or Replicate() (a Partial weight: redistribute it first)")
        if backend is not None:
            raise ValueError(f"backend must be None for a DTensor weight (the shards run their own selection), "
                             f"got {backend!r}")
        check_floating(self.local, "weight")
        if self.local.dtype not in DTYPES:
            raise TypeError(f"weight must be float32, float16 or bfloat16 for the sharded projection, got "
                            f"{self.local.dtype}")
        overlapping = [r for r, flag in zip(ranks, self._own(table, "overlap")) if flag]
        if overlapping:
            raise ValueError(f"weight has overlapping memory (expanded?) in the local shards of ranks {overlapping}; "
                             "clone() it")
        self.shape = tuple(weight.shape)
        world = len(ranks)
        local_shapes = list(zip(self._own(table, "local_rows"), self._own(table, "local_cols")))
        if self.placement == 2:
            expected = [self.shape] * world
        else:
            dim = self.placement
            sizes = _expected_sizes(self.shape[dim], world)
            expected = [(s, self.shape[1]) if dim == 0 else (self.shape[0], s) for s in sizes]
        wrong = [f"rank {r}: {tuple(got)} (expected {want})" for r, got, want in zip(ranks, local_shapes, expected)
                 if tuple(got) != want]
        if wrong:
            raise ValueError(f"weight's local shards do not tile its global shape {self.shape} as DTensor's "
                             f"{PLACEMENTS[self.placement]} does: " + ", ".join(wrong))
        self.block_size, self.k, self.min_per_row, self.min_per_col = check_arguments(
            self.shape, k, granularity, block_size, min_per_row, min_per_col)
        nonfinite = [r for r, flag in zip(ranks, self._own(table, "nonfinite")) if flag]
        if nonfinite:
            raise ValueError(f"weight must be finite, but it holds NaN or Inf (in the local shards of ranks "
                             f"{nonfinite})")
        if self.placement == 2:
            sums = list(zip(self._own(table, "checksum_a"), self._own(table, "checksum_b")))
            if len(set(sums)) > 1:
                groups = {}
                for r, s in zip(ranks, sums):
                    groups.setdefault(s, []).append(r)
                raise ValueError("weight is Replicate() but its replicas differ: " + "; ".join(
                    f"ranks {group} hold one weight" for group in groups.values()) + " (broadcast one first)")
            return
        dim = self.placement
        self.me = ranks.index(dist.get_rank())
        self.sizes = sizes = [shape[dim] for shape in local_shapes]
        self.offsets = [sum(sizes[:i]) for i in range(world)]
        if granularity == "block":
            side = self.block_size[dim]
            inside = [(r, o) for r, o, s in zip(ranks, self.offsets, sizes) if s and o % side]
            if inside:
                what = "rows" if dim == 0 else "columns"
                raise ValueError(
                    f"block mode needs every shard of weight to start on a block boundary, but block_size "
                    f"{self.block_size} cuts the shards of {PLACEMENTS[dim]} at {what} " + ", ".join(
                        f"{o} (rank {r})" for r, o in inside) + f": give shards of a multiple of {side} {what} "
                    f"(DTensor makes them ceil({self.shape[dim]} / {world}) = {math.ceil(self.shape[dim] / world)})")

    # ------------------------------------------------------------------ selection
    def _select(self) -> None:
        dim, local = self.placement, self.local
        if self.granularity == "block":
            scores = reference.block_norms(local, self.block_size)  # the same bits as in the whole weight
            bits, key_dtype = scores.view(torch.int32), torch.float32
        else:  # the keys are |w|'s bits: the raw bits without the sign, read where needed
            bits, key_dtype = local.view(_BITS[local.dtype]), local.dtype
        sign_off = 2 ** (8 * bits.element_size() - 1) - 1
        # The floor F: along the whole lines (rows for Shard(0)) here, along the split ones with
        # every rank's candidates.
        whole_floors = (self.min_per_row, 0) if dim == 0 else (0, self.min_per_col)
        split = self.min_per_col if dim == 0 else self.min_per_row
        if not (any(whole_floors) and bits.numel()):
            forced = torch.zeros(bits.shape, dtype=torch.bool, device=bits.device)
        elif self.granularity == "block":
            forced = floors.floor_mask(scores, *whole_floors)
        else:  # the automatic backend's floors kernel (the same rule)
            backend = REGISTRY.select(REGISTRY.automatic_choice(local.device, local.dtype, None), local.device,
                                      local.dtype, None)
            forced = backend.floors(local, *whole_floors)[0]
        if split:
            forced[_split_floors(self.wire, bits & sign_off, dim, self.me, split, bits.dtype)] = True
        floor_keys = bits[forced] & sign_off
        unit = "blocks" if self.granularity == "block" else "entries"
        cutoff, need, fill, at_cutoff, above = _radix_select(self.wire, bits, floor_keys, self.k, self.min_per_row,
                                                             self.min_per_col, unit)
        smallest = int(floor_keys.min()) if floor_keys.numel() else _NO_KEY
        ties, smallest = _place_ties(self.wire, forced, at_cutoff, need, dim, self.me, smallest)
        self.threshold = key_to_magnitude(min(cutoff if fill else _NO_KEY, smallest), key_dtype)
        keep = forced  # F, and the fill: every key above the cutoff and the ties placed
        keep.view(-1)[above] = True
        keep.view(-1)[ties] = True
        if self.granularity == "block":
            keep = expand_block_mask(keep, self.block_size, tuple(local.shape))
        self.keep = keep

    # ------------------------------------------------------------------ apply
    def made_for(self, weight) -> bool:
        """Whether this plan was made for ``weight`` as it is now (on this rank)."""
        return _stamp(weight) == self.stamp

    def _refuse(self, stale_ranks) -> None:
        raise RuntimeError(f"weight changed after this projection was planned (its storage, shape or values; or "
                           f"the plan was applied already) on {stale_ranks}: plan it again (nothing was written "
                           "on any rank)")

    def apply(self) -> ProjectionResult:
        _record_into(self.calls)
        stale = not self.made_for(self.source)
        if self.inner is not None:
            flag = self.wire.all_reduce("apply", torch.tensor([int(stale)], device=self.local.device))
            if int(flag):
                self._refuse(f"{int(flag)} of {self.wire.world} ranks")
            return self.inner.apply()
        if math.prod(self.shape) == 0:  # nothing to write: no rank can diverge
            if stale:
                self._refuse("this rank")
            counts = None
            if self.block_size is not None:
                counts = torch.zeros(block_grid(self.shape, self.block_size), dtype=torch.int32,
                                     device=self.local.device)
            # As the normal path: a layout of an empty shape is refused.
            layout = ElementLayout.from_weight(self.local) if self.element_layout else None
            return ProjectionResult(float("inf"), 0, 0, counts, layout)
        # The nonzeros the write leaves (a changed shard is not read: every rank refuses). In
        # element mode with a threshold above 0 every kept entry is one.
        if stale:
            left = torch.zeros_like(self.keep)
        elif self.granularity == "element" and self.threshold > 0:
            left = self.keep
        else:
            left = self.keep & (self.local != 0)
        layout = None
        if self.element_layout:
            layout, counts = self._gather_layout(left, stale)
            nnz = layout.nnz
        else:
            nnz, counts = self._sum_counts(left, stale)
        torch.where(self.keep, self.local, torch.zeros((), dtype=self.local.dtype), out=self.local)  # dropped: +0
        return ProjectionResult(self.threshold, self.k, nnz, counts, layout)

    def _gather_layout(self, left, stale):
        """The global layout of the nonzeros left, and their block counts, from every shard's
        packed bits."""
        dim, world = self.placement, self.wire.world
        widest = math.ceil(self.shape[dim] / world)
        # Every shard's bits padded to the widest shard's: rows for Shard(0), bytes for Shard(1).
        packed_shape = (widest, math.ceil(self.shape[1] / 8)) if dim == 0 else (self.shape[0], math.ceil(widest / 8))
        packed = torch.zeros(packed_shape, dtype=torch.uint8, device=left.device)
        if left.numel():
            mine = pack_mask(left)
            packed[:mine.shape[0], :mine.shape[1]] = mine
        message = torch.cat([packed.view(-1), torch.tensor([int(stale)], dtype=torch.uint8, device=left.device)])
        gathered = self.wire.all_gather("layout", message)
        stale_ranks = torch.nonzero(gathered[:, -1].cpu()).flatten().tolist()
        if stale_ranks:
            self._refuse(f"ranks {[self.ranks[i] for i in stale_ranks]}")
        layout, rows, cols = _layout_from_bits([part[:-1].view(packed.shape) for part in gathered], self.offsets,
                                               dim, self.shape)
        counts = None
        if self.block_size is not None:
            (bo, bi), grid = self.block_size, block_grid(self.shape, self.block_size)
            counts = torch.bincount((rows // bo) * grid[1] + cols // bi, minlength=grid[0] * grid[1])
            counts = counts.view(grid).to(torch.int32)
        return layout, counts

    def _sum_counts(self, left, stale):
        """The global nonzero count and per-block counts, summed over the shards."""
        counts = None
        vector = [torch.tensor([int(stale), int(torch.count_nonzero(left))], dtype=torch.int64, device=left.device)]
        if self.block_size is not None:
            dim, side = self.placement, self.block_size[self.placement]
            offset = self.offsets[self.me]
            lead = offset % side  # a block cut by the shard's start: count from its first line
            shape = list(left.shape)
            shape[dim] += lead
            aligned = torch.zeros(shape, dtype=torch.bool, device=left.device)
            aligned.narrow(dim, lead, left.shape[dim]).copy_(left)
            mine = reference.block_counts(aligned, self.block_size).to(torch.int64)
            grid = torch.zeros(block_grid(self.shape, self.block_size), dtype=torch.int64, device=left.device)
            grid.narrow(dim, offset // side, mine.shape[dim]).copy_(mine)
            vector.append(grid.view(-1))
        total = self.wire.all_reduce("counts", torch.cat(vector))
        if int(total[0]):
            self._refuse(f"{int(total[0])} of {self.wire.world} ranks")
        if self.block_size is not None:
            counts = total[2:].view(block_grid(self.shape, self.block_size)).to(torch.int32)
        return int(total[1]), counts
