"""SparseLinear's formats: "dense" computes the sparse formats' function, "auto" chooses by
the cost model (sparsekern.formats) each time the layout changes, a forced format holds,
and a model whose layers change format during training traces under torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import sparsekern
from sparsekern import BlockLayout, DensitySchedule, ElementLayout, Projector, SparseLinear, sparsify
from sparsekern import formats
from sparsekern.dense import masked_dense_linear
from sparsekern.element.backends import REGISTRY as ELEMENT_BACKENDS
from conftest import POISON, assert_close_to_reference

needs_element_cpu = pytest.mark.skipif(
    "cpu" not in ELEMENT_BACKENDS.available("cpu", torch.float32),
    reason="the element format's cpu backend is not built (the compiled extension is missing)")


def _masked_reference(layer, x):
    mask = layer.layout.to_mask()
    w = torch.where(mask, layer.weight.detach(), 0).double()
    b = None if layer.bias is None else layer.bias.detach().double()
    return F.linear(x.double(), w, b), mask


# ------------------------------------------------------------------ dense format
@pytest.mark.parametrize("layout_kind", ["block", "element"])
@pytest.mark.parametrize("dense_weight_grad", [False, True])
def test_dense_format_computes_the_sparse_function(layout_kind, dense_weight_grad):
    g = torch.Generator().manual_seed(0)
    shape = (37, 53)
    layout = (BlockLayout.random(shape, 16, 0.4, generator=g) if layout_kind == "block"
              else ElementLayout.random(shape, 0.1, generator=g))
    mask = layout.to_mask()
    weight = torch.where(mask, torch.randn(shape, generator=g), POISON).requires_grad_()
    bias = torch.randn(37, generator=g, requires_grad=True)
    x = torch.randn(2, 5, 53, generator=g, requires_grad=True)
    y = masked_dense_linear(x, weight, layout, bias, dense_weight_grad=dense_weight_grad)
    grad = torch.randn(y.shape, generator=g)
    y.backward(grad)
    w64 = torch.where(mask, weight.detach(), 0).double()
    assert_close_to_reference(y.detach(), F.linear(x.detach().double(), w64, bias.detach().double()), name="y")
    g2, x2 = grad.reshape(-1, 37).double(), x.detach().reshape(-1, 53).double()
    dw = g2.t() @ x2
    assert_close_to_reference(weight.grad, dw if dense_weight_grad else torch.where(mask, dw, 0), name="dw")
    assert_close_to_reference(x.grad, grad.double() @ w64, name="dx")
    assert_close_to_reference(bias.grad, g2.sum(0), name="db")
    if not dense_weight_grad:
        assert (weight.grad[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 0.97, 1.0])
def test_zero_outside_is_torch_where_bit_for_bit(dtype, density):
    # The dense format's masking (the extension's pass for contiguous operands on the CPU, the bits
    # times the mask for the others) against torch.where: +0 outside the mask whatever is there,
    # every bit kept inside (NaN, Inf, -0 included), any strides.
    from sparsekern.dense.function import _SAME_SIZE_INT, zero_outside
    g = torch.Generator().manual_seed(int(density * 100))
    t = torch.randn(67, 45, generator=g).to(dtype)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]).to(dtype)
    spots = torch.randint(0, t.numel(), (40,), generator=g)
    t.view(-1)[spots] = specials[torch.arange(40) % 4]
    mask = torch.rand(67, 45, generator=g) < density
    for operand, m in ((t, mask), (t.t(), mask.t()), (t[:, ::2], mask[:, ::2])):
        out, ref = zero_outside(operand, m), torch.where(m, operand, 0)
        assert out.dtype == dtype and out.shape == ref.shape
        words = _SAME_SIZE_INT[out.element_size()]
        assert torch.equal(out.contiguous().view(words), ref.contiguous().view(words))


needs_zero_outside_cpu = pytest.mark.skipif(
    not hasattr(sparsekern._extension.extension(), "zero_outside_cpu"),
    reason="the compiled extension (its zero_outside_cpu) is missing")


@needs_zero_outside_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("threads", [1, 2])
def test_zero_outside_cpu_pass_is_torch_where_bit_for_bit(dtype, threads):
    # The extension's pass on its own, over several of its pieces (2^16 entries each) and both
    # threads: every word and-ed with its mask byte.
    ext = sparsekern._extension.extension()
    g = torch.Generator().manual_seed(7)
    t = (torch.randn(301, 700, generator=g) * 50).to(dtype)
    if dtype.is_floating_point:
        t.view(-1)[torch.randint(0, t.numel(), (64,), generator=g)] = float("nan")
        t.view(-1)[torch.randint(0, t.numel(), (64,), generator=g)] = -0.0
    mask = torch.rand(301, 700, generator=g) < 0.5
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ext.zero_outside_cpu(t, mask)
    finally:
        torch.set_num_threads(before)
    ref = torch.where(mask, t, 0)
    words = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out.view(words), ref.view(words))


@needs_zero_outside_cpu
def test_zero_outside_cpu_pass_refuses_what_it_cannot_read():
    ext = sparsekern._extension.extension()
    t, mask = torch.randn(6, 5), torch.rand(6, 5) < 0.5
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        ext.zero_outside_cpu(t, mask.to(torch.uint8))
    with pytest.raises(ValueError, match="mask must have t's shape"):
        ext.zero_outside_cpu(t, mask[:5])
    with pytest.raises(ValueError, match="must be contiguous"):
        ext.zero_outside_cpu(t.t(), mask.t())
    with pytest.raises(TypeError, match="entries of 1, 2, 4 or 8 bytes"):
        ext.zero_outside_cpu(torch.zeros(6, 5, dtype=torch.complex128), mask)


def test_zero_outside_stays_differentiable_where_autograd_records():
    from sparsekern.dense.function import zero_outside
    w = torch.randn(6, 5, requires_grad=True)
    mask = torch.rand(6, 5) < 0.5
    zero_outside(w, mask).sum().backward()
    assert torch.equal(w.grad, mask.float())


def test_dense_format_checks_its_arguments_first():
    layout = ElementLayout.random((8, 6), 0.5)
    with pytest.raises(ValueError, match="layout.shape must equal weight.shape"):
        masked_dense_linear(torch.randn(2, 7), torch.randn(8, 7), layout)
    with pytest.raises(TypeError, match="layout must be"):
        masked_dense_linear(torch.randn(2, 6), torch.randn(8, 6), layout.to_mask())


def test_forced_dense_format_holds_through_projection_and_load():
    torch.manual_seed(1)
    layer = SparseLinear(64, 40, density=1.0, format="dense")
    assert layer.format == "dense"
    layer.project_(0.05)
    assert layer.format == "dense" and layer.layout == ElementLayout.from_weight(layer.weight)
    x = torch.randn(4, 64)
    expected, _ = _masked_reference(layer, x)
    assert_close_to_reference(layer(x).detach(), expected, name="y")
    other = SparseLinear(64, 40, format="dense")
    other.load_state_dict(layer.state_dict())
    assert other.format == "dense" and other.layout == layer.layout


# ------------------------------------------------------------------ cost model
@needs_element_cpu
def test_auto_picks_dense_when_dense_and_element_when_sparse():
    shape = (1024, 512)
    full = BlockLayout.random(shape, 32, 1.0)
    assert formats.choose_format(full, "cpu", torch.float32) == "dense"
    sparse = ElementLayout.random(shape, 1 / 64)
    costs = formats.estimate_costs(sparse, "cpu", torch.float32)
    assert set(costs) == {"dense", "element"}  # scattered entries: no block candidate
    assert costs["element"] < 0.25 and formats.choose_format(sparse, "cpu", torch.float32) == "element"
    # The cost follows the nonzeros: at a density near 1 the element kernels lose.
    assert formats.choose_format(ElementLayout.random(shape, 0.9), "cpu", torch.float32) == "dense"


@needs_element_cpu
def test_block_kernels_are_a_candidate_only_for_whole_blocks():
    shape = (64, 96)
    blocks = BlockLayout.random(shape, 16, 0.25, generator=torch.Generator().manual_seed(2))
    entries = ElementLayout.from_mask(blocks.to_mask())
    counts = torch.zeros(blocks.grid, dtype=torch.int32)
    counts[blocks.to_block_mask()] = 256
    whole = formats.whole_blocks(counts, 16, shape)
    assert whole == blocks and formats.entry_count(blocks) == entries.nnz
    assert "block" in formats.candidates(entries, "cpu", torch.float32, blocks=whole)
    counts[counts > 0] -= 1  # one entry short in every active block: not whole blocks
    assert formats.whole_blocks(counts, 16, shape) is None
    assert formats.layout_for("element", blocks) == entries
    with pytest.raises(ValueError, match="whole blocks"):
        formats.layout_for("block", entries)


def test_auto_passes_over_formats_with_only_a_reference_backend():
    # fp16 on the CPU: neither compiled CPU backend takes it, so auto runs dense.
    layer = SparseLinear(64, 64, density=0.05, format="auto", dtype=torch.float16)
    assert formats.candidates(layer.layout, "cpu", torch.float16) == ["dense"]
    assert layer.format == "dense"


# ------------------------------------------------------------------ auto in training
@needs_element_cpu
def test_auto_follows_the_annealed_schedule_and_stays_exact():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.ReLU(), torch.nn.Linear(384, 256))
    model = sparsify(model, density=1.0, block_size=32, dense_grad=True)
    layers = [m for m in model if isinstance(m, SparseLinear)]
    assert all(m.requested_format == "auto" and m.format == "dense" for m in layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 12
    projector = Projector(model, DensitySchedule(1 / 64, steps, anneal_end=0.5), min_per_neuron=4)
    seen = []
    for _ in range(steps):
        x = torch.randn(16, 256)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        projector.step()
        seen.append(layers[0].format)
        for layer in layers:
            assert isinstance(layer.layout, ElementLayout)
            assert layer.layout == ElementLayout.from_weight(layer.weight)
            probe = torch.randn(5, layer.in_features)
            expected, _ = _masked_reference(layer, probe)
            assert_close_to_reference(layer(probe).detach(), expected, name=f"{layer.format} forward")
    # Dense while the density is high, the element kernels once it is low, never back.
    assert seen[0] == "dense" and seen[-1] == "element"
    assert seen == sorted(seen, key=("dense", "element").index)


def test_forced_formats_hold_and_auto_rechooses_on_load_and_move():
    torch.manual_seed(4)
    for fmt in ("block", "element"):
        layer = SparseLinear(96, 64, density=1.0, format=fmt)
        layer.project_(0.02)
        assert layer.format == fmt
    auto = SparseLinear(96, 64, density=1.0)
    assert auto.format == "dense"
    sparse_state = SparseLinear(96, 64, density=0.02, format="element").state_dict()
    auto.load_state_dict(sparse_state)
    assert isinstance(auto.layout, ElementLayout) and auto.layout.nnz == int((auto.weight != 0).sum())
    chosen = auto.format
    assert chosen == formats.choose_format(auto.layout, "cpu", torch.float32)
    auto.half()  # a new dtype: no compiled CPU kernel for fp16, so dense
    assert auto.format == "dense" and auto.layout == ElementLayout.from_weight(auto.weight)


def test_meta_construction_chooses_again_on_materialisation():
    layer = SparseLinear(64, 32, density=1.0, device="meta")
    layer.to_empty(device="cpu")
    assert layer.layout.device.type == "cpu" and layer.format in formats.RUN_FORMATS


def test_from_dense_auto_keeps_top_blocks_as_block_format_does():
    torch.manual_seed(5)
    linear = torch.nn.Linear(64, 64)
    auto = SparseLinear.from_dense(linear, density=0.25, block_size=16)
    block = SparseLinear.from_dense(linear, density=0.25, block_size=16, format="block")
    assert auto._sparsity == block.layout
    x = torch.randn(3, 64)
    torch.testing.assert_close(auto(x), block(x))


@needs_element_cpu
def test_compile_fullgraph_on_a_model_that_switches_format_during_training():
    torch.manual_seed(6)
    torch._dynamo.reset()
    model = sparsify(torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)),
                     density=1.0, dense_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    projector = Projector(model, DensitySchedule(1 / 32, 4, anneal_end=0.5))
    formats_seen = set()
    for _ in range(4):
        x = torch.randn(8, 128)
        out = compiled(x)
        out.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        eager = model(x)
        eager.sum().backward()
        torch.testing.assert_close(out, eager)
        for p, grad in zip(model.parameters(), grads):
            torch.testing.assert_close(p.grad, grad)
        model.zero_grad()
        formats_seen |= {m.format for m in model if isinstance(m, SparseLinear)}
        projector.step()
    assert {"dense", "element"} <= formats_seen


def test_a_layer_running_dense_builds_no_index_until_asked():
    torch.manual_seed(7)
    layer = SparseLinear(128, 96, density=1.0, format="auto")
    result = layer.project_(0.9)  # dense by the cost model: the projection lists no index
    assert result.element_layout is None and layer.format == "dense"
    assert isinstance(layer._layout, sparsekern.dense.MaskLayout) and layer._layout.nnz == result.nnz
    x = torch.randn(3, 128)
    expected = F.linear(x.double(), layer.weight.detach().double(), layer.bias.detach().double())
    assert_close_to_reference(layer(x).detach(), expected, name="y")
    assert isinstance(layer.layout, ElementLayout)  # built on demand, and kept
    assert layer.layout == ElementLayout.from_weight(layer.weight) and layer._layout is layer.layout
    forced = SparseLinear(128, 96, density=1.0, format="dense")
    assert forced.project_(0.05).element_layout is None and forced.format == "dense"
    assert forced.layout == ElementLayout.from_weight(forced.weight)


@needs_element_cpu
def test_a_projection_expected_dense_that_ends_sparse_switches_format():
    # k says dense, but the weight had few nonzeros: the count after the pass decides.
    layer = SparseLinear(256, 256, density=1.0)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[torch.arange(256), torch.arange(256)] = 1.0
    result = layer.project_(0.9)
    assert result.element_layout is None and result.nnz == 256
    assert layer.format == "element" and layer.layout == ElementLayout.from_weight(layer.weight)
