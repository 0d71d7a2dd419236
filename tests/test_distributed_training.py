"""SparseLinear and Projector under DDP and FSDP2 (``fully_shard``), on CPU processes joined by gloo.

The processes are spawned twice in all (``tests/distributed.py``; a spawn, with its imports of
torch, DDP and FSDP, costs more than the training): 2 ranks run the DDP and the FSDP2 checks
together, 4 ranks the uneven FSDP2 shards. The ranks send back plain tensors, compared here bitwise.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from sparsekern import DensitySchedule, Projector, SparseLinear
from sparsekern.mask_bits import unpack_mask
from distributed import run_on_ranks
from projection_cases import bits

FORMATS = ("element", "block")
STEPS = 10


def _model(fmt: str, seed: int, widths=(64, 96, 32), dense_grad=True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [SparseLinear(a, b, density=0.5, block_size=16, dense_grad=dense_grad, format=fmt), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _sparse_layers(model: nn.Module) -> list[SparseLinear]:
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


def _sent(result) -> bytes:
    """``result`` as bytes: tensors put on the queue as they are travel as shared-memory handles,
    which the parent cannot open once the rank's process has exited."""
    buffer = io.BytesIO()
    torch.save(result, buffer)
    return buffer.getvalue()


def _received(ranks: list[bytes]) -> list:
    return [torch.load(io.BytesIO(sent), weights_only=True) for sent in ranks]


def _batch(step: int, rank: int, in_features: int) -> torch.Tensor:
    return torch.randn(8, 3, in_features, generator=torch.Generator().manual_seed(1000 * step + rank))


# ------------------------------------------------------------------ DDP
def _two_ranks(rank: int, world_size: int) -> bytes:
    return _sent({"ddp": _ddp_run(rank, world_size), "fsdp": _fsdp_run(rank, world_size)})


@pytest.fixture(scope="module")
def two_ranks() -> list:
    return _received(run_on_ranks(_two_ranks, 2))


def _ddp_run(rank: int, world_size: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    rebuilt = []  # layouts adopted from the buffer: once per layer on the ranks other than 0, then never
    adopt = SparseLinear._load_layout
    SparseLinear._load_layout = lambda self, *args: (rebuilt.append(rank), adopt(self, *args))[1]
    out = {}
    for fmt in FORMATS:
        model = _model(fmt, seed=rank)  # every rank its own seed: its own weights and layouts
        own_layouts = [m.layout_mask.clone() for m in _sparse_layers(model)]
        alone = _model(fmt, seed=0)  # rank 0's model, run without DDP
        ddp = DistributedDataParallel(model)
        x = _batch(0, 0, 64)  # the same on every rank
        first = ddp(x).detach()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        projector = Projector(model, DensitySchedule(0.25, STEPS, anneal_start=0.1, anneal_end=0.8),
                              granularity=fmt, min_per_neuron=1, optimizer=optimizer)
        rebuilt_at_first, rebuilt[:] = list(rebuilt), []
        for step in range(STEPS):
            ddp(_batch(step, rank, 64)).square().mean().backward()  # each rank its own batch
            optimizer.step()
            optimizer.zero_grad()
            projector.step()
        layers = _sparse_layers(model)
        out[fmt] = {
            "first": first, "alone": alone(x).detach(), "own_layouts": own_layouts,
            "rebuilt_at_first": rebuilt_at_first, "rebuilt_in_training": list(rebuilt),
            "parameters": [p.detach().clone() for p in model.parameters()],
            "layout_masks": [m.layout_mask.clone() for m in layers],
            "layouts": [m.layout.to_mask() for m in layers],
            "adam": [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()],
            "nnz": [int((m.weight != 0).sum()) for m in layers],
        }
    SparseLinear._load_layout = adopt
    return out


def test_ddp_with_per_rank_seeds_computes_rank_0s_function_and_trains_bitwise_alike(two_ranks):
    ranks = [result["ddp"] for result in two_ranks]
    for fmt in FORMATS:
        r0, r1 = ranks[0][fmt], ranks[1][fmt]
        # The seeds gave rank 1 other layouts: DDP's broadcast of the buffer is what made them agree.
        assert not all(torch.equal(a, b) for a, b in zip(r0["own_layouts"], r1["own_layouts"]))
        assert torch.equal(r0["first"], r0["alone"]) and torch.equal(r1["first"], r0["alone"]), fmt
        assert r0["rebuilt_at_first"] == [] and r1["rebuilt_at_first"], fmt  # rank 1 adopted rank 0's layouts
        assert r0["rebuilt_in_training"] == r1["rebuilt_in_training"] == [], fmt  # and nothing was rebuilt since
        for a, b in zip(r0["parameters"], r1["parameters"]):
            assert torch.equal(bits(a), bits(b)), fmt
        for a, b, layout, nnz in zip(r0["layout_masks"], r1["layout_masks"], r0["layouts"], r0["nnz"]):
            assert torch.equal(a, b) and torch.equal(unpack_mask(a, layout.shape[1]), layout), fmt
            assert int(layout.sum()) < layout.numel() / 2 and nnz <= int(layout.sum())  # annealed to 1/4
        for a, b in zip(r0["adam"], r1["adam"]):
            assert a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a), fmt


