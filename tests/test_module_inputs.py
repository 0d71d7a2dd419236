"""SparseLinear and from_dense with the inputs real model code gives them: frozen, tied and foreign
layers, weights already sparse, numpy scalars, deferred (meta) initialisation, and loose arguments."""

import numpy as np
import pytest
import torch
from torch import nn

from sparsekern import BlockLayout, ElementLayout, SparseLinear
from conv1d import Conv1D


def _linear_with_zeros(n_out=32, n_in=48) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight[torch.rand_like(linear.weight) < 0.7] = 0  # already sparse, not in blocks
        linear.weight[16:, :] = 0  # the second block row is empty
    return linear


# ------------------------------------------------------------------ from_dense
@pytest.mark.parametrize("frozen", ["weight", "bias", "both"])
def test_from_dense_keeps_requires_grad(frozen):
    linear = nn.Linear(32, 16)
    if frozen in ("weight", "both"):
        linear.weight.requires_grad_(False)
    if frozen in ("bias", "both"):
        linear.bias.requires_grad_(False)
    for fmt in SparseLinear.FORMATS:
        layer = SparseLinear.from_dense(linear, density=0.5, block_size=16, format=fmt)
        assert layer.weight.requires_grad is linear.weight.requires_grad
        assert layer.bias.requires_grad is linear.bias.requires_grad


def test_from_dense_accepts_linear_subclasses():
    class Scaled(nn.Linear):  # a subclass that adds nothing to the product
        pass

    torch.manual_seed(1)
    for linear in (Scaled(32, 16), nn.modules.linear.NonDynamicallyQuantizableLinear(32, 16)):
        layer = SparseLinear.from_dense(linear, density=1.0, block_size=16)
        x = torch.randn(3, 32)
        torch.testing.assert_close(layer(x), linear(x))
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        SparseLinear.from_dense(nn.Conv1d(1, 1, 1), density=0.5)


@pytest.mark.parametrize("fmt", SparseLinear.FORMATS)
def test_from_dense_of_a_conv1d_computes_it_and_checkpoints_in_its_orientation(fmt):
    torch.manual_seed(2)
    conv = Conv1D(32, 32)  # square: loading it the wrong way round would not fail on shapes
    layer = SparseLinear.from_dense(conv, density=1.0, block_size=16, format=fmt)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(layer(x), conv(x))
    assert layer.weight.shape == (32, 32) and layer.checkpoint_transposed
    assert torch.equal(layer.weight, conv.weight.t()) and layer.weight.is_contiguous()

    sparse = SparseLinear.from_dense(conv, density=0.25, block_size=16, format=fmt)
    state = sparse.state_dict()
    assert torch.equal(state["weight"], sparse.weight.t())  # Conv1D's [in, out]
    plain = Conv1D(32, 32)
    assert plain.load_state_dict(state, strict=False).unexpected_keys == ["layout_mask"]
    torch.testing.assert_close(plain(x), sparse(x))
    # And back: the plain Conv1D's state_dict loads into the converted layer (layout: its nonzeros).
    fresh = SparseLinear.from_dense(Conv1D(32, 32), density=0.5, block_size=16, format=fmt)
    fresh.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fresh(x), sparse(x))
    other = SparseLinear.from_dense(Conv1D(32, 32), density=0.5, block_size=16, format=fmt)
    other.load_state_dict(state)
    assert torch.equal(other.layout.to_mask(), sparse.layout.to_mask())
    assert isinstance(sparse.to_dense(), nn.Linear)
    torch.testing.assert_close(sparse.to_dense()(x), sparse(x))


def test_a_conv1d_layers_state_dict_aliases_its_weight_as_nn_modules_does():
    # An EMA over state_dict().values() (timm's ModelEmaV2) updates the entries in place: a copy
    # in the state_dict would leave the converted Conv1D layers at their first weights.
    torch.manual_seed(4)
    layer = SparseLinear.from_dense(Conv1D(24, 40), density=0.5, block_size=16, format="element")
    target = torch.randn(40, 24)
    for keep_vars in (False, True):
        with torch.no_grad():
            layer.state_dict(keep_vars=keep_vars)["weight"].copy_(target)
        assert torch.equal(layer.weight, target.t())
        target = target + 1


