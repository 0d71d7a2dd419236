"""The result of pruning: a ``Circuit``, saved as JSON, and the check that re-runs a model with
only its nodes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .masks import NodeMasks
from .task import BinaryTask, task_loss

FORMAT_VERSION = 1


@dataclass
class Circuit:
    """The nodes a task needs, and what they reach.

    ``kept``: site -> sorted kept node indices; ``widths``: site -> nodes; ``means``: site -> the
    per-node means that replace pruned nodes; ``edges``: matrix -> nonzero weights between kept
    nodes (``count_edges``); ``task_loss``: the task loss with only these nodes, after the logit
    ``scale`` and ``shift`` fitted for them; ``target_loss``: what the bisection aimed at;
    ``full_loss``: the full model's loss (its own fit); ``bisection``: every step's (kept nodes,
    loss); ``meta``: anything the caller records (model, task, settings).
    """

    task: str
    kept: dict
    widths: dict
    means: dict
    edges: dict
    task_loss: float
    scale: float
    shift: float
    target_loss: float | None = None
    full_loss: float | None = None
    bisection: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return sum(self.edges.values())

    @property
    def n_nodes(self) -> int:
        return sum(len(v) for v in self.kept.values())

    @property
    def n_total_nodes(self) -> int:
        return sum(self.widths.values())

    def keep_masks(self) -> dict:
        """Site -> bool tensor of its kept nodes."""
        masks = {}
        for site, width in self.widths.items():
            mask = torch.zeros(width, dtype=torch.bool)
            mask[torch.as_tensor(self.kept[site], dtype=torch.long)] = True
            masks[site] = mask
        return masks

    def mean_tensors(self) -> dict:
        return {site: torch.tensor(values, dtype=torch.float32) for site, values in self.means.items()}

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self), "n_edges": self.n_edges, "n_nodes": self.n_nodes}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "Circuit":
        data = json.loads(Path(path).read_text())
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: circuit format_version {version!r}, this sparsekern reads {FORMAT_VERSION}")
        data.pop("n_edges", None)
        data.pop("n_nodes", None)
        bad = [s for s in data["widths"] if s not in data["kept"] or s not in data["means"]
               or len(data["means"][s]) != data["widths"][s]
               or any(not 0 <= i < data["widths"][s] for i in data["kept"][s])]
        if bad:
            raise ValueError(f"{path}: sites {bad} have kept nodes or means that do not fit their width")
        data["bisection"] = [tuple(step) for step in data.get("bisection", [])]
        return cls(**data)


def evaluate_circuit(model: nn.Module, circuit: Circuit, task: BinaryTask, *, refit: bool = False,
                     batch_size: int = 256) -> float:
    """The task loss of ``model`` with only ``circuit``'s nodes (every other node of its sites
    set to the circuit's recorded mean), after the circuit's recorded logit scale and shift
    (``refit``: fitted again on ``task``)."""
    masks = NodeMasks(model, circuit.mean_tensors())
    masks.set_fixed(circuit.keep_masks())
    was_training = model.training
    model.eval()
    try:
        with masks:
            loss, _, _ = task_loss(model, task, fit=refit, scale=circuit.scale, shift=circuit.shift,
                                   batch_size=batch_size)
    finally:
        model.train(was_training)
    return loss
