"""The optimizer side of the published weight-sparse recipe (Gao et al. 2025, appendix A), as
library pieces: the global gradient-RMS clip and the learning-rate rule the paper calls
"sharkfin". The projection and its per-neuron floor are ``Projector``; the density schedule
is ``DensitySchedule``; AbsTopK is ``sparsekern.abs_topk``.

What the paper does, and what each piece here does:

* Gradient clipping by RMS: before each optimizer step, the root mean square of every gradient
  entry of the model (one number over all parameters, not per tensor) is computed, and if it
  exceeds a bound (1.0) every gradient is scaled by ``bound / rms``: ``clip_grad_rms_``.
* Sharkfin: the base learning-rate schedule (warm-up, then a linear decay) times
  ``1 / sqrt(density)`` of the current step, so the rate rises while the density anneals down
  (sparser matrices take larger steps) and falls with the decay after: ``SharkfinLR``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable

import torch

from .block.layout import check_density


@torch.no_grad()
def clip_grad_rms_(parameters: torch.Tensor | Iterable[torch.Tensor], max_rms: float = 1.0, *,
                   error_if_nonfinite: bool = False) -> torch.Tensor:
    """Scale every gradient in place so that the RMS of all gradient entries is at most ``max_rms``.

    The RMS is taken over the entries of every gradient together (``sqrt(sum g^2 / count)``,
    one number for the model, not one per tensor), accumulated in fp32 (fp64 if a gradient is
    fp64); parameters without a gradient are skipped. Every gradient is multiplied by
    ``min(1, max_rms / rms)``, as ``torch.nn.utils.clip_grad_norm_`` does with the norm (no
    host sync). A non-finite RMS behaves as there too: an Inf makes the factor 0 (finite
    gradients become zeros, the Inf entries NaN), a NaN makes every gradient NaN; with
    ``error_if_nonfinite=True`` it raises ``RuntimeError`` instead, before scaling anything.
    Returns the RMS before clipping, a 0-d tensor on the first gradient's device.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        parameters = list(parameters)
    for i, p in enumerate(parameters):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters[{i}] must be a torch.Tensor, got {type(p).__name__}")
    if isinstance(max_rms, bool) or not isinstance(max_rms, numbers.Real) or not max_rms > 0 \
            or not math.isfinite(max_rms):
        raise ValueError(f"max_rms must be a finite number > 0, got {max_rms!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    for g in grads:
        if g.is_sparse:
            raise ValueError("clip_grad_rms_ takes dense gradients (a sparse gradient was found)")
    acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    total = sum(torch.linalg.vector_norm(g, dtype=acc).square().to(device) for g in grads)
    count = sum(g.numel() for g in grads)
    rms = (total / max(count, 1)).sqrt()
    if error_if_nonfinite and not torch.isfinite(rms):
        raise RuntimeError(f"the gradient RMS is {rms.item()} (a gradient holds an Inf or NaN); nothing was scaled")
    coef = (max_rms / rms).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return rms


def linear_warmup_decay(total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> Callable[[int], float]:
    """The base schedule of the paper's runs: a linear warm-up over ``warmup_steps`` to 1, then a
    linear decay to ``final_fraction`` at ``total_steps`` (held there after)."""
    _check_steps(total_steps, "total_steps", minimum=1)
    _check_steps(warmup_steps, "warmup_steps", minimum=0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps={total_steps}, got {warmup_steps}")
    final_fraction = check_density(final_fraction, "final_fraction")

    def base(step: int) -> float:
        if step >= total_steps:
            return final_fraction
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        done = min(step - warmup_steps, span) / span
        return 1.0 - (1.0 - final_fraction) * done

    return base


class SharkfinLR(torch.optim.lr_scheduler.LambdaLR):
    """The paper's learning-rate rule: ``lr(step) = initial_lr * base(step) / sqrt(density(step))``.

    ``density`` is the ``DensitySchedule`` that the ``Projector`` follows (any callable
    ``step -> density`` in ``(0, 1]``); ``base`` a callable ``step -> factor``, by default
    ``linear_warmup_decay(density.total_steps, warmup_steps)``. Call ``scheduler.step()`` after
    each ``optimizer.step()``, as with every torch scheduler: step ``t`` of the optimizer then
    runs at the rate of step ``t`` of the schedules, the same step the Projector projects at.
    A density outside ``(0, 1]`` raises ``ValueError`` naming ``density(step)`` (at 0 the rule
    has no finite rate). ``state_dict``/``load_state_dict`` are LambdaLR's (the step count).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, density: Callable[[int], float], *,
                 base: Callable[[int], float] | None = None, warmup_steps: int = 0, last_epoch: int = -1):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(density):
            raise TypeError(f"density must be callable step -> density, got {type(density).__name__}")
        if base is None:
            total = getattr(density, "total_steps", None)
            if total is None:
                raise ValueError("base is needed when density has no total_steps (a DensitySchedule has)")
            base = linear_warmup_decay(total, warmup_steps)
        elif not callable(base):
            raise TypeError(f"base must be callable step -> factor, got {type(base).__name__}")
        self.density = density
        self.base = base
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def step(self, epoch=None):
        # Checked before LambdaLR moves its step count, so a bad density changes nothing.
        if epoch is None:
            for lam in self.lr_lambdas:
                lam(self.last_epoch + 1)
        super().step(epoch)

    def state_dict(self) -> dict:
        """LambdaLR's state (the step count and rates) without ``density`` and ``base``: callables
        the caller rebuilds (and which ``torch.save`` may not pickle)."""
        state = super().state_dict()
        state.pop("density", None)
        state.pop("base", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        density, base = self.density, self.base  # this scheduler's own, not the saved run's
        super().load_state_dict(state_dict)
        self.density, self.base = density, base

    def factor(self, step: int) -> float:
        """``base(step) / sqrt(density(step))``: the multiplier of the initial rate at ``step``."""
        d = check_density(self.density(step), "density(step)")
        if d == 0:
            raise ValueError(f"density(step) must be > 0 for the sharkfin rule, got 0 at step {step}")
        return float(self.base(step)) / math.sqrt(d)


def _check_steps(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
