"""The exact global top-k projection of a DTensor weight (``sparsekern/projection/sharded.py``),
on CPU processes joined by gloo, against the unsharded projection of the whole weight.

Every rank builds the whole weight from the same seed, projects its shard and the whole
weight, and checks its shard, bitwise, against its part of the whole; the ranks send back what
the projection reported, compared here across ranks. One spawn per test (about 3 s each).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from sparsekern.block.layout import block_grid, normalize_block_size
from sparsekern.projection import prepare_projection, reference, sharded
from distributed import run_on_ranks
from projection_cases import bits, make_weight


# ------------------------------------------------------------------ helpers (run on every rank)
def _mesh(world_size: int, shape=None):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", shape or (world_size,))


def _placement(name: str):
    from torch.distributed.tensor import Replicate, Shard

    return {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Replicate()": Replicate()}[name]


def _span(n: int, world: int, rank: int) -> tuple[int, int]:
    """The lines of rank's shard of ``n`` (DTensor's Shard: torch.chunk's sizes)."""
    size = math.ceil(n / world)
    start = min(rank * size, n)
    return start, min(start + size, n)


def _part(whole: torch.Tensor, placement: str, world: int, rank: int) -> torch.Tensor:
    if placement == "Replicate()":
        return whole
    dim = int(placement[6])
    start, end = _span(whole.shape[dim], world, rank)
    return whole.narrow(dim, start, end - start)


def _sharded(whole: torch.Tensor, mesh, placement: str):
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.clone(), mesh, [_placement(placement)], src_data_rank=None)


def expected_communication(placement: str, shape, world: int, dtype, granularity: str, block_size, min_per_row: int,
                           min_per_col: int, element_layout: bool) -> tuple[int, int]:
    """(rounds, bytes this rank sends) of one projection: the formula of sharded.py's docstring
    (and the README's), written out."""
    table = 8 * sharded.TABLE_FIELDS
    if placement == "Replicate()":
        return 2, table + 8
    rows, cols = shape
    if math.prod(shape) == 0:
        return 1, table
    units_rows, units_cols = block_grid(shape, block_size) if granularity == "block" else shape
    key_bytes = 2 if granularity == "element" and dtype in (torch.float16, torch.bfloat16) else 4
    passes = key_bytes
    rounds, sent = 1, table
    split_floor, lines = (min_per_col, units_cols) if placement == "Shard(0)" else (min_per_row, units_rows)
    if split_floor:
        rounds, sent = rounds + 1, sent + split_floor * lines * key_bytes
    rounds, sent = rounds + passes, sent + 8 * 256 * passes
    rounds, sent = rounds + 1, sent + (16 if placement == "Shard(0)" else 8 * (units_rows + 1))
    if element_layout:
        if placement == "Shard(0)":
            sent += math.ceil(rows / world) * math.ceil(cols / 8) + 1
        else:
            sent += rows * math.ceil(math.ceil(cols / world) / 8) + 1
    else:
        sent += 8 * (2 + (math.prod(block_grid(shape, block_size)) if block_size is not None else 0))
    return rounds + 1, sent


