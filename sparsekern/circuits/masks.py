"""Learnable node masks on named sites of a model, with mean ablation of the pruned nodes.

A *site* is a module whose output's last dimension holds its nodes. A mask is one scalar per
node, shared by every token and prompt; it replaces the site's output by
``keep * output + (1 - keep) * mean`` (``mean`` the node's mean over pretraining data).
"""

from __future__ import annotations

import torch
from torch import nn


class HeavisideSigmoid(torch.autograd.Function):
    """``keep = (score > 0)`` in the forward pass; in the backward pass the gradient of
    ``sigmoid(score / temperature)``: ``sigmoid'(score / temperature) / temperature``."""

    @staticmethod
    def forward(ctx, score, temperature):
        ctx.save_for_backward(score)
        ctx.temperature = temperature
        return (score > 0).to(score.dtype)

    @staticmethod
    def backward(ctx, grad_keep):
        (score,) = ctx.saved_tensors
        s = torch.sigmoid(score / ctx.temperature)
        return grad_keep * s * (1 - s) / ctx.temperature, None


def heaviside_sigmoid(score: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Heaviside step of ``score`` with the sigmoid surrogate gradient of ``temperature``."""
    return HeavisideSigmoid.apply(score, temperature)


def _sum_leading(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every dimension but the last (``sum(())`` would sum over all of them)."""
    return t.sum(tuple(range(t.dim() - 1))) if t.dim() > 1 else t


class MeanAblation(torch.autograd.Function):
    """``output * keep + mean * (1 - keep)`` for a ``keep`` of exactly 0s and 1s (the step), in
    one pass over ``output`` forward.

    ``output``: ``[..., n]``; ``keep`` and ``mean``: ``[n]``, the same dtype as ``output``.
    Bitwise what the formula gives: ``output * keep`` and ``mean * (1 - keep)`` are exact for
    such a ``keep``, and the one rounding left is the same sum. Gradients as autograd computes
    them for the formula: ``grad * keep`` to ``output``; to ``keep`` and to ``mean``, sums over
    every leading dimension of ``grad * output - grad * mean`` and of ``grad * (1 - keep)``.
    """

    @staticmethod
    def forward(ctx, output, keep, mean):
        ctx.save_for_backward(output, keep, mean)
        return torch.addcmul(mean * (1 - keep), output, keep)

    @staticmethod
    def backward(ctx, grad):
        output, keep, mean = ctx.saved_tensors
        need_output, need_keep, need_mean = ctx.needs_input_grad
        grad_output = grad * keep if need_output else None
        grad_sum = _sum_leading(grad) if need_keep or need_mean else None
        grad_keep = _sum_leading(grad * output) - mean * grad_sum if need_keep else None
        grad_mean = grad_sum * (1 - keep) if need_mean else None
        return grad_output, grad_keep, grad_mean


def resolve_sites(model: nn.Module, sites, *, argument: str = "sites") -> dict:
    """The modules named by ``sites`` (an iterable of module names), in order; a ``ValueError``
    naming ``argument`` for an empty list, a repeated name or a name the model does not have."""
    if isinstance(sites, str):
        raise TypeError(f"{argument} must be an iterable of module names, not one string {sites!r}")
    names = list(sites)
    if not names:
        raise ValueError(f"{argument} is empty: name at least one module of the model")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"{argument}: the model has no module named {unknown}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{argument}: {repeated} named more than once")
    return {n: modules[n] for n in names}


def check_means(model: nn.Module, means: dict) -> dict:
    """``means`` (site name -> 1-D float tensor of its nodes' means) checked against ``model``."""
    if not isinstance(means, dict):
        raise TypeError(f"means must be a dict of site name -> 1-D tensor, got {type(means).__name__}")
    resolve_sites(model, means.keys(), argument="means")
    for site, mean in means.items():
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1 or not mean.is_floating_point() or not mean.numel():
            raise ValueError(f"means[{site!r}] must be a non-empty 1-D float tensor (one mean per node)")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(f"means[{site!r}] holds a non-finite value")
    return means


class NodeMasks:
    """Masks over the sites of ``means`` (site name -> per-node means, see ``node_means``).

    Use it as a context manager: inside, each site's output is masked by forward hooks;
    outside, the model is untouched. Two modes:

    * learned (the default): ``keep = heaviside_sigmoid(score, temperature)``, ``scores`` one
      leaf tensor per site (``parameters()``), initialised to ``init`` (> 0: every node kept);
    * fixed: ``set_fixed(values)`` with, per site, a bool tensor (kept nodes; exactly the
      output where kept, exactly the mean elsewhere) or a float tensor (the value of ``keep``
      itself, for finite differences); ``set_fixed(None)`` returns to the learned masks.

    A site's output whose last dimension differs from its mean's length raises a
    ``ValueError`` naming the site and both widths.
    """

    def __init__(self, model: nn.Module, means: dict, *, temperature: float = 1.0, init: float = 1.0):
        check_means(model, means)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.model = model
        self.modules = resolve_sites(model, means.keys(), argument="means")
        self.means = {site: mean.detach() for site, mean in means.items()}
        self.temperature = float(temperature)
        self.scores = {site: torch.full_like(mean, float(init), dtype=torch.float32).requires_grad_(True)
                       for site, mean in self.means.items()}
        self.fixed = None
        self._handles = []

    @property
    def sites(self) -> list:
        return list(self.means)

    @property
    def widths(self) -> dict:
        return {site: mean.numel() for site, mean in self.means.items()}

    def parameters(self) -> list:
        return list(self.scores.values())

    def keep(self, site: str) -> torch.Tensor:
        """The current ``keep`` of ``site``: the fixed value, else the step of its scores."""
        if self.fixed is not None:
            return self.fixed[site]
        return heaviside_sigmoid(self.scores[site], self.temperature)

    def kept_count(self) -> torch.Tensor:
        """The number of kept nodes as a differentiable scalar (the surrogate gradient flows)."""
        return sum(heaviside_sigmoid(s, self.temperature).sum() for s in self.scores.values())

    def set_fixed(self, values: dict | None) -> None:
        if values is None:
            self.fixed = None
            return
        missing = [s for s in self.means if s not in values]
        extra = [s for s in values if s not in self.means]
        if missing or extra:
            raise ValueError(f"values: must name exactly the masked sites; missing {missing}, unknown {extra}")
        fixed = {}
        for site, value in values.items():
            value = torch.as_tensor(value)
            if value.shape != self.means[site].shape:
                raise ValueError(f"values[{site!r}] has shape {tuple(value.shape)}, the site has "
                                 f"{self.means[site].numel()} nodes")
            fixed[site] = value
        self.fixed = fixed

    def _hook(self, site):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"site {site!r}: its output is a {type(output).__name__}, not a tensor")
            mean = self.means[site]
            if output.shape[-1] != mean.numel():
                raise ValueError(f"site {site!r}: its output has {output.shape[-1]} nodes (last dimension), "
                                 f"its mask and mean {mean.numel()}")
            mean = mean.to(output.dtype)
            keep = self.keep(site)
            if keep.dtype == torch.bool:
                return torch.where(keep, output, mean)
            keep = keep.to(output.dtype)
            if self.fixed is None:  # learned: keep is the step, exactly 0 or 1
                return MeanAblation.apply(output, keep, mean)
            return output * keep + mean * (1 - keep)  # any float keep (finite differences)
        return hook

    def __enter__(self):
        if self._handles:
            raise RuntimeError("these NodeMasks are already installed")
        self._handles = [m.register_forward_hook(self._hook(site)) for site, m in self.modules.items()]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False
