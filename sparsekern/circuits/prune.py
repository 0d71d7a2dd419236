"""Pruning: learn node masks against the task loss plus a penalty on the kept nodes, then bisect
on the number of kept nodes (ranked by learned score) to the smallest that reaches a target."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .circuit import Circuit
from .graph import CircuitGraph, count_edges
from .masks import NodeMasks
from .task import BinaryTask, binary_loss, candidate_logits, task_loss


@dataclass
class PruneConfig:
    """Mask training: ``steps`` Adam steps of learning rate ``lr`` on ``batch_size`` prompts
    drawn from the task (generator seeded with ``seed``), minimising the task loss plus
    ``penalty`` nats per kept node (the surrogate count); scores start at ``init`` (every node
    kept) and pass through ``heaviside_sigmoid`` of ``temperature``. The logit scale and shift
    are learned with the masks, then fitted again for each circuit the bisection tries."""

    steps: int = 300
    lr: float = 0.05
    penalty: float = 1e-3
    temperature: float = 1.0
    init: float = 1.0
    batch_size: int = 64
    seed: int = 0
    log_every: int = 50

    def check(self) -> None:
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PruneConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PruneConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.penalty >= 0:
            raise ValueError(f"PruneConfig.penalty must be >= 0, got {self.penalty!r}")


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The model's parameters with ``requires_grad=False`` and the model in eval mode inside,
    both restored after: pruning needs the forward pass and input gradients only."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _check_target(target_loss) -> float:
    if isinstance(target_loss, bool) or not isinstance(target_loss, (int, float)) or not math.isfinite(target_loss) \
            or target_loss <= 0:
        raise ValueError(f"target_loss must be a finite number > 0 (nats), got {target_loss!r}")
    return float(target_loss)


def check_reachable(full_loss: float, target_loss: float, task_name: str) -> None:
    if full_loss > target_loss:
        raise ValueError(f"target_loss {target_loss:g} is not reached by the full model: its loss on task "
                         f"{task_name!r} is {full_loss:.4f} nats (after the logit fit); choose a target >= that")


def check_widths(model: nn.Module, means: dict, task: BinaryTask) -> None:
    """One forward pass on one prompt with every mask installed (all kept): a site whose output
    width differs from its mean's fails here, naming the site, before any training."""
    with frozen(model), torch.no_grad(), NodeMasks(model, means):
        model(task.inputs[:1])