# ------------------------------------------------------------------ FSDP2
# (format, projector granularity, min_per_neuron). "auto" runs these small layers dense throughout:
# its projections keep a mask of the whole weight, all-gathered; "element" the element layout the
# sharded projection assembles. 4 ranks on 2 cores cost the most: only the two granularities there.
FSDP_CASES = {2: [("auto", "element", 2), ("element", "element", 2), ("block", "block", 1)],
              4: [("element", "element", 2), ("block", "block", 1)]}
# Output sides not divisible by 4 (shards of 16, 16, 16, 13 rows and 8, 8, 8, 6); block rows on 4
# ranks stay whole blocks of 16 at the shard boundaries.
FSDP_WIDTHS = {2: {"element": (64, 96, 32), "block": (64, 96, 32)},
               4: {"element": (64, 61, 30), "block": (64, 61, 61)}}
FSDP_STEPS = 6


def _fsdp_training(model, fmt, granularity, min_per_neuron, steps, fsdp_world=None):
    """Train ``model`` (sharded by fully_shard when ``fsdp_world`` is set) ``steps`` steps of
    Adam and Projector on the same batches whatever the rank; returns what the run ends with,
    as plain tensors of the whole model."""
    if fsdp_world is not None:
        from torch.distributed.fsdp import fully_shard

        for layer in _sparse_layers(model):
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    projector = Projector(model, DensitySchedule(0.25, steps, anneal_start=0.1, anneal_end=0.7),
                          granularity=granularity, min_per_neuron=min_per_neuron, optimizer=optimizer,
                          zero_pruned_state=True)
    in_features = _sparse_layers(model)[0].in_features
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the view warning of FSDP2 among them
        for step in range(steps):
            model(_batch(step, 0, in_features)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            projector.step()
    return _whole(model, optimizer)


def _whole(model, optimizer) -> dict:
    def full(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()

    layers = _sparse_layers(model)
    return {"parameters": [full(p) for p in model.parameters()],
            "adam": [{k: full(v) for k, v in optimizer.state[p].items()} for p in model.parameters()],
            "layout_masks": [m.layout_mask.clone() for m in layers], "formats": [m.format for m in layers]}


def _fsdp_run(rank: int, world_size: int) -> dict:
    out = {"cases": {}}
    for fmt, granularity, floor in FSDP_CASES[world_size]:
        widths = FSDP_WIDTHS[world_size][granularity]
        sharded = _fsdp_training(_model(fmt, 0, widths), fmt, granularity, floor, FSDP_STEPS, world_size)
        out["cases"][fmt, granularity] = {"sharded": sharded}
    if world_size == 2:
        out.update(_fsdp_methods(rank))
    if rank == 0:
        # One process, no FSDP, the same seed and batches: what every rank must end with. Computed
        # here (one thread, as the ranks: the same kernels the same way), after the collectives,
        # so that no rank waits on this one.
        for fmt, granularity, floor in FSDP_CASES[world_size]:
            model = _model(fmt, 0, FSDP_WIDTHS[world_size][granularity])
            out["cases"][fmt, granularity]["alone"] = _fsdp_training(model, fmt, granularity, floor, FSDP_STEPS)
    return out


def _four_ranks(rank: int, world_size: int) -> bytes:
    return _sent(_fsdp_run(rank, world_size))


def _fsdp_methods(rank: int) -> dict:
    """The SparseLinear and Projector paths besides training, on DTensor weights."""
    from torch.distributed.fsdp import fully_shard

    out = {}
    # Per-rank seeds: FSDP2 broadcasts nothing, the Projector must refuse on every rank.
    model = _model("element", seed=rank)
    for layer in _sparse_layers(model):
        fully_shard(layer)
    try:
        Projector(model, lambda step: 0.5)
        out["disagreement"] = None
    except ValueError as error:
        out["disagreement"] = str(error)

    model, alone = _model("element", 0), _model("element", 0)
    for layer in _sparse_layers(model):
        fully_shard(layer)
    for m in (model, alone):  # the same weights on both, nonzero outside the layouts and zero in places inside
        with torch.no_grad():
            for layer in _sparse_layers(m):
                layer.weight.add_(1.0)
                layer.weight.masked_fill_(layer.weight < 0.98, 0)
    sharded, plain = _sparse_layers(model)[1], _sparse_layers(alone)[1]
    dense = sharded.to_dense()
    out["to_dense"] = (type(dense.weight).__name__, dense.weight.placements == sharded.weight.placements,
                       torch.equal(dense.weight.full_tensor(), plain.to_dense().weight))
    sharded.refresh_layout()  # a collective: the nonzeros of the whole weight
    plain.refresh_layout()
    out["refresh"] = (torch.equal(sharded.layout_mask, plain.layout_mask) and sharded.format == plain.format
                      and 0 < int(plain.layout.to_mask().sum()) < plain.weight.numel())
    # A state_dict of DTensors (and the plain layout bits) into a model of other weights and layouts.
    state = model.state_dict()
    other = _model("element", seed=7)
    for layer in _sparse_layers(other):
        fully_shard(layer)
    other.load_state_dict(state)
    out["state_dict"] = all(torch.equal(a.layout_mask, b.layout_mask) and torch.equal(
        a.weight.full_tensor(), b.weight.full_tensor()) for a, b in zip(_sparse_layers(other), _sparse_layers(model)))
    # reset_parameters zeroes each shard outside the new layout.
    sharded.reset_parameters()
    out["reset"] = bool((sharded.weight.full_tensor()[~sharded.layout.to_mask()] == 0).all())
    out["rollback"] = _failed_step_leaves_everything(model)
    out["changed_on_one_rank"] = _change_on_rank_1_is_refused_on_every_rank(sharded, rank)
    return out


def _change_on_rank_1_is_refused_on_every_rank(layer, rank: int) -> str | None:
    """A shard changed on rank 1 between plan_projection and apply_projection: every rank refuses
    (a refusal on rank 1 alone would leave rank 0 waiting in the projection's collective)."""
    plan = layer.plan_projection(0.25)
    if rank == 1:
        with torch.no_grad():
            layer.weight.to_local().mul_(2)
    try:
        layer.apply_projection(plan)
    except RuntimeError as error:
        return str(error)
    return None


def _failed_step_leaves_everything(model) -> bool:
    """A Projector step failing in its last layer, after the first was written, gives every shard
    and layout back."""
    layers = _sparse_layers(model)
    optimizer = torch.optim.Adam(model.parameters())
    projector = Projector(model, lambda step: 0.25, optimizer=optimizer, zero_pruned_state=True)
    before = [(m.weight.full_tensor(), m.layout_mask.clone(), m.layout) for m in layers]
    real_apply = SparseLinear.apply_projection

    def failing_apply(self, plan):
        if self is layers[-1]:
            raise RuntimeError("injected")
        return real_apply(self, plan)

    SparseLinear.apply_projection = failing_apply
    try:
        projector.step()
        return False
    except RuntimeError:
        pass
    finally:
        SparseLinear.apply_projection = real_apply
    return all(torch.equal(m.weight.full_tensor(), w) and torch.equal(m.layout_mask, bits) and m.layout is layout
               for m, (w, bits, layout) in zip(layers, before)) and projector.steps == 0


def _assert_trained_alike(ranks: list, world_size: int) -> None:
    for fmt, granularity, _ in FSDP_CASES[world_size]:
        alone = ranks[0]["cases"][fmt, granularity]["alone"]
        assert int(unpack_mask(alone["layout_masks"][0], 64).sum()) < 0.3 * alone["parameters"][0].numel()
        for rank, result in enumerate(ranks):
            sharded = result["cases"][fmt, granularity]["sharded"]
            where = f"{fmt} format, {granularity} granularity, rank {rank} of {world_size}"
            for a, b in zip(sharded["parameters"], alone["parameters"]):
                assert torch.equal(bits(a), bits(b)), where
            for a, b in zip(sharded["layout_masks"], alone["layout_masks"]):
                assert torch.equal(a, b), where
            assert sharded["formats"] == alone["formats"], where
            for a, b in zip(sharded["adam"], alone["adam"]):
                assert a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a), where


def test_fsdp2_on_2_ranks_trains_and_projects_bitwise_as_one_process(two_ranks):
    ranks = [result["fsdp"] for result in two_ranks]
    _assert_trained_alike(ranks, 2)
    for rank, result in enumerate(ranks):
        message = result["disagreement"]
        assert message is not None and "layouts differ between ranks" in message, rank
        assert "'0' (ranks [1] differ from rank 0); '2' (ranks [1]" in message, rank
        assert result["to_dense"] == ("DTensor", True, True), rank
        assert result["refresh"] and result["state_dict"] and result["reset"] and result["rollback"], rank
        assert "on ranks [1]" in (result["changed_on_one_rank"] or ""), (rank, result["changed_on_one_rank"])


def test_fsdp2_on_4_ranks_with_uneven_shards_trains_and_projects_bitwise_as_one_process():
    _assert_trained_alike(_received(run_on_ranks(_four_ranks, 4)), 4)
