"""``sparsify`` on models as they are written elsewhere: tied weights, a module used twice, foreign
linear layers (``nn.Linear`` subclasses, Hugging Face's ``Conv1D``, attention's ``out_proj``),
sparse checkpoints loaded into dense models, and its name patterns."""

import logging
import math

import pytest
import torch
from torch import nn

from sparsekern import Projector, SparseLinear, count_for_density, sparsify
from conv1d import Conv1D
from linear_cases import layout_of_weight
from projection_cases import bits


class TiedLM(nn.Module):
    """Token embedding, one hidden layer, an unembedding tied to the embedding."""

    def __init__(self, vocab=48, d=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.body = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        return self.lm_head(torch.relu(self.body(self.wte(tokens))))


def _parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def _masks(model):
    return {name: m.layout.to_mask() for name, m in model.named_modules() if isinstance(m, SparseLinear)}


# ------------------------------------------------------------------ tied and shared weights
def test_tied_lm_head_stays_tied_and_its_checkpoint_reloads_into_a_tied_model():
    torch.manual_seed(0)
    model = TiedLM()
    count = _parameter_count(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # built before sparsify
    sparsify(model, density=0.5, block_size=16)
    assert isinstance(model.lm_head, SparseLinear) and isinstance(model.body, SparseLinear)
    assert model.wte.weight is model.lm_head.weight
    assert _parameter_count(model) == count
    tokens = torch.randint(0, 48, (4, 8))
    projector = Projector(model, lambda step: 0.25, optimizer=optimizer)
    for _ in range(2):
        model(tokens).logsumexp(-1).mean().backward()
        before = model.lm_head.weight.detach().clone()
        optimizer.step()
        optimizer.zero_grad()
        assert not torch.equal(model.lm_head.weight, before)  # the optimizer trains the model's own weights
        projector.step()
    # The embedding is the unembedding: projected with it, zero outside its layout.
    assert int((model.wte.weight != 0).sum()) == count_for_density(0.25, model.wte.weight.numel())
    assert model.lm_head.layout == layout_of_weight(model.lm_head)

    fresh = sparsify(TiedLM(), density=1.0, block_size=16)
    fresh.load_state_dict(model.state_dict())
    assert fresh.wte.weight is fresh.lm_head.weight
    assert torch.equal(fresh(tokens), model(tokens))


def test_a_module_registered_twice_is_replaced_under_both_names():
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    sparsify(model, density=0.5, block_size=16)
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 1

    # Selecting one of its names only would split it: left as it is, and said so.
    model = nn.Sequential(shared := nn.Linear(16, 16), nn.ReLU(), shared)
    with pytest.warns(UserWarning, match=r"'0' / '2' \(Linear\): include/exclude select only '0'"):
        sparsify(model, density=0.5, block_size=16, exclude="2")
    assert type(model[0]) is nn.Linear and model[0] is model[2]


def test_two_linears_holding_one_weight_get_one_layout_and_one_projection(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32, bias=False))
    model[2].weight = model[0].weight
    sparsify(model, density=0.25, block_size=16, format="element")
    assert model[0].weight is model[2].weight and model[0].bias is not None and model[2].bias is None
    assert model[0].layout is model[2].layout

    applied = []
    real_apply = SparseLinear.apply_projection
    monkeypatch.setattr(SparseLinear, "apply_projection",
                        lambda self, plan: applied.append(self) or real_apply(self, plan))
    results = Projector(model, lambda step: 0.125).step()
    assert applied == [model[0]]  # projected once
    assert results[0] is results[1] and results[0].k == 128
    assert model[2].layout is model[0].layout and model[0].layout == layout_of_weight(model[0])


def test_a_linear_holding_an_existing_sparse_layers_weight_is_left_and_that_layer_unchanged():
    # Converting it would zero the shared weight outside a second, smaller layout: the
    # SparseLinear already there would compute another function, its layout no longer the weight's.
    torch.manual_seed(0)
    sparse = SparseLinear(32, 32, density=0.5, block_size=16, format="element")
    model = nn.Sequential(sparse, nn.ReLU(), nn.Linear(32, 32))
    model[2].weight = sparse.weight
    weight, mask = sparse.weight.detach().clone(), sparse.layout.to_mask().clone()
    x = torch.randn(3, 32)
    expected = model(x)
    with pytest.warns(UserWarning, match=r"'2' \(Linear\): its weight is held by SparseLinear '0' already"):
        sparsify(model, density=0.25, block_size=16, format="element")
    assert type(model[2]) is nn.Linear and model[0] is sparse and model[2].weight is sparse.weight
    assert torch.equal(sparse.weight, weight) and torch.equal(sparse.layout.to_mask(), mask)
    assert torch.equal(model(x), expected)


def test_an_excluded_linear_sharing_a_converted_weight_is_named_as_sparse_now():
    # Its weight is zeroed in place with the converted layer's: it was silent.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    model[1].weight = model[0].weight
    with pytest.warns(UserWarning, match=r"'1' \(Linear\): not converted, but its weight is shared with "
                                         r"converted '0', so it is sparse now too"):
        sparsify(model, density=0.25, block_size=16, exclude="1")
    assert type(model[1]) is nn.Linear and model[1].weight is model[0].weight
    assert torch.equal(model[1].weight != 0, model[0].layout.to_mask() & (model[1].weight != 0))


def test_projector_refuses_layers_holding_one_weight_with_other_formats():
    first = SparseLinear(32, 32, density=0.5, block_size=16, format="block")
    other = SparseLinear(32, 32, density=0.5, block_size=16, format="element")
    other.weight = first.weight
    with pytest.raises(ValueError, match=r"'0' / '1' hold one weight.*format differ \('block' and 'element'\)"):
        Projector(nn.Sequential(first, other), lambda step: 0.5)
    other = SparseLinear(32, 32, density=0.5, block_size=32, format="block")
    other.weight = first.weight
    with pytest.raises(ValueError, match=r"block_size differ"):
        Projector(nn.Sequential(first, other), lambda step: 0.5)


def test_a_layer_failing_to_convert_leaves_every_weight_unzeroed(monkeypatch):
    # Converting can fail past the argument checks (memory running out while choosing a layout):
    # the layers converted before it must not have had their shared weights zeroed yet.
    import sparsekern.module as module_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    weights = [m.weight.detach().clone() for m in model]
    real_top_blocks, calls = module_.top_blocks, []

    def failing_second(scores, k):
        calls.append(k)
        if len(calls) == 2:
            raise RuntimeError("out of memory (injected)")
        return real_top_blocks(scores, k)

    monkeypatch.setattr(module_, "top_blocks", failing_second)
    with pytest.raises(RuntimeError, match="injected"):
        sparsify(model, density=0.25, block_size=16, format="block")
    assert [type(m) for m in model] == [nn.Linear, nn.Linear]
    assert all(torch.equal(m.weight, w) for m, w in zip(model, weights))


def test_a_non_finite_weight_raises_before_any_weight_is_zeroed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    with torch.no_grad():
        model[1].weight[3, 4] = math.nan
    first = bits(model[0].weight.detach().clone())
    with pytest.raises(ValueError, match=r"the weight of '1' holds NaN or Inf.*changed nothing"):
        sparsify(model, density=0.25, block_size=16)
    assert type(model[0]) is nn.Linear and torch.equal(bits(model[0].weight.detach()), first)


# ------------------------------------------------------------------ foreign layers
class Scaled(nn.Linear):
    """A subclass that adds nothing to forward: converted."""


class Custom(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class WithConv1D(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(48, 16)
        self.c_proj = Conv1D(16, 48)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)))


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.Linear(16, 16)
        self.scaled = Scaled(16, 16)
        self.custom = Custom(16, 16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.mlp = WithConv1D()

    def forward(self, x):
        x = self.custom(self.scaled(self.plain(x)))
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.mlp(x)


def test_linear_subclasses_and_conv1d_are_converted_the_rest_named_in_one_warning(caplog):
    torch.manual_seed(0)
    model = Zoo()
    x = torch.randn(5, 3, 16)
    expected = model(x)
    with caplog.at_level(logging.INFO, logger="sparsekern"):
        with pytest.warns(UserWarning) as warned:
            sparsify(model, density=1.0, block_size=16)
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "left 2 linear module(s)" in message
    assert "'custom' (Custom): Custom overrides Linear.forward" in message
    assert "'attn.out_proj' (NonDynamicallyQuantizableLinear): the out_proj of nn.MultiheadAttention 'attn'" in message
    assert "never calls its forward" in message
    for name in ("plain", "scaled", "mlp.c_fc", "mlp.c_proj"):
        assert isinstance(model.get_submodule(name), SparseLinear), name
    assert type(model.custom) is Custom and type(model.attn.out_proj) is not SparseLinear
    [record] = [r for r in caplog.records if r.name == "sparsekern"]
    assert record.levelno == logging.INFO
    assert "replaced 4 module(s)" in record.getMessage()
    assert "'mlp.c_fc' (Conv1D, 16 -> 48)" in record.getMessage() and "'scaled' (Scaled" in record.getMessage()
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)  # density 1: the same function