def test_from_dense_of_a_rectangular_conv1d_and_its_refusals():
    torch.manual_seed(3)
    conv = Conv1D(24, 40)  # nf = 24 outputs, nx = 40 inputs
    layer = SparseLinear.from_dense(conv, density=0.5, block_size=16, format="element")
    assert (layer.in_features, layer.out_features) == (40, 24)
    assert layer.state_dict()["weight"].shape == (40, 24)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        layer.load_state_dict(nn.Linear(40, 24).state_dict())  # nn.Linear's [out, in]
    with pytest.raises(ValueError, match="share_parameters"):
        SparseLinear.from_dense(conv, density=0.5, share_parameters=True)
    with torch.no_grad():
        conv.weight[:, 5] = 0  # output 5 gets no input
        conv.weight[7] = 0  # input 7 reaches no output
    kept = SparseLinear.from_dense(conv, density=None, format="element")
    assert torch.equal(kept.layout.to_mask(), conv.weight.t() != 0)
    x = torch.randn(3, 40)
    torch.testing.assert_close(kept(x), conv(x))


@pytest.mark.parametrize("fmt", SparseLinear.FORMATS)
def test_from_dense_density_none_keeps_the_weights_own_sparsity(fmt):
    linear = _linear_with_zeros()
    nonzeros = linear.weight != 0
    layer = SparseLinear.from_dense(linear, density=None, block_size=16, format=fmt)
    assert torch.equal(layer.weight, linear.weight)
    if fmt == "block":
        blocks = layer.layout.to_block_mask()
        assert blocks.tolist() == [[True, True, True], [False, False, False]]
        assert layer.density == 0.5
    else:
        assert torch.equal(layer.layout.to_mask(), nonzeros)
        assert layer.density == int(nonzeros.sum()) / nonzeros.numel()
    x = torch.randn(3, 48)
    torch.testing.assert_close(layer(x), linear(x))


def test_share_parameters_keeps_a_tied_weight_tied_and_the_optimizer_pointing_at_it():
    torch.manual_seed(4)
    embedding = nn.Embedding(64, 32)
    head = nn.Linear(32, 64, bias=False)
    head.weight = embedding.weight  # tied unembedding
    optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
    original = embedding.weight.detach().clone()
    layer = SparseLinear.from_dense(head, density=0.25, block_size=16, share_parameters=True)
    assert layer.weight is embedding.weight is optimizer.param_groups[0]["params"][0]
    mask = layer.layout.to_mask()
    assert torch.equal(embedding.weight, torch.where(mask, original, 0))  # zeroed in place outside the layout
    # Default: new Parameters, head untouched.
    head2 = nn.Linear(32, 16)
    before = head2.weight.detach().clone()
    copy = SparseLinear.from_dense(head2, density=0.25, block_size=16)
    assert copy.weight is not head2.weight and copy.bias is not head2.bias
    assert torch.equal(head2.weight, before)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_from_dense_refuses_a_non_finite_weight_and_leaves_it(poison):
    linear = nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight[3, 5] = poison
    before = linear.weight.detach().clone()
    for fmt in SparseLinear.FORMATS:
        with pytest.raises(ValueError, match="linear.*NaN or Inf"):
            SparseLinear.from_dense(linear, density=0.5, block_size=16, format=fmt, share_parameters=True)
    assert torch.equal(linear.weight.nan_to_num(), before.nan_to_num())  # share_parameters wrote nothing


