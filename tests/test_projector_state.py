"""``Projector`` as a training loop sees it: checkpoints that resume bitwise, configurations a
checkpoint must match, a backend named at construction, and steps that fail without a trace."""

import io

import pytest
import torch
from torch import nn

from sparsekern import DensitySchedule, Projector, SparseLinear, sparsify
from sparsekern.projection.backends import REGISTRY
from projection_cases import bits

TOTAL = 24  # the anneal runs from step 2 to step 21: a run stopped at TOTAL // 2 stops mid-anneal


def _model(seed=0, widths=(24, 48, 40, 8)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return sparsify(nn.Sequential(*layers[:-1]), density=1.0, block_size=16, dense_grad=True)


def _sparse_layers(model):
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


def _run(seed=0, min_per_neuron=2, zero_pruned_state=False, **projector_args):
    model = _model(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = DensitySchedule(0.25, TOTAL, anneal_start=0.1, anneal_end=0.9)
    return model, optimizer, Projector(model, schedule, min_per_neuron=min_per_neuron, optimizer=optimizer,
                                       zero_pruned_state=zero_pruned_state, **projector_args)


def _train(model, optimizer, projector, steps):
    for _ in range(steps):
        data = torch.Generator().manual_seed(projector.steps)  # the batch depends on the step only
        x = torch.randn(16, 24, generator=data)
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        projector.step()


def _saved(obj):
    buffer = io.BytesIO()
    torch.save(obj.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ------------------------------------------------------------------ state_dict and resume
def test_state_dict_is_plain_data_holding_steps_and_the_configuration():
    model, optimizer, projector = _run(granularity="block")
    _train(model, optimizer, projector, 3)
    state = _saved(projector)  # torch.load(weights_only=True) accepts it
    assert state == projector.state_dict() == {
        "steps": 3, "granularity": "block", "min_per_neuron": 2, "zero_pruned_state": False,
        "layer_shapes": [[48, 24], [40, 48], [8, 40]]}
    fresh = _run(seed=1, granularity="block")[2]
    fresh.load_state_dict(state)
    assert fresh.steps == 3


@pytest.mark.parametrize("granularity", ["element", "block"])
def test_a_resumed_run_ends_bitwise_where_the_uninterrupted_one_does(granularity):
    # Blocks of 16 in layers this small: 1/4 of the blocks leaves no room for a floor.
    args = dict(granularity=granularity, min_per_neuron=2 if granularity == "element" else 0)
    model, optimizer, projector = _run(**args)
    _train(model, optimizer, projector, TOTAL)

    first = _run(**args)
    _train(*first, TOTAL // 2)
    saved = [_saved(obj) for obj in first]
    resumed = _run(seed=1, **args)  # other initial weights: everything must come from the files
    for obj, state in zip(resumed, saved):
        obj.load_state_dict(state)
    _train(*resumed, TOTAL - TOTAL // 2)

    assert resumed[2].steps == projector.steps == TOTAL
    for (name, p), q in zip(model.named_parameters(), resumed[0].parameters()):
        assert torch.equal(bits(p.detach()), bits(q.detach())), name
    for a, b in zip(_sparse_layers(model), _sparse_layers(resumed[0])):
        assert torch.equal(a.layout.to_mask(), b.layout.to_mask())
        # Annealed, not dense again as with a schedule restarted at 0 (the nnz 16384 for 4864).
        assert int((b.weight != 0).sum()) < b.weight.numel() / 2


@pytest.mark.parametrize("change,match", [
    (dict(granularity="block"), r"granularity='element', this one has 'block'"),
    (dict(min_per_neuron=1), r"min_per_neuron=2, this one has 1"),
    (dict(zero_pruned_state=True), r"zero_pruned_state=False, this one has True"),
    (dict(widths=(24, 48, 8)), r"of 3 layers, this one has 2"),
    (dict(widths=(24, 48, 32, 8)),
     r"layer 1 has shape \[40, 48\] \(out, in\); this Projector's layer 1, '2', has \[32, 48\]"),
])
def test_load_state_dict_refuses_another_configuration_naming_it(change, match):
    model, optimizer, projector = _run()
    _train(model, optimizer, projector, 2)
    state = _saved(projector)
    widths = change.pop("widths", (24, 48, 40, 8))
    other_model = _model(widths=widths)
    args = dict(granularity="element", min_per_neuron=2)
    args.update(change)
    if args.get("zero_pruned_state"):
        args["optimizer"] = torch.optim.Adam(other_model.parameters())
    other = Projector(other_model, lambda step: 0.5, **args)
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(state)
    assert other.steps == 0


def test_load_state_dict_refuses_what_is_not_a_projector_state():
    projector = _run()[2]
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        projector.load_state_dict([("steps", 3)])
    with pytest.raises(ValueError, match=r"missing keys \['granularity'.*unexpected keys \['step'\]"):
        projector.load_state_dict({"step": 3})
    state = projector.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['steps'\] must be an int >= 0, got -1"):
        projector.load_state_dict({**state, "steps": -1})
    assert projector.steps == 0


# ------------------------------------------------------------------ arguments
def test_an_unknown_backend_raises_at_construction_listing_the_valid_ones():
    model = _model()
    with pytest.raises(ValueError, match=r"backend must be one of \[.*'reference'.*\], got 'nope'") as raised:
        Projector(model, lambda step: 0.5, backend="nope")
    assert all(repr(name) in str(raised.value) for name in REGISTRY.names())
    with pytest.raises(TypeError, match="backend must be a str or None"):
        Projector(model, lambda step: 0.5, backend=1)
    with pytest.raises(TypeError, match="zero_pruned_state must be a bool"):
        Projector(model, lambda step: 0.5, zero_pruned_state="no", optimizer=torch.optim.SGD(model.parameters()))
    assert Projector(model, lambda step: 0.5, backend="reference").step()[0].k == 576


# ------------------------------------------------------------------ a failing step
@pytest.mark.parametrize("when", ["before writing", "after writing"])
def test_a_later_layer_failing_in_apply_leaves_every_weight_layout_and_state(monkeypatch, when):
    model, optimizer, projector = _run(zero_pruned_state=True)
    _train(model, optimizer, projector, 3)
    model(torch.randn(4, 24)).square().mean().backward()
    optimizer.step()  # the weights have grown back outside their layouts: the projection has work
    layers = _sparse_layers(model)
    weights = [bits(m.weight.detach().clone()) for m in layers]
    biases = [m.bias.detach().clone() for m in layers]
    layouts = [(m.layout, m.format) for m in layers]
    buffers = [(m.layout_mask, m.layout_mask.clone()) for m in layers]  # the tensors DDP would broadcast
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}

    real_apply = SparseLinear.apply_projection

    def failing_apply(self, plan):
        if self is layers[-1]:
            if when == "after writing":
                real_apply(self, plan)
            raise RuntimeError("out of memory (injected)")
        return real_apply(self, plan)

    monkeypatch.setattr(SparseLinear, "apply_projection", failing_apply)
    with pytest.raises(RuntimeError, match="injected"):
        projector.step()
    for m, w, b, (layout, format), (buffer, mask_bits) in zip(layers, weights, biases, layouts, buffers):
        assert torch.equal(bits(m.weight.detach()), w) and torch.equal(m.bias, b)
        assert m.layout is layout and m.format == format
        assert m.layout_mask is buffer and torch.equal(buffer, mask_bits)
    for p, s in optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k]), k
    assert projector.steps == 3

    # And the next step is the one the failed step would have been.
    monkeypatch.setattr(SparseLinear, "apply_projection", real_apply)
    results = projector.step()
    for m, result in zip(layers, results):
        assert int((m.weight != 0).sum()) == result.nnz and m.layout.to_mask().sum() == result.nnz
    assert projector.steps == 4


def test_the_undo_copies_are_kept_between_cpu_steps_and_hold_the_weight_before_the_write():
    # A fresh copy of each weight every step paid its page faults (as long as the copy itself):
    # on the CPU the buffers stay from step to step, and after a step each holds that step's
    # weight before its projection.
    model, optimizer, projector = _run()
    _train(model, optimizer, projector, 1)
    layers = _sparse_layers(model)
    kept = {id(m.weight): projector._undo_buffers[id(m.weight)] for m in layers}
    last = {key: buffer.clone() for key, buffer in kept.items()}
    model(torch.randn(4, 24)).square().mean().backward()
    optimizer.step()
    before = [m.weight.detach().clone() for m in layers]
    projector.step()
    for m, w in zip(layers, before):
        buffer = projector._undo_buffers[id(m.weight)]
        assert buffer is kept[id(m.weight)]
        assert not torch.equal(last[id(m.weight)], w) and torch.equal(buffer, w)


def test_a_step_under_inference_mode_raises_before_anything_changes():
    # Its layouts would be inference tensors, which a later training forward cannot save.
    model, optimizer, projector = _run()
    _train(model, optimizer, projector, 1)
    model(torch.randn(4, 24)).square().mean().backward()
    optimizer.step()
    before = [m.weight.detach().clone() for m in _sparse_layers(model)]
    layouts = [m._layout for m in _sparse_layers(model)]
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        projector.step()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        _sparse_layers(model)[0].project_(0.5)
    assert projector.steps == 1
    for m, w, layout in zip(_sparse_layers(model), before, layouts):
        assert torch.equal(m.weight, w) and m._layout is layout
    _train(model, optimizer, projector, 1)
    assert projector.steps == 2


def test_without_rollback_a_failing_step_names_the_layers_it_wrote_and_keeps_the_step_count(monkeypatch):
    model, optimizer, projector = _run(zero_pruned_state=True, rollback=False)
    _train(model, optimizer, projector, 3)
    model(torch.randn(4, 24)).square().mean().backward()
    optimizer.step()
    layers = _sparse_layers(model)
    real_apply = SparseLinear.apply_projection

    def failing_apply(self, plan):
        if self is layers[-1]:
            raise RuntimeError("out of memory (injected)")
        return real_apply(self, plan)

    monkeypatch.setattr(SparseLinear, "apply_projection", failing_apply)
    with pytest.raises(RuntimeError, match="rollback=False after writing layers") as failure:
        projector.step()
    assert "injected" in str(failure.value.__cause__)
    assert projector.steps == 3
    # The first layer was written and is consistent: its weight's nonzeros are its layout.
    first = layers[0]
    assert torch.equal(first.weight.detach() != 0, first.layout.to_mask())


def test_rollback_must_be_a_bool():
    with pytest.raises(TypeError, match="rollback"):
        Projector(nn.Sequential(SparseLinear(8, 8)), lambda t: 1.0, rollback="no")
