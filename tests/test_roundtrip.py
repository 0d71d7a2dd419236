"""Checkpoints of weight-sparse training that save, load and resume exactly (issue #13, "Tests").

On the published GPT written afresh (``gpt_model.GPT``: RMSNorm, AbsTopK, tied unembedding),
sparsified dense-start with ``dense_grad=True`` and annealed by a ``Projector`` on a
``DensitySchedule``, as the published recipe trains:
- save / load / resume for every format and every ``torch.optim`` optimizer that keeps
  per-parameter state, against an uninterrupted run: bitwise the same weights and layouts;
- the tied unembedding: kept tied by ``sparsify``, by a checkpoint and by training;
- a state_dict saved between ``optimizer.step()`` and ``projector.step()`` (the weight then
  holds nonzeros off the layout) reproduces the function and the layout;
- a Hugging Face GPT-2 (``Conv1D`` layers, tied ``lm_head``) when transformers is installed.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from sparsekern import DensitySchedule, Projector, SparseLinear, sparsify
from gpt_model import GPT

FORMATS = ("auto", "dense", "block", "element")
BLOCK_SIZE = 16  # d_model 32: each weight is several blocks, so block layouts can be sparse
STEPS = 2  # steps before the checkpoint, and after it
FINAL_DENSITY = 0.25
VOCAB, CTX, BATCH = 64, 16, 2


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny products gain nothing from threads, and on a busy machine two threads waiting on
    # each other make a 10 us product take milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- optimizers
#: Arguments that make each optimizer keep per-parameter state and move a tiny model in a few steps.
OPTIMIZER_ARGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "Adam": {"lr": 1e-2},
    "AdamW": {"lr": 1e-2},
    "RMSprop": {"lr": 1e-2, "momentum": 0.5, "centered": True},
    "Adagrad": {"lr": 0.05},
    "Adadelta": {"lr": 1.0},
    "Adamax": {"lr": 1e-2},
    "NAdam": {"lr": 1e-2},
    "RAdam": {"lr": 1e-2},
    "ASGD": {"lr": 0.05, "t0": 1},  # t0: the averaged iterate (state "ax") starts within the run
    "Rprop": {"lr": 1e-2},
    "Adafactor": {"lr": 1e-2},
    "Muon": {"lr": 0.02},
}
#: Optimizers this suite cannot train the model with, and why.
OPTIMIZERS_SKIPPED = {
    "LBFGS": "needs a closure and keeps one state for all its parameters together, not per parameter",
    "SparseAdam": "takes only sparse gradients (nn.Embedding(sparse=True)), which the model does not make",
}
#: Optimizers that accept only matrices: they train the 2-D parameters, the rest stays as it is.
MATRIX_ONLY = {"Muon"}


def optimizer_names() -> list[str]:
    """Every optimizer class in this torch's ``torch.optim``, so a new one is tested (or
    reported) without editing this file."""
    return sorted(name for name, obj in vars(torch.optim).items()
                  if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
                  and obj is not torch.optim.Optimizer)


def make_optimizer(name: str, model) -> torch.optim.Optimizer:
    if name in OPTIMIZERS_SKIPPED:
        pytest.skip(f"{name}: {OPTIMIZERS_SKIPPED[name]}")
    cls = getattr(torch.optim, name)
    params = [p for p in model.parameters() if p.requires_grad and (name not in MATRIX_ONLY or p.dim() == 2)]
    try:
        return cls(params, **OPTIMIZER_ARGS.get(name, {}))
    except TypeError as error:  # an optimizer newer than this table that needs arguments
        pytest.skip(f"{name}: no arguments known for it here ({error})")


def assert_keeps_state(optimizer: torch.optim.Optimizer) -> None:
    """The point of the resume test: every trained parameter has state to save."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(optimizer.state.get(p) for p in params):
        pytest.skip(f"{type(optimizer).__name__} keeps no per-parameter state")
    missing = [i for i, p in enumerate(params) if not optimizer.state.get(p)]
    assert not missing, f"parameters {missing} have no optimizer state after {STEPS} steps"


