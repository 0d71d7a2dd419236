"""sparsekern.circuits: node masks, mean ablation, the surrogate gradient, edges, the bisection,
Circuit save/load and the re-run check, on tiny models built or trained here."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekern
from sparsekern.circuits import (BinaryTask, Circuit, CircuitGraph, MatrixEdges, NodeMasks, PruneConfig,
                                 binary_loss, bisect_nodes, count_edges, evaluate_circuit, find_circuits,
                                 fit_logit_affine, learn_masks, node_means, task_loss)
from sparsekern.circuits.masks import MeanAblation, heaviside_sigmoid

ROOT = Path(__file__).resolve().parents[1]
VOCAB, CANDIDATES = 16, (14, 15)


class Toy(nn.Module):
    """Embedding -> site ``act_in`` -> fc -> GELU -> site ``act_hidden`` -> out (logits).
    The sites are ``nn.Identity`` modules: masks act on their outputs."""

    def __init__(self, d=8, hidden=24, sparse=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.act_in = nn.Identity()
        make = (lambda i, o: sparsekern.SparseLinear(i, o, bias=False, density=0.5, format="element")) if sparse \
            else (lambda i, o: nn.Linear(i, o, bias=False))
        self.fc = make(d, hidden)
        self.act_hidden = nn.Identity()
        self.out = make(hidden, VOCAB)

    def forward(self, x):
        return self.out(self.act_hidden(F.gelu(self.fc(self.act_in(self.emb(x))))))


SITES = ("act_in", "act_hidden")


def toy_graph(model):
    return CircuitGraph([MatrixEdges("fc", ("act_in",), ("act_hidden",)), MatrixEdges("out", ("act_hidden",),
                                                                                       ("logits",))],
                        fixed_nodes={"logits": (VOCAB, list(CANDIDATES))})


def toy_task(gen, n=256, t=5, name="low_half"):
    """Candidate 0 is right when the last token is below 7 (tokens 0..13 appear)."""
    inputs = torch.randint(0, 14, (n, t), generator=gen)
    return BinaryTask(name, inputs, CANDIDATES, (inputs[:, -1] >= 7).long())


def train_toy(gen, steps=300, sparse=False):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = Toy(sparse=sparse)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        task = toy_task(gen, n=64)
        logits = model(task.inputs)[:, -1]
        target = torch.tensor(CANDIDATES)[task.labels]
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)  # so that a gradient left after pruning would show
    return model


def pretraining_batches(gen, n=4):
    return [torch.randint(0, VOCAB, (16, 5), generator=gen) for _ in range(n)]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))


@pytest.fixture(scope="module")
def trained():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = train_toy(gen)
    means = node_means(model, SITES, pretraining_batches(gen))
    return model, means, gen


# ---------------------------------------------------------------------------- masks and means
def test_node_means_match_an_independent_mean(gen):
    model = Toy()
    data = pretraining_batches(gen)
    means = node_means(model, SITES, data)
    with torch.no_grad():
        emb = torch.cat([model.emb(x).reshape(-1, 8) for x in data])
        hidden = F.gelu(model.fc(emb))
    torch.testing.assert_close(means["act_in"], emb.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(means["act_hidden"], hidden.mean(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_masks_at_all_nodes_give_the_full_model_exactly(gen, sparse):
    model = Toy(sparse=sparse)
    means = node_means(model, SITES, pretraining_batches(gen))
    x = toy_task(gen).inputs
    with torch.no_grad():
        full = model(x)
        masks = NodeMasks(model, means, init=0.5)  # learned mode: every score > 0, every node kept
        with masks:
            learned = model(x)
        masks.set_fixed({s: torch.ones(w, dtype=torch.bool) for s, w in masks.widths.items()})
        with masks:
            fixed = model(x)
    assert torch.equal(learned, full) and torch.equal(fixed, full)
    assert torch.equal(model(x), full)  # nothing left behind after the context


def test_masks_at_no_nodes_give_the_fully_mean_ablated_model(gen):
    model = Toy()
    means = node_means(model, SITES, pretraining_batches(gen))
    task = toy_task(gen)
    masks = NodeMasks(model, means)
    masks.set_fixed({s: torch.zeros(w, dtype=torch.bool) for s, w in masks.widths.items()})
    with masks, torch.no_grad():
        ablated = model(task.inputs)
    # By hand: every hidden node at its mean, whatever the input.
    expected = model.out(means["act_hidden"]).detach().expand_as(ablated)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-6)
    with masks:
        loss, _, _ = task_loss(model, task, fit=False)
    z = expected[:, -1][:, list(CANDIDATES)]
    by_hand = F.cross_entropy(z.double(), task.labels).item()
    assert loss == pytest.approx(by_hand, rel=1e-6)
    # Only the input site ablated: the hidden layer sees the mean embedding.
    masks.set_fixed({"act_in": torch.zeros(8, dtype=torch.bool), "act_hidden": torch.ones(24, dtype=torch.bool)})
    with masks, torch.no_grad():
        torch.testing.assert_close(model(task.inputs)[0, 0], model.out(F.gelu(model.fc(means["act_in"]))),
                                   rtol=0, atol=1e-6)


def test_surrogate_gradient_matches_finite_differences_of_the_sigmoid(gen):
    """d loss / d score = (d loss / d keep at keep = step(score)) * sigmoid'(score / T) / T: the
    finite difference moves keep by sigmoid((s +- h) / T) - sigmoid(s / T) around the step."""
    model = Toy().double()
    means = {s: m.double() for s, m in node_means(model, SITES, [x for x in pretraining_batches(gen)]).items()}
    task = toy_task(gen, n=32)
    temperature = 0.7
    masks = NodeMasks(model, means, temperature=temperature)
    for s in masks.sites:
        masks.scores[s] = (torch.randn(masks.widths[s], generator=gen, dtype=torch.float64)).requires_grad_(True)

    def loss_of():
        logits = model(task.inputs)[:, -1][:, list(CANDIDATES)]
        return binary_loss(logits, task.labels)

    with masks:
        loss_of().backward()
    h = 1e-5
    for site in masks.sites:
        score = masks.scores[site].detach()
        step = (score > 0).double()
        for node in range(0, masks.widths[site], 3):
            values = []
            for sign in (1, -1):
                keep = {s: (masks.scores[s].detach() > 0).double() for s in masks.sites}
                keep[site] = step.clone()
                keep[site][node] += torch.sigmoid((score[node] + sign * h) / temperature) - \
                    torch.sigmoid(score[node] / temperature)
                masks.set_fixed(keep)
                with masks, torch.no_grad():
                    values.append(loss_of().item())
            masks.set_fixed(None)
            fd = (values[0] - values[1]) / (2 * h)
            assert masks.scores[site].grad[node].item() == pytest.approx(fd, rel=1e-4, abs=1e-9), (site, node)
    assert any(bool((masks.scores[s].grad != 0).any()) for s in masks.sites)


# ---------------------------------------------------------------------------- edges
def test_edge_count_on_a_hand_built_model(gen):
    """A fused matrix writing two sites and a SparseLinear holding garbage off its layout."""

    class Hand(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Identity()
            self.fused = nn.Linear(4, 6, bias=False)  # rows 0..2 -> site b, rows 3..5 -> site c
            self.b, self.c = nn.Identity(), nn.Identity()
            self.proj = sparsekern.SparseLinear(3, 2, bias=False, density=1.0, format="element")

        def forward(self, x):
            y = self.fused(self.a(x))
            return self.proj(self.b(y[..., :3]) + self.c(y[..., 3:]))

    model = Hand()
    fused = (torch.rand(6, 4, generator=gen) < 0.5) * torch.randn(6, 4, generator=gen)
    layout = torch.rand(2, 3, generator=gen) < 0.5
    with torch.no_grad():
        model.fused.weight.copy_(fused)
        model.proj.weight.copy_(torch.randn(2, 3, generator=gen))
        model.proj._adopt_mask(layout)  # the layout; the weight keeps garbage off it
        model.proj.weight.copy_(torch.randn(2, 3, generator=gen) + 10.0)  # nonzero everywhere, also off the layout
    kept = {s: torch.rand(w, generator=gen) < 0.6 for s, w in (("a", 4), ("b", 3), ("c", 3))}
    graph = CircuitGraph([MatrixEdges("fused", ("a",), ("b", "c")), MatrixEdges("proj", ("c",), ("out",))],
                         fixed_nodes={"out": (2, [1])})
    edges = count_edges(model, graph, kept)
    out_kept = [False, True]
    rows = torch.cat([kept["b"], kept["c"]])
    expected_fused = sum(1 for j in range(6) for i in range(4) if rows[j] and kept["a"][i] and fused[j, i] != 0)
    expected_proj = sum(1 for j in range(2) for i in range(3) if out_kept[j] and kept["c"][i] and layout[j, i])
    assert edges == {"fused": expected_fused, "proj": expected_proj}


def test_gpt_graph_counts_edges_of_the_example_gpt(gen):
    tasks = load_tasks_module()
    ex = tasks.load_example()
    cfg = dict(d_model=16, n_layers=1, n_heads=2, d_mlp=32, ctx=8, act_fraction=0.5, block_size=16, format="auto")
    model = ex.build_model(cfg, kind="sparsekern", seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    for m in model.modules():
        if isinstance(m, sparsekern.SparseLinear):
            m.project_(0.25, granularity="element")
    sites = tasks.gpt_sites(model)
    assert all(isinstance(model.get_submodule(s), ex.AbsTopK) for s in sites)
    means = node_means(model, sites, [torch.randint(0, 256, (2, 8), generator=gen)])
    kept = {s: torch.rand(m.numel(), generator=gen) < 0.5 for s, m in means.items()}
    graph = tasks.gpt_graph(model, (39, 34))
    edges = count_edges(model, graph, kept)
    # Independently: the qkv edges are its nonzeros between kept norm1 nodes and kept q/k/v nodes.
    w = model.blocks[0].attn.qkv.to_dense().weight
    rows = torch.cat([kept["blocks.0.attn.act_q"], kept["blocks.0.attn.act_k"], kept["blocks.0.attn.act_v"]])
    assert edges["blocks.0.attn.qkv"] == int(((w != 0) & rows[:, None] & kept["blocks.0.act_norm1"][None]).sum())
    u = model.unembed.to_dense().weight
    assert edges["unembed"] == int((u[[39, 34]][:, kept["act_final"]] != 0).sum())
    assert set(edges) == {m.matrix for m in graph.matrices}


def test_task_offsets_point_at_closers_and_their_openers():
    tasks = load_tasks_module()
    text = "x = f(a[1], 'b', \"c(\")  # ( ]\ny = [(2)]\n"
    source = text.encode()
    brackets = tasks.bracket_close_offsets(source)
    # By hand: ] of a[1], ) of f(...), then ) and ] of the second line; none in strings or comments.
    line2 = text.index("\n") + 1
    expected = [(text.index("]"), text.index("[")), (text.index(")  #"), text.index("(")),
                (line2 + text[line2:].index(")"), line2 + text[line2:].index("(")),
                (line2 + text[line2:].index("]"), line2 + text[line2:].index("["))]
    assert sorted(brackets) == sorted(expected)
    quotes = tasks.load_example().quote_literal_offsets(source)
    assert quotes == [(text.index("b'") + 1, text.index("'b")), (text.index('")'), text.index('"c'))]


def test_tasks_learn_and_report_on_disjoint_files():
    tasks = load_tasks_module()
    ex = tasks.load_example()
    # Six files, each its own names; quotes of both kinds and brackets of both kinds in each.
    sources = [(f"v{i} = f{i}(a{i}[{i}], 'q{i}', \"d{i}\")\nw{i} = [g{i}('{i}'), \"{i}\"]\n" * 2).encode()
               for i in range(6)]
    starts, val = [], b""
    for src in sources:
        starts.append(len(val))
        val += src + bytes([ex.SEPARATOR])
    corpus = ex.Corpus(torch.zeros(1, dtype=torch.uint8), torch.tensor(list(val), dtype=torch.uint8),
                       [(f"f{i}.py", s) for i, s in enumerate(starts)])
    positions = tasks.quote_cases(corpus, 16)
    learn, report = tasks.split_by_file(corpus, positions)
    file_of = torch.searchsorted(torch.tensor(starts), positions, right=True) - 1
    assert learn.numel() and report.numel() and learn.numel() + report.numel() == positions.numel()
    assert torch.equal(learn, positions[file_of % 2 == 0]) and torch.equal(report, positions[file_of % 2 == 1])
    built = tasks.build_tasks(corpus, 16, 1000)
    assert set(built) == {"quote", "bracket"}
    for name, (train, evaluation) in built.items():
        for task in (train, evaluation):
            assert len(task) > 0 and task.labels.float().mean().item() == 0.5  # balanced
        # Every prompt names its file (v3, f3, ...): no prompt of one half comes from a file of the other.
        for task, parity in ((train, 0), (evaluation, 1)):
            for row in task.inputs.tolist():
                seen = {int(chr(b)) for b in row if chr(b) in "012345"}
                assert seen and all(d % 2 == parity for d in seen), (name, bytes(row))


# ---------------------------------------------------------------------------- the logit fit
def test_logit_fit_is_a_minimum(gen):
    logits = torch.randn(200, 2, generator=gen)
    labels = ((logits[:, 0] - logits[:, 1] + 0.8 * torch.randn(200, generator=gen)) < 0.3).long()
    scale, shift = fit_logit_affine(logits, labels)
    best = binary_loss(logits.double(), labels, scale, shift).item()
    assert best <= binary_loss(logits.double(), labels).item()
    for ds, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert best <= binary_loss(logits.double(), labels, max(0.0, scale + ds), shift + db).item() + 1e-12


# ---------------------------------------------------------------------------- pruning end to end
def test_pruning_finds_a_smaller_circuit_that_reaches_the_target(trained, gen):
    model, means, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    train_task, eval_task = toy_task(gen, name="low_half"), toy_task(gen, name="low_half")
    full, _, _ = task_loss(model, eval_task)
    target = full + 0.1
    config = PruneConfig(steps=150, lr=0.1, penalty=2e-3, batch_size=64, seed=1)
    circuit, = find_circuits(model, means, train_task, toy_graph(model), [target], eval_task=eval_task,
                             config=config)
    assert 0 < circuit.n_nodes < circuit.n_total_nodes
    assert circuit.task_loss <= target and circuit.full_loss == pytest.approx(full)
    assert evaluate_circuit(model, circuit, eval_task) == pytest.approx(circuit.task_loss, rel=1e-9, abs=1e-12)
    # The bisection's bracket: one node fewer was tried and misses the target.
    tried = dict(circuit.bisection)
    assert circuit.n_nodes - 1 in tried and tried[circuit.n_nodes - 1] > target
    assert len(circuit.bisection) <= math.ceil(math.log2(circuit.n_total_nodes + 1)) + 2
    # A full circuit has every edge; this one strictly fewer.
    all_kept = {s: torch.ones(w, dtype=torch.bool) for s, w in circuit.widths.items()}
    assert circuit.n_edges < sum(count_edges(model, toy_graph(model), all_kept).values())
    # Weights frozen during pruning, then restored as they were.
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bisection_steps_are_bounded_and_logged(trained, gen):
    model, means, _ = trained
    task = toy_task(gen)
    masks = learn_masks(model, means, task, PruneConfig(steps=20, lr=0.1))
    lines = []
    result = bisect_nodes(model, masks, task, task_loss(model, task)[0] + 0.2, log=lines.append)
    total = sum(masks.widths.values())
    assert len(result["history"]) == len(lines) <= math.ceil(math.log2(total + 1)) + 2
    assert result["loss"] <= task_loss(model, task)[0] + 0.2


# ---------------------------------------------------------------------------- Circuit files
def random_circuit(gen):
    widths = {"a": 5, "b.c": 7}
    kept = {s: sorted(torch.randperm(w, generator=gen)[: int(torch.randint(0, w, (1,), generator=gen))].tolist())
            for s, w in widths.items()}
    return Circuit(task="t", kept=kept, widths=widths,
                   means={s: torch.randn(w, generator=gen).tolist() for s, w in widths.items()},
                   edges={"m": int(torch.randint(0, 50, (1,), generator=gen))},
                   task_loss=float(torch.rand(1, generator=gen)), scale=1.5, shift=-0.25, target_loss=0.3,
                   full_loss=0.1, bisection=[(12, 0.1), (6, 0.4)], meta={"model": "toy"})


def test_circuit_save_load_round_trip(tmp_path, gen):
    circuit = random_circuit(gen)
    loaded = Circuit.load(circuit.save(tmp_path / "c" / "circuit.json"))
    assert loaded == circuit
    assert all(torch.equal(loaded.keep_masks()[s], circuit.keep_masks()[s]) for s in circuit.widths)
    assert loaded.n_edges == circuit.n_edges and loaded.n_nodes == circuit.n_nodes


def test_circuit_load_rejects_a_bad_file(tmp_path, gen):
    data = random_circuit(gen).to_json()
    data["kept"]["a"] = [99]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'a'"):
        Circuit.load(tmp_path / "bad.json")
    data["format_version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        Circuit.load(tmp_path / "v.json")


RERUN = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("test_circuits_rerun", sys.argv[1])
t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
from sparsekern.circuits import BinaryTask, Circuit, evaluate_circuit
saved = torch.load(sys.argv[2], weights_only=True)
model = t.Toy(sparse=True); model.load_state_dict(saved["model"])
task = BinaryTask("low_half", saved["inputs"], t.CANDIDATES, saved["labels"])
print(repr(evaluate_circuit(model, Circuit.load(sys.argv[3]), task)))
"""


