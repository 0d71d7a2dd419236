"""Prune the end-to-end example's GPT, dense and weight-sparse, to the smallest circuits that do two
tasks, and compare their sizes at the same target losses (Gao et al. 2025, section 2.2).

1. Train (or load from ``--out``) two models of ``train_sparse_gpt.py``'s GPT on the standard
   library's source: ``sparse`` (``SparseLinear``, annealed to ``--density``, the example's
   recipe) and ``dense`` (``nn.Linear``, the same AbsTopK sites and schedule), from the same
   initial weights and batches. The dense model is stopped at the first evaluation (every
   ``--eval-every`` steps) where its held-out loss is at or below the sparse model's final one:
   matched pretraining loss, as far as the evaluation grid allows (both losses are reported).
2. Tasks (``circuit_tasks.py``): ``quote`` (close a string with the quote that opened it) and
   ``bracket`` (close the innermost open bracket with ``)`` or ``]``), balanced, from held-out
   files: the cases of the even-numbered files train the masks, those of the odd-numbered ones
   bisect and report (no file gives cases to both).
3. For each model and task: node means from pretraining batches, masks learned once
   (``sparsekern.circuits.find_circuits``) for each penalty of ``--penalties``, then a bisection
   per target loss and penalty; the circuit with the fewest edges is kept. Targets: the
   fractions ``--target-fractions`` of the way from knowing nothing (the entropy of the labels,
   about ln 2) down to the worse of the two full models' losses on that task: loose to tight,
   the same targets for both models.
4. Prints and saves (``circuits.json``, ``table.txt``) the table of edges against target loss with
   the ratio dense/sparse, saves every circuit (``circuit_<model>_<task>_<i>.json``), re-runs each
   from its JSON, and draws the smallest sparse circuit (``smallest_sparse_circuit.png``; needs
   matplotlib).
5. Speed: mask-training steps on the sparse model with its ``SparseLinear`` layers (the sparse
   kernels) against the same model with every layer ``to_dense()`` (``nn.Linear``, the zeros
   computed), interleaved, median, with the time inside the linear layers apart
   (``LinearClock``); also at the example's default size (untrained weights projected to its
   density).

    python examples/prune_circuit.py    # 51 minutes on 2 shared cores the first time (training); 10 once saved
    python examples/prune_circuit.py --check examples/out/circuits/circuit_sparse_quote_0.json   # re-run one
    python examples/prune_circuit.py --help
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import sparsekern
from sparsekern.circuits import (Circuit, PruneConfig, binary_loss, candidate_logits, count_edges,
                                 effective_weight, evaluate_circuit, find_circuits, frozen, node_means, task_loss)
from sparsekern.circuits.masks import NodeMasks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import circuit_tasks  # noqa: E402  (the example's folder is not a package)

ex = circuit_tasks.load_example()
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "circuits"
MODELS = ("dense", "sparse")
KIND = {"dense": "dense", "sparse": "sparsekern"}


# ---------------------------------------------------------------------------- the two models
def pretrain_config(args) -> "ex.Config":
    return ex.Config(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_mlp=args.d_mlp,
                     ctx=args.ctx, batch_size=args.batch_size, steps=args.steps, density=args.density,
                     block_size=16, lr=args.lr, max_train_bytes=args.max_train_bytes,
                     max_val_bytes=args.max_val_bytes, eval_batches=args.eval_batches, log_every=0,
                     seed=args.seed, out=str(args.out))


def train_models(cfg, corpus, eval_every: int, log) -> tuple:
    """Sparse for ``cfg.steps``; dense from the same initial weights and batches until its
    held-out loss reaches the sparse model's (or ``cfg.steps``)."""
    built = ex.build_models(cfg)
    models = {"sparse": built["sparsekern"], "dense": built["dense"]}
    record = {}
    t0 = time.perf_counter()
    trainer = ex.Trainer(models["sparse"], corpus, cfg, kind="sparsekern", log=log)
    for step in range(1, cfg.steps + 1):
        trainer.step()
        if step % eval_every == 0:
            val = ex.evaluate_loss(models["sparse"], corpus, cfg)
            log(f"[sparse] step {step}/{cfg.steps}: held-out loss {val:.4f}")
    record["sparse"] = {"steps": cfg.steps, "val_loss": ex.evaluate_loss(models["sparse"], corpus, cfg),
                        "train_time_s": time.perf_counter() - t0, "density": ex.actual_density(models["sparse"])}
    target = record["sparse"]["val_loss"]
    t0 = time.perf_counter()
    trainer = ex.Trainer(models["dense"], corpus, cfg, kind="dense", log=log)
    val = float("inf")
    for step in range(1, cfg.steps + 1):
        trainer.step()
        if step % eval_every == 0 or step == cfg.steps:
            val = ex.evaluate_loss(models["dense"], corpus, cfg)
            log(f"[dense] step {step}/{cfg.steps}: held-out loss {val:.4f} (sparse {target:.4f})")
            if val <= target:
                break
    record["dense"] = {"steps": step, "val_loss": val, "train_time_s": time.perf_counter() - t0, "density": 1.0}
    return models, record


