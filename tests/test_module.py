"""SparseLinear as a drop-in for nn.Linear."""

import pytest
import torch
from torch import nn

import sparsekern
from sparsekern import SparseLinear
from conftest import assert_close_to_reference


def test_same_parameters_state_dict_and_init_as_linear():
    torch.manual_seed(0)
    dense = nn.Linear(96, 64)
    torch.manual_seed(0)
    sparse = SparseLinear(96, 64, density=0.25, block_size=32)
    # nn.Linear's keys, then the layout (sparsekern's own entry, which a plain nn.Linear refuses).
    assert list(sparse.state_dict()) == list(dense.state_dict()) + ["layout_mask"] == ["weight", "bias", "layout_mask"]
    assert sparse.weight.shape == dense.weight.shape and sparse.bias.shape == dense.bias.shape
    mask = sparse.layout.to_mask()
    # nn.Linear's initialisation, draw for draw, then zeroed outside the layout.
    torch.testing.assert_close(sparse.weight[mask], dense.weight[mask], rtol=0, atol=0)
    assert (sparse.weight[~mask] == 0).all()
    torch.testing.assert_close(sparse.bias, dense.bias, rtol=0, atol=0)
    assert sparse.layout.nnz_blocks == round(0.25 * 6)


def test_no_bias():
    m = SparseLinear(32, 16, bias=False, density=0.5, block_size=16)
    assert m.bias is None and list(m.state_dict()) == ["weight", "layout_mask"]
    assert m(torch.randn(3, 32)).shape == (3, 16)


def test_forward_and_grad_match_masked_linear():
    torch.manual_seed(1)
    m = SparseLinear(80, 48, density=0.5, block_size=16)
    x = torch.randn(2, 5, 80, requires_grad=True)
    y = m(x)
    dense = m.to_dense()
    x2 = x.detach().clone().requires_grad_()
    y2 = dense(x2)
    torch.testing.assert_close(y, y2)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    mask = m.layout.to_mask()
    torch.testing.assert_close(m.weight.grad, dense.weight.grad * mask)
    torch.testing.assert_close(m.bias.grad, dense.bias.grad)


def test_from_dense_keeps_largest_blocks():
    lin = nn.Linear(64, 64, bias=True)
    with torch.no_grad():
        lin.weight.fill_(0.01)
        lin.weight[32:, :32] = 5.0  # block (1, 0): largest
        lin.weight[:32, 32:] = -3.0  # block (0, 1): second
    m = SparseLinear.from_dense(lin, density=0.5, block_size=32)
    assert m.layout.to_block_mask().tolist() == [[False, True], [True, False]]
    assert torch.equal(m.weight, lin.weight * m.layout.to_mask())
    assert torch.equal(m.bias, lin.bias)
    assert m.bias is not lin.bias and m.weight is not lin.weight


def test_from_dense_ties_go_to_lowest_block_index():
    lin = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    m = SparseLinear.from_dense(lin, density=0.5, block_size=32)
    assert m.layout.to_block_mask().tolist() == [[True, True], [False, False]]


def test_to_dense_computes_the_same_function():
    torch.manual_seed(2)
    m = SparseLinear(50, 30, density=0.4, block_size=(16, 32))
    with torch.no_grad():
        m.weight.add_(1.0)  # entries outside the layout are now nonzero: they must not count
    x = torch.randn(7, 50)
    torch.testing.assert_close(m(x), m.to_dense()(x))


def test_dense_state_dict_loads_and_layout_follows():
    torch.manual_seed(3)
    m = SparseLinear(64, 32, density=0.25, block_size=16, format="block")
    dense = nn.Linear(64, 32)
    with torch.no_grad():
        dense.weight[:, 16:] = 0  # only the first block column holds weights
    m.load_state_dict(dense.state_dict())
    assert m.layout.to_block_mask().tolist() == [[True, False, False, False]] * 2
    x = torch.randn(3, 64)
    torch.testing.assert_close(m(x), dense(x))
    # refresh_layout is explicit too, after an in-place edit.
    with torch.no_grad():
        m.weight.zero_()
    assert m.refresh_layout().nnz_blocks == 0


def test_checkpoint_round_trip():
    torch.manual_seed(4)
    a = SparseLinear(40, 24, density=0.3, block_size=16)
    b = SparseLinear(40, 24, density=0.3, block_size=16)
    b.load_state_dict(a.state_dict())
    assert b.layout == a.layout
    x = torch.randn(2, 40)
    torch.testing.assert_close(a(x), b(x))


def test_extra_repr_shows_the_arguments():
    m = SparseLinear(64, 32, bias=False, density=0.125, block_size=(16, 32), format="block")
    assert repr(m) == ("SparseLinear(in_features=64, out_features=32, bias=False, "
                       "density=0.125, format='block', block_size=(16, 32))")
    m = SparseLinear(64, 32, bias=False, density=1.0, format="auto")
    assert repr(m) == ("SparseLinear(in_features=64, out_features=32, bias=False, "
                       "density=1.0, format='auto' (running 'dense'))")


def test_module_dtype_conversion_and_optimizer_step():
    torch.manual_seed(5)
    m = SparseLinear(32, 32, density=0.5, block_size=16).double()
    assert m.weight.dtype == torch.float64
    assert m.layout.device == m.weight.device
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mask = m.layout.to_mask()
    m(torch.randn(4, 32, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    assert (m.weight[~mask] == 0).all()  # active-block gradients keep the sparsity


def test_constructor_validates():
    with pytest.raises(ValueError, match="density"):
        SparseLinear(32, 32, density=2.0)
    with pytest.raises(ValueError, match="block_size"):
        SparseLinear(32, 32, block_size=24)
    with pytest.raises(TypeError, match="linear"):
        SparseLinear.from_dense(nn.Conv1d(1, 1, 1), density=0.5)


def test_dense_grad_mode_gives_gradient_everywhere():
    torch.manual_seed(6)
    m = SparseLinear(32, 32, density=0.25, block_size=16, dense_grad=True)
    x = torch.randn(5, 32)
    m(x).sum().backward()
    torch.testing.assert_close(m.weight.grad, torch.ones(5, 32).t() @ x)
    assert sparsekern.SparseLinear(32, 32).dense_grad is False


def test_autocast_computes_in_the_autocast_dtype_like_linear():
    torch.manual_seed(7)
    m = SparseLinear(64, 32, density=0.5, block_size=16)
    dense = m.to_dense()
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        expected = dense(x)
    assert y.dtype == expected.dtype == torch.bfloat16
    expected64 = x.double() @ dense.weight.double().t() + dense.bias.double()
    assert_close_to_reference(y, expected64, expected, name="y")  # within twice torch's own bf16 error
    y.float().sum().backward()  # the gradient flows back to the fp32 parameters
    assert m.weight.grad.dtype == torch.float32 and (m.weight.grad[~m.layout.to_mask()] == 0).all()


def test_meta_device_construction_and_to_empty():
    m = SparseLinear(64, 32, density=0.25, block_size=16, device="meta")
    assert m.weight.is_meta and m.layout.nnz_blocks == round(0.25 * 8)
    m = m.to_empty(device="cpu")
    assert m.layout.device.type == "cpu"
    with torch.no_grad():  # to_empty leaves both uninitialised (NaN now and then)
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(3, 64)
    torch.testing.assert_close(m(x), m.to_dense()(x))


def test_import_does_no_work():
    # Nothing at import: no extension load, no triton, no torch._dynamo, no device query.
    import subprocess
    import sys

    code = ("import sys, torch, sparsekern; "
            "print(sorted(m for m in ('triton', 'torch._dynamo', 'sparsekern._C') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