def _compare(mesh, whole: torch.Tensor, placement: str, k: int, *, element_layout=True, **options) -> dict:
    """Projects the sharded weight and the whole one; asserts the shard is bitwise its part of the
    whole and every reported value equal; returns the report, for the cross-rank comparison."""
    rank, world = dist.get_rank(), dist.get_world_size()
    weight = _sharded(whole, mesh, placement)
    plan = prepare_projection(weight, k, element_layout=element_layout, **options)
    case = f"{placement} k={k} {options} {whole.dtype} {tuple(whole.shape)}"
    assert plan.made_for(weight) and not plan.made_for(whole), (case, "made_for before apply")
    got = plan.apply()
    assert not plan.made_for(weight), (case, "made_for after apply")  # applied: a second apply is refused
    expected_weight = whole.clone()
    expected = prepare_projection(expected_weight, k, element_layout=element_layout, **options).apply()
    assert torch.equal(bits(weight.to_local()), bits(_part(expected_weight, placement, world, rank))), case
    assert (got.k, got.nnz) == (expected.k, expected.nnz), case
    assert got.threshold == expected.threshold, (case, got.threshold, expected.threshold)
    if expected.block_counts is None:
        assert got.block_counts is None, case
    else:
        assert got.block_counts.dtype == torch.int32 and torch.equal(got.block_counts, expected.block_counts), case
    if element_layout:
        assert got.element_layout == expected.element_layout, case
        assert torch.equal(got.element_layout.to_mask(), expected_weight != 0), case
    else:
        assert got.element_layout is None, case
    block_size = options.get("block_size")
    block_size = normalize_block_size(block_size) if block_size is not None else None
    communication = sharded.last_communication()
    assert (communication.rounds, communication.bytes_sent) == expected_communication(
        placement, tuple(whole.shape), world, whole.dtype, options.get("granularity", "element"), block_size,
        options.get("min_per_row", 0), options.get("min_per_col", 0), element_layout), (case, communication)
    assert plan.communication == communication
    return {"case": case, "threshold": got.threshold, "nnz": got.nnz,
            "counts": None if got.block_counts is None else got.block_counts.tolist(),
            # Bytes, not tensors: a tensor sent back lives in the memory of a process that exits.
            "mask": None if not element_layout else got.element_layout.to_mask().numpy().tobytes()}


def _ties_at_cutoff(whole: torch.Tensor, placement: str, world: int, k: int, **options) -> bool:
    """Whether the projection of ``whole`` keeps some, not all, of the entries at its threshold,
    and such entries lie on more than one shard: the case breaks ties across shards."""
    projected = whole.clone()
    result = prepare_projection(projected, k, **options).apply()
    at = whole.abs().float() == result.threshold
    kept = at & (projected != 0)
    if not (kept.any() and (at & ~kept).any()):
        return False
    return sum(bool(_part(at, placement, world, r).any()) for r in range(world)) > 1


# ------------------------------------------------------------------ 2 ranks: every kind of case
def _cases_on_two(rank: int, world_size: int) -> list:
    mesh = _mesh(world_size)
    generator = torch.Generator().manual_seed(14)
    reports = []
    normal = make_weight("normal", (24, 40), torch.float32, generator)
    ties = make_weight("ties", (24, 40), torch.float32, generator)  # 7 values: ties at every cutoff
    negzero = make_weight("negzero", (24, 40), torch.float32, generator)
    n = normal.numel()
    for placement in ("Shard(0)", "Shard(1)", "Replicate()"):
        for k in (0, 1, 77, n):
            reports.append(_compare(mesh, normal, placement, k))
        if placement != "Replicate()":
            assert _ties_at_cutoff(ties, placement, world_size, 301)
        reports.append(_compare(mesh, ties, placement, 301))
        # Floors along both dimensions, one of them split across the shards; heavy ties.
        reports.append(_compare(mesh, ties, placement, 200, min_per_row=2, min_per_col=3))
        reports.append(_compare(mesh, normal, placement, 120, min_per_row=1, min_per_col=2, block_size=16,
                                element_layout=False))
        # Zeros kept when k exceeds the nonzeros (-0 kept as -0, the rest +0), ties among them.
        reports.append(_compare(mesh, negzero, placement, n - 100))
        for dtype in (torch.float16, torch.bfloat16):
            low = make_weight("ties", (24, 40), dtype, generator)
            reports.append(_compare(mesh, low, placement, 200, min_per_row=1, min_per_col=1))
            reports.append(_compare(mesh, make_weight("normal", (24, 40), dtype, generator), placement, 90,
                                    block_size=(16, 16), element_layout=False))
        # Block mode: 32 x 64 in blocks of (16, 32) splits on block boundaries either way.
        blocks = make_weight("normal", (32, 64), torch.float32, generator)
        for k in (0, 1, 3, 4):
            reports.append(_compare(mesh, blocks, placement, k, granularity="block", block_size=(16, 32)))
        grid_of_16 = make_weight("ties", (64, 128), torch.float32, generator)  # 4 x 4 blocks
        reports.append(_compare(mesh, grid_of_16, placement, 9, granularity="block", block_size=(16, 32),
                                min_per_row=1, min_per_col=1, element_layout=False))
        # Identical blocks on both shards: every block ties, kept by row-major block index.
        tile = torch.randn(16, 16, generator=generator)
        tiled = tile.repeat(2, 4)
        for k in (1, 3, 5):
            reports.append(_compare(mesh, tiled, placement, k, granularity="block", block_size=16))
        reports.append(_compare(mesh, tiled, placement, 5, granularity="block", block_size=16, min_per_col=1))
        for dtype in (torch.float16, torch.bfloat16):
            reports.append(_compare(mesh, blocks.to(dtype), placement, 3, granularity="block",
                                    block_size=(16, 32), min_per_row=1))
    # A shard holding no kept entry: rank 1's rows are tiny.
    lopsided = normal.clone()
    lopsided[12:] *= 1e-3
    report = _compare(mesh, lopsided, "Shard(0)", 100)
    kept_rows = torch.frombuffer(bytearray(report["mask"]), dtype=torch.bool).view(24, 40).any(1)
    assert not bool(kept_rows[12:].any()) and bool(kept_rows[:12].all())
    reports.append(report)
    return reports