def save_models(models, record, cfg, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        torch.save(model.state_dict(), out / f"{name}_model.pt")
    (out / "models.json").write_text(json.dumps({"model": cfg.model_config(), "pretraining": record,
                                                 "config": dataclasses.asdict(cfg)}, indent=2) + "\n")


def load_models(out: Path, cfg) -> tuple | None:
    meta_path = out / "models.json"
    if not meta_path.exists() or not all((out / f"{n}_model.pt").exists() for n in MODELS):
        return None
    meta = json.loads(meta_path.read_text())
    if meta["model"] != json.loads(json.dumps(cfg.model_config())) or meta["config"]["steps"] != cfg.steps \
            or meta["config"]["density"] != cfg.density:
        return None  # saved for other settings: train again
    models = {}
    for name in MODELS:
        model = ex.build_model(meta["model"], kind=KIND[name])
        model.load_state_dict(torch.load(out / f"{name}_model.pt", weights_only=True))
        models[name] = model.eval()
    return models, meta["pretraining"]


def pretraining_batches(corpus, cfg, n: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [ex.get_batch(corpus.train, cfg.batch_size, cfg.ctx, gen)[0] for _ in range(n)]


# ---------------------------------------------------------------------------- the sweep
def knows_nothing_loss(task) -> float:
    """The loss of constant logits after the fitted shift: the entropy of the task's label rate
    (ln 2 for a balanced task); what a circuit of no node reaches."""
    p = float(task.labels.float().mean())
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


def targets_for(full_losses: list, fractions, floor: float) -> list:
    """Loose to tight: ``floor - f * (floor - worst full loss)`` for each fraction ``f``
    (``floor``: ``knows_nothing_loss``)."""
    worst = max(full_losses)
    return [floor - f * (floor - worst) for f in sorted(fractions)]


def sweep(models, tasks, means, args, log) -> dict:
    rows, circuits, out = [], {}, Path(args.out)
    config = [PruneConfig(steps=args.prune_steps, lr=args.prune_lr, penalty=penalty, batch_size=64,
                          seed=args.seed, log_every=100) for penalty in args.penalties]
    for task_name, (train_task, eval_task) in tasks.items():
        full = {m: task_loss(models[m], eval_task)[0] for m in MODELS}
        targets = targets_for(list(full.values()), args.target_fractions, knows_nothing_loss(eval_task))
        log(f"task {task_name}: full-model losses {full}; targets {[round(t, 4) for t in targets]}")
        found, every_edge = {}, {}
        for m in MODELS:
            t0 = time.perf_counter()
            graph = circuit_tasks.gpt_graph(models[m], eval_task.candidates)
            every_edge[m] = sum(count_edges(models[m], graph, {s: torch.ones(v.numel(), dtype=torch.bool)
                                                               for s, v in means[m].items()}).values())
            found[m] = find_circuits(models[m], means[m], train_task, graph, targets, eval_task=eval_task,
                                     config=config, log=log, meta={"model": m, "task": task_name})
            log(f"  {m}: pruned in {time.perf_counter() - t0:.1f} s")
            for i, c in enumerate(found[m]):
                c.meta["prune_time_s"] = time.perf_counter() - t0
                path = c.save(out / f"circuit_{m}_{task_name}_{i}.json")
                circuits[(m, task_name, i)] = (c, path)
        for i, target in enumerate(targets):
            d, s = found["dense"][i], found["sparse"][i]
            rows.append({"task": task_name, "target_loss": target, "dense_edges": d.n_edges, "sparse_edges": s.n_edges,
                         "dense_nodes": d.n_nodes, "sparse_nodes": s.n_nodes, "dense_loss": d.task_loss,
                         "sparse_loss": s.task_loss, "ratio": d.n_edges / s.n_edges if s.n_edges else float("inf"),
                         "dense_full_loss": full["dense"], "sparse_full_loss": full["sparse"],
                         "dense_model_edges": every_edge["dense"], "sparse_model_edges": every_edge["sparse"]})
    return {"rows": rows, "circuits": circuits}


def rerun_check(models, tasks, circuits) -> float:
    """The largest |re-run loss - recorded loss| over every saved circuit, each loaded from its JSON."""
    worst = 0.0
    for (m, task_name, _), (_, path) in circuits.items():
        circuit = Circuit.load(path)
        loss = evaluate_circuit(models[m], circuit, tasks[task_name][1])
        worst = max(worst, abs(loss - circuit.task_loss))
    return worst


def table(rows) -> str:
    lines = [f"{'task':8s} {'target':>7s} {'dense edges':>11s} {'sparse edges':>12s} {'ratio':>7s} "
             f"{'dense nodes':>11s} {'sparse nodes':>12s} {'dense loss':>10s} {'sparse loss':>11s}"]
    for r in rows:
        lines.append(f"{r['task']:8s} {r['target_loss']:7.4f} {r['dense_edges']:11d} {r['sparse_edges']:12d} "
                     f"{r['ratio']:7.2f} {r['dense_nodes']:11d} {r['sparse_nodes']:12d} {r['dense_loss']:10.4f} "
                     f"{r['sparse_loss']:11.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the picture
def site_column(site: str) -> tuple:
    """(column, label) of a site in the picture: per block norm1, q/k/v, norm2, mlp, resid."""
    if site == "act_final":
        return None, "final norm"
    parts = site.split(".")
    block, local = int(parts[1]), ".".join(parts[2:])
    order = {"act_norm1": 0, "attn.act_q": 1, "attn.act_k": 1, "attn.act_v": 1, "act_norm2": 2, "mlp.act": 3,
             "act_resid": 4}
    label = {"act_norm1": "norm1", "attn.act_q": "q", "attn.act_k": "k", "attn.act_v": "v", "act_norm2": "norm2",
             "mlp.act": "mlp", "act_resid": "resid"}[local]
    return block * 5 + order[local], f"L{block} {label}"


def draw_circuit(model, circuit: Circuit, graph, path: Path, title: str) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        print(f"no picture: matplotlib cannot be imported ({error}); pip install matplotlib")
        return None
    n_blocks = len(model.blocks)
    positions = {}  # (site, node) -> (x, y)
    columns = {}
    for site in circuit.widths:
        col, label = site_column(site)
        col = n_blocks * 5 if col is None else col
        columns.setdefault(col, []).extend((site, label, i) for i in circuit.kept[site])
    columns[n_blocks * 5 + 1] = [("logits", "logit", c) for c in graph.fixed_nodes["logits"][1]]
    fig_h = max(4, 0.32 * max(len(v) for v in columns.values()) + 1.5)
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(columns) + 2), fig_h))
    for col, nodes in columns.items():
        for row, (site, label, i) in enumerate(nodes):
            y = row - (len(nodes) - 1) / 2
            positions[(site, i)] = (col, y)
            text = f"{label} {i}" if site != "logits" else f"logit {chr(i)!r}"
            ax.scatter([col], [y], s=40, color="black", zorder=3)
            ax.annotate(text, (col, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    modules = dict(model.named_modules())
    masks = graph.keep_masks(circuit.keep_masks())
    wmax = 1e-12
    segments = []
    for spec in graph.matrices:
        w = effective_weight(modules[spec.matrix]).cpu()
        rows = [(s, i) for s in spec.outputs for i in range(len(masks[s]))]
        cols = [(s, i) for s in spec.inputs for i in range(len(masks[s]))]
        for r, (so, io) in enumerate(rows):
            if not masks[so][io]:
                continue
            for c, (si, ii) in enumerate(cols):
                if masks[si][ii] and w[r, c] != 0:
                    segments.append((positions[(si, ii)], positions[(so, io)], float(w[r, c])))
                    wmax = max(wmax, abs(float(w[r, c])))
    # Not edges but the same residual channel read again later: dotted, so the path can be followed.
    stream = [c for c in sorted(columns) if columns[c] and columns[c][0][0] != "logits"
              and site_column(columns[c][0][0])[1].split()[-1] in ("norm1", "norm2", "resid", "norm")]
    for a, b in zip(stream, stream[1:]):
        for site_a, _, i in columns[a]:
            for site_b, _, j in columns[b]:
                if i == j:
                    (x0, y0), (x1, y1) = positions[(site_a, i)], positions[(site_b, j)]
                    ax.plot([x0, x1], [y0, y1], color="gray", linestyle=":", linewidth=0.8, zorder=0)
    for (x0, y0), (x1, y1), value in segments:
        ax.plot([x0, x1], [y0, y1], color="tab:red" if value > 0 else "tab:blue",
                linewidth=0.5 + 2.5 * abs(value) / wmax, alpha=0.6, zorder=1)
    ax.set_xticks(sorted(columns))
    names = {c: " ".join(columns[c][0][1].split()[:-1] + ["q/k/v"]) if columns[c][0][1].split()[-1] in "qkv"
             else columns[c][0][1] for c in columns if columns[c]}
    ax.set_xticklabels([names.get(c, "") for c in sorted(columns)], rotation=45, fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"{title}\n{circuit.n_nodes} nodes, {circuit.n_edges} edges (red: positive weight, blue: "
                 f"negative; width: |w|; dotted: the same residual channel, not an edge); task loss "
                 f"{circuit.task_loss:.3f} (target {circuit.target_loss:.3f})",
                 fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- speed
def _mask_step(model, masks, task, index, optimizer):
    logits = candidate_logits(model, task, index=index)
    loss = binary_loss(logits, task.labels[index]) + 1e-3 * masks.kept_count()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def densified(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``SparseLinear`` as ``to_dense()``: the same function, the
    zeros computed by dense matmuls."""
    copy_ = copy.deepcopy(model)
    for name, m in list(copy_.named_modules()):
        if isinstance(m, sparsekern.SparseLinear):
            parent, _, child = name.rpartition(".")
            setattr(copy_.get_submodule(parent), child, m.to_dense())
    return copy_


class LinearClock:
    """Wall-time intervals inside a model's linear layers (``SparseLinear``, ``nn.Linear``) while
    installed (a context manager): each call's forward, and its backward, from the gradient
    reaching the layer's output to the gradient leaving it for its input (through a view of the
    input that only this call reads). ``seconds()``: the union of the intervals, then cleared."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, (sparsekern.SparseLinear, nn.Linear))]
        self.intervals, self._calls, self._handles = [], [], []

    def __enter__(self):
        for m in self.layers:
            self._handles += [m.register_forward_pre_hook(self._before), m.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def _before(self, module, inputs):
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise TypeError(f"LinearClock: a {type(module).__name__} was called without its input as the first "
                            "positional argument (the clock times the gradient through it); pass it positionally")
        x, *rest = inputs
        backward_start = []
        if x.requires_grad:
            x = x.view_as(x)
            x.register_hook(lambda grad: self.intervals.extend(
                (start, time.perf_counter()) for start in backward_start))
        self._calls.append((backward_start, time.perf_counter()))
        return (x, *rest)

    def _after(self, module, inputs, output):
        backward_start, start = self._calls.pop()
        if output.requires_grad and inputs[0].requires_grad:
            output.register_hook(lambda grad: backward_start.append(time.perf_counter()))
        self.intervals.append((start, time.perf_counter()))

    def seconds(self) -> float:
        total, reached = 0.0, -math.inf
        for start, end in sorted(self.intervals):
            total += max(0.0, end - max(start, reached))
            reached = max(reached, end)
        self.intervals = []
        return total


def bench_pruning(sparse_model, means, task, rounds: int, batch: int = 64) -> dict:
    """Median seconds of a mask-training step (forward and input gradient, weights frozen) with
    the sparse kernels and with the same model densified, interleaved step by step; of the time
    inside their linear layers (``LinearClock``) in the same steps, and of the rest."""
    models = {"sparse kernels": sparse_model, "dense with zeros": densified(sparse_model)}
    gen = torch.Generator().manual_seed(0)
    times = {k: [] for k in models}
    linear_times = {k: [] for k in models}
    clocks = {k: LinearClock(m) for k, m in models.items()}
    state = {}
    for name, model in models.items():
        masks = NodeMasks(model, means)
        state[name] = (masks, torch.optim.Adam(masks.parameters(), lr=0.05))
    with torch.no_grad():  # both compute the same function
        x = task.inputs[:8]
        diff = (models["sparse kernels"](x) - models["dense with zeros"](x)).abs().max().item()
    for r in range(rounds + 2):
        index = torch.randint(0, len(task), (batch,), generator=gen)
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            masks, opt = state[name]
            with frozen(models[name]), masks, clocks[name]:
                t0 = time.perf_counter()
                _mask_step(models[name], masks, task, index, opt)
                took = time.perf_counter() - t0
            linear = clocks[name].seconds()
            if r >= 2:  # two warm-up rounds
                times[name].append(took)
                linear_times[name].append(linear)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_linear = {k: statistics.median(v) for k, v in linear_times.items()}
    med_rest = {k: statistics.median(t - lin for t, lin in zip(times[k], linear_times[k])) for k in models}
    formats = sorted({m.format for m in sparse_model.modules() if isinstance(m, sparsekern.SparseLinear)})
    density = ex.actual_density(sparse_model)
    return {"median_step_s": med, "speedup": med["dense with zeros"] / med["sparse kernels"],
            "rounds": rounds, "batch": batch, "prompt_len": task.inputs.shape[1], "formats": formats,
            "density": density, "max_abs_output_difference": diff,
            "median_linear_s": med_linear,
            "linear_speedup": med_linear["dense with zeros"] / med_linear["sparse kernels"],
            "median_non_linear_s": med_rest, "inverse_density": 1 / density}


def default_size_model(density: float, seed: int) -> nn.Module:
    """The example's default GPT (``train_sparse_gpt.Config``), untrained, every layer projected to
    ``density`` (element-wise, >= 4 per row, as the recipe ends): the speed at that size."""
    cfg = ex.Config()
    model = ex.build_model(cfg.model_config(), kind="sparsekern", seed=seed)
    for m in model.modules():
        if isinstance(m, sparsekern.SparseLinear):
            m.project_(density, granularity="element", min_per_row=cfg.min_per_neuron)
    return model.eval()


# ---------------------------------------------------------------------------- driver
def run(args, log=print) -> dict:
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    cfg = pretrain_config(args)
    machine = ex.machine_info()
    corpus = ex.load_corpus(max_train_bytes=cfg.max_train_bytes, max_val_bytes=cfg.max_val_bytes)
    loaded = None if args.retrain else load_models(out, cfg)
    if loaded is None:
        log(f"training: {cfg.n_layers} layers, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, density {cfg.density:g}, "
            f"{cfg.steps} steps of {cfg.batch_size}x{cfg.ctx} bytes")
        models, pretraining = train_models(cfg, corpus, args.eval_every, log)
        save_models(models, pretraining, cfg, out)
    else:
        models, pretraining = loaded
        log(f"loaded both models from {out}")
    for m in models.values():
        m.eval()
    t_pruning = time.perf_counter()
    tasks = circuit_tasks.build_tasks(corpus, args.task_ctx, args.cases)  # name -> (train, eval)
    batches = pretraining_batches(corpus, cfg, args.mean_batches, args.seed + 7)
    means = {m: node_means(models[m], circuit_tasks.gpt_sites(models[m]), batches) for m in MODELS}
    result = sweep(models, tasks, means, args, log)
    rows = result["rows"]
    worst_rerun = rerun_check(models, tasks, result["circuits"])
    log("\n" + table(rows))
    log(f"re-run from the saved JSON: largest |loss - recorded| {worst_rerun:.2e}")

    sparse_circuits = [(c, key) for key, (c, _) in result["circuits"].items() if key[0] == "sparse"]
    smallest, key = min(sparse_circuits, key=lambda ck: (ck[0].n_edges, -ck[0].task_loss))
    picture = draw_circuit(models["sparse"], smallest, circuit_tasks.gpt_graph(models["sparse"],
                                                                                tasks[key[1]][1].candidates),
                           out / "smallest_sparse_circuit.png",
                           f"smallest sparse circuit: task {key[1]!r}, target loss {smallest.target_loss:.3f}")
    t_bench = time.perf_counter()
    speed = {}
    if args.bench_rounds:
        speed["circuit_model"] = bench_pruning(models["sparse"], means["sparse"], tasks["quote"][0], args.bench_rounds)
        big = default_size_model(ex.Config().density, args.seed)
        big_batches = [torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(i)) for i in range(2)]
        big_means = node_means(big, circuit_tasks.gpt_sites(big), big_batches)
        speed["default_size_model"] = bench_pruning(big, big_means, tasks["quote"][0], args.bench_rounds)
        for name, s in speed.items():
            log(f"speed ({name}, density {s['density']:.4f}, formats {s['formats']}): mask-training step "
                f"{1e3 * s['median_step_s']['sparse kernels']:.1f} ms on the sparse kernels, "
                f"{1e3 * s['median_step_s']['dense with zeros']:.1f} ms dense with zeros: {s['speedup']:.2f}x "
                f"(median of {s['rounds']}, interleaved); inside the linear layers "
                f"{1e3 * s['median_linear_s']['sparse kernels']:.1f} ms against "
                f"{1e3 * s['median_linear_s']['dense with zeros']:.1f} ms: {s['linear_speedup']:.2f}x "
                f"(1/density {s['inverse_density']:.0f}); the rest "
                f"{1e3 * s['median_non_linear_s']['sparse kernels']:.1f} ms and "
                f"{1e3 * s['median_non_linear_s']['dense with zeros']:.1f} ms")
    ratios = [r["ratio"] for r in rows if math.isfinite(r["ratio"])]
    figures = {"machine": machine, "pretraining": pretraining, "model": cfg.model_config(),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "rows": rows, "geometric_mean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratios))
               if ratios else None,
               "rerun_max_abs_difference": worst_rerun, "picture": str(picture) if picture else None,
               "smallest_sparse_circuit": {"task": key[1], "target_loss": smallest.target_loss,
                                           "nodes": smallest.n_nodes, "edges": smallest.n_edges},
               "speed": speed, "time_s": {"training_or_loading": t_pruning - t_start,
                                          "pruning": t_bench - t_pruning, "speed": time.perf_counter() - t_bench,
                                          "total": time.perf_counter() - t_start}}
    (out / "circuits.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "table.txt").write_text(table(rows) + "\n")
    log(f"pretraining held-out loss: sparse {pretraining['sparse']['val_loss']:.4f} "
        f"({pretraining['sparse']['steps']} steps), dense {pretraining['dense']['val_loss']:.4f} "
        f"({pretraining['dense']['steps']} steps)")
    if figures["geometric_mean_ratio"]:
        log(f"edges dense/sparse: geometric mean {figures['geometric_mean_ratio']:.2f} over {len(ratios)} targets")
    log(f"saved {out / 'circuits.json'}; total {figures['time_s']['total']:.0f} s")
    return figures


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = p.add_argument
    arg("--out", type=Path, default=DEFAULT_OUT, help="models, circuits, table and picture")
    arg("--retrain", action="store_true", help="train the models even if --out holds them")
    arg("--steps", type=int, default=5000, help="training steps of the sparse model (the dense one: at most)")
    arg("--eval-every", type=int, default=250, help="steps between held-out evaluations")
    arg("--d-model", type=int, default=128)
    arg("--layers", type=int, default=2)
    arg("--heads", type=int, default=4)
    arg("--d-mlp", type=int, default=512)
    arg("--ctx", type=int, default=64, help="training context in bytes")
    arg("--batch-size", type=int, default=16)
    arg("--lr", type=float, default=3e-3, help="base peak learning rate (the sparse run: times 1/sqrt(density))")
    arg("--density", type=float, default=1 / 16, help="the sparse model's weight density")
    arg("--max-train-bytes", type=int, default=4_000_000)
    arg("--max-val-bytes", type=int, default=2_000_000, help="held-out source (the tasks' cases come from it)")
    arg("--eval-batches", type=int, default=32)
    arg("--task-ctx", type=int, default=32, help="prompt bytes before the answer")
    arg("--cases", type=int, default=1600,
        help="cases per task, at most: half from the files that train the masks, half from those that bisect, "
             "each half balanced")
    arg("--mean-batches", type=int, default=32, help="pretraining batches for the node means")
    arg("--prune-steps", type=int, default=300)
    arg("--prune-lr", type=float, default=0.05)
    arg("--penalties", type=float, nargs="+", default=[1e-3, 2e-4, 4e-5],
        help="nats per kept node during mask training: masks learned for each, the smallest circuit kept")
    arg("--target-fractions", type=float, nargs="+", default=[0.5, 0.7, 0.85],
        help="targets: this fraction of the way from the labels' entropy (~ln 2) to the worse full model's task loss")
    arg("--bench-rounds", type=int, default=20, help="timed mask-training steps per model; 0: no speed figure")
    arg("--threads", type=int, default=1)
    arg("--seed", type=int, default=0)
    arg("--check", type=Path, nargs="+", metavar="CIRCUIT_JSON",
        help="only re-run these saved circuits on the saved models (same settings) and compare their losses")
    return p.parse_args(argv)


def check_saved(args, paths, log=print) -> float:
    """Re-run each saved circuit (its JSON) on the saved model it came from, in this process (a
    fresh one when called from the command line): the largest |loss - recorded loss|."""
    torch.set_num_threads(args.threads)
    cfg = pretrain_config(args)
    loaded = load_models(Path(args.out), cfg)
    if loaded is None:
        raise SystemExit(f"no models for these settings in {args.out}: run the script without --check first")
    models, _ = loaded
    corpus = ex.load_corpus(max_train_bytes=cfg.max_train_bytes, max_val_bytes=cfg.max_val_bytes)
    tasks = {name: evaluation for name, (_, evaluation) in
             circuit_tasks.build_tasks(corpus, args.task_ctx, args.cases).items()}
    worst = 0.0
    for path in paths:
        circuit = Circuit.load(path)
        loss = evaluate_circuit(models[circuit.meta["model"]], circuit, tasks[circuit.task])
        worst = max(worst, abs(loss - circuit.task_loss))
        log(f"{path}: {circuit.n_nodes} nodes, {circuit.n_edges} edges, re-run loss {loss:.6f}, "
            f"recorded {circuit.task_loss:.6f}")
    log(f"largest |re-run - recorded| {worst:.2e}")
    return worst


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check:
        return 0 if check_saved(args, args.check) < 1e-6 else 1
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
