"""``DensitySchedule``: the density of a weight-sparse model at every training step.

Dense at first, annealed to ``final_density`` between two points of training, then
constant (the published recipe anneals linearly from 1% to 50% of the steps).
"""

from __future__ import annotations

import math
import numbers

from .block.layout import check_density

SHAPES = ("linear", "loglog")


class DensitySchedule:
    """Callable ``step -> density``.

    With ``s = anneal_start * total_steps`` and ``e = anneal_end * total_steps``:
    1.0 for ``step < s``; ``final_density`` for ``step >= e``; in between, for
    ``shape="linear"``, ``1 + (final_density - 1) * (step - s) / (e - s)``, and for
    ``shape="loglog"``, ``log(density)`` linear in ``log(step)`` between the points
    ``(s, 1)`` and ``(e, final_density)`` (``s`` is taken as at least 1 there, since
    ``log 0`` is undefined).
    """

    def __init__(self, final_density: float, total_steps: int, *, anneal_start: float = 0.01,
                 anneal_end: float = 0.5, shape: str = "linear"):
        self.final_density = check_density(final_density, "final_density")
        if final_density == 0 and shape == "loglog":
            raise ValueError("final_density must be > 0 with shape='loglog' (its log is taken)")
        if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
            raise TypeError(f"total_steps must be an int, got {type(total_steps).__name__}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.anneal_start = check_density(anneal_start, "anneal_start")
        self.anneal_end = check_density(anneal_end, "anneal_end")
        if not self.anneal_start < self.anneal_end:
            raise ValueError(f"anneal_start must be < anneal_end, got {anneal_start} and {anneal_end}")
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self.shape = shape

    @property
    def start_step(self) -> float:
        return self.anneal_start * self.total_steps

    @property
    def end_step(self) -> float:
        return self.anneal_end * self.total_steps

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        s, e = self.start_step, self.end_step
        if step < s:
            return 1.0
        if step >= e:
            return self.final_density
        if self.shape == "linear":
            return 1.0 + (self.final_density - 1.0) * (step - s) / (e - s)
        s = max(s, 1.0)
        if step <= s:  # only reachable when s < 1: dense until step 1
            return 1.0
        fraction = (math.log(step) - math.log(s)) / (math.log(e) - math.log(s))
        return math.exp(fraction * math.log(self.final_density))

    def __repr__(self) -> str:
        return (f"DensitySchedule(final_density={self.final_density}, total_steps={self.total_steps}, "
                f"anneal_start={self.anneal_start}, anneal_end={self.anneal_end}, shape={self.shape!r})")
