"""Weight-sparse training: ``sparsify`` a model, then ``Projector.step()`` after every optimizer step.

    model = sparsekern.sparsify(model, density=1.0, dense_grad=True)  # dense at first
    schedule = sparsekern.DensitySchedule(0.0625, total_steps)  # annealed to 1/16
    optimizer = torch.optim.Adam(model.parameters())
    projector = sparsekern.Projector(model, schedule, min_per_neuron=4)
    for batch in data:
        loss(model(batch)).backward()
        optimizer.step(); optimizer.zero_grad()
        projector.step()
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from .block.layout import check_density
from .module import SparseLinear
from .projection.topk_project import GRANULARITIES


def _patterns(value, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{name} must be a pattern string or a list of them, got {value!r}")


def sparsify(model: nn.Module, *, density: float, block_size=32, include=None, exclude=None,
             dense_grad: bool = False, format: str = "auto") -> nn.Module:
    """Replace ``nn.Linear`` modules of ``model`` by ``SparseLinear.from_dense``, in place.

    All of them, or those whose qualified name (as in ``model.named_modules()``) matches
    an ``include`` pattern and no ``exclude`` pattern (``fnmatch`` patterns, a string or a
    list). ``dense_grad=True`` gives every layer the full dense weight gradient, so entries
    pruned by a ``Projector`` can grow back; ``format`` is every layer's (see ``SparseLinear``).
    Returns ``model`` (or, when ``model`` itself is an ``nn.Linear``, its replacement).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    density = check_density(density)
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")

    def chosen(name: str) -> bool:
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        return exclude is None or not any(fnmatch.fnmatchcase(name, p) for p in exclude)

    # Build every replacement first: a bad argument raises before the model changes.
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Linear and chosen(name)]
    replacements = [(name, SparseLinear.from_dense(m, density=density, block_size=block_size,
                                                   dense_grad=dense_grad, format=format)) for name, m in targets]
    for name, new in replacements:
        if name == "":
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


class Projector:
    """Projects every ``SparseLinear`` of a model onto its scheduled density.

    Call ``step()`` after every ``optimizer.step()``: call ``t`` (from 0) keeps, in every
    layer, the ``count_for_density(schedule(t), n)`` entries (blocks, with
    ``granularity="block"``) of largest magnitude and rebuilds the layer's layout.
    ``min_per_neuron`` keeps at least that many entries (blocks) in every output row.
    The optimizer state is left alone (so pruned weights can grow back) unless
    ``zero_pruned_state=True``: then every state tensor shaped like a weight (Adam's
    ``exp_avg`` and ``exp_avg_sq``, SGD's momentum) is zeroed where the weight is zero
    after the projection. Every layer is checked and planned before any is changed:
    a failed step changes no weight, layout or state.
    """

    def __init__(self, model: nn.Module, schedule, *, granularity: str = "element", min_per_neuron: int = 0,
                 zero_pruned_state: bool = False, optimizer: torch.optim.Optimizer | None = None,
                 backend: str | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
        if not self.layers:
            raise ValueError("model holds no SparseLinear (use sparsekern.sparsify first)")
        if not callable(schedule):
            raise TypeError(f"schedule must be callable step -> density, got {type(schedule).__name__}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if isinstance(min_per_neuron, bool) or not isinstance(min_per_neuron, int) or min_per_neuron < 0:
            raise ValueError(f"min_per_neuron must be an int >= 0, got {min_per_neuron!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if zero_pruned_state and optimizer is None:
            raise ValueError("zero_pruned_state=True needs the optimizer")
        self.schedule = schedule
        self.granularity = granularity
        self.min_per_neuron = min_per_neuron
        self.zero_pruned_state = bool(zero_pruned_state)
        self.optimizer = optimizer
        self.backend = backend
        self.steps = 0

    def step(self) -> list:
        """Project every layer at ``schedule(self.steps)``; returns their ``ProjectionResult``s."""
        density = check_density(self.schedule(self.steps), "schedule(step)")
        # Every layer planned (and checked) before any is written: a failing step changes nothing.
        plans = [layer.plan_projection(density, granularity=self.granularity, min_per_row=self.min_per_neuron,
                                       backend=self.backend) for layer in self.layers]
        results = [layer.apply_projection(plan) for layer, plan in zip(self.layers, plans)]
        if self.zero_pruned_state:
            self._zero_state()
        self.steps += 1
        return results

    @torch.no_grad()
    def _zero_state(self) -> None:
        for layer in self.layers:
            weight = layer.weight
            state = self.optimizer.state.get(weight, {})
            pruned = None
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                    pruned = weight == 0 if pruned is None else pruned
                    value.masked_fill_(pruned, 0)
