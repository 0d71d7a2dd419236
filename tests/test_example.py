"""The end-to-end example (examples/train_sparse_gpt.py) keeps working: a few steps of a
tiny model on a small slice of the standard library, run in-process."""

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


TINY = dict(d_model=32, n_layers=1, n_heads=2, mlp_ratio=4, ctx=32, batch_size=4, steps=6, density=0.25,
            block_size=16, min_per_neuron=4, max_train_bytes=200_000, max_val_bytes=120_000, eval_batches=2,
            quote_cases=40, log_every=0)


@pytest.fixture(scope="module")
def tiny_run(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("example_out")
    cfg = example.Config(**TINY, out=str(out))
    return cfg, example.run(cfg, log=lambda *_: None)


def test_figures_json(example, tiny_run):
    cfg, result = tiny_run
    figures = json.loads((Path(cfg.out) / example.FIGURES).read_text())
    assert figures == json.loads(json.dumps(result.figures))
    for name in ("dense", "sparse"):
        loss = figures[name]["val_loss"]
        # Finite, and no worse than a model that knows nothing (uniform over bytes) by much.
        assert math.isfinite(loss) and 0 < loss < 1.5 * math.log(256), (name, loss)
        assert figures[name]["train_time_s"] > 0 and figures[name]["tokens_per_s"] > 0
    ratio = figures["wall_time_ratio_sparse_over_dense"]
    assert math.isfinite(ratio) and ratio > 0
    quote = figures["quote"]
    assert quote["cases"] > 0
    for key in ("sparse_accuracy", "dense_accuracy", "majority_baseline"):
        assert 0.0 <= quote[key] <= 1.0, (key, quote[key])


def test_nonzeros_per_layer_hit_target(example, tiny_run):
    cfg, result = tiny_run
    layers = result.figures["layers"]
    # Every linear layer of the model is sparse: qkv, out, fc, proj per block, plus the unembedding.
    assert len(layers) == 4 * cfg.n_layers + 1
    for name, entry in layers.items():
        numel = math.prod(entry["shape"])
        target = sparsekern.count_for_density(cfg.density, numel)
        assert entry["target_nnz"] == target, name
        assert entry["nnz"] == target, (name, entry)
        weight = result.sparse.get_submodule(name).weight
        assert int(torch.count_nonzero(weight)) == target, name


def test_dense_baseline_has_no_sparse_layers(example, tiny_run):
    _, result = tiny_run
    assert not example.sparse_layers(result.dense)
    assert len(example.linear_weights(result.dense)) == len(example.sparse_layers(result.sparse))


def test_checkpoint_reloads_to_identical_outputs(example, tiny_run):
    cfg, result = tiny_run
    reloaded = example.load_checkpoint(Path(cfg.out))
    trained = result.sparse.eval()
    for name, layer in example.sparse_layers(trained).items():
        again = reloaded.get_submodule(name)
        assert isinstance(again, sparsekern.SparseLinear)
        assert torch.equal(again.weight, layer.weight), name
        assert again.layout == layer.layout, name  # refreshed from the loaded weights
    gen = torch.Generator().manual_seed(123)
    x, _ = example.get_batch(result.corpus.val, 3, cfg.ctx, gen)
    with torch.no_grad():
        assert torch.equal(reloaded(x), trained(x))


def test_quote_offsets_find_closing_quotes(example):
    source = (
        "a = 'x'\n"
        "b = \"it's\" + r'\\d'\n"
        "c = '''doc'''  # triple-quoted: left out\n"
        "d = f'{a}'  # f-string: left out\n"
        "e = 'caf\u00e9' + \"\"\n"
    ).encode("utf-8")
    offsets = example.closing_quote_offsets(source)
    closing = [source[o:o + 1] for o in offsets]
    assert closing == [b"'", b'"', b"'", b"'", b'"']
    # Each offset is the literal's last byte: the byte before is the end of its body.
    assert [source[o - 1:o] for o in offsets] == [b"x", b"s", b"d", b"\xa9", b'"']


def test_heldout_split_is_by_file_and_deterministic(example, tiny_run):
    _, result = tiny_run
    corpus = result.corpus
    val_names = {name for name, _ in corpus.val_files}
    assert val_names and corpus.train_files
    assert not val_names & set(corpus.train_files)
    again = example.load_corpus(max_train_bytes=TINY["max_train_bytes"], max_val_bytes=TINY["max_val_bytes"])
    assert again.val_files == corpus.val_files and again.train_files == corpus.train_files
    assert torch.equal(again.val, corpus.val)


def test_abs_topk_keeps_largest_magnitudes(example):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen)
    y = example.AbsTopK(4)(x)
    assert torch.equal((y != 0).sum(-1), torch.full((3, 5), 4))
    kept = y != 0
    assert torch.equal(y[kept], x[kept])
    # Every kept magnitude is at least every dropped one, token by token.
    smallest_kept = x.abs().masked_fill(~kept, float("inf")).amin(-1)
    largest_dropped = x.abs().masked_fill(kept, 0).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())
    assert torch.equal(example.AbsTopK(0)(x), x)