def learn_masks(model: nn.Module, means: dict, task: BinaryTask, config: PruneConfig = PruneConfig(), *,
                log=None) -> NodeMasks:
    """Train ``NodeMasks`` over the sites of ``means`` on ``task`` (weights frozen)."""
    config.check()
    masks = NodeMasks(model, means, temperature=config.temperature, init=config.init)
    scale = torch.ones((), requires_grad=True)
    shift = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam(masks.parameters() + [scale, shift], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(task)
    with frozen(model), masks:
        for step in range(1, config.steps + 1):
            index = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
            logits = candidate_logits(model, task, index=index)
            loss = binary_loss(logits, task.labels[index], scale, shift)
            kept = masks.kept_count()
            total = loss + config.penalty * kept
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if log and config.log_every and (step % config.log_every == 0 or step == config.steps):
                log(f"  mask step {step:4d}/{config.steps}: task loss {loss.item():.4f}, kept nodes {int(kept.item())}")
    return masks


def ranked_nodes(masks: NodeMasks) -> list:
    """Every (site, node) by learned score, highest first (ties by site order, then node)."""
    sites = masks.sites
    scores = torch.cat([masks.scores[s].detach() for s in sites])
    owner = [(s, i) for s in sites for i in range(masks.widths[s])]
    order = torch.sort(-scores, stable=True).indices.tolist()
    return [owner[j] for j in order]


def top_k_masks(masks: NodeMasks, ranking: list, k: int) -> dict:
    kept = {s: torch.zeros(w, dtype=torch.bool) for s, w in masks.widths.items()}
    for site, node in ranking[:k]:
        kept[site][node] = True
    return kept


def bisect_nodes(model: nn.Module, masks: NodeMasks, task: BinaryTask, target_loss: float, *, log=None,
                 max_steps: int | None = None) -> dict:
    """The smallest number ``k`` of top-ranked nodes whose task loss (logit scale and shift
    fitted) reaches ``target_loss``, by bisection over ``k`` in ``[0, all]``; at most
    ``ceil(log2(all + 1)) + 2`` evaluations (``max_steps`` lowers it). The loss need not fall
    monotonically with ``k``: the bisection returns the smallest ``k`` it found reaching the
    target, which holds at the ``k`` it returns. A ``ValueError`` before any bisection step when the
    full model does not reach the target."""
    target = _check_target(target_loss)
    ranking = ranked_nodes(masks)
    total = len(ranking)
    bound = math.ceil(math.log2(total + 1)) + 2
    max_steps = bound if max_steps is None else min(int(max_steps), bound)
    history, found = [], {}

    def loss_at(k):
        masks.set_fixed(top_k_masks(masks, ranking, k))
        loss, scale, shift = task_loss(model, task, fit=True)
        history.append((k, loss))
        found[k] = (loss, scale, shift)
        if log:
            log(f"  bisection step {len(history)}: {k:5d}/{total} nodes, task loss {loss:.4f} (target {target:g})")
        return loss

    previous = masks.fixed
    try:
        with frozen(model), torch.no_grad(), masks:
            check_reachable(loss_at(total), target, task.name)
            lo, hi = -1, total  # loss(hi) reaches the target; every k <= lo was tried and does not
            if loss_at(0) <= target:
                hi = 0
            else:
                lo = 0
            while hi - lo > 1:
                if len(history) >= max_steps:
                    if log:
                        log(f"  bisection stopped after {len(history)} steps (max_steps); {hi} nodes")
                    break
                mid = (lo + hi) // 2
                if loss_at(mid) <= target:
                    hi = mid
                else:
                    lo = mid
    finally:
        masks.set_fixed(previous)
    loss, scale, shift = found[hi]
    return {"k": hi, "kept": top_k_masks(masks, ranking, hi), "loss": loss, "scale": scale, "shift": shift,
            "history": history, "full_loss": history[0][1]}


def circuit_from_bisection(model: nn.Module, masks: NodeMasks, result: dict, graph: CircuitGraph, task_name: str,
                           target_loss: float, meta: dict | None = None) -> Circuit:
    kept = result["kept"]
    return Circuit(task=task_name, kept={s: torch.nonzero(m).flatten().tolist() for s, m in kept.items()},
                   widths=dict(masks.widths), means={s: m.tolist() for s, m in masks.means.items()},
                   edges=count_edges(model, graph, kept), task_loss=result["loss"], scale=result["scale"],
                   shift=result["shift"], target_loss=float(target_loss), full_loss=result["full_loss"],
                   bisection=list(result["history"]), meta=dict(meta or {}))


def find_circuits(model: nn.Module, means: dict, task: BinaryTask, graph: CircuitGraph, target_losses, *,
                  eval_task: BinaryTask | None = None, config=PruneConfig(), log=None,
                  meta: dict | None = None) -> list:
    """Circuits of ``model`` for ``task``, one per target loss (nats, in the order given).

    ``config``: a ``PruneConfig`` or a list of them (a sweep, e.g. over ``penalty``): masks are
    learned once per config on ``task``; for each target, the bisection on ``eval_task``
    (default ``task``) finds for every config's masks the smallest top-ranked node set reaching
    it, and the circuit with the fewest edges wins (ties: fewer nodes, then the first config).
    Every target, the graph and the sites' widths are checked against the model before any training.
    """
    targets = [_check_target(t) for t in (target_losses if isinstance(target_losses, (list, tuple))
                                          else [target_losses])]
    if not targets:
        raise ValueError("target_losses is empty")
    configs = [config] if isinstance(config, PruneConfig) else list(config)
    if not configs or not all(isinstance(c, PruneConfig) for c in configs):
        raise ValueError("config must be a PruneConfig or a non-empty list of them")
    for c in configs:
        c.check()
    eval_task = task if eval_task is None else eval_task
    if eval_task.candidates != task.candidates:
        raise ValueError(f"eval_task candidates {eval_task.candidates} differ from task's {task.candidates}")
    check_widths(model, means, task)
    graph.check(model, {site: mean.numel() for site, mean in means.items()})
    with frozen(model):
        full_loss, _, _ = task_loss(model, eval_task, fit=True)
    for target in targets:
        check_reachable(full_loss, target, eval_task.name)
    best = [None] * len(targets)
    for c in configs:
        if log:
            log(f"  masks for {task.name!r}: penalty {c.penalty:g}, {c.steps} steps")
        masks = learn_masks(model, means, task, c, log=log)
        record = {"prune_config": asdict(c), "configs_tried": len(configs), **(meta or {})}
        for i, target in enumerate(targets):
            result = bisect_nodes(model, masks, eval_task, target, log=log)
            circuit = circuit_from_bisection(model, masks, result, graph, eval_task.name, target, record)
            if best[i] is None or (circuit.n_edges, circuit.n_nodes) < (best[i].n_edges, best[i].n_nodes):
                best[i] = circuit
    return best