# ---------------------------------------------------------------------------- training
def batches(n: int, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, BATCH, CTX + 1), generator=generator)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def sparse_gpt(format: str, seed: int, *, tied: bool = False, n_layer: int = 2):
    """The recipe's start: a fresh GPT sparsified dense (density 1) with dense gradients."""
    torch.manual_seed(seed)
    return sparsify(GPT(tied=tied, n_layer=n_layer), density=1.0, block_size=BLOCK_SIZE, dense_grad=True,
                    format=format)


def schedule() -> DensitySchedule:
    # Annealed across the checkpoint: a resumed run that restarted it would go dense again.
    return DensitySchedule(FINAL_DENSITY, 2 * STEPS, anneal_start=0.0, anneal_end=0.75)


def granularity_for(format: str) -> str:
    """What the Projector keeps: whole blocks for the block format (scattered entries would
    leave every block active), entries otherwise."""
    return "block" if format == "block" else "element"


def projector_for(model, format: str) -> Projector:
    # A floor of one entry per neuron; none for blocks (a block row's floor would exceed k).
    granularity = granularity_for(format)
    return Projector(model, schedule(), granularity=granularity, min_per_neuron=int(granularity == "element"))


def loss_of(model, batch):
    idx, targets = batch
    return F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())


def train(model, optimizer, projector, data) -> None:
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        optimizer.step()
        projector.step()