# ------------------------------------------------------------------ loose arguments
def test_numpy_scalars_are_accepted_where_python_numbers_are_and_bools_are_not():
    torch.manual_seed(5)
    layer = SparseLinear(64, 32, density=np.float32(0.5), block_size=np.int64(32))
    assert layer.block_size == (32, 32) and layer.density == 0.5 and type(layer.density) is float
    assert SparseLinear(64, 32, block_size=(np.int32(16), 32)).block_size == (16, 32)
    assert SparseLinear.from_dense(nn.Linear(64, 32), density=np.float64(0.25), block_size=np.int16(16)).density == 0.25
    assert layer.project_(np.float64(0.25)).k == 512
    assert BlockLayout.random((64, 32), np.int64(16), np.float32(0.5)).nnz_blocks == 4
    with pytest.raises(TypeError, match="density"):
        SparseLinear(64, 32, density=True)
    with pytest.raises(TypeError, match="block_size"):
        SparseLinear(64, 32, block_size=True)
    with pytest.raises(TypeError, match="density"):
        SparseLinear(64, 32, density=np.bool_(True))


def test_dense_grad_and_share_parameters_must_be_bools():
    with pytest.raises(TypeError, match="dense_grad"):
        SparseLinear(32, 16, dense_grad="no")
    with pytest.raises(TypeError, match="dense_grad"):
        SparseLinear.from_dense(nn.Linear(32, 16), density=0.5, dense_grad="no")
    with pytest.raises(TypeError, match="share_parameters"):
        SparseLinear.from_dense(nn.Linear(32, 16), density=0.5, share_parameters=1)


def test_project_with_an_empty_granularity_raises_and_writes_nothing():
    layer = SparseLinear(64, 32, density=1.0)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="granularity"):
        layer.project_(0.25, granularity="")
    assert torch.equal(layer.weight, before)


def test_apply_projection_refuses_a_plan_for_another_weight():
    torch.manual_seed(6)
    a, b = SparseLinear(64, 32, density=1.0), SparseLinear(64, 32, density=1.0)
    plan = b.plan_projection(0.25)
    before_a, before_b = a.weight.detach().clone(), b.weight.detach().clone()
    with pytest.raises(ValueError, match="plan"):
        a.apply_projection(plan)
    assert torch.equal(a.weight, before_a) and torch.equal(b.weight, before_b)
    with pytest.raises(TypeError, match="plan"):
        a.apply_projection(object())
    assert b.apply_projection(plan).k == 512  # its own layer takes it


# ------------------------------------------------------------------ deferred initialisation
@pytest.mark.parametrize("fmt", SparseLinear.FORMATS)
def test_meta_construction_to_empty_and_reset_parameters_give_the_eager_layer(fmt):
    with torch.device("meta"):
        layer = SparseLinear(64, 32, density=0.25, block_size=16, format=fmt)
    assert layer.weight.is_meta and layer.layout_mask.is_meta  # the buffer lives with the weight
    y = layer(torch.empty(3, 7, 64, device="meta"))
    assert y.is_meta and y.shape == (3, 7, 32) and y.dtype == torch.float32
    layer.to_empty(device="cpu")
    torch.manual_seed(7)
    layer.reset_parameters()
    torch.manual_seed(7)
    eager = SparseLinear(64, 32, density=0.25, block_size=16, format=fmt)
    assert torch.equal(layer.weight, eager.weight) and torch.equal(layer.bias, eager.bias)
    assert torch.equal(layer.layout.to_mask(), eager.layout.to_mask()) and layer.format == eager.format
    assert torch.equal(layer.layout_mask, eager.layout_mask)
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), eager(x), rtol=0, atol=0)


def test_reset_parameters_is_linears_init_and_a_new_layout():
    torch.manual_seed(8)
    dense = nn.Linear(96, 64)
    layer = SparseLinear(96, 64, density=0.25, block_size=32)
    torch.manual_seed(8)
    layer.reset_parameters()
    mask = layer.layout.to_mask()
    assert torch.equal(layer.weight[mask], dense.weight[mask]) and (layer.weight[~mask] == 0).all()
    assert torch.equal(layer.bias, dense.bias) and layer.layout.nnz_blocks == round(0.25 * 6)