# ------------------------------------------------------------------ bad input on 2 ranks
def _raises(make) -> tuple[str, str]:
    """Plans and applies; returns the error's type and message; asserts every local shard the
    call was given is bitwise unchanged."""
    weight, call = make()
    before = weight.to_local().clone()
    try:
        call(weight)
    except (TypeError, ValueError, RuntimeError) as e:
        assert torch.equal(bits(before), bits(weight.to_local())), f"{e}: the shard changed"
        return type(e).__name__, str(e)
    raise AssertionError(f"no error for {make.__name__}")


def _bad_input_on_two(rank: int, world_size: int) -> dict:
    from torch.distributed.tensor import DTensor, Partial

    mesh = _mesh(world_size)
    generator = torch.Generator().manual_seed(7)
    whole = make_weight("normal", (8, 12), torch.float32, generator)

    def plain(placement="Shard(0)", source=whole, **options):
        def make():
            return _sharded(source, mesh, placement), lambda w: prepare_projection(w, **options).apply()
        return make

    def partial():
        return DTensor.from_local(whole.clone(), mesh, [Partial()]), lambda w: prepare_projection(w, 5)

    def nonfinite_on_one_rank(value, bad_rank, **options):
        def make():
            weight = _sharded(whole.repeat(4, 2), mesh, "Shard(0)")  # 32 x 24: whole blocks of 16
            if rank == bad_rank:
                weight.to_local()[1, 2] = value
            return weight, lambda w: prepare_projection(w, 3, **options)
        return make

    def replicas_differ():
        weight = _sharded(whole, mesh, "Replicate()")
        if rank == 1:
            weight.to_local()[3, 4] = torch.nextafter(weight.to_local()[3, 4], torch.tensor(float("inf")))
        return weight, lambda w: prepare_projection(w, 5)

    def shape_differs():
        from torch.distributed.tensor import Shard

        rows = 8 if rank == 0 else 9
        local = whole[4 * rank:4 * rank + 4].clone()
        return DTensor.from_local(local, mesh, [Shard(0)], shape=torch.Size((rows, 12)), stride=(12, 1)), \
            lambda w: prepare_projection(w, 5)

    def shards_uneven():
        from torch.distributed.tensor import Shard

        local = whole[:3].clone() if rank == 0 else whole[3:].clone()  # 3 + 5 rows: not DTensor's 4 + 4
        return DTensor.from_local(local, mesh, [Shard(0)], shape=torch.Size((8, 12)), stride=(12, 1)), \
            lambda w: prepare_projection(w, 5)

    def changed_after_planning():  # rank 1 writes its shard between plan and apply
        weight = _sharded(whole, mesh, "Shard(0)")
        plan = prepare_projection(weight, 5, element_layout=True)
        if rank == 1:
            weight.to_local().mul_(2)
        return weight, lambda w: plan.apply()

    def applied_twice():
        weight = _sharded(whole, mesh, "Shard(1)")
        plan = prepare_projection(weight, 5)
        plan.apply()
        return weight, lambda w: plan.apply()

    def replicate_changed():
        weight = _sharded(whole, mesh, "Replicate()")
        plan = prepare_projection(weight, 5)
        if rank == 0:
            weight.to_local().add_(0)  # a write that changes no value still bumps the version
        return weight, lambda w: plan.apply()

    cases = {
        "partial": partial,
        "k": plain(k=5 + rank),
        "granularity": plain(k=1, granularity=("element", "block")[rank], block_size=16),
        "block_size": plain("Shard(1)", k=1, granularity="block", block_size=(16, 32)[rank]),
        "min_per_row": plain(k=20, min_per_row=rank),
        "min_per_col": plain(k=20, min_per_col=1 - rank),
        "shape": shape_differs,
        "uneven": shards_uneven,
        "nan": nonfinite_on_one_rank(float("nan"), 1),
        "inf": nonfinite_on_one_rank(float("-inf"), 0),
        "nan_block": nonfinite_on_one_rank(float("nan"), 1, granularity="block", block_size=16),
        "floors": plain(k=7, min_per_row=1),
        "k_range": plain(k=97),
        "k_type": plain(k=5.0),
        "block_cut": plain(k=1, granularity="block", block_size=(16, 16), source=whole.repeat(5, 1)),  # 20 + 20 rows
        "backend": plain(k=5, backend="cpu"),
        "backend_differs": plain(k=5, backend=(None, "reference")[rank]),
        "float64": plain(k=5, source=whole.double()),
        "replicas": replicas_differ,
        "changed": changed_after_planning,
        "twice": applied_twice,
        "replicate_changed": replicate_changed,
    }
    found = {name: _raises(make) for name, make in cases.items()}
    # The same checks as the unsharded projection, with its words.
    for name, options in (("floors", dict(k=7, min_per_row=1)), ("k_range", dict(k=97)), ("k_type", dict(k=5.0))):
        try:
            prepare_projection(whole.clone(), **options)
        except (TypeError, ValueError) as e:
            assert found[name] == (type(e).__name__, str(e)), (name, found[name], str(e))
        else:
            raise AssertionError(name)
    return found


