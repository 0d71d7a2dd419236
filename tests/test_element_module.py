"""SparseLinear(format="element"): construction, training, projection, loading, conversion,
sparsify, Projector and torch.compile, against a masked dense nn.Linear."""

import pytest
import torch
import torch.nn.functional as F

import sparsekern
from sparsekern import ElementLayout, SparseLinear, count_for_density
from conftest import assert_close_to_reference


def test_construction_draws_an_element_layout_of_exactly_the_density():
    torch.manual_seed(0)
    layer = SparseLinear(100, 70, density=0.03, format="element")
    assert layer.format == "element" and isinstance(layer.layout, ElementLayout)
    assert layer.layout.nnz == count_for_density(0.03, 7000)
    assert (layer.weight[~layer.layout.to_mask()] == 0).all()
    assert "format='element'" in repr(layer) and "block_size" not in repr(layer)
    default = SparseLinear(8, 8)
    assert default.requested_format == "auto" and isinstance(default.layout, sparsekern.BlockLayout)


def test_forward_and_backward_match_a_masked_dense_layer():
    torch.manual_seed(1)
    layer = SparseLinear(64, 48, density=0.1, format="element")
    mask = layer.layout.to_mask()
    x = torch.randn(3, 7, 64, requires_grad=True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    x64 = x.detach().double()
    w64 = torch.where(mask, layer.weight.detach(), 0).double()
    expected = F.linear(x64, w64, layer.bias.detach().double())
    assert_close_to_reference(y.detach(), expected, name="y")
    g2, x2 = grad.reshape(-1, 48).double(), x64.reshape(-1, 64)
    assert_close_to_reference(layer.weight.grad, torch.where(mask, g2.t() @ x2, 0), name="dw")
    assert_close_to_reference(x.grad, (grad.double() @ w64), name="dx")
    assert (layer.weight.grad[~mask] == 0).all()


def test_dense_grad_gives_the_full_weight_gradient():
    torch.manual_seed(2)
    layer = SparseLinear(40, 30, density=0.05, format="element", dense_grad=True)
    x = torch.randn(9, 40)
    layer(x).sum().backward()
    expected = torch.ones(9, 30).t() @ x
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_projection_keeps_k_entries_and_the_layout_follows():
    torch.manual_seed(3)
    layer = SparseLinear(90, 60, density=1.0, format="element")
    result = layer.project_(0.02, min_per_row=1)
    k = count_for_density(0.02, 5400)
    assert result.k == k and layer.layout.nnz == int((layer.weight != 0).sum()) == k
    assert layer.layout == ElementLayout.from_weight(layer.weight)
    assert (layer.layout.to_mask().sum(1) >= 1).all()  # every neuron kept its floor
    assert layer.format == "element"


def test_state_dict_round_trip_reproduces_layout_and_function():
    torch.manual_seed(4)
    layer = SparseLinear(50, 40, density=0.1, format="element")
    other = SparseLinear(50, 40, density=0.5, format="element")
    other.load_state_dict(layer.state_dict())
    assert other.layout == layer.layout
    x = torch.randn(6, 50)
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)


def test_from_dense_keeps_the_largest_entries_and_to_dense_computes_the_same():
    torch.manual_seed(5)
    linear = torch.nn.Linear(30, 20)
    layer = SparseLinear.from_dense(linear, density=0.1, format="element")
    k = count_for_density(0.1, 600)
    assert layer.format == "element" and layer.layout.nnz == k
    kept = linear.weight.detach().abs()[layer.layout.to_mask()]
    dropped = linear.weight.detach().abs()[~layer.layout.to_mask()]
    assert kept.min() >= dropped.max()
    x = torch.randn(4, 30)
    torch.testing.assert_close(layer.to_dense()(x), layer(x), rtol=1e-5, atol=1e-6)


def test_sparsify_and_projector_with_the_element_format():
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    sparsekern.sparsify(model, density=1.0, format="element", dense_grad=True)
    layers = [m for m in model if isinstance(m, SparseLinear)]
    assert [m.format for m in layers] == ["element", "element"]
    schedule = sparsekern.DensitySchedule(1 / 16, total_steps=4, anneal_start=0.0, anneal_end=0.5)
    projector = sparsekern.Projector(model, schedule, min_per_neuron=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(8, 32)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        projector.step()
    for m in layers:
        assert isinstance(m.layout, ElementLayout)
        assert m.layout == ElementLayout.from_weight(m.weight)
        assert m.layout.nnz == count_for_density(1 / 16, m.weight.numel())


def test_bad_format_is_refused_by_name():
    with pytest.raises(ValueError, match="format must be one of"):
        SparseLinear(8, 8, format="elements")
    with pytest.raises(ValueError, match="format must be one of"):
        SparseLinear.from_dense(torch.nn.Linear(8, 8), density=0.5, format="csr")
    with pytest.raises(ValueError, match="format must be one of"):
        sparsekern.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 8)), density=0.5, format="csr")


def test_compile_fullgraph_on_a_model_mixing_both_formats():
    torch.manual_seed(7)
    torch._dynamo.reset()
    model = torch.nn.Sequential(SparseLinear(32, 48, density=0.5, block_size=16), torch.nn.ReLU(),
                                SparseLinear(48, 8, density=0.1, format="element"))
    x = torch.randn(5, 32)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