def test_layouts_under_a_meta_default_device_are_drawn_on_the_cpu():
    torch.manual_seed(9)
    blocks, entries = BlockLayout.random((64, 48), 16, 0.5), ElementLayout.random((64, 48), 0.2)
    torch.manual_seed(9)
    with torch.device("meta"):
        meta_blocks, meta_entries = BlockLayout.random((64, 48), 16, 0.5), ElementLayout.random((64, 48), 0.2)
    assert meta_blocks.device.type == meta_entries.device.type == "cpu"
    assert meta_blocks == blocks and meta_entries == entries
    with pytest.raises(ValueError, match="block_mask is on the meta device"):
        BlockLayout(torch.ones(4, 3, dtype=torch.bool, device="meta"), 16, (64, 48))
    with pytest.raises(ValueError, match="mask is on the meta device"):
        ElementLayout(torch.ones(64, 48, dtype=torch.bool, device="meta"))


def test_from_dense_of_a_meta_linear_then_load_or_reset_gives_a_working_layer():
    with torch.device("meta"):
        meta = nn.Linear(48, 32)
    source = SparseLinear.from_dense(_linear_with_zeros(), density=None, block_size=16)
    for density in (0.25, None):
        layer = SparseLinear.from_dense(meta, density=density, block_size=16)
        assert layer.weight.is_meta and layer(torch.empty(5, 48, device="meta")).shape == (5, 32)
        with pytest.raises(ValueError, match="meta device"):
            layer.project_(0.1)
        with pytest.raises(ValueError, match="meta device"):
            layer.refresh_layout()
        layer.to_empty(device="cpu")
        layer.load_state_dict(source.state_dict())
        x = torch.randn(3, 48)
        torch.testing.assert_close(layer(x), source(x), rtol=0, atol=0)
    layer = SparseLinear.from_dense(meta, density=0.25, block_size=16).to_empty(device="cpu")
    layer.reset_parameters()
    x = torch.randn(3, 48)
    torch.testing.assert_close(layer(x), layer.to_dense()(x))
    assert layer.layout.nnz_blocks == round(0.25 * 6) and (layer.weight[~layer.layout.to_mask()] == 0).all()


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize("fmt", SparseLinear.FORMATS)
def test_outputs_are_no_views_and_3d_inputs_train_in_every_format(fmt):
    # FSDP2 warns at every forward of a module returning a view (an in-place op on it would skip
    # FSDP's pre-backward hook): the output of every format is a tensor of its own.
    torch.manual_seed(10)
    layer = SparseLinear(48, 40, density=0.5, block_size=16, dense_grad=True, format=fmt)
    reference = layer.to_dense()
    for shape in ((2, 3, 48), (5, 48), (48,)):
        x = torch.randn(shape, requires_grad=True)
        y = layer(x)
        assert not y._is_view() and y.shape == (*shape[:-1], 40)
        x_ref = x.detach().clone().requires_grad_()
        y_ref = reference(x_ref)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(layer.weight.grad, reference.weight.grad)  # dense_grad: the full gradient
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad)
        layer.zero_grad()
        reference.zero_grad()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move to")
def test_a_layer_moved_by_data_assignment_follows_with_its_layout():
    # fully_shard moves parameters and buffers to its mesh's device by `.data =`, which _apply never sees.
    torch.manual_seed(11)
    layer = SparseLinear(48, 40, density=0.5, block_size=16, format="element")
    x = torch.randn(3, 48)
    expected, bits = layer(x), layer.layout_mask.clone()
    for tensor in (layer.weight, layer.bias, layer.layout_mask):
        tensor.data = tensor.data.cuda()
    torch.testing.assert_close(layer(x.cuda()).cpu(), expected)
    assert layer.layout.device.type == "cuda" and torch.equal(layer.layout_mask.cpu(), bits)
