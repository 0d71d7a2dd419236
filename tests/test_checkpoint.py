"""SparseLinear checkpoints: the state_dict's layout_mask restores the layout, and the function, exactly."""

import io

import pytest
import torch
from torch import nn

from sparsekern import SparseLinear, formats

FORMATS = SparseLinear.FORMATS


def _trained(fmt: str, project: bool) -> SparseLinear:
    """A layer after an optimizer step with the dense weight gradient: nonzeros outside its layout."""
    torch.manual_seed(0)
    layer = SparseLinear(80, 48, density=0.25, block_size=16, dense_grad=True, format=fmt)
    if project:  # an entry layout that is not whole blocks (the block format: the blocks holding them)
        layer.project_(0.1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(5, 80)).square().sum().backward()
    optimizer.step()
    assert int((layer.weight != 0).sum()) > int(layer.layout.to_mask().sum())
    return layer


def _saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain tensors: the safe loader takes them


def _snapshot(layer: SparseLinear) -> tuple:
    return (layer.weight.detach().clone(), layer.bias.detach().clone(), layer.layout.to_mask(), layer.format)


def _assert_unchanged(layer: SparseLinear, snapshot: tuple) -> None:
    weight, bias, mask, fmt = snapshot
    assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)
    assert torch.equal(layer.layout.to_mask(), mask) and layer.format == fmt


@pytest.mark.parametrize("project", [False, True], ids=["random-layout", "projected"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_restores_layout_weight_and_function_with_nonzeros_outside_the_layout(fmt, project):
    layer = _trained(fmt, project)
    state = _saved_and_loaded(layer.state_dict())
    other = SparseLinear(80, 48, density=0.9, block_size=16, dense_grad=True, format=fmt)
    other.load_state_dict(state)
    assert torch.equal(other.layout.to_mask(), layer.layout.to_mask())
    assert other.format == layer.format
    assert torch.equal(other.weight, layer.weight)  # the nonzeros outside the layout too: a resume continues
    x = torch.randn(7, 80)
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)


def test_layout_mask_is_packed_bits_of_the_layout_under_the_layers_prefix():
    torch.manual_seed(1)
    model = nn.Sequential(nn.ReLU(), SparseLinear(20, 6, density=0.5, block_size=16, format="element"))
    state = model.state_dict()
    assert list(state) == ["1.weight", "1.bias", "1.layout_mask"]
    packed = state["1.layout_mask"]
    assert packed.dtype == torch.uint8 and packed.shape == (6, 3)  # ceil(20 / 8) bytes a row
    mask = model[1].layout.to_mask()
    # Little-endian along in_features: entry (r, c) is bit c % 8 of byte (r, c // 8).
    expected = torch.zeros(6, 3, dtype=torch.int64)
    for r, c in mask.nonzero().tolist():
        expected[r, c // 8] += 1 << (c % 8)
    assert torch.equal(packed.long(), expected)
    from sparsekern.module import pack_mask, unpack_mask

    assert torch.equal(unpack_mask(pack_mask(mask), 20), mask)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dense_linear_state_dict_loads_without_missing_keys_and_layout_is_its_nonzeros(fmt):
    torch.manual_seed(2)
    dense = nn.Linear(64, 32)
    with torch.no_grad():
        dense.weight[:, 16:] = 0
        dense.weight[0, 0] = 0
    layer = SparseLinear(64, 32, density=0.25, block_size=16, format=fmt)
    result = layer.load_state_dict(dense.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    nonzeros = dense.weight != 0
    if fmt == "block":
        assert layer.layout.to_block_mask().tolist() == [[True, False, False, False]] * 2
    else:
        assert torch.equal(layer.layout.to_mask(), nonzeros)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), dense(x))


def test_sparse_state_dict_into_a_plain_linear_fails_strictly_on_the_layout_mask():
    layer = SparseLinear(32, 16, density=0.5, block_size=16)
    dense = nn.Linear(32, 16)
    with pytest.raises(RuntimeError, match="layout_mask"):
        dense.load_state_dict(layer.state_dict())
    result = dense.load_state_dict(layer.state_dict(), strict=False)
    assert result.unexpected_keys == ["layout_mask"]
    x = torch.randn(2, 32)
    torch.testing.assert_close(dense(x), layer(x))


@pytest.mark.parametrize("bad", [torch.zeros(16, 5, dtype=torch.uint8), torch.zeros(16, 4, dtype=torch.bool),
                                 "not a tensor"], ids=["shape", "dtype", "type"])
def test_bad_layout_mask_raises_naming_the_key_and_changes_nothing(bad):
    torch.manual_seed(3)
    model = nn.Sequential(SparseLinear(32, 16, density=0.5, block_size=16))
    state = SparseLinear(32, 16, density=1.0, block_size=16).state_dict()
    state = {"0." + key: value for key, value in state.items()}
    state["0.layout_mask"] = bad
    before = _snapshot(model[0])
    with pytest.raises(RuntimeError, match=r"0\.layout_mask"):
        model.load_state_dict(state)
    _assert_unchanged(model[0], before)


def test_a_bad_bias_leaves_the_weight_and_layout_as_they_were():
    torch.manual_seed(4)
    layer = SparseLinear(32, 16, density=0.5, block_size=16)
    state = SparseLinear(32, 16, density=1.0, block_size=16).state_dict()
    state["bias"] = torch.zeros(17)
    before = _snapshot(layer)
    with pytest.raises(RuntimeError, match="bias"):
        layer.load_state_dict(state)
    _assert_unchanged(layer, before)


def test_block_format_warns_when_an_entry_mask_would_change_the_function():
    layer = _trained("element", project=True)  # entries, not whole blocks, and nonzeros off them
    block = SparseLinear(80, 48, density=0.25, block_size=16, format="block")
    with pytest.warns(UserWarning, match="layout_mask is not whole blocks"):
        block.load_state_dict(layer.state_dict())
    covered = block.layout.to_mask()
    assert (covered | ~layer.layout.to_mask()).all()  # the blocks holding the saved entries


def test_auto_format_is_chosen_again_after_load():
    torch.manual_seed(5)
    sparse = SparseLinear(96, 64, density=1.0, format="element")
    sparse.project_(0.02)
    auto = SparseLinear(96, 64, density=1.0)
    assert auto.format == "dense"
    auto.load_state_dict(sparse.state_dict())
    assert auto.format == formats.choose_format(auto.layout, "cpu", torch.float32)
    assert torch.equal(auto.layout.to_mask(), sparse.layout.to_mask())


def test_load_with_assign_into_a_meta_layer_gives_a_working_layer():
    layer = _trained("auto", project=True)
    with torch.device("meta"):
        empty = SparseLinear(80, 48, density=0.25, block_size=16, dense_grad=True)
    empty.load_state_dict(layer.state_dict(), assign=True)
    assert not empty.weight.is_meta and empty.layout.device.type == "cpu"
    assert torch.equal(empty.layout.to_mask(), layer.layout.to_mask())
    x = torch.randn(3, 80)
    torch.testing.assert_close(empty(x), layer(x), rtol=0, atol=0)