def _on_two_ranks(rank: int, world_size: int) -> tuple:
    return _cases_on_two(rank, world_size), _bad_input_on_two(rank, world_size)


@pytest.fixture(scope="module")
def two_ranks():
    """One spawn of 2 ranks for the tests below: (cases, bad input) of each rank."""
    return run_on_ranks(_on_two_ranks, 2)


def test_sharded_projection_matches_whole_on_two_ranks(two_ranks):
    results = [cases for cases, _ in two_ranks]
    assert len(results[0]) > 60
    for mine, theirs in zip(*results):
        assert mine["case"] == theirs["case"]
        assert (mine["threshold"], mine["nnz"], mine["counts"]) == (theirs["threshold"], theirs["nnz"],
                                                                   theirs["counts"]), mine["case"]
        assert mine["mask"] == theirs["mask"], mine["case"]


def test_sharded_projection_bad_input_raises_on_every_rank(two_ranks):
    found, other = (errors for _, errors in two_ranks)
    for name in found:
        if name not in ("changed", "replicate_changed"):  # these name this rank's own state
            assert found[name] == other[name], name
    expect = {
        "partial": ("ValueError", "placement Partial(sum) is not supported"),
        "k": ("ValueError", "ranks disagree on k (rank 0: 5, rank 1: 6)"),
        "granularity": ("ValueError", "ranks disagree on granularity (rank 0: 'element', rank 1: 'block')"),
        "block_size": ("ValueError", "ranks disagree on block_rows (rank 0: 16, rank 1: 32); block_cols"),
        "min_per_row": ("ValueError", "ranks disagree on min_per_row (rank 0: 0, rank 1: 1)"),
        "min_per_col": ("ValueError", "ranks disagree on min_per_col (rank 0: 1, rank 1: 0)"),
        "shape": ("ValueError", "ranks disagree on rows (rank 0: 8, rank 1: 9)"),
        "uneven": ("ValueError", "rank 0: (3, 12) (expected (4, 12)), rank 1: (5, 12) (expected (4, 12))"),
        "nan": ("ValueError", "NaN or Inf (in the local shards of ranks [1])"),
        "inf": ("ValueError", "NaN or Inf (in the local shards of ranks [0])"),
        "nan_block": ("ValueError", "NaN or Inf (in the local shards of ranks [1])"),
        "floors": ("ValueError", "k=7 is smaller than the 8 entries"),
        "k_range": ("ValueError", "k must be in [0, 96]"),
        "k_type": ("TypeError", "k must be an int"),
        "block_cut": ("ValueError", "cuts the shards of Shard(0) at rows 20 (rank 1)"),
        "backend": ("ValueError", "backend must be None for a DTensor weight"),
        "backend_differs": ("ValueError", "ranks disagree on backend (rank 0: None, rank 1: forced)"),
        "float64": ("TypeError", "float32, float16 or bfloat16"),
        "replicas": ("ValueError", "replicas differ: ranks [0] hold one weight; ranks [1] hold one weight"),
        "changed": ("RuntimeError", "on ranks [1]"),
        "twice": ("RuntimeError", "the plan was applied already"),
        "replicate_changed": ("RuntimeError", "on 1 of 2 ranks"),
    }
    for name, (kind, words) in expect.items():
        assert found[name][0] == kind and words in found[name][1], (name, found[name])


