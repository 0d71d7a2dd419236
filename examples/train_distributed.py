"""Train the end-to-end example's weight-sparse GPT under FSDP2 on CPU processes, and check that
it ends with the weights and layouts one process gets.

    torchrun --nproc-per-node 2 examples/train_distributed.py            # small model, ~1 minute
    torchrun --nproc-per-node 2 examples/train_distributed.py --help

The model, data and recipe are those of ``examples/train_sparse_gpt.py`` (its ``sparsekern``
run): every linear layer a ``SparseLinear(dense_grad=True)``, AbsTopK at the paper's sites,
dense gradients and AdamW moments, the gradient-RMS clip, the sharkfin learning rate, and an
element-wise top-k projection (``Projector``, at least ``--min-per-neuron`` per row) after every
optimizer step, annealed from dense to ``--density``. Here it runs distributed:

* every block and the whole model are wrapped in ``torch.distributed.fsdp.fully_shard``
  (FSDP2): each rank holds a row shard of every weight, its gradient and its AdamW moments;
  the forward and backward all-gather a layer's weight just in time;
* the ``Projector`` projects each weight's shards onto the exact top-k of the whole weight
  (the radix histograms and tie counts all-reduced, never the weight; see the README's
  "Distributed training");
* data parallel: every step draws one global batch (the same generator on every rank) and
  rank ``r`` trains on its ``r``-th slice; FSDP2 averages the gradients.

Every rank builds the model from the same seed: FSDP2 shards what each rank built, so the
ranks must agree on it, layouts included (the Projector checks the layouts when it is built).

With ``--check`` (the default), rank 0 then trains the same model in one process, without
FSDP2, on the same global batches split into the same slices, the slices' gradients
accumulated (each slice's loss divided by the number of ranks), and compares. With two
ranks the averaged gradient is exactly the accumulated one (a sum of two terms does not
depend on its order, and halving is exact), so the weights and layouts must be bitwise
equal; with more ranks the order of the ranks' sum may differ from the accumulation's, and
the script reports the largest difference instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import sparsekern

_EXAMPLE = Path(__file__).resolve().parent / "train_sparse_gpt.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("train_sparse_gpt", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


example = _load_example()

#: A small model, so two CPU processes train it in about a minute.
SMALL = dict(d_model=128, n_layers=2, n_heads=4, d_mlp=512, ctx=64, batch_size=8, steps=40, density=1 / 16,
             min_per_neuron=4, max_train_bytes=1_000_000, max_val_bytes=200_000, log_every=10)


class Run:
    """One training run of the recipe, a step at a time: distributed under FSDP2 (``world > 1``,
    this rank's slice of each batch) or in one process (all slices, gradients accumulated)."""

    def __init__(self, model, corpus, cfg, *, rank: int, world: int, sharded: bool):
        self.model, self.corpus, self.cfg = model, corpus, cfg
        self.rank, self.world, self.sharded = rank, world, sharded
        self.data = torch.Generator().manual_seed(cfg.seed)  # the same batches on every rank
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = example.make_optimizer(model, cfg, fused=False)
        schedule = example.density_schedule(cfg)
        self.scheduler = sparsekern.SharkfinLR(self.optimizer, schedule, warmup_steps=example.warmup_steps(cfg))
        self.projector = sparsekern.Projector(model, schedule, granularity="element",
                                              min_per_neuron=cfg.min_per_neuron)
        self.losses, self.step_times = [], []

    def step(self) -> None:
        start = time.perf_counter()
        x, y = example.get_batch(self.corpus.train, self.cfg.batch_size, self.cfg.ctx, self.data)
        slices = list(zip(x.chunk(self.world), y.chunk(self.world)))
        self.optimizer.zero_grad(set_to_none=True)
        if self.sharded:  # this rank's slice; FSDP2 averages the gradients over the ranks
            xs, ys = slices[self.rank]
            loss = F.cross_entropy(self.model(xs).flatten(0, 1), ys.flatten())
            loss.backward()
            loss = loss.detach() / self.world  # the global batch's loss, logged as the one process logs it
            dist.all_reduce(loss)
        else:  # every slice in turn, each loss divided by the number of ranks: the same average
            loss = 0.0
            for xs, ys in slices:
                part = F.cross_entropy(self.model(xs).flatten(0, 1), ys.flatten()) / self.world
                part.backward()
                loss = loss + part.detach()
        if self.cfg.grad_clip_rms > 0:
            sparsekern.clip_grad_rms_(self.params, max_rms=self.cfg.grad_clip_rms)
        self.optimizer.step()
        self.projector.step()
        self.scheduler.step()
        self.losses.append(float(loss))
        self.step_times.append(time.perf_counter() - start)


def full_state(model) -> dict:
    """Every parameter as a full (unsharded) tensor and every SparseLinear's layout mask, by
    name; a collective under FSDP2 (every rank calls it)."""
    state = {}
    for name, p in model.named_parameters():
        state[name] = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
    for name, m in model.named_modules():
        if isinstance(m, sparsekern.SparseLinear):
            state[f"{name}.layout"] = m._mask().cpu().clone()
    return state


def compare(got: dict, want: dict) -> tuple[bool, float, list]:
    """Whether every entry is bitwise equal, the largest difference of the parameters, and the
    names of the entries that differ."""
    differ, largest = [], 0.0
    for name, value in want.items():
        other = got[name]
        if not torch.equal(other, value):
            differ.append(name)
        if value.is_floating_point():
            largest = max(largest, float((other - value).abs().max()))
    return not differ, largest, differ


def train(cfg, corpus, *, rank: int, world: int, sharded: bool, log) -> tuple[dict, Run]:
    from torch.distributed.fsdp import fully_shard

    model = example.build_model(cfg.model_config(), kind="sparsekern", seed=cfg.seed)
    if sharded:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    run = Run(model, corpus, cfg, rank=rank, world=world, sharded=sharded)
    for i in range(cfg.steps):
        run.step()
        done = i + 1
        if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
            n = done % cfg.log_every or cfg.log_every
            log(f"[{'fsdp2' if sharded else 'single':6s}] step {done:4d}/{cfg.steps}  "
                f"loss {sum(run.losses[-n:]) / n:.4f}  {sum(run.step_times[-n:]) / n * 1e3:7.1f} ms/step")
    return full_state(model), run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = p.add_argument
    for name, default in SMALL.items():
        arg("--" + name.replace("_", "-"), type=type(default), default=default)
    arg("--seed", type=int, default=0, help="initial weights (every rank the same) and data order")
    arg("--check", action=argparse.BooleanOptionalAction, default=True,
        help="rank 0 trains the same model in one process afterwards and compares")
    args = p.parse_args(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("run me with torchrun, e.g. torchrun --nproc-per-node 2 examples/train_distributed.py")
    torch.set_num_threads(1)  # one core per process
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        check = args.check
        values = {k: v for k, v in vars(args).items() if k != "check"}
        cfg = dataclasses.replace(example.Config(), **values, threads=0)
        if cfg.batch_size % world:
            raise SystemExit(f"--batch-size {cfg.batch_size} must be a multiple of the {world} ranks")
        log = print if rank == 0 else (lambda *_: None)
        corpus = example.load_corpus(max_train_bytes=cfg.max_train_bytes, max_val_bytes=cfg.max_val_bytes,
                                     val_frac=cfg.val_frac)
        log(f"{world} ranks (gloo, CPU), FSDP2 over every block and the model; {cfg.steps} steps of "
            f"{cfg.batch_size}x{cfg.ctx} bytes, density {cfg.density:g}, >= {cfg.min_per_neuron} per neuron")
        sharded_state, run = train(cfg, corpus, rank=rank, world=world, sharded=True, log=log)
        status = 0
        if check and rank == 0:
            single_state, single = train(cfg, corpus, rank=0, world=world, sharded=False, log=log)
            equal, largest, differ = compare(sharded_state, single_state)
            speed = sum(single.step_times) / sum(run.step_times)
            log(f"FSDP2 on {world} ranks against one process: weights and layouts "
                f"{'bitwise equal' if equal else f'differ in {len(differ)} entries (e.g. {differ[:3]})'}; "
                f"largest parameter difference {largest:.3g}; final loss {run.losses[-1]:.4f} "
                f"(one process: {single.losses[-1]:.4f}); one process took {speed:.2f}x the FSDP2 run's time")
            if not equal and world == 2:
                status = 1  # two ranks must agree exactly (see the module docstring)
        flag = torch.tensor([status])
        dist.broadcast(flag, 0)
        return int(flag)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