def test_grad_rms_clip(example):
    a, b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(3, 4))
    a.grad, b.grad = torch.full((10,), 3.0), torch.full((3, 4), -3.0)
    assert example.clip_grad_rms_([a, b], 1.0) == pytest.approx(3.0)
    rms = torch.cat([a.grad, b.grad.flatten()]).pow(2).mean().sqrt()
    assert float(rms) == pytest.approx(1.0)
    assert example.clip_grad_rms_([a, b], 2.0) == pytest.approx(1.0)  # below the limit: unchanged
    assert float(a.grad[0]) == pytest.approx(1.0)


def test_cli_maps_to_config(example):
    cfg = example.parse_args(["--steps", "7", "--density", "0.1", "--d-model", "64", "--layers", "3",
                              "--act-topk", "8", "--granularity", "block", "--out", "somewhere"])
    assert (cfg.steps, cfg.density, cfg.d_model, cfg.n_layers, cfg.act_topk, cfg.granularity, cfg.out) == (
        7, 0.1, 64, 3, 8, "block", "somewhere")
    assert example.parse_args([]) == example.Config()


def test_block_granularity_with_activation_sparsity(example, tiny_run):
    """--granularity block --act-topk: whole blocks kept, exactly the target count of them."""
    cfg, result = tiny_run
    # Block floors count blocks (1 per block row here): density 0.5 leaves room for them.
    cfg = dataclasses.replace(cfg, granularity="block", act_topk=4, steps=4, density=0.5)
    model = example.build_model(cfg.model_config(), sparse=True, seed=cfg.seed)
    stats = example.train(model, result.corpus, cfg, sparse=True, log=lambda *_: None)
    assert math.isfinite(stats["final_train_loss"])
    assert math.isfinite(example.evaluate_loss(model, result.corpus, cfg))
    for name, entry in example.layer_report(model, cfg).items():
        assert entry["active_blocks"] == sparsekern.count_for_density(cfg.density, entry["blocks"]), name
        assert entry["target_blocks"] == entry["active_blocks"], name
        # Nonzeros only inside active blocks.
        layer = model.get_submodule(name)
        assert not bool(layer.weight[~layer.layout.to_mask()].any()), name
    with pytest.raises(ValueError, match="min-per-neuron"):
        example.train(model, result.corpus, dataclasses.replace(cfg, density=0.25), sparse=True)


def test_element_format_trains_hits_target_and_reloads(example, tiny_run, tmp_path):
    """--format element: every layer on the element kernels, exactly the target nonzeros, the
    layout following the weights, and a checkpoint that reloads to the same function."""
    cfg, result = tiny_run
    cfg = dataclasses.replace(cfg, format="element", steps=4, out=str(tmp_path))
    model = example.build_model(cfg.model_config(), sparse=True, seed=cfg.seed)
    stats = example.train(model, result.corpus, cfg, sparse=True, log=lambda *_: None)
    assert math.isfinite(stats["final_train_loss"])
    for name, entry in example.layer_report(model, cfg).items():
        layer = model.get_submodule(name)
        assert entry["format"] == "element" and isinstance(layer.layout, sparsekern.ElementLayout), name
        assert entry["nnz"] == entry["target_nnz"] == entry["layout_nnz"], (name, entry)
    example.save_checkpoint(model, cfg, tmp_path)
    reloaded = example.load_checkpoint(tmp_path)
    x, _ = example.get_batch(result.corpus.val, 2, cfg.ctx, torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), model.eval()(x))
    assert example.parse_args(["--format", "element"]).format == "element"
