"""DensitySchedule, SparseLinear.project_, sparsify, Projector and the dense weight gradient."""

import math

import pytest
import torch
from torch import nn

import sparsekern
from sparsekern import DensitySchedule, Projector, SparseLinear, count_for_density, sparsify
from linear_cases import layout_of_weight

from conftest import assert_close_to_reference
from projection_cases import bits


# ------------------------------------------------------------------ schedule
def test_linear_schedule_points():
    s = DensitySchedule(0.1, 1000)  # anneals over steps [10, 500)
    assert s(0) == s(9) == 1.0
    assert s(10) == 1.0
    assert s(500) == s(999) == s(5000) == 0.1
    assert s(255) == pytest.approx(1 + (0.1 - 1) * (255 - 10) / 490)
    values = [s(t) for t in range(1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_loglog_schedule_points():
    s = DensitySchedule(0.01, 1000, anneal_start=0.1, anneal_end=0.5, shape="loglog")
    assert s(99) == 1.0 and s(500) == 0.01
    # log density linear in log step between (100, 1) and (500, 0.01)
    t = 200
    expected = math.exp(math.log(0.01) * (math.log(t) - math.log(100)) / (math.log(500) - math.log(100)))
    assert s(t) == pytest.approx(expected)
    mid = math.sqrt(100 * 500)
    assert s(int(mid)) == pytest.approx(math.exp(math.log(0.01) * (math.log(int(mid)) - math.log(100))
                                                 / (math.log(500) - math.log(100))))


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((1.5, 100), {}, ValueError, "final_density must be in"),
    ((0.1, 0), {}, ValueError, "total_steps must be >= 1"),
    ((0.1, 10.0), {}, TypeError, "total_steps must be an int"),
    ((0.1, 100), dict(anneal_start=0.6, anneal_end=0.5), ValueError, "anneal_start must be < anneal_end"),
    ((0.1, 100), dict(anneal_end=1.5), ValueError, "anneal_end must be in"),
    ((0.1, 100), dict(shape="cosine"), ValueError, "shape must be one of"),
    ((0.0, 100), dict(shape="loglog"), ValueError, "final_density must be > 0"),
])
def test_schedule_rejects_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DensitySchedule(*args, **kwargs)


def test_schedule_rejects_bad_steps():
    s = DensitySchedule(0.1, 100)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s(-1)
    with pytest.raises(TypeError, match="step must be an int"):
        s(1.5)


# ------------------------------------------------------------------ project_
@pytest.mark.parametrize("granularity", ["element", "block"])
def test_project_refreshes_layout(granularity, generator):
    layer = SparseLinear(100, 70, density=1.0, block_size=(16, 32), format="block")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(70, 100, generator=generator))
    result = layer.project_(0.1, granularity=granularity)
    n = 70 * 100 if granularity == "element" else 5 * 4
    assert result.k == count_for_density(0.1, n)
    assert layer.layout == sparsekern.BlockLayout.from_weight(layer.weight, (16, 32))
    assert int((layer.weight != 0).sum()) == result.nnz
    if granularity == "element":
        assert result.nnz == result.k
    else:
        assert layer.layout.nnz_blocks == result.k


def test_project_defaults_to_module_density_and_granularity(generator):
    layer = SparseLinear(64, 64, density=0.25, block_size=16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 64, generator=generator))
    layer.granularity = "block"
    result = layer.project_()
    assert result.k == count_for_density(0.25, 16) and layer.layout.nnz_blocks == 4


def test_project_bad_input_changes_nothing(generator):
    layer = SparseLinear(40, 30, density=0.5, block_size=16)
    with torch.no_grad():
        layer.weight[0, 0] = math.nan
    before, layout = layer.weight.detach().clone(), layer.layout
    with pytest.raises(ValueError, match="weight must be finite"):
        layer.project_(0.1)
    with pytest.raises(ValueError, match="density must be in"):
        layer.project_(1.5)
    with pytest.raises(ValueError, match="granularity must be one of"):
        layer.project_(0.1, granularity="row")
    assert torch.equal(bits(layer.weight.detach()), bits(before)) and layer.layout is layout


# ------------------------------------------------------------------ sparsify
def _mlp():
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 8)))


def test_sparsify_replaces_every_linear():
    torch.manual_seed(0)
    model = _mlp()
    dense = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]
    x = torch.randn(5, 24)
    out = sparsify(model, density=1.0, block_size=16)
    assert out is model
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 3 and not any(type(m) is nn.Linear for m in model.modules())
    for layer, w in zip(layers, dense):
        assert torch.equal(layer.weight, w)  # density 1 keeps everything
    reference = nn.Sequential(*[layer.to_dense() if isinstance(layer, SparseLinear) else layer
                                for layer in [model[0], model[1]]])
    assert torch.allclose(model[:2](x), reference(x), rtol=1e-5, atol=1e-6)


def test_sparsify_include_exclude():
    model = _mlp()
    sparsify(model, density=0.5, include=["2.*", "0"], exclude="2.1")
    assert isinstance(model[0], SparseLinear) and isinstance(model[2][0], SparseLinear)
    assert type(model[2][1]) is nn.Linear


def test_sparsify_top_level_linear_and_bad_arguments():
    assert isinstance(sparsify(nn.Linear(8, 8), density=0.5, block_size=16), SparseLinear)
    model = _mlp()
    with pytest.raises(ValueError, match="density must be in"):
        sparsify(model, density=2.0)
    with pytest.raises(TypeError, match="include must be"):
        sparsify(model, density=0.5, include=3)
    with pytest.raises(ValueError, match="block_size sides"):
        sparsify(model, density=0.5, block_size=3)
    assert type(model[0]) is nn.Linear  # nothing replaced by the failed calls