def test_conv1d_subclass_tied_conv1d_and_optimizer_of_the_old_parameters():
    class Overriding(Conv1D):
        def forward(self, x):
            return super().forward(x) + 1

    torch.manual_seed(0)
    model = nn.Sequential(Overriding(8, 8), Conv1D(8, 8), Conv1D(8, 8))
    model[2].weight = model[1].weight
    with pytest.warns(UserWarning) as warned:
        sparsify(model, density=0.5, block_size=16)
    message = str(warned[0].message)
    assert "'0' (Overriding): a subclass of Conv1D" in message
    assert "'1' (Conv1D): its weight is shared with '2'" in message and "'2' (Conv1D): its weight is shared" in message
    assert not any(isinstance(m, SparseLinear) for m in model)

    model = WithConv1D()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # holds the Conv1D's own Parameters
    sparsify(model, density=0.5, block_size=16)
    with pytest.raises(ValueError, match=r"optimizer does not hold the weight of 'c_fc' / 'c_proj'.*build it after"):
        Projector(model, lambda step: 0.5, optimizer=optimizer)



class _Double(nn.Module):
    def forward(self, weight):
        return 2 * weight


def _hooked():
    m = nn.Linear(8, 8)
    m.register_forward_hook(lambda module, args, out: out * 2)
    return m


