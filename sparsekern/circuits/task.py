"""Binary next-token tasks and their loss: a 2-way cross-entropy over the two candidates' logits,
after a fitted logit scale and shift."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: The fitted logit scale is kept in [0, MAX_LOGIT_SCALE]: never negative (that would turn a
#: circuit that answers wrongly into a right one), and bounded (on separable cases the loss
#: would otherwise go to 0 with an unbounded scale).
MAX_LOGIT_SCALE = 100.0


@dataclass
class BinaryTask:
    """Prompts ``inputs`` ``[N, T]`` (token ids); the answer is the next token after the last
    one: ``candidates[labels[i]]`` is right for prompt ``i``, the other candidate wrong."""

    name: str
    inputs: torch.Tensor
    candidates: tuple
    labels: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.inputs, torch.Tensor) or self.inputs.ndim != 2 or self.inputs.dtype.is_floating_point:
            raise ValueError(f"task {self.name!r}: inputs must be an integer tensor [N, T]")
        if len(self.candidates) != 2 or int(self.candidates[0]) == int(self.candidates[1]):
            raise ValueError(f"task {self.name!r}: candidates must be two different token ids, got {self.candidates!r}")
        self.candidates = (int(self.candidates[0]), int(self.candidates[1]))
        labels = torch.as_tensor(self.labels).long()
        if labels.shape != (self.inputs.shape[0],) or not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"task {self.name!r}: labels must be N={self.inputs.shape[0]} values in {{0, 1}}")
        if labels.numel() == 0:
            raise ValueError(f"task {self.name!r} has no prompt")
        self.labels = labels

    def __len__(self):
        return self.labels.numel()

    def subset(self, index) -> "BinaryTask":
        return BinaryTask(self.name, self.inputs[index], self.candidates, self.labels[index])


def candidate_logits(model: nn.Module, task: BinaryTask, *, batch_size: int = 256, index=None) -> torch.Tensor:
    """The two candidates' logits at the last position of every prompt, ``[N, 2]`` (gradients
    flow when enabled). ``index``: only those prompts."""
    inputs = task.inputs if index is None else task.inputs[index]
    cand = torch.tensor(task.candidates)
    out = [model(chunk)[:, -1][:, cand] for chunk in inputs.split(batch_size)]
    return torch.cat(out)


def binary_loss(logits: torch.Tensor, labels: torch.Tensor, scale=1.0, shift=0.0) -> torch.Tensor:
    """Mean 2-way cross-entropy of ``labels`` over ``[scale * z0 + shift, scale * z1]``, ``z``
    the candidates' logits ``[N, 2]``: ``softplus(-sign * (scale * (z0 - z1) + shift))``."""
    margin = scale * (logits[:, 0] - logits[:, 1]) + shift
    sign = 1.0 - 2.0 * labels.to(margin.dtype)  # +1 where candidate 0 is right
    return F.softplus(-sign * margin).mean()


def _newton(loss, grad_hess, theta: torch.Tensor, iterations: int, stop=None) -> torch.Tensor:
    """Damped Newton steps on a convex ``loss`` (backtracking: never a step that raises it)."""
    current = loss(theta)
    for _ in range(iterations):
        grad, hess = grad_hess(theta)
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        for _ in range(40):
            trial = theta - t * step
            value = loss(trial)
            if value <= current:
                break
            t /= 2
        else:
            return theta
        done = current - value < 1e-13
        theta, current = trial, value
        if done or (stop is not None and stop(theta)):
            return theta
    return theta


@torch.no_grad()
def fit_logit_affine(logits: torch.Tensor, labels: torch.Tensor, *, iterations: int = 100) -> tuple:
    """The scale (in ``[0, MAX_LOGIT_SCALE]``) and shift minimising ``binary_loss``: a
    one-feature logistic regression on ``z0 - z1`` by damped Newton steps in float64. The loss
    is convex, so when the free optimum has a scale below 0 (or above the bound) the bounded
    one has the scale at that bound, and only the shift is fitted there."""
    d = (logits[:, 0] - logits[:, 1]).double()
    y = (labels == 0).double()
    n = d.numel()
    feats = torch.stack([d, torch.ones_like(d)], 1)
    ridge = 1e-12 * torch.eye(2, dtype=torch.float64)

    def loss(theta):
        m = feats @ theta
        return float((F.softplus(m) - y * m).mean())

    def grad_hess(theta):
        p = torch.sigmoid(feats @ theta)
        return feats.T @ (p - y) / n, (feats.T * (p * (1 - p))) @ feats / n + ridge

    rate = float(y.mean().clamp(1e-6, 1 - 1e-6))
    start = torch.tensor([0.0, math.log(rate / (1 - rate))], dtype=torch.float64)
    theta = _newton(loss, grad_hess, start, iterations, stop=lambda th: th[0] > MAX_LOGIT_SCALE)
    if not bool(torch.isfinite(theta).all()) or not 0.0 <= float(theta[0]) <= MAX_LOGIT_SCALE:
        scale = 0.0 if not bool(torch.isfinite(theta).all()) or float(theta[0]) < 0 else MAX_LOGIT_SCALE

        def loss_b(b):
            return loss(torch.stack([torch.tensor(scale, dtype=torch.float64), b[0]]))

        def grad_hess_b(b):
            p = torch.sigmoid(scale * d + b[0])
            return ((p - y).mean()).reshape(1), ((p * (1 - p)).mean() + 1e-12).reshape(1, 1)

        b = _newton(loss_b, grad_hess_b, start[1:].clone(), iterations)
        theta = torch.tensor([scale, float(b[0])], dtype=torch.float64)
    return float(theta[0]), float(theta[1])


def task_loss(model: nn.Module, task: BinaryTask, *, fit: bool = True, scale=1.0, shift=0.0,
              batch_size: int = 256) -> tuple:
    """``(loss, scale, shift)`` of ``model`` on ``task``, without gradients: with ``fit`` the
    scale and shift are fitted (``fit_logit_affine``), else the given ones are applied."""
    with torch.no_grad():
        logits = candidate_logits(model, task, batch_size=batch_size).float()
        if fit:
            scale, shift = fit_logit_affine(logits, task.labels)
        return float(binary_loss(logits.double(), task.labels, scale, shift)), scale, shift
