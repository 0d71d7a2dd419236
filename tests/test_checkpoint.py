"""SparseLinear checkpoints: the state_dict's layout_mask restores the layout, and the function, exactly."""

import io

import pytest
import torch
from torch import nn

from sparsekern import SparseLinear, formats
from sparsekern.mask_bits import pack_mask

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


def test_pack_mask_every_byte_at_every_position_and_odd_widths():
    from sparsekern.mask_bits import pack_mask, unpack_mask

    # Every value of a byte, at each of the 8 byte positions of a 64-bit word (the multiply trick
    # must not carry between them), and widths that need padding.
    values = torch.arange(256)
    byte_bits = ((values[:, None] >> torch.arange(8)) & 1).bool()  # [256, 8]
    for position in range(8):
        mask = torch.zeros(256, 64, dtype=torch.bool)
        mask[:, 8 * position:8 * position + 8] = byte_bits
        mask[:, 63 - (position == 7)] |= True  # a neighbour set too
        packed = pack_mask(mask)
        expected = torch.zeros(256, 8, dtype=torch.int64)
        for c in range(64):
            expected[:, c // 8] += mask[:, c].long() << (c % 8)
        assert torch.equal(packed.long(), expected), position
        assert torch.equal(unpack_mask(packed, 64), mask)
    torch.manual_seed(0)
    for cols in (1, 7, 9, 63, 65):
        mask = torch.rand(5, cols) < 0.5
        assert torch.equal(unpack_mask(pack_mask(mask), cols), mask)
        assert torch.equal(unpack_mask(pack_mask(mask.t().contiguous().t()), cols), mask)  # strided
    for empty in ((0, 12), (3, 0), (0, 0)):  # no rows, no columns
        mask = torch.zeros(empty, dtype=torch.bool)
        assert torch.equal(unpack_mask(pack_mask(mask), empty[1]), mask)
    # Contiguous, but at an offset no int64 view can take.
    flat = torch.rand(8 * 5 + 3) < 0.5
    offset = flat[3:].view(5, 8)
    assert torch.equal(unpack_mask(pack_mask(offset), 8), offset)


def test_pack_entries_is_pack_mask_of_the_index():
    from sparsekern import ElementLayout
    from sparsekern.mask_bits import pack_entries

    torch.manual_seed(3)
    masks = [torch.rand(shape) < p for shape in ((9, 1), (7, 9), (33, 65), (64, 128)) for p in (0.0, 0.05, 0.5, 1.0)]
    for rows, cols in ((0, 12), (3, 0)):  # no layout has these; the bits are still the mask's
        no_entries = torch.zeros(0, dtype=torch.int32)
        packed = pack_entries((rows, cols), torch.zeros(rows + 1, dtype=torch.int32), no_entries)
        assert torch.equal(packed, pack_mask(torch.zeros(rows, cols, dtype=torch.bool)))
    rows_apart = torch.rand(16, 40) < 0.3
    rows_apart[3] = False  # a row without entries between rows with some
    rows_apart[5] = True  # a full row
    masks.append(rows_apart)
    for mask in masks:
        layout = ElementLayout(mask)
        packed = pack_entries(mask.shape, layout.row_ptr, layout.col_idx)
        assert packed.dtype == torch.uint8 and packed.shape == pack_mask(mask).shape
        assert torch.equal(packed, pack_mask(mask)), mask.shape
    # int64 pointers (what a layout past 2^31 entries carries) give the same bits.
    layout = ElementLayout(rows_apart)
    assert torch.equal(pack_entries(rows_apart.shape, layout.row_ptr.long(), layout.col_idx), pack_mask(rows_apart))


def test_layout_mask_buffer_of_an_element_layer_after_projection_is_its_entries():
    torch.manual_seed(4)
    layer = SparseLinear(72, 40, density=0.5, format="element")
    layer.project_(0.07, granularity="element")
    assert torch.equal(layer.layout_mask, pack_mask(layer.layout.to_mask()))
    assert torch.equal(layer.layout_mask, pack_mask(layer.weight != 0))


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


# ------------------------------------------------------------------ the layout_mask buffer
def _bits_of_layout(layer: SparseLinear) -> torch.Tensor:
    from sparsekern.mask_bits import pack_mask

    return pack_mask(layer.layout.to_mask())


@pytest.mark.parametrize("fmt", FORMATS)
def test_layout_mask_is_a_buffer_every_path_rewrites_in_place(fmt):
    # DDP broadcasts the buffer tensors it found when it was built: a path that rebinds the
    # buffer instead of writing it would leave the other ranks with their own layouts.
    torch.manual_seed(6)
    layer = SparseLinear(40, 24, density=0.5, block_size=16, dense_grad=True, format=fmt)
    buffer = layer.layout_mask
    assert dict(layer.named_buffers()) == {"layout_mask": buffer}
    first = buffer.clone()
    assert torch.equal(buffer, _bits_of_layout(layer))
    steps = {
        "project_": lambda: layer.project_(0.2),
        "refresh_layout": lambda: (layer.weight.data.__setitem__((slice(None), slice(0, 8)), 1.0),
                                   layer.refresh_layout()),
        "load_state_dict": lambda: layer.load_state_dict(
            SparseLinear(40, 24, density=0.3, block_size=16, format=fmt).state_dict()),
        "a dense state_dict": lambda: layer.load_state_dict(nn.Linear(40, 24).state_dict()),
        "reset_parameters": layer.reset_parameters,
        ".double()": layer.double,
    }
    seen = {first.numpy().tobytes()}
    for name, step in steps.items():
        step()
        assert layer.layout_mask is buffer, name
        assert torch.equal(buffer, _bits_of_layout(layer)), name
        seen.add(buffer.numpy().tobytes())
    assert len(seen) >= 5  # the paths changed the layout, so the checks above could fail
    # to_empty makes every tensor anew, as nn.Module's moves do (before DDP wraps the model): the bits follow.
    layer.to_empty(device="cpu")
    assert torch.equal(layer.layout_mask, _bits_of_layout(layer)) and torch.equal(layer.layout_mask, buffer)
    assert list(layer.state_dict()) == ["weight", "bias", "layout_mask"]  # the keys of before the buffer


def test_from_dense_and_sparsify_of_tied_layers_give_each_holder_its_layouts_bits():
    from sparsekern import Projector, sparsify

    torch.manual_seed(7)
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(32, 32))
    model[2].weight = shared.weight  # two layers, one weight: one layout for both
    sparsify(model, density=0.5, block_size=16, format="element")
    for _ in range(2):
        for layer in (model[0], model[2]):
            assert torch.equal(layer.layout_mask, _bits_of_layout(layer))
        assert torch.equal(model[0].layout_mask, model[2].layout_mask)
        Projector(model, lambda step: 0.2).step()
    converted = SparseLinear.from_dense(nn.Linear(32, 16), density=0.25, block_size=16)
    assert torch.equal(converted.layout_mask, _bits_of_layout(converted))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_layout_written_into_the_buffer_is_adopted_by_the_next_forward(fmt):
    # What DDP does at construction: rank 0's weight and buffers copied into every rank's.
    torch.manual_seed(8)
    rank0 = SparseLinear(48, 32, density=0.25, block_size=16, format=fmt)
    rank1 = SparseLinear(48, 32, density=0.25, block_size=16, format=fmt)
    assert not torch.equal(rank0.layout_mask, rank1.layout_mask)
    with torch.no_grad():
        rank1.weight.copy_(rank0.weight)
        rank1.bias.copy_(rank0.bias)
        rank1.layout_mask.copy_(rank0.layout_mask)
    x = torch.randn(5, 48)
    torch.testing.assert_close(rank1(x), rank0(x), rtol=0, atol=0)
    assert torch.equal(rank1.layout.to_mask(), rank0.layout.to_mask()) and rank1.format == rank0.format
    # format, layout and to_dense read it too, without a forward first.
    for density in (1.0, 0.5):
        other = SparseLinear(48, 32, density=density, block_size=16, format=fmt)
        with torch.no_grad():
            rank1.layout_mask.copy_(other.layout_mask)
        if density == 1.0:
            assert rank1.format == other.format
            assert torch.equal(rank1.layout.to_mask(), other.layout.to_mask())
        else:
            assert torch.equal(rank1.to_dense().weight != 0, (rank1.weight != 0) & other.layout.to_mask())


