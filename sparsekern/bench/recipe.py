"""One training step of the published weight-sparse MLP block, done with sparsekern and done the
published way, side by side (``make bench-recipe``; ``python -m sparsekern.bench.recipe --help``).

The block, at 2048 tokens by default::

    x -> AbsTopK(d/4) -> Linear(d, 4d, dense grad) -> GELU -> AbsTopK(d) -> Linear(4d, d, dense grad) -> AbsTopK(d/4)

loss = mean square of the output, ``torch.optim.AdamW``, then the projection of both weights to
their top ``density`` entries (no floor). Two implementations of the same step:

* **sparsekern**: ``SparseLinear(dense_grad=True)`` (``format="auto"``: the element kernels at
  these densities), ``sparsekern.abs_topk``, ``sparsekern.gelu_abs_topk`` for GELU then AbsTopK,
  ``Projector``, AdamW with ``fused=True``;
* **published**: ``nn.Linear`` whose weight the projection zeroes (dense matmuls on the masked
  weight, so the gradient is dense), AbsTopK by ``torch.topk`` + scatter, the projection by
  ``torch.topk`` on the flattened magnitudes + a scatter into the mask, ``torch.optim.AdamW``
  with its defaults (as the published code does).

Both start from the same weights and layouts and see the same inputs; the steps take turns
(after warm-up), and each phase's median is reported: forward, backward, of which the weight
gradient (timed again on its own, on the operands the step saw), optimizer, projection. Before
timing, ``check_equal`` runs 3 steps of each from the same start and compares the weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import sparsekern

from .machine import describe, headline

PHASES = ("forward", "backward", "weight_grad", "optimizer", "projection", "step")


def torch_abs_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """AbsTopK as the published code does it: ``torch.topk`` of the magnitudes, then a scatter."""
    idx = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


@torch.no_grad()
def torch_project_(weight: torch.Tensor, k: int, stable: bool = False) -> None:
    """The published projection: keep the ``k`` largest magnitudes of the flattened weight.

    ``torch.topk`` keeps any of equal magnitudes; ``stable=True`` keeps the lowest indices (a
    stable sort, sparsekern's rule) so that a comparison does not hinge on ties. AdamW's first
    step moves every pruned weight by about ``lr``, so ties at the threshold are common."""
    keep = torch.zeros(weight.numel(), dtype=torch.bool)
    magnitude = weight.abs().flatten()
    if stable:
        keep[torch.sort(magnitude, descending=True, stable=True).indices[:k]] = True
    else:
        keep[magnitude.topk(k).indices] = True
    weight.masked_fill_(~keep.view_as(weight), 0)


@dataclass
class Block:
    """One implementation of the block: its two layers, its AbsTopK, its optimizer and projection."""

    name: str
    fc1: nn.Module
    fc2: nn.Module
    abs_topk: object
    gelu_abs_topk: object  # (h, k) -> abs_topk(gelu(h), k)
    optimizer: torch.optim.Optimizer
    project: object  # () -> None
    saved: dict = field(default_factory=dict)

    def forward(self, x: torch.Tensor, k_in: int, k_hidden: int) -> torch.Tensor:
        h = self.fc1(self.abs_topk(x, k_in))
        h = self.gelu_abs_topk(h, k_hidden)
        return self.abs_topk(self.fc2(h), k_in)

    def weights(self):
        return [self.fc1.weight, self.fc2.weight]


def build(d_model: int = 2048, d_hidden: int = 8192, density: float = 1 / 64, seed: int = 0,
          stable_ties: bool = False):
    """The two implementations, from the same weights and layouts (``stable_ties``: see
    ``torch_project_``)."""
    torch.manual_seed(seed)
    ours1 = sparsekern.SparseLinear(d_model, d_hidden, density=density, format="auto", dense_grad=True)
    ours2 = sparsekern.SparseLinear(d_hidden, d_model, density=density, format="auto", dense_grad=True)
    # SparseLinear(format="auto") starts with a block layout; the recipe projects entries, so both
    # implementations begin from the element projection of those weights.
    for layer in (ours1, ours2):
        layer.project_(density, granularity="element")
    model = nn.Sequential(ours1, ours2)
    projector = sparsekern.Projector(model, lambda step: density, granularity="element")
    pub1 = nn.Linear(d_model, d_hidden)
    pub2 = nn.Linear(d_hidden, d_model)
    with torch.no_grad():
        for pub, ours in ((pub1, ours1), (pub2, ours2)):
            pub.weight.copy_(ours.weight)
            pub.bias.copy_(ours.bias)
    ours_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    pub_opt = torch.optim.AdamW(list(pub1.parameters()) + list(pub2.parameters()), lr=1e-3)
    counts = [sparsekern.count_for_density(density, w.numel()) for w in (pub1.weight, pub2.weight)]

    def pub_project():
        for w, k in zip((pub1.weight, pub2.weight), counts):
            torch_project_(w, k, stable_ties)

    ours = Block("sparsekern", ours1, ours2, sparsekern.abs_topk, sparsekern.gelu_abs_topk, ours_opt, projector.step)
    published = Block("published", pub1, pub2, torch_abs_topk, lambda h, k: torch_abs_topk(F.gelu(h), k), pub_opt,
                      pub_project)
    return ours, published


def _save_operands(block: Block):
    """Hooks that keep each layer's input and output gradient of the last step (for timing dW)."""
    handles = []
    for name, layer in (("fc1", block.fc1), ("fc2", block.fc2)):
        def keep(module, args, output, name=name):
            block.saved[name + ".x"] = args[0].detach()
            if output.requires_grad:
                output.register_hook(lambda g: block.saved.__setitem__(name + ".g", g.detach()))

        handles.append(layer.register_forward_hook(keep))
    return handles


def _weight_grads(block: Block):
    """The two weight gradients alone, on the saved operands, as the block's backward computes them."""
    for name in ("fc1", "fc2"):
        g, x = block.saved[name + ".g"], block.saved[name + ".x"]
        g2 = g.reshape(-1, g.shape[-1]).contiguous()
        if block.name == "sparsekern":
            torch.ops.sparsekern.dense_grad_weight(g2, x.reshape(-1, x.shape[-1]))
        else:
            g2.t() @ x.reshape(-1, x.shape[-1])


def step(block: Block, x: torch.Tensor, k_in: int, k_hidden: int, times: dict | None = None) -> float:
    """One training step; adds each phase's seconds to ``times`` when given."""
    clock = time.perf_counter
    t0 = clock()
    loss = block.forward(x, k_in, k_hidden).square().mean()
    t1 = clock()
    block.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = clock()
    block.optimizer.step()
    t3 = clock()
    block.project()
    t4 = clock()
    if times is not None:
        for phase, seconds in zip(("forward", "backward", "optimizer", "projection", "step"),
                                  (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            times.setdefault(phase, []).append(seconds)
        t5 = clock()
        _weight_grads(block)
        times.setdefault("weight_grad", []).append(clock() - t5)
    return loss.item()


def check_equal(tokens: int, d_model: int, d_hidden: int, density: float, steps: int = 3, seed: int = 0) -> dict:
    """Run ``steps`` steps of both from the same start; the largest weight difference, relative to
    the largest weight, and whether the kept entries are the same. The published projection
    breaks ties as sparsekern does here (``torch.topk``'s order among ties is unspecified)."""
    ours, published = build(d_model, d_hidden, density, seed, stable_ties=True)
    gen = torch.Generator().manual_seed(seed + 1)
    k_in, k_hidden = d_model // 4, d_hidden // 4
    for _ in range(steps):
        x = torch.randn(tokens, d_model, generator=gen)
        step(ours, x, k_in, k_hidden)
        step(published, x, k_in, k_hidden)
    diffs, same_support = [], True
    for a, b in zip(ours.weights(), published.weights()):
        diffs.append(((a - b).abs().max() / b.abs().max()).item())
        same_support &= torch.equal(a != 0, b != 0)
    return {"max_relative_difference": max(diffs), "same_nonzeros": bool(same_support)}


def run(tokens: int = 2048, d_model: int = 2048, d_hidden: int = 8192, density: float = 1 / 64,
        steps: int = 5, warmup: int = 2, seed: int = 0) -> dict:
    """Both implementations' step, taking turns; per phase the median seconds and the ratio."""
    ours, published = build(d_model, d_hidden, density, seed)
    k_in, k_hidden = d_model // 4, d_hidden // 4
    for block in (ours, published):
        _save_operands(block)
    gen = torch.Generator().manual_seed(seed + 1)
    times = {b.name: {} for b in (ours, published)}
    for i in range(warmup + steps):
        x = torch.randn(tokens, d_model, generator=gen)
        for block in (ours, published) if i % 2 == 0 else (published, ours):
            step(block, x, k_in, k_hidden, times[block.name] if i >= warmup else None)
    medians = {name: {p: statistics.median(t[p]) for p in PHASES} for name, t in times.items()}
    return {
        "machine": describe(torch.device("cpu")),
        "shape": {"tokens": tokens, "d_model": d_model, "d_hidden": d_hidden, "density": density},
        "threads": torch.get_num_threads(),
        "seconds": medians,
        "speedup": {p: medians["published"][p] / medians["sparsekern"][p] for p in PHASES},
    }


def format_table(result: dict) -> str:
    s = result["seconds"]
    lines = ["| phase | published (s) | sparsekern (s) | speedup |", "|---|---|---|---|"]
    for phase in PHASES:
        lines.append(f"| {phase} | {s['published'][phase]:.4f} | {s['sparsekern'][phase]:.4f} | "
                     f"{result['speedup'][phase]:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--d-hidden", type=int, default=8192)
    ap.add_argument("--density", type=float, default=1 / 64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check = check_equal(min(args.tokens, 256), args.d_model, args.d_hidden, args.density)
    print(f"3 steps from the same start: weights within {check['max_relative_difference']:.1e} "
          f"(relative to the largest), same nonzeros: {check['same_nonzeros']}")
    result = run(args.tokens, args.d_model, args.d_hidden, args.density, args.steps, args.warmup)
    result["check"] = check
    print(headline(result["machine"]), f"(load average at the start: {result['machine']['load_average']})")
    print(f"MLP block step, {args.tokens} tokens, {args.d_model} -> {args.d_hidden} -> {args.d_model}, "
          f"density {args.density:g}, {result['threads']} threads, median of {args.steps} interleaved steps")
    print(format_table(result))
    print("(weight_grad: both layers' dense weight gradients timed again alone, on the operands of the "
          "last step; part of backward)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