# ------------------------------------------------------------------ Projector
def _sparse_model(seed=0):
    torch.manual_seed(seed)
    return sparsify(_mlp(), density=1.0, block_size=16, dense_grad=True)


def test_projector_projects_every_layer_on_schedule():
    model = _sparse_model()
    schedule = DensitySchedule(0.25, 10, anneal_start=0.1, anneal_end=0.5)
    projector = Projector(model, schedule, min_per_neuron=2)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    for step in range(8):
        results = projector.step()
        density = schedule(step)
        for layer, result in zip(layers, results):
            n = layer.weight.numel()
            assert result.k == count_for_density(density, n) == int((layer.weight != 0).sum())
            assert ((layer.weight != 0).sum(1) >= 2).all()
            assert layer.layout == layout_of_weight(layer)
    assert projector.steps == 8


def test_projector_zeroes_pruned_optimizer_state():
    model = _sparse_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 24)).square().sum().backward()
    optimizer.step()
    layer = model[0]
    kept_state = optimizer.state[layer.weight]["exp_avg"].clone()
    Projector(model, lambda step: 0.2, zero_pruned_state=True, optimizer=optimizer).step()
    pruned = layer.weight == 0
    for key in ("exp_avg", "exp_avg_sq"):
        state = optimizer.state[layer.weight][key]
        assert (state[pruned] == 0).all()
    assert torch.equal(optimizer.state[layer.weight]["exp_avg"][~pruned], kept_state[~pruned])
    assert optimizer.state[layer.weight]["step"].item() == 1  # scalar state untouched


def test_projector_leaves_optimizer_state_alone_by_default():
    model = _sparse_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 24)).square().sum().backward()
    optimizer.step()
    before = {k: v.clone() for k, v in optimizer.state[model[0].weight].items()}
    Projector(model, lambda step: 0.2, optimizer=optimizer).step()
    for key, value in optimizer.state[model[0].weight].items():
        assert torch.equal(value, before[key])


def test_projector_failed_step_changes_nothing():
    model = _sparse_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 24)).square().sum().backward()
    optimizer.step()
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    with torch.no_grad():
        layers[-1].weight[0, 0] = math.inf  # the last layer: the first ones must not be touched
    weights = [bits(m.weight.detach().clone()) for m in layers]
    layouts = [m.layout for m in layers]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    projector = Projector(model, lambda step: 0.1, zero_pruned_state=True, optimizer=optimizer)
    with pytest.raises(ValueError, match="weight must be finite"):
        projector.step()
    too_many = Projector(model, lambda step: 0.01, min_per_neuron=4, optimizer=optimizer)
    with torch.no_grad():
        layers[-1].weight[0, 0] = 1.0
    weights[-1] = bits(layers[-1].weight.detach().clone())
    with pytest.raises(ValueError, match="is smaller than"):
        too_many.step()
    with pytest.raises(ValueError, match=r"schedule\(step\) must be in"):
        Projector(model, lambda step: 1.5).step()
    for m, w, layout in zip(layers, weights, layouts):
        assert torch.equal(bits(m.weight.detach()), w) and m.layout is layout
    for p, s in optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k])
    assert projector.steps == 0


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(model=nn.Sequential(nn.Linear(4, 4))), ValueError, "holds no SparseLinear"),
    (dict(schedule=0.5), TypeError, "schedule must be callable"),
    (dict(granularity="row"), ValueError, "granularity must be one of"),
    (dict(min_per_neuron=-1), ValueError, "min_per_neuron must be"),
    (dict(zero_pruned_state=True), ValueError, "needs the optimizer"),
    (dict(optimizer="adam"), TypeError, "optimizer must be a torch.optim.Optimizer"),
])
def test_projector_rejects_bad_arguments(kwargs, exc, match):
    args = dict(model=_sparse_model(), schedule=lambda step: 0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        Projector(args.pop("model"), args.pop("schedule"), **args)


def test_projector_block_granularity():
    model = _sparse_model()
    results = Projector(model, lambda step: 0.5, granularity="block", min_per_neuron=1).step()
    for layer, result in zip([m for m in model.modules() if isinstance(m, SparseLinear)], results):
        n_blocks = math.prod(sparsekern.block.layout.block_grid(tuple(layer.weight.shape), layer.block_size))
        assert result.k == count_for_density(0.5, n_blocks)
        assert (layer.layout.to_block_mask().sum(1) >= 1).all()


# ------------------------------------------------------------------ dense gradient
@pytest.mark.parametrize("backend", sparsekern.available_backends("cpu"))
def test_dense_grad_is_the_full_product(backend, generator):
    layer = SparseLinear(48, 40, density=0.25, block_size=16, dense_grad=True)
    x = torch.randn(7, 48, generator=generator, requires_grad=True)
    dy = torch.randn(7, 40, generator=generator)
    y = sparsekern.block_sparse_linear(x, layer.weight, layer.layout, layer.bias, backend=backend,
                                       dense_weight_grad=True)
    y.backward(dy)
    expected = (dy.double().t() @ x.detach().double())
    assert_close_to_reference(layer.weight.grad, expected, name="dW")
    pruned = ~layer.layout.to_mask()
    assert pruned.any() and (layer.weight.grad[pruned] != 0).all()  # gradient reaches pruned weights
    # The module flag gives the same gradient.
    layer.weight.grad = None
    layer(x.detach()).backward(dy)
    assert_close_to_reference(layer.weight.grad, expected, name="dW")