def test_an_unchanged_write_costs_a_compare_not_a_rebuild(monkeypatch):
    torch.manual_seed(9)
    layer = SparseLinear(48, 32, density=0.25, block_size=16, format="element")
    rebuilt = []
    real = SparseLinear._load_layout
    monkeypatch.setattr(SparseLinear, "_load_layout", lambda self, *args: (rebuilt.append(1), real(self, *args)))
    layout, x = layer.layout, torch.randn(3, 48)
    with torch.no_grad():
        layer.layout_mask.copy_(layer.layout_mask.clone())  # the same bits, the version moved
    layer(x)
    assert rebuilt == [] and layer.layout is layout
    with torch.no_grad():
        layer.layout_mask[0, 0] ^= 1
    layer(x)
    assert rebuilt == [1] and layer.layout is not layout
    assert bool(layer.layout.to_mask()[0, 0]) is not bool(layout.to_mask()[0, 0])


def test_a_buffer_replaced_by_a_wrong_one_raises_naming_it():
    layer = SparseLinear(48, 32, density=0.25, block_size=16)
    layer.layout_mask = torch.zeros(32, 5, dtype=torch.uint8)  # nn.Module rebinds the buffer
    with pytest.raises(ValueError, match=r"layout_mask buffer was replaced.*shape \(32, 6\)"):
        layer(torch.randn(2, 48))