def _forward_on_instance():
    m = nn.Linear(8, 8)
    m.forward = lambda x: nn.functional.linear(x, m.weight) * 2
    return m


def _parametrized():
    m = nn.Linear(8, 8)
    nn.utils.parametrize.register_parametrization(m, "weight", _Double())
    return m


def _integer():
    m = nn.Linear(8, 8)
    m.weight = nn.Parameter(torch.ones(8, 8, dtype=torch.int8), requires_grad=False)
    return m


@pytest.mark.parametrize("make,why", [
    (_hooked, "it has forward hooks, which SparseLinear would not run"),
    (_forward_on_instance, "its forward is replaced on the instance"),
    (_parametrized, "its weight is parametrized"),
    (lambda: nn.LazyLinear(8), "its parameters are not initialised yet"),
    (_integer, "its weight is torch.int8, not floating point"),
])
def test_a_linear_that_cannot_be_converted_is_left_and_named(make, why):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), make())
    kind = type(model[1])
    with pytest.warns(UserWarning, match=r"left 1 linear module\(s\) as they are:\n  '1' \(\w+\): " + why):
        sparsify(model, density=0.5, block_size=16)
    assert isinstance(model[0], SparseLinear) and type(model[1]) is kind

@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("empty", [(8, 0), (0, 8)])
def test_an_empty_linear_is_left_and_named_and_the_others_converted(empty):
    # Converting it raised after the layer before it had had its weight zeroed in place.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(*empty))
    weight = model[0].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"'1' \(Linear\): its weight is empty"):
        sparsify(model, density=0.25, block_size=16, format="element")
    assert isinstance(model[0], SparseLinear) and type(model[1]) is nn.Linear
    assert torch.equal(model[0].weight, torch.where(model[0].layout.to_mask(), weight, 0))
    assert int(model[0].layout.to_mask().sum()) == count_for_density(0.25, 64)


def test_hugging_face_gpt2_every_conv1d_converted_and_a_sparse_checkpoint_keeps_its_layouts(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        expected = model(tokens).logits
    sparsify(model, density=1.0, block_size=16)
    converted = [name for name, m in model.named_modules() if isinstance(m, SparseLinear)]
    assert len(converted) == 9 and "lm_head" in converted  # 4 Conv1D per block, and the unembedding
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-5, atol=1e-5)

    # A sparse model saved the Hugging Face way, loaded into a dense GPT-2, sparsified at its own sparsity.
    Projector(model, lambda step: 0.25).step()
    layouts = _masks(model)
    with torch.no_grad():
        expected = model(tokens).logits
    model.save_pretrained(tmp_path)
    dense = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert not any(isinstance(m, SparseLinear) for m in dense.modules())
    sparsify(dense, density=None)
    assert _masks(dense).keys() == layouts.keys()
    for name, mask in _masks(dense).items():
        assert torch.equal(mask, layouts[name]), name
    with torch.no_grad():
        torch.testing.assert_close(dense(tokens).logits, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ density=None
@pytest.mark.parametrize("format", ["element", "block", "auto"])
def test_density_none_gives_a_sparse_checkpoint_exactly_its_layouts(format):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32))  # noqa: E731
    sparse = sparsify(make(), density=0.5, block_size=16, format=format)
    Projector(sparse, lambda step: 0.3, granularity="element" if format == "element" else "block").step()
    layouts = _masks(sparse)
    dense = make()
    loaded = dense.load_state_dict(sparse.state_dict(), strict=False)  # the layouts are sparsekern's own entries
    assert loaded.unexpected_keys == ["0.layout_mask", "2.layout_mask"] and not loaded.missing_keys
    sparsify(dense, density=None, block_size=16, format=format)
    assert _masks(dense).keys() == layouts.keys()
    for name, mask in _masks(dense).items():
        assert torch.equal(mask, layouts[name]), name
        assert dense.get_submodule(name).density == pytest.approx(float(mask.float().mean()))


# ------------------------------------------------------------------ include / exclude
class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([nn.ModuleDict({"head": nn.Linear(8, 8), "fc": nn.Linear(8, 8)})])


@pytest.mark.parametrize("include,exclude,converted", [
    (None, ["*.head"], {"lm_head", "blocks.0.fc"}),  # the README's example: the top-level head too
    (None, "head", {"lm_head", "blocks.0.head", "blocks.0.fc"}),
    (None, "*head", {"blocks.0.fc"}),
    ("*.head", None, {"head", "blocks.0.head"}),
    ("blocks.*", "*.fc", {"blocks.0.head"}),
])
def test_patterns_match_the_qualified_name_with_or_without_a_leading_dot(include, exclude, converted):
    model = Heads()
    sparsify(model, density=1.0, block_size=16, include=include, exclude=exclude)
    assert {name for name, m in model.named_modules() if isinstance(m, SparseLinear)} == converted

