"""Which node sets each weight matrix connects, and the edges of a circuit: the nonzero weights
between kept nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class MatrixEdges:
    """The weight of module ``matrix`` (``[out, in]``, as ``nn.Linear``) reads the nodes of the
    sites ``inputs`` (concatenated in that order: its columns) and writes the nodes of the
    sites ``outputs`` (concatenated: its rows). A fused qkv matrix: one input site, three
    output sites."""

    matrix: str
    inputs: tuple
    outputs: tuple

    def __post_init__(self):
        for name in ("inputs", "outputs"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
            if not getattr(self, name):
                raise ValueError(f"MatrixEdges({self.matrix!r}).{name} is empty")


@dataclass
class CircuitGraph:
    """The matrices whose edges a circuit counts, and node sets that are not masked but fixed:
    ``fixed_nodes[name] = (width, kept indices)`` (e.g. the logits: only the task's two
    candidate tokens count as kept)."""

    matrices: list
    fixed_nodes: dict = field(default_factory=dict)

    def check(self, model: nn.Module, widths: dict) -> None:
        """A ``ValueError`` naming the matrix for a module the model lacks, a site that is
        neither masked nor fixed, or node counts that do not match the weight's shape."""
        modules = dict(model.named_modules())
        known = dict(widths)
        for name, (width, kept) in self.fixed_nodes.items():
            if name in known:
                raise ValueError(f"fixed_nodes[{name!r}] is also a masked site")
            if any(not 0 <= int(i) < width for i in kept):
                raise ValueError(f"fixed_nodes[{name!r}]: kept indices out of range for width {width}")
            known[name] = width
        for spec in self.matrices:
            if spec.matrix not in modules or not isinstance(getattr(modules[spec.matrix], "weight", None),
                                                             torch.Tensor):
                raise ValueError(f"graph: matrix {spec.matrix!r} is not a module of the model with a weight")
            weight = modules[spec.matrix].weight
            if weight.ndim != 2:
                raise ValueError(f"graph: matrix {spec.matrix!r} has a {weight.ndim}-D weight")
            for side, sites, size in (("inputs", spec.inputs, weight.shape[1]), ("outputs", spec.outputs,
                                                                                  weight.shape[0])):
                unknown = [s for s in sites if s not in known]
                if unknown:
                    raise ValueError(f"graph: matrix {spec.matrix!r} {side} {unknown} are neither masked sites "
                                     f"nor fixed_nodes")
                total = sum(known[s] for s in sites)
                if total != size:
                    what = "columns" if side == "inputs" else "rows"
                    raise ValueError(f"graph: matrix {spec.matrix!r} {side} {list(sites)} hold {total} nodes, "
                                     f"its weight {tuple(weight.shape)} has {size} {what}")

    def keep_masks(self, kept: dict) -> dict:
        """``kept`` (site -> bool tensor) with the fixed node sets added."""
        masks = dict(kept)
        for name, (width, indices) in self.fixed_nodes.items():
            mask = torch.zeros(width, dtype=torch.bool)
            mask[torch.as_tensor(list(indices), dtype=torch.long)] = True
            masks[name] = mask
        return masks


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: a ``SparseLinear``'s is zero off its layout whatever it
    holds there (``to_dense()``), anything else's is its ``weight``."""
    to_dense = getattr(module, "to_dense", None)
    if callable(to_dense):
        return to_dense().weight.detach()
    return module.weight.detach()


@torch.no_grad()
def count_edges(model: nn.Module, graph: CircuitGraph, kept: dict) -> dict:
    """Edges per matrix: nonzero weights ``W[j, i]`` with input node ``i`` and output node ``j``
    both kept (``kept``: site -> bool tensor over its nodes; the graph's fixed node sets added)."""
    graph.check(model, {site: mask.numel() for site, mask in kept.items()})
    masks = graph.keep_masks({site: torch.as_tensor(mask).bool().cpu() for site, mask in kept.items()})
    modules = dict(model.named_modules())
    edges = {}
    for spec in graph.matrices:
        weight = effective_weight(modules[spec.matrix]).cpu()
        rows = torch.cat([masks[s] for s in spec.outputs])
        cols = torch.cat([masks[s] for s in spec.inputs])
        edges[spec.matrix] = int(torch.count_nonzero(weight[rows][:, cols]))
    return edges