def test_saved_circuit_reaches_its_recorded_loss_in_a_fresh_process(tmp_path, gen):
    model = train_toy(gen, steps=150, sparse=True)  # SparseLinear layers: their layouts travel in the state_dict
    means = node_means(model, SITES, pretraining_batches(gen))
    task = toy_task(gen)
    circuit, = find_circuits(model, means, task, toy_graph(model), [task_loss(model, task)[0] + 0.15],
                             config=PruneConfig(steps=60, lr=0.1))
    torch.save({"model": model.state_dict(), "inputs": task.inputs, "labels": task.labels}, tmp_path / "saved.pt")
    circuit.save(tmp_path / "circuit.json")
    run = subprocess.run([sys.executable, "-c", RERUN, __file__, str(tmp_path / "saved.pt"),
                          str(tmp_path / "circuit.json")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.strip().splitlines()[-1]) == pytest.approx(circuit.task_loss, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------- bad input
def test_unreachable_target_says_so_before_training(trained, gen):
    model, means, _ = trained
    task = toy_task(gen)
    full, _, _ = task_loss(model, task)
    with pytest.raises(ValueError, match=r"target_loss .* not reached by the full model") as info:
        find_circuits(model, means, task, toy_graph(model), [full / 2], config=PruneConfig(steps=10**9))
    assert f"{full:.4f}" in str(info.value)  # names the full model's loss; steps=1e9 would never end
    masks = NodeMasks(model, means)
    with pytest.raises(ValueError, match="not reached by the full model"):
        bisect_nodes(model, masks, task, full / 2)
    for bad in (0.0, -1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="target_loss"):
            find_circuits(model, means, task, toy_graph(model), [bad])


def test_unknown_site_names_are_named(trained, gen):
    model, means, _ = trained
    with pytest.raises(ValueError, match=r"sites: the model has no module named \['act_nope'\]"):
        node_means(model, ["act_in", "act_nope"], pretraining_batches(gen))
    with pytest.raises(ValueError, match=r"means: the model has no module named \['nope'\]"):
        NodeMasks(model, {**means, "nope": torch.zeros(3)})
    with pytest.raises(ValueError, match="sites is empty"):
        node_means(model, [], pretraining_batches(gen))
    with pytest.raises(ValueError, match="data gave no batch"):
        node_means(model, SITES, [])


def test_a_mask_whose_width_does_not_match_its_site_is_named(trained, gen):
    model, means, _ = trained
    masks = NodeMasks(model, {"act_in": means["act_in"], "act_hidden": torch.zeros(23)})
    with pytest.raises(ValueError, match=r"site 'act_hidden'.* 24 nodes .* 23"):
        with masks:
            model(toy_task(gen).inputs)
    # find_circuits finds it with one probe forward pass, before training (steps=1e9 would not end).
    with pytest.raises(ValueError, match=r"site 'act_hidden'.* 24 nodes .* 23"):
        find_circuits(model, {"act_in": means["act_in"], "act_hidden": torch.zeros(23)}, toy_task(gen),
                      toy_graph(model), [5.0], config=PruneConfig(steps=10**9))
    with pytest.raises(ValueError, match=r"values\['act_in'\]"):
        NodeMasks(model, means).set_fixed({"act_in": torch.ones(3, dtype=torch.bool),
                                           "act_hidden": torch.ones(24, dtype=torch.bool)})
    # The graph's widths are checked before any training.
    bad = CircuitGraph([MatrixEdges("fc", ("act_in",), ("act_in",))])
    with pytest.raises(ValueError, match=r"matrix 'fc' outputs"):
        find_circuits(model, means, toy_task(gen), bad, [5.0])


def load_examples_module(name: str):
    """``examples/<name>.py``, imported once under its own name (the examples import each other so)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_tasks_module():
    return load_examples_module("circuit_tasks")


# ---------------------------------------------------------------------------- the learned masks' one-pass ablation


def formula_ablation(output, keep, mean):
    """What the learned masks computed before ``MeanAblation``: the formula, by autograd."""
    return output * keep + mean * (1 - keep)


def bits(t):
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float64: torch.int64}[t.dtype])


@pytest.mark.parametrize("shape", [(11,), (6, 11), (3, 5, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_ablation_is_the_formula_bitwise_with_its_gradients(gen, shape, dtype):
    n = shape[-1]
    output = torch.randn(shape, generator=gen).to(dtype)
    # Means away from every output: a node whose output equals its mean has a zero score
    # gradient (in bf16 that happened in about 1% of draws), and the last check needs none.
    mean = (torch.randn(n, generator=gen) + 8).to(dtype)
    score = torch.randn(n, generator=gen)
    score[:4] = torch.tensor([1.0, -1.0, -0.5, 0.5])  # nodes 0 and 3 kept, 1 and 2 ablated
    # Signed zeros: node 0 kept with output -0, node 1 ablated with mean -0; the formula gives +0
    # for both, where torch.where(keep, output, mean) would give -0.
    output.view(-1)[:2] = torch.tensor([-0.0, 1.0])
    mean[:2] = torch.tensor([0.5, -0.0])
    grad = torch.randn(shape, generator=gen).to(dtype)
    results = []
    for ablate in (formula_ablation, MeanAblation.apply):
        out = output.clone().requires_grad_(True)
        s = score.clone().requires_grad_(True)
        y = ablate(out, heaviside_sigmoid(s, 0.7).to(dtype), mean)
        y.backward(grad)
        results.append((y.detach(), out.grad, s.grad))
    (y0, dout0, ds0), (y1, dout1, ds1) = results
    assert torch.equal(bits(y1), bits(y0))
    torch.testing.assert_close(dout1, dout0, rtol=0, atol=0)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(ds1, ds0, rtol=tol, atol=tol * float(grad.abs().sum()) / n)
    assert bool((ds0 != 0).all())  # every node's score gets a gradient, kept or ablated


@pytest.mark.parametrize("shape", [(7,), (4, 7), (2, 3, 7)])
def test_mean_ablation_gradients_match_finite_differences(gen, shape):
    n = shape[-1]
    output = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    keep = (torch.arange(n) % 2).double().requires_grad_(True)  # the function is linear in keep: any value checks
    mean = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MeanAblation.apply, (output, keep, mean))


def test_learned_masks_ablate_bitwise_as_the_formula_and_pass_the_same_surrogate_gradient(gen):
    model = Toy()
    means = node_means(model, SITES, pretraining_batches(gen))
    x = toy_task(gen, n=64).inputs
    masks = NodeMasks(model, means, temperature=0.5)
    for s in masks.sites:
        score = torch.randn(masks.widths[s], generator=gen)
        score[:2] = torch.tensor([1.0, -1.0])  # some nodes kept, some ablated at every site
        masks.scores[s] = score.requires_grad_(True)
    with masks:
        y = model(x)
    y.square().sum().backward()
    # The same model with the formula's hooks by hand, on copies of the scores.
    scores = {s: masks.scores[s].detach().clone().requires_grad_(True) for s in masks.sites}
    handles = [model.get_submodule(s).register_forward_hook(
        lambda module, inputs, output, s=s: formula_ablation(output, heaviside_sigmoid(scores[s], 0.5), means[s]))
        for s in masks.sites]
    try:
        expected = model(x)
    finally:
        for h in handles:
            h.remove()
    expected.square().sum().backward()
    assert torch.equal(y, expected)
    for s in masks.sites:
        torch.testing.assert_close(masks.scores[s].grad, scores[s].grad, rtol=1e-5, atol=1e-4)
        assert bool((masks.scores[s].grad != 0).any())


# ---------------------------------------------------------------------------- the speed benchmark's clock
def load_prune_module():
    load_tasks_module()  # prune_circuit imports it by name
    return load_examples_module("prune_circuit")


def test_linear_clock_counts_the_linear_layers_forward_and_backward_only(monkeypatch):
    """On a fake clock that only the layers and a pause between them move: a linear call costs 1
    forward and 10 backward, the pause 100 forward and 1000 backward; the clock sees 2 * 11."""
    pc = load_prune_module()
    now = [0.0]
    monkeypatch.setattr(pc.time, "perf_counter", lambda: now[0])

    class Advance(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, forward, backward):
            now[0] += forward
            ctx.backward = backward
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            now[0] += ctx.backward
            return grad, None, None

    class SlowLinear(nn.Linear):
        def forward(self, x):
            return Advance.apply(super().forward(Advance.apply(x, 0.5, 5.0)), 0.5, 5.0)

    class Pause(nn.Module):
        def forward(self, x):
            return Advance.apply(x, 100.0, 1000.0)

    model = nn.Sequential(SlowLinear(3, 4), Pause(), SlowLinear(4, 2))
    for p in model.parameters():
        p.requires_grad_(False)
    clock = pc.LinearClock(model)
    x = torch.randn(5, 3, requires_grad=True)
    with clock:
        model(x).sum().backward()
    assert len(clock.intervals) == 4  # a forward and a backward per call
    assert clock.seconds() == 22.0 and now[0] == 1122.0
    clock.intervals = [(0.0, 2.0), (1.0, 3.0), (1.5, 2.5), (5.0, 6.0)]  # overlapping ones count once
    assert clock.seconds() == 4.0 and clock.intervals == []


def test_linear_clock_names_a_layer_called_with_its_input_by_keyword():
    pc = load_prune_module()
    layer = nn.Linear(3, 2)
    with pc.LinearClock(layer), pytest.raises(TypeError, match="Linear was called without its input as the first"):
        layer(input=torch.randn(4, 3))
    assert layer(torch.randn(4, 3)).shape == (4, 2)  # the hooks are gone after the error