# ------------------------------------------------------------------ 4 ranks: uneven and empty shards
def _cases_on_four(rank: int, world_size: int) -> list:
    mesh = _mesh(world_size)
    generator = torch.Generator().manual_seed(41)
    reports = []
    # 10 rows on 4 ranks: shards of 3, 3, 3 and 1 rows; 10 columns: the same along dim 1.
    ties = make_weight("ties", (10, 10), torch.float32, generator)
    normal = make_weight("normal", (10, 10), torch.float32, generator)
    for placement in ("Shard(0)", "Shard(1)"):
        assert _ties_at_cutoff(ties, placement, world_size, 41), (rank, placement, "no ties across shards at k=41")
        for k in (0, 41, 100):
            reports.append(_compare(mesh, ties, placement, k))
        reports.append(_compare(mesh, ties, placement, 40, min_per_row=2, min_per_col=2))
        # A block row (16 x 16) across all four shards: its counts summed over them.
        reports.append(_compare(mesh, normal, placement, 30, min_per_row=1, min_per_col=1, block_size=16,
                                element_layout=False))
        reports.append(_compare(mesh, normal.half(), placement, 30, min_per_row=1, block_size=16))
    # A dimension smaller than the world: 3 rows (shards 1, 1, 1, 0), 3 columns likewise.
    for shape, placement in (((3, 12), "Shard(0)"), ((12, 3), "Shard(1)"), ((5, 7), "Shard(0)")):
        small = make_weight("ties", shape, torch.float32, generator)
        reports.append(_compare(mesh, small, placement, sum(shape) + 1, min_per_row=1, min_per_col=1))
        reports.append(_compare(mesh, small, placement, 5, block_size=16, element_layout=False))
        reports.append(_compare(mesh, small, placement, small.numel()))
    # Block mode, 61 x 64 in blocks of 16: row shards of 16, 16, 16, 13 (the last one's edge block).
    blocks = make_weight("ties", (61, 64), torch.float32, generator)
    for k in (4, 9):
        reports.append(_compare(mesh, blocks, "Shard(0)", k, granularity="block", block_size=16, min_per_col=1))
    reports.append(_compare(mesh, blocks, "Shard(1)", 5, granularity="block", block_size=(16, 16), min_per_row=1))
    tiled = torch.randn(16, 16, generator=generator).repeat(4, 4)
    reports.append(_compare(mesh, tiled, "Shard(1)", 6, granularity="block", block_size=16, min_per_row=1))
    # Bad input on 4 ranks: one rank disagreeing, and a 2-D mesh.
    errors = []
    weight = _sharded(normal, mesh, "Shard(0)")
    before = weight.to_local().clone()
    try:
        prepare_projection(weight, 10 if rank != 2 else 11).apply()
    except ValueError as e:
        errors.append(str(e))
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    # Without its process groups: the refusal needs none, and building gloo groups for a second
    # mesh among 4 processes on 2 cores sometimes failed to connect in CI (the test then hung).
    mesh_2d = DeviceMesh("cpu", torch.arange(world_size).view(2, 2), _init_backend=False)

    flat = distribute_tensor(normal.clone(), mesh_2d, [Shard(0), Replicate()], src_data_rank=None)
    before_2d = flat.to_local().clone()
    try:
        prepare_projection(flat, 10).apply()
    except ValueError as e:
        errors.append(str(e))
    assert torch.equal(bits(before), bits(weight.to_local())), (rank, "a refused call changed the Shard(0) weight")
    assert torch.equal(bits(before_2d), bits(flat.to_local())), (rank, "a refused call changed the 2-D mesh weight")
    return reports, errors


