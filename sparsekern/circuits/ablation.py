"""The per-node means that mean ablation puts in place of pruned nodes."""

from __future__ import annotations

import torch
from torch import nn

from .masks import resolve_sites


@torch.no_grad()
def node_means(model: nn.Module, sites, data, *, max_batches: int | None = None) -> dict:
    """Mean of every node of every site over ``data``: site name -> float32 tensor ``[width]``.

    ``data``: an iterable of model inputs (each item is passed as ``model(item)``), a sample of
    pretraining data; ``max_batches`` reads at most that many. A node's mean is over every
    position of every batch (every leading dimension of the site's output).
    """
    modules = resolve_sites(model, sites)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches!r}")
    sums, counts, handles = {}, dict.fromkeys(modules, 0), []

    def hook(site):
        def accumulate(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim < 1:
                raise TypeError(f"sites: the output of {site!r} is not a tensor with a node dimension")
            flat = output.detach().reshape(-1, output.shape[-1]).double()
            sums[site] = flat.sum(0) + sums[site] if site in sums else flat.sum(0)
            counts[site] += flat.shape[0]
        return accumulate

    was_training = model.training
    model.eval()
    try:
        handles = [m.register_forward_hook(hook(site)) for site, m in modules.items()]
        batches = 0
        for item in data:
            model(item)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if batches == 0:
        raise ValueError("data gave no batch: node means need a sample of pretraining data")
    never = [site for site in modules if counts[site] == 0]
    if never:
        raise ValueError(f"sites {never} never ran on data: are they in the model's forward pass?")
    return {site: (sums[site] / counts[site]).float() for site in modules}