def _sync_as_ddp(source: SparseLinear, target: SparseLinear) -> None:
    """What DDP's buffer sync before a forward does: source's state copied into target's tensors,
    the buffer's version counter kept."""
    with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter((target.layout_mask,)):
        target.layout_mask.copy_(source.layout_mask)
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)


def test_a_version_keeping_write_after_a_forward_is_adopted_by_the_next_forward():
    # Rank 0 alone changes its layout after the ranks agreed (a refresh_layout, a load): DDP's sync
    # before the next forward writes it into rank 1's buffer keeping the version counter, and
    # rank 1's forward must run it all the same.
    torch.manual_seed(11)
    rank0, rank1 = (SparseLinear(48, 32, density=0.25, block_size=16, format="element") for _ in range(2))
    x = torch.randn(3, 48)
    rank0(x), rank1(x)  # both have read their own buffers since their last writes
    _sync_as_ddp(rank0, rank1)
    torch.testing.assert_close(rank1(x), rank0(x), rtol=0, atol=0)
    assert torch.equal(pack_mask(rank1.layout.to_mask()), rank1.layout_mask)


def test_a_write_that_keeps_the_version_counter_is_adopted_after_a_layout_change():
    # DDP's broadcast before each forward keeps the buffers' version counters: the first read
    # after the layer wrote its layout compares the bits.
    torch.manual_seed(10)
    rank0, rank1 = (SparseLinear(48, 32, density=0.25, block_size=16, format="element") for _ in range(2))
    x = torch.randn(3, 48)
    for project in (False, True):
        if project:  # a new layout on both, then rank 0's broadcast again
            rank0.project_(0.1)
            rank1.project_(0.2)
        _sync_as_ddp(rank0, rank1)
        torch.testing.assert_close(rank1(x), rank0(x), rtol=0, atol=0)
        assert torch.equal(rank1.layout.to_mask(), rank0.layout.to_mask())