def test_sharded_projection_uneven_and_empty_shards_on_four_ranks():
    results = run_on_ranks(_cases_on_four, 4)
    for reports in zip(*(reports for reports, _ in results)):
        first = reports[0]
        for other in reports[1:]:
            assert (other["case"], other["threshold"], other["nnz"], other["counts"]) == (
                first["case"], first["threshold"], first["nnz"], first["counts"])
            assert other["mask"] == first["mask"], first["case"]
    errors = [e for _, e in results]
    assert all(len(e) == 2 for e in errors) and all(e == errors[0] for e in errors)
    disagree, mesh_2d = errors[0]
    assert "ranks disagree on k (rank 0: 10, rank 1: 10, rank 2: 11, rank 3: 10)" in disagree
    assert "2-D device mesh (2, 2)" in mesh_2d


# ------------------------------------------------------------------ block scores (one process)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_block_norms_depend_on_the_block_alone(dtype):
    """A block's norm has the same bits in any slice of the weight holding it (a shard), and as a
    weight of its own: the sharded block mode ranks and ties blocks as the whole weight does."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(70, 200, generator=generator).to(dtype)  # partial edge blocks both ways
    for block_size in ((16, 16), (32, 16), (16, 64), (64, 128)):
        whole = reference.block_norms(w, block_size)
        bo, bi = block_size
        for j in range(whole.shape[1]):
            part = reference.block_norms(w[:, j * bi:(j + 1) * bi], block_size)
            assert torch.equal(bits(part), bits(whole[:, j:j + 1])), (block_size, j)
        for i in range(whole.shape[0]):
            part = reference.block_norms(w[i * bo:(i + 1) * bo], block_size)
            assert torch.equal(bits(part), bits(whole[i:i + 1])), (block_size, i)
        alone = reference.block_norms(w[:bo, bi:2 * bi].contiguous(), block_size)
        assert torch.equal(bits(alone), bits(whole[:1, 1:2]))
        # Still the L2 norm (summed in another order, so to rounding).
        exact = torch.linalg.vector_norm(w[:bo, :bi].double())
        assert abs(float(whole[0, 0]) - float(exact)) <= 1e-5 * float(exact)