def through_bytes(obj):
    """``obj`` after ``torch.save`` and ``torch.load(weights_only=True)``: a checkpoint on disk
    holds plain data only."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def without_layout_masks(state: dict) -> dict:
    """A sparse model's state_dict as a dense model's holds it: the weights, no layout masks."""
    return {key: value for key, value in state.items() if not key.endswith(".layout_mask")}


def sparse_layers(model) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def assert_same_model(actual, expected) -> None:
    """Bitwise the same state_dict (weights, biases, layout masks), and per sparse layer the
    same format, layout and number of nonzeros."""
    a, e = actual.state_dict(), expected.state_dict()
    assert list(a) == list(e)
    for key in e:
        assert torch.equal(a[key], e[key]), f"{key} differs"
    layers_a, layers_e = sparse_layers(actual), sparse_layers(expected)
    assert list(layers_a) == list(layers_e)
    for name, layer in layers_e.items():
        other = layers_a[name]
        assert other.format == layer.format, name
        assert type(other.layout) is type(layer.layout) and other.layout == layer.layout, f"{name}: layout"
        assert torch.equal(other.layout.to_mask(), layer.layout.to_mask()), f"{name}: layout mask"
        assert int(other.weight.count_nonzero()) == int(layer.weight.count_nonzero()), f"{name}: nnz"


def assert_same_optimizer_state(actual: torch.optim.Optimizer, expected: torch.optim.Optimizer) -> None:
    a, e = actual.state_dict()["state"], expected.state_dict()["state"]
    assert sorted(a) == sorted(e)
    for index, state in e.items():
        assert sorted(a[index]) == sorted(state), index
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(a[index][key], value), f"state {index}.{key} differs"
            else:
                assert a[index][key] == value, f"state {index}.{key} differs"


def run_and_resume(format: str, optimizer_name: str, *, tied: bool = False, n_layer: int = 2):
    """A run of ``2 * STEPS`` steps checkpointed after ``STEPS``, and the checkpoint resumed in
    freshly built objects for the last ``STEPS``; returns both ``(model, optimizer, projector)``."""
    data = batches(2 * STEPS)

    def build(seed):
        model = sparse_gpt(format, seed, tied=tied, n_layer=n_layer)
        optimizer = make_optimizer(optimizer_name, model)
        return model, optimizer, projector_for(model, format)

    whole = build(seed=0)
    train(*whole, data[:STEPS])
    assert_keeps_state(whole[1])
    checkpoint = through_bytes({"model": whole[0].state_dict(), "optimizer": whole[1].state_dict(),
                                "projector": whole[2].state_dict()})
    train(*whole, data[STEPS:])
    # Built from another seed: whatever matches comes from the checkpoint.
    resumed = build(seed=1)
    resumed[0].load_state_dict(checkpoint["model"])
    resumed[1].load_state_dict(checkpoint["optimizer"])
    resumed[2].load_state_dict(checkpoint["projector"])
    train(*resumed, data[STEPS:])
    return whole, resumed


@pytest.mark.parametrize("optimizer_name", optimizer_names())
@pytest.mark.parametrize("format", FORMATS)
def test_resumed_run_ends_bitwise_where_the_uninterrupted_run_does(format, optimizer_name):
    # One block: the grid is about the optimizers' and formats' state, and has 60 cases.
    (model, optimizer, projector), (model2, optimizer2, projector2) = run_and_resume(format, optimizer_name,
                                                                                     n_layer=1)
    # The schedule annealed: a resumed run that went dense again could not match.
    layers = sparse_layers(model).values()
    nnz = sum(int(m.weight.count_nonzero()) for m in layers)
    assert nnz <= FINAL_DENSITY * sum(m.weight.numel() for m in layers) + sum(m.out_features for m in layers)
    assert projector2.steps == projector.steps == 2 * STEPS
    assert_same_model(model2, model)
    assert_same_optimizer_state(optimizer2, optimizer)


@pytest.mark.parametrize("granularity", ["element", "block"])
@pytest.mark.parametrize("format", ["auto", "block"])
def test_resume_with_block_projections_and_pruned_state(format, granularity):
    # Block-granular projections, and a Projector that zeroes the optimizer state it prunes
    # (it holds the optimizer, so the resumed one must be the fresh optimizer's).
    def build(seed):
        model = sparse_gpt(format, seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, optimizer, Projector(model, schedule(), granularity=granularity, zero_pruned_state=True,
                                           optimizer=optimizer)

    data = batches(2 * STEPS)
    whole = build(0)
    train(*whole, data[:STEPS])
    checkpoint = through_bytes([obj.state_dict() for obj in whole])
    train(*whole, data[STEPS:])
    resumed = build(1)
    for obj, state in zip(resumed, checkpoint):
        obj.load_state_dict(state)
    train(*resumed, data[STEPS:])
    assert_same_model(resumed[0], whole[0])
    assert_same_optimizer_state(resumed[1], whole[1])
    if granularity == "block":
        for layer in sparse_layers(whole[0]).values():
            assert layer.layout.to_mask().float().mean() < 1  # whole blocks were pruned


# ---------------------------------------------------------------------------- mid-step checkpoint
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("format", FORMATS)
def test_state_dict_saved_between_optimizer_and_projector_step_reproduces_function_and_layout(format, tied):
    # Tied, the embedding reads the off-layout entries the unembedding does not.
    model = sparse_gpt(format, seed=0, tied=tied)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    projector = projector_for(model, format)
    data = batches(STEPS + 2)
    train(model, optimizer, projector, data[:STEPS])
    # optimizer.step() without projector.step(): dense gradients and Adam's moments have
    # moved entries off the layout.
    optimizer.zero_grad()
    loss_of(model, data[STEPS]).backward()
    optimizer.step()
    layers = sparse_layers(model)
    off_layout = {name: int((m.weight.detach() * ~m.layout.to_mask()).count_nonzero()) for name, m in layers.items()}
    assert all(n > 0 for n in off_layout.values()), off_layout
    idx, _ = data[STEPS + 1]
    with torch.no_grad():
        logits = model(idx)

    fresh = sparse_gpt(format, seed=1, tied=tied)
    fresh.load_state_dict(through_bytes(model.state_dict()))
    with torch.no_grad():
        assert torch.equal(fresh(idx), logits)
    assert (fresh.wte.weight is fresh.lm_head.weight) == tied
    assert_same_model(fresh, model)
    for name, layer in sparse_layers(fresh).items():
        assert layer.layout.to_mask().float().mean() < 1, f"{name}: the off-layout entries entered the layout"

    # And the projection that was due gives the same model in both.
    fresh_projector = projector_for(fresh, format)
    fresh_projector.load_state_dict(through_bytes(projector.state_dict()))
    projector.step()
    fresh_projector.step()
    assert_same_model(fresh, model)


@pytest.mark.parametrize("format", FORMATS)
def test_checkpoint_without_layout_masks_takes_the_layouts_of_its_nonzeros(format):
    # What today's checkpoints hold (and a dense model's): weights only. Saved after a
    # projection, their nonzeros are the layouts.
    model = sparse_gpt(format, seed=0)
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2), projector_for(model, format), batches(STEPS))
    weights_only = without_layout_masks(model.state_dict())
    assert len(weights_only) < len(model.state_dict())
    fresh = sparse_gpt(format, seed=1)
    fresh.load_state_dict(weights_only)  # strict: the missing masks are not missing keys
    assert_same_model(fresh, model)
    idx = batches(1, seed=1)[0][0]
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))


@pytest.mark.parametrize("format", FORMATS)
def test_mid_step_checkpoint_loads_by_assignment_into_a_model_built_on_meta(format):
    # Deferred initialisation, the usual way a large checkpoint is loaded: a model built on
    # the meta device, sparsified there, then given the checkpoint's tensors.
    model = sparse_gpt(format, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = batches(STEPS + 2)
    train(model, optimizer, projector_for(model, format), data[:STEPS])
    optimizer.zero_grad()
    loss_of(model, data[STEPS]).backward()
    optimizer.step()  # off-layout entries, as between the optimizer's and the projector's step
    with torch.device("meta"):
        skeleton = GPT(tied=False)
    fresh = sparsify(skeleton, density=1.0, block_size=BLOCK_SIZE, dense_grad=True, format=format)
    assert fresh.lm_head.weight.is_meta
    fresh.load_state_dict(through_bytes(model.state_dict()), assign=True)
    assert_same_model(fresh, model)
    idx = data[STEPS + 1][0]
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))


def test_optimizer_built_before_sparsify_trains_the_sparse_model():
    def run(optimizer_first: bool):
        torch.manual_seed(0)
        model = GPT(tied=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2) if optimizer_first else None
        sparsify(model, density=1.0, block_size=BLOCK_SIZE, dense_grad=True)
        optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-2)
        train(model, optimizer, projector_for(model, "auto"), batches(2 * STEPS))
        return model

    before, after = run(optimizer_first=True), run(optimizer_first=False)
    assert_same_model(before, after)
    assert before.lm_head.layout.to_mask().float().mean() < 1  # trained and projected


# ---------------------------------------------------------------------------- the tied unembedding
def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared parameters counted once


@pytest.mark.parametrize("format", FORMATS)
def test_sparsify_keeps_the_unembedding_tied_and_projects_the_shared_matrix(format):
    torch.manual_seed(0)
    model = GPT(tied=True)
    dense = copy.deepcopy(model)
    count = parameter_count(model)
    shared = model.wte.weight
    sparsify(model, density=0.5, block_size=BLOCK_SIZE, format=format)
    assert isinstance(model.lm_head, SparseLinear)
    assert model.wte.weight is model.lm_head.weight is shared
    assert parameter_count(model) == count
    # The one matrix is the sparse one: the embedding reads the projected weight.
    mask = model.lm_head.layout.to_mask()
    assert mask.float().mean() < 1 and not model.wte.weight.detach()[~mask].any()
    assert torch.equal(model.wte.weight.detach()[mask], dense.wte.weight.detach()[mask])

    torch.manual_seed(0)
    at_full = sparsify(GPT(tied=True), density=1.0, block_size=BLOCK_SIZE, format=format)
    idx = batches(1)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(at_full(idx), dense(idx))


def test_sparsify_replaces_a_layer_used_in_two_blocks_under_both_names():
    torch.manual_seed(0)
    model = GPT(tied=False)
    model.h[1].mlp.c_proj = model.h[0].mlp.c_proj  # one layer in two places (shared across depth)
    count = parameter_count(model)
    sparsify(model, density=1.0, block_size=BLOCK_SIZE, dense_grad=True)
    assert isinstance(model.h[0].mlp.c_proj, SparseLinear)
    assert model.h[1].mlp.c_proj is model.h[0].mlp.c_proj
    assert parameter_count(model) == count
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    projector = Projector(model, schedule(), min_per_neuron=1)
    train(model, optimizer, projector, batches(2 * STEPS))
    shared = model.h[0].mlp.c_proj
    assert model.h[1].mlp.c_proj is shared
    assert shared.layout.to_mask().float().mean() <= FINAL_DENSITY + 1 / shared.in_features
    assert not shared.weight.detach()[~shared.layout.to_mask()].any()


@pytest.mark.parametrize("format", FORMATS)
def test_tied_checkpoint_loads_into_a_fresh_tied_model_with_bitwise_logits(format):
    model = sparse_gpt(format, seed=0, tied=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    projector = projector_for(model, format)
    data = batches(STEPS + 1)
    train(model, optimizer, projector, data[:STEPS])
    state = model.state_dict()
    assert {"wte.weight", "lm_head.weight"} <= set(state)

    fresh = sparse_gpt(format, seed=1, tied=True)
    fresh.load_state_dict(through_bytes(state))
    assert fresh.wte.weight is fresh.lm_head.weight
    idx = data[STEPS][0]
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))
    assert_same_model(fresh, model)


@pytest.mark.parametrize("format", FORMATS)
def test_training_with_a_projector_keeps_the_tie(format):
    model = sparse_gpt(format, seed=0, tied=True)
    count = parameter_count(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # The optimizer sees the shared matrix once.
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    projector = projector_for(model, format)
    train(model, optimizer, projector, batches(2 * STEPS))
    assert model.wte.weight is model.lm_head.weight
    assert parameter_count(model) == count
    # The embedding was projected with the unembedding: zero off the layout, annealed.
    weight = model.wte.weight.detach()
    assert not weight[~model.lm_head.layout.to_mask()].any()
    assert weight.count_nonzero() <= FINAL_DENSITY * weight.numel() + weight.shape[0]


@pytest.mark.parametrize("format", FORMATS)
def test_tied_run_resumes_bitwise(format):
    (model, optimizer, _), (model2, optimizer2, _) = run_and_resume(format, "AdamW", tied=True)
    assert model2.wte.weight is model2.lm_head.weight
    assert_same_model(model2, model)
    assert_same_optimizer_state(optimizer2, optimizer)


# ---------------------------------------------------------------------------- Hugging Face GPT-2
@pytest.fixture
def hf():
    return pytest.importorskip("transformers", reason="transformers is not installed: no Hugging Face round trip")


def gpt2(hf, seed: int):
    """A tiny GPT-2 built offline (no download), in eval mode (no dropout)."""
    torch.manual_seed(seed)
    config = hf.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32,
                           bos_token_id=0, eos_token_id=0)
    return hf.GPT2LMHeadModel(config).eval()


def conv1d_names(model) -> list[str]:
    # Hugging Face's Conv1D, by class name as sparsekern recognises it.
    return [name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"]


def logits_of(model, idx):
    with torch.no_grad():
        return model(idx).logits


def test_hf_gpt2_sparsify_converts_every_conv1d_and_the_tied_lm_head(hf):
    model = gpt2(hf, 0)
    dense = copy.deepcopy(model)
    convs = conv1d_names(model)
    assert len(convs) == 4 * model.config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    count = parameter_count(model)
    sparsify(model, density=1.0)
    assert conv1d_names(model) == []
    assert sorted(sparse_layers(model)) == sorted(convs + ["lm_head"])
    assert model.lm_head.weight is model.transformer.wte.weight
    assert parameter_count(model) == count
    idx = batches(1)[0][0]
    torch.testing.assert_close(logits_of(model, idx), logits_of(dense, idx))


def projected_gpt2(hf):
    """A GPT-2 sparsified dense-start, trained two steps and projected to 1/4."""
    model = sparsify(gpt2(hf, 0), density=1.0, dense_grad=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    projector = Projector(model, DensitySchedule(FINAL_DENSITY, 2, anneal_start=0.0, anneal_end=0.5),
                          min_per_neuron=1)
    for idx, targets in batches(2):
        optimizer.zero_grad()
        F.cross_entropy(model(idx).logits.flatten(0, 1), targets.flatten()).backward()
        optimizer.step()
        projector.step()
    return model


def test_hf_projected_state_dict_loads_into_a_plain_gpt2(hf):
    model = projected_gpt2(hf)
    state = through_bytes(model.state_dict())
    layers = sparse_layers(model)
    masks = {f"{name}.layout_mask" for name in layers}
    assert masks <= set(state)
    plain_state = gpt2(hf, 1).state_dict()
    weights = without_layout_masks(state)
    assert sorted(weights) == sorted(plain_state)
    for key, value in weights.items():
        assert value.shape == plain_state[key].shape, key  # Conv1D's [in, out] orientation
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)

    # A plain GPT-2 refuses the layout masks when loading strictly, and takes the rest.
    with pytest.raises(RuntimeError, match="layout_mask"):
        gpt2(hf, 1).load_state_dict(state)
    plain = gpt2(hf, 1)
    plain.load_state_dict(weights)
    idx = batches(3)[2][0]
    # attn.c_proj is square: loaded the wrong way round it would give other logits, not an error.
    torch.testing.assert_close(logits_of(plain, idx), logits_of(model, idx))
    for name, layer in layers.items():
        weight = plain.get_submodule(name).weight.detach()
        weight = weight.T if name != "lm_head" else weight
        assert torch.equal(weight != 0, layer.layout.to_mask()), name


def test_hf_plain_gpt2_from_a_sparse_checkpoint_sparsifies_at_its_own_sparsity(hf):
    model = projected_gpt2(hf)
    plain = gpt2(hf, 1)
    plain.load_state_dict(without_layout_masks(model.state_dict()))
    again = sparsify(plain, density=None)  # how a from_pretrained sparse checkpoint is sparsified
    assert again.lm_head.weight is again.transformer.wte.weight
    layers, expected = sparse_layers(again), sparse_layers(model)
    assert sorted(layers) == sorted(expected)
    for name, layer in layers.items():
        mask = layer.layout.to_mask()
        assert torch.equal(mask, expected[name].layout.to_mask()), name
        assert mask.float().mean() < 1, name
        assert layer.density == pytest.approx(mask.float().mean().item()), name
    idx = batches(3)[2][0]
    torch.testing.assert_close(logits_of(again, idx), logits_of(model, idx))
    # Its state_dict is the sparse model's, layout masks included.
    state, expected_state = again.state_dict(), model.state_dict()
    assert sorted(state) == sorted(expected_state)
    for key in expected_state:
        assert torch.equal(state[key], expected_state[key]), key


def test_hf_plain_gpt2_state_dict_loads_into_a_sparsified_gpt2(hf):
    # The other way: a plain GPT-2's checkpoint (here holding sparse weights) loaded into a
    # sparsified GPT-2, in Conv1D's orientation; the layouts are its nonzeros.
    model = projected_gpt2(hf)
    plain = gpt2(hf, 1)
    plain.load_state_dict(without_layout_masks(model.state_dict()))
    target = sparsify(gpt2(hf, 2), density=1.0)
    target.load_state_dict(plain.state_dict())
    assert target.lm_head.weight is target.transformer.wte.weight
    expected = sparse_layers(model)
    for name, layer in sparse_layers(target).items():
        assert torch.equal(layer.layout.to_mask(), expected[name].layout.to_mask()), name
    idx = batches(3)[2][0]
    torch.testing.assert_close(logits_of(target, idx), logits_of(model, idx))


def test_hf_save_pretrained_from_pretrained_then_sparsify_at_its_own_sparsity(hf, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder: nothing to download
    model = projected_gpt2(hf)
    model.save_pretrained(tmp_path)
    loaded = hf.GPT2LMHeadModel.from_pretrained(tmp_path).eval()  # plain Conv1D, the layout masks unused
    assert conv1d_names(loaded)
    idx = batches(3)[2][0]
    torch.testing.assert_close(logits_of(loaded, idx), logits_of(model, idx))
    again = sparsify(loaded, density=None)
    assert again.lm_head.weight is again.transformer.wte.weight
    expected = sparse_layers(model)
    layers = sparse_layers(again)
    assert sorted(layers) == sorted(expected)
    for name, layer in layers.items():
        assert torch.equal(layer.layout.to_mask(), expected[name].layout.to_mask()), name
    torch.testing.assert_close(logits_of(again, idx), logits_of(model, idx))
