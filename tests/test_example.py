"""The end-to-end example (examples/train_sparse_gpt.py) keeps working and keeps its promises: a
few steps of a tiny model on a small slice of the standard library, the three runs (sparsekern,
the published way, dense) in-process."""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import sparsekern

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sparse_gpt.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_sparse_gpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


TINY = dict(d_model=32, n_layers=1, n_heads=2, d_mlp=128, ctx=32, batch_size=4, steps=6, density=0.25,
            block_size=16, min_per_neuron=4, max_train_bytes=200_000, max_val_bytes=120_000, eval_batches=2,
            quote_cases=40, log_every=0)


@pytest.fixture(scope="module")
def tiny_run(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("example_out")
    cfg = example.Config(**TINY, out=str(out))
    return cfg, example.run(cfg, log=lambda *_: None)


def _quiet(*_):
    pass


def _trainers(example, cfg, corpus, kinds=("sparsekern", "published", "dense")):
    models = example.build_models(cfg)
    return {kind: example.Trainer(models[kind], corpus, cfg, kind=kind, log=_quiet) for kind in kinds}


def test_figures_json(example, tiny_run):
    cfg, result = tiny_run
    figures = json.loads((Path(cfg.out) / example.FIGURES).read_text())
    assert figures == json.loads(json.dumps(result.figures))
    assert set(figures["runs"]) == set(example.RUNS)
    for name, stats in figures["runs"].items():
        loss = stats["val_loss"]
        # Finite, and no worse than a model that knows nothing (uniform over bytes) by much.
        assert math.isfinite(loss) and 0 < loss < 1.5 * math.log(256), (name, loss)
        assert stats["train_time_s"] > 0 and stats["tokens_per_s"] > 0
        assert stats["annealing_time_s"] + stats["at_target_time_s"] == pytest.approx(stats["train_time_s"])
        assert 0.0 <= stats["quote_accuracy"] <= 1.0
    times = {name: figures["runs"][name]["train_time_s"] for name in example.RUNS}
    ratio = figures["wall_time_ratio_sparsekern_over_published"]
    assert ratio == pytest.approx(times["sparsekern"] / times["published"])
    assert figures["wall_time_ratio_sparsekern_over_dense"] == pytest.approx(times["sparsekern"] / times["dense"])
    assert figures["runs"]["published"]["optimizer"] == "AdamW (torch default)"
    assert figures["runs"]["sparsekern"]["optimizer"] == figures["runs"]["dense"]["optimizer"] == "AdamW fused"
    quote = figures["quote"]
    assert quote["cases"] > 0 and 0.0 <= quote["majority_baseline"] <= 1.0
    assert figures["abs_topk"]["locations"] == list(example.ACT_LOCATIONS)
    assert len(figures["abs_topk"]["sites"]) == 7 * cfg.n_layers + 1


def test_nonzeros_per_layer_hit_target(example, tiny_run):
    cfg, result = tiny_run
    layers = result.figures["layers"]
    # Every linear layer of the model is sparse: qkv, out, fc, proj per block, plus the unembedding.
    assert len(layers) == 4 * cfg.n_layers + 1
    for name, entry in layers.items():
        target = sparsekern.count_for_density(cfg.density, math.prod(entry["shape"]))
        assert entry["target_nnz"] == target, name
        assert entry["nnz"] == entry["layout_nnz"] == target, (name, entry)
        assert entry["published_nnz"] == entry["published_mask_nnz"] == target, (name, entry)
        assert int(torch.count_nonzero(result.sparse.get_submodule(name).weight)) == target, name
        published = result.models["published"].get_submodule(name)
        assert not bool(published.weight[published.mask == 0].any()), name  # zeroed off the mask


def test_three_runs_start_from_identical_weights_and_function(example, tiny_run):
    cfg, result = tiny_run
    models = example.build_models(cfg)
    assert isinstance(models["sparsekern"].blocks[0].mlp.fc, sparsekern.SparseLinear)
    assert isinstance(models["published"].blocks[0].mlp.fc, example.MaskedLinear)
    assert type(models["dense"].blocks[0].mlp.fc) is torch.nn.Linear
    params = {name: dict(m.named_parameters()) for name, m in models.items()}
    assert params["sparsekern"].keys() == params["published"].keys() == params["dense"].keys()
    for key, value in params["dense"].items():
        assert torch.equal(params["sparsekern"][key], value), key
        assert torch.equal(params["published"][key], value), key
    # A second build gives the same weights again (the seed decides them).
    again = example.build_models(cfg)["dense"]
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), models["dense"].parameters()))
    # Step 0: the same function (all dense yet; the AbsTopK implementations select the same entries).
    x, _ = example.get_batch(result.corpus.val, 3, cfg.ctx, torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = models["dense"](x)
        torch.testing.assert_close(models["sparsekern"](x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(models["published"](x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density, scale_rows", [(0.25, False), (0.05, False), (0.05, True)])
def test_torch_projection_keeps_what_sparsekern_keeps(example, density, scale_rows):
    """The published projection (torch.topk + scatter, the floor by a per-row topk) and
    sparsekern's keep the same entries of the same weight; scaled-down rows make the floor bind."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(96, 80, generator=gen)
    if scale_rows:
        weight[::3] *= 1e-3  # these rows would keep nothing without the floor
    k = sparsekern.count_for_density(density, weight.numel())
    mask = example.torch_topk_mask(weight, k, min_per_row=4)
    layer = sparsekern.SparseLinear.from_dense(torch.nn.Linear(80, 96, bias=False), density=1.0)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.project_(density, min_per_row=4)
    assert int(mask.sum()) == k
    assert torch.equal(mask.bool(), layer.weight != 0)
    assert bool(((mask != 0).sum(1) >= 4).all())
    if scale_rows:  # the floor did bind: the small rows keep exactly their 4
        assert bool(((mask[::3] != 0).sum(1) == 4).all())


@pytest.mark.parametrize("format", ["auto", "element"])
def test_lockstep_runs_keep_scheduled_and_same_nonzeros(example, tiny_run, format):
    """sparsekern and the published way, stepped together from the same weights on the same
    batches: at every step every layer holds exactly the scheduled count of nonzeros (weight,
    layout, mask), and both keep the same entries within float tolerance; the learning rates
    follow the sharkfin rule and the dense run the base schedule."""
    cfg, result = tiny_run
    cfg = dataclasses.replace(cfg, format=format, steps=8)
    trainers = _trainers(example, cfg, result.corpus)
    sk, pub, dense = trainers["sparsekern"], trainers["published"], trainers["dense"]
    schedule = example.density_schedule(cfg)
    for t in range(cfg.steps):
        lrs = {kind: tr.optimizer.param_groups[0]["lr"] for kind, tr in trainers.items()}
        assert lrs["sparsekern"] == pytest.approx(lrs["dense"] / math.sqrt(schedule(t))), t
        assert lrs["published"] == pytest.approx(lrs["sparsekern"]), t
        losses = {kind: tr.step() for kind, tr in trainers.items()}
        assert losses["sparsekern"] == pytest.approx(losses["published"], rel=1e-3, abs=1e-3), t
        layers = example.sparse_layers(sk.model)
        for name, layer in layers.items():
            target = sparsekern.count_for_density(schedule(t), layer.weight.numel())
            other = pub.model.get_submodule(name)
            kept = layer.weight != 0
            assert int(kept.sum()) == target, (t, name)
            assert layer.layout.nnz == target, (t, name)
            assert torch.equal(layer.layout.to_mask(), kept), (t, name)
            assert int(other.mask.sum()) == target == int(torch.count_nonzero(other.weight)), (t, name)
            # Float rounding (fused and unfused AdamW, the kernels) can swap an entry at the boundary.
            differ = int((kept != (other.weight != 0)).sum())
            assert differ <= max(2, target // 200), (t, name, differ)
            torch.testing.assert_close(layer.weight.detach(), other.weight.detach(), rtol=1e-3, atol=1e-4)
        if format == "element":
            assert all(m.format == "element" for m in layers.values())
    assert not example.sparse_layers(dense.model) and not example.projected_layers(dense.model)
    assert example.actual_density(sk.model) == pytest.approx(example.actual_density(pub.model))


def _expected_sites(n_layers, d_model, d_mlp, fraction):
    k, k_mlp = round(fraction * d_model), round(fraction * d_mlp)
    sites = {}
    for i in range(n_layers):
        sites.update({f"blocks.{i}.act_norm1": k, f"blocks.{i}.attn.act_q": k, f"blocks.{i}.attn.act_k": k,
                      f"blocks.{i}.attn.act_v": k, f"blocks.{i}.act_norm2": k, f"blocks.{i}.mlp.act": k_mlp,
                      f"blocks.{i}.act_resid": k})
    sites["act_final"] = k
    return sites


def test_every_paper_location_has_abs_topk_with_the_right_k(example, tiny_run):
    cfg, result = tiny_run
    cfg = dataclasses.replace(cfg, n_layers=2, d_model=48, d_mlp=160, act_fraction=0.25)
    models = example.build_models(cfg)
    expected = _expected_sites(2, 48, 160, 0.25)
    assert len(expected) == 7 * 2 + 1
    impls = {"sparsekern": "sparsekern", "published": "torch", "dense": "sparsekern"}
    for kind, model in models.items():
        assert example.abs_topk_sites(model) == expected, kind
        assert {m.impl for m in model.modules() if isinstance(m, example.AbsTopK)} == {impls[kind]}, kind
    # In the forward pass: what each site hands on has at most k nonzeros per token, and the
    # inputs of the layers that read them too (the sites sit where the paper puts them).
    model = models["sparsekern"]
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out))
             for name, m in model.named_modules() if isinstance(m, example.AbsTopK) and m.k > 0]
    inputs = {}
    for name in ("blocks.0.attn.qkv", "blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.1.attn.qkv", "unembed"):
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda mod, args, out, name=name: inputs.__setitem__(name, args[0])))
    x, _ = example.get_batch(result.corpus.val, 2, cfg.ctx, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert seen.keys() == expected.keys()
    for name, out in seen.items():
        nonzero = (out != 0).sum(-1)
        assert int(nonzero.max()) <= expected[name] and float(nonzero.float().mean()) > 0.9 * expected[name], name
    k, k_mlp = expected["act_final"], expected["blocks.0.mlp.act"]
    limits = {"blocks.0.attn.qkv": k, "blocks.0.mlp.fc": k, "blocks.0.mlp.proj": k_mlp, "unembed": k,
              "blocks.1.attn.qkv": k}
    for name, limit in limits.items():
        assert int((inputs[name] != 0).sum(-1).max()) <= limit, name
    # The fraction is the switch: 0 leaves no site.
    off = example.build_model(dataclasses.replace(cfg, act_fraction=0.0).model_config(), kind="dense")
    assert example.abs_topk_sites(off) == {}


def test_abs_topk_implementations_agree(example):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen, requires_grad=True)
    y = example.torch_abs_topk(x, 4)
    assert torch.equal((y != 0).sum(-1), torch.full((3, 5), 4))
    kept = y != 0
    assert torch.equal(y[kept], x[kept])
    smallest_kept = x.abs().masked_fill(~kept, float("inf")).amin(-1)
    largest_dropped = x.abs().masked_fill(kept, 0).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, kept.float())  # the gradient reaches the kept entries only
    lib = example.ABS_TOPK["sparsekern"]
    assert torch.equal(lib(x, 4), y)
    assert torch.equal(example.AbsTopK(0)(x), x) and torch.equal(example.AbsTopK(16)(x), x)


def test_checkpoint_reloads_to_identical_outputs(example, tiny_run):
    cfg, result = tiny_run
    meta = json.loads((Path(cfg.out) / example.CHECKPOINT_CONFIG).read_text())
    assert meta["model"]["act_fraction"] == cfg.act_fraction
    assert meta["model"]["act_locations"] == list(example.ACT_LOCATIONS)
    assert meta["qkv_abs_topk"] == example.QKV_ACT_SCOPE
    reloaded = example.load_checkpoint(Path(cfg.out))
    trained = result.sparse.eval()
    assert example.abs_topk_sites(reloaded) == example.abs_topk_sites(trained) == meta["abs_topk_sites"]
    for name, layer in example.sparse_layers(trained).items():
        again = reloaded.get_submodule(name)
        assert isinstance(again, sparsekern.SparseLinear)
        assert torch.equal(again.weight, layer.weight), name
        assert again.layout == layer.layout, name  # refreshed from the loaded weights
    x, _ = example.get_batch(result.corpus.val, 3, cfg.ctx, torch.Generator().manual_seed(123))
    with torch.no_grad():
        assert torch.equal(reloaded(x), trained(x))


def test_quote_offsets_find_closing_quotes_and_their_openers(example):
    source = (
        "a = 'x'\n"
        "b = \"it's\" + r'\\d'\n"
        "c = '''doc'''  # triple-quoted: left out\n"
        "d = f'{a}'  # f-string: left out\n"
        "e = 'caf\u00e9' + \"\"\n"
    ).encode("utf-8")
    pairs = example.quote_literal_offsets(source)
    closing = [source[c:c + 1] for c, _ in pairs]
    assert closing == [b"'", b'"', b"'", b"'", b'"']
    # Each closer is the literal's last byte: the byte before is the end of its body.
    assert [source[c - 1:c] for c, _ in pairs] == [b"x", b"s", b"d", b"\xa9", b'"']
    # Each opener is the same quote, after any prefix (r'...'), and the body lies between them.
    assert [source[o:c + 1] for c, o in pairs] == [b"'x'", b'"it\'s"', b"'\\d'", "'caf\u00e9'".encode(), b'""']


def test_quote_cases_show_the_opening_quote(example, tiny_run):
    _, result = tiny_run
    corpus, ctx = result.corpus, 8
    cases = example.quote_cases(corpus, ctx, 10**9)
    assert cases.numel() > 0
    every = [start + c for start, src in example.heldout_sources(corpus)
             for c, o in example.quote_literal_offsets(src) if c >= ctx]
    assert len(every) > cases.numel()  # some literals are longer than 8 bytes: left out
    val = corpus.val
    for pos in cases.tolist():
        # The prompt (the ctx bytes before the closer) holds the same quote byte as the answer.
        assert int(val[pos]) in val[pos - ctx:pos].tolist()


def test_quote_cases_at_the_prompt_edges(example):
    ctx = 8
    files = [b"'abcdef'\n"            # closer at offset 7: its prompt would start before the file
             b"x = 'abcdefg'\n"       # closer - opener == ctx: the opener is the prompt's first byte
             b"y = 'abcdefgh'\n",     # closer - opener == ctx + 1: the opener is outside
             b"(\n'abcdef')\n"]        # closer at offset ctx + 1 of the second file
    val, starts = b"", []
    for src in files:
        starts.append(len(val))
        val += src + bytes([example.SEPARATOR])
    corpus = example.Corpus(torch.zeros(1, dtype=torch.uint8), torch.tensor(list(val), dtype=torch.uint8),
                            [(f"f{i}.py", s) for i, s in enumerate(starts)])
    expected = [files[0].index(b"g'") + 1, starts[1] + files[1].index(b"f'") + 1]
    assert example.quote_cases(corpus, ctx, 100).tolist() == expected
    # One byte more of context shows the longer literal's opener too.
    assert len(example.quote_cases(corpus, ctx + 1, 100)) == 3


def test_heldout_split_is_by_file_and_deterministic(example, tiny_run):
    _, result = tiny_run
    corpus = result.corpus
    val_names = {name for name, _ in corpus.val_files}
    assert val_names and corpus.train_files
    assert not val_names & set(corpus.train_files)
    again = example.load_corpus(max_train_bytes=TINY["max_train_bytes"], max_val_bytes=TINY["max_val_bytes"])
    assert again.val_files == corpus.val_files and again.train_files == corpus.train_files
    assert torch.equal(again.val, corpus.val)


def test_cli_maps_to_config(example):
    cfg = example.parse_args(["--steps", "7", "--density", "0.1", "--d-model", "64", "--layers", "3",
                              "--d-mlp", "96", "--act-fraction", "0.5", "--no-fused-adamw", "--out", "somewhere"])
    assert (cfg.steps, cfg.density, cfg.d_model, cfg.n_layers, cfg.d_mlp, cfg.act_fraction, cfg.fused_adamw,
            cfg.out) == (7, 0.1, 64, 3, 96, 0.5, False, "somewhere")
    assert example.parse_args([]) == example.Config()
    assert example.parse_args(["--format", "element"]).format == "element"


def test_floor_too_large_fails_before_training(example, tiny_run):
    cfg, result = tiny_run
    cfg = dataclasses.replace(cfg, density=0.01)  # 4 per row need more than 1% of every layer
    models = example.build_models(cfg)
    for kind in ("sparsekern", "published"):
        with pytest.raises(ValueError, match="min-per-neuron"):
            example.Trainer(models[kind], result.corpus, cfg, kind=kind, log=_quiet)
    example.Trainer(models["dense"], result.corpus, cfg, kind="dense", log=_quiet)  # no floor there
