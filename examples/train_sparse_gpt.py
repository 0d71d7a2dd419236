"""Train a small weight-sparse GPT on Python source with the published recipe, three ways, on a CPU.

The recipe of the weight-sparse transformers (Gao et al. 2025, "Weight-sparse transformers
have interpretable circuits", appendix A), at a size where the kernels matter, trained
three ways in the same process, taking turns step by step on the same batches:

1. ``sparsekern``: every linear layer a ``sparsekern.SparseLinear(dense_grad=True)``
   (``format="auto"``: dense ``F.linear`` while the layer is dense, the element kernels once
   it is sparse), ``sparsekern.Projector`` (element-wise top-k, per-neuron floor),
   ``sparsekern.abs_topk`` (``gelu_abs_topk`` after the MLP's GELU), fused ``torch.optim.AdamW``:
   the recipe done with the library.
2. ``published``: the way the published code trains (openai/circuit_sparsity): plain dense
   matmuls on masked weights (``MaskedLinear``: ``F.linear(x, weight * mask)`` with the dense
   weight gradient), the projection by ``torch.topk`` over the flattened ``|W|`` (the
   per-neuron floor by a per-row ``torch.topk``) and a scatter into a new mask, the weights
   zeroed off it; AbsTopK by ``torch.topk`` + scatter; the default (non-fused)
   ``torch.optim.AdamW``. The same clip and learning-rate rule as 1.
3. ``dense``: the same network without weight sparsity (``nn.Linear``, no projection), the
   same AbsTopK sites (``sparsekern.abs_topk``, ``gelu_abs_topk`` after the MLP's GELU), the
   same AdamW as 1, the clip, and the base learning-rate schedule without the sharkfin factor.

All three start from the same initial weights (one model built, deep-copied, converted)
and draw the same batches (each run's own generator, seeded with ``--seed``). They take
turns step by step, the first of each step rotating, so on a shared machine all meet the
same load; a run's training wall time is the sum of its own step times (batch, forward,
backward, clip, optimizer, projection, scheduler). One torch thread by default; denormal
floats are flushed to zero during the run (they slow CPUs down).

* corpus: the ``.py`` files of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``, without ``test``/``tests`` folders and
  ``site-packages``): a real code corpus on every machine, no download. Byte-level tokens
  (vocab 256). Held-out split by file, decided by a hash of the file's relative path.
* model: token + position embeddings (dense ``nn.Embedding``), ``n_layers`` pre-norm blocks
  (``nn.RMSNorm``, causal attention, GELU MLP of width ``d_mlp``), final RMSNorm, an
  unembedding. Every linear layer (qkv, attention output, MLP in/out, unembedding) is
  weight-sparse in runs 1 and 2.
* activation sparsity (``--act-fraction``, 0.25; 0 = off): AbsTopK keeps the
  ``round(fraction * width)`` entries of largest magnitude at each token and zeros the rest,
  at the paper's sites: after every RMSNorm (``norm1``, ``norm2`` of each block, the final
  norm), after q, k and v (each on its head-concatenated vector of width ``d_model``, as the
  published code does, not per head), after the MLP activation (``mlp``, width ``d_mlp``), and
  on the residual stream at the end of each block (``resid``). ``ACT_LOCATIONS``; recorded in
  the config, ``figures.json`` and the checkpoint.
* weight sparsity: a ``sparsekern.DensitySchedule`` from dense to ``--density`` (1/64),
  annealed linearly from the start (``anneal_start`` 0) to half of the steps
  (``anneal_end`` 0.5); an element-wise top-k projection of every weight matrix after every
  optimizer step, at least ``--min-per-neuron`` (4) nonzeros in every output row; dense
  gradients and dense AdamW moments (pruned weights can grow back).
* optimisation: AdamW (betas 0.9, 0.95; weight decay ``--weight-decay`` on the matrices and
  embeddings, none on the RMSNorm gains); ``sparsekern.clip_grad_rms_`` (global
  gradient-RMS clip at ``--grad-clip-rms``, 1.0); ``sparsekern.SharkfinLR`` for the sparse
  runs (warm-up over ``--warmup-frac`` of the steps, linear decay to 0, times
  ``1/sqrt(current density)``), ``sparsekern.linear_warmup_decay`` alone for the dense run.
  Fused AdamW (``--fused-adamw``, on) for runs 1 and 3, because it is faster here: on the 16
  block matrices of the default model (12.6 M parameters), one thread of the 2-core EPYC, an
  AdamW step took 9.7 ms fused, 34.7 ms with torch's default (for-loop) implementation and
  65.5 ms with ``foreach=True``.

The default size: 4 blocks of ``d_model`` 512 (8 heads), ``d_mlp`` 2048, 12.9 M parameters,
density 1/64, 80 steps of 16 windows of 64 bytes (1,024 tokens a step; at 256, the earlier
default, the linear layers were too small a part of a step for their kernels to show). At the end the script reports each run's
validation loss, quote-closing accuracy (held-out closing quotes, ``--quote-ctx`` bytes of
context holding the opening quote: does the model prefer the quote that opened the literal?) and training wall time
(split into the annealing steps and the steps at the target density, and into forward,
backward, optimizer and projection), the ratios sparsekern/published and sparsekern/dense,
and the nonzeros of every sparse layer in both sparse runs against the target; it saves the sparsekern model
(``sparse_gpt.pt`` + ``sparse_gpt_config.json``) and the figures (``figures.json``) in
``--out`` (default ``examples/out/``).

    python examples/train_sparse_gpt.py            # default size: about 6 minutes on 2 idle cores
    python examples/train_sparse_gpt.py --help

Every stage is a function (``load_corpus``, ``build_model``, ``build_models``,
``Trainer``/``train``, ``TorchTopKProjector``, ``evaluate_loss``, ``quote_cases``,
``quote_accuracy``, ``run``) so tests can import it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import math
import os
import platform
import sys
import sysconfig
import time
import tokenize
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparsekern
from sparsekern.activation import backends as abs_topk_backends

VOCAB = 256
SEPARATOR = 0  # byte placed between files in the concatenated corpus (never in source text)
QUOTES = (ord("'"), ord('"'))
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
CHECKPOINT = "sparse_gpt.pt"
CHECKPOINT_CONFIG = "sparse_gpt_config.json"
FIGURES = "figures.json"
#: The three runs, in the order they are built and reported.
RUNS = ("sparsekern", "published", "dense")
#: The paper's AbsTopK sites, per block (``norm1``, ``q``, ``k``, ``v``, ``norm2``, ``mlp``,
#: ``resid``) and once after the final norm (``final_norm``).
ACT_LOCATIONS = ("norm1", "q", "k", "v", "norm2", "mlp", "resid", "final_norm")
#: q, k and v are each sparsified on their head-concatenated vector (width d_model).
QKV_ACT_SCOPE = "head-concatenated vector"
#: The parts of a training step each run times: the batch and forward pass, the backward pass,
#: the clip and optimizer step, the projection and learning-rate scheduler.
PHASES = ("forward", "backward", "optimizer", "projection")


# ---------------------------------------------------------------------------- config
@dataclass
class Config:
    # model
    d_model: int = 512
    n_layers: int = 4
    n_heads: int = 8
    d_mlp: int = 2048
    ctx: int = 64
    act_fraction: float = 0.25  # AbsTopK keeps this fraction of the entries at each site; 0: off
    act_locations: tuple = ACT_LOCATIONS
    # sparsity
    density: float = 1 / 64
    block_size: int = 32  # SparseLinear's block side (the dense start is one block layout)
    format: str = "auto"  # the sparsekern layers' format: "auto", "dense", "block", "element"
    min_per_neuron: int = 4
    anneal_start: float = 0.0
    anneal_end: float = 0.5
    # optimisation
    steps: int = 80
    batch_size: int = 16
    lr: float = 2e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    grad_clip_rms: float = 1.0
    fused_adamw: bool = True  # the sparsekern and dense runs; the published run uses torch's default
    seed: int = 0
    # data and evaluation
    max_train_bytes: int = 8_000_000
    max_val_bytes: int = 1_000_000
    val_frac: float = 0.1
    eval_batches: int = 16
    quote_cases: int = 500
    quote_ctx: int = 32  # bytes of context before each closing quote (one-line literals are short)
    log_every: int = 50
    threads: int = 1  # torch CPU threads for the run; 0: torch's default
    out: str = str(DEFAULT_OUT)

    def model_config(self) -> dict:
        keys = ("d_model", "n_layers", "n_heads", "d_mlp", "ctx", "act_fraction", "block_size", "format")
        config = {k: getattr(self, k) for k in keys}
        config["act_locations"] = list(self.act_locations)
        return config


# ---------------------------------------------------------------------------- data
@dataclass
class Corpus:
    """Byte tokens of the train and held-out files, each a 1-D uint8 tensor.

    ``val_files``: (relative path, start offset in ``val``) of every held-out file;
    ``train_files``: relative paths of the training files.
    """

    train: torch.Tensor
    val: torch.Tensor
    val_files: list = field(default_factory=list)
    train_files: list = field(default_factory=list)
    root: str = ""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_heldout(relpath: str, val_frac: float) -> bool:
    # A hash of the path, not the file's position in a listing: stable across machines
    # whose standard libraries differ by a few files.
    return zlib.crc32(relpath.encode()) % 10_000 < val_frac * 10_000


def source_files(root: Path) -> list[Path]:
    skip = {"test", "tests", "site-packages", "__pycache__"}
    files = []
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts[:-1]):
            continue
        files.append(path)
    return files


def load_corpus(root: Path | None = None, *, max_train_bytes: int = 8_000_000, max_val_bytes: int = 1_000_000,
                val_frac: float = 0.1) -> Corpus:
    """Read ``.py`` files (sorted by path) until each split has its byte budget.

    Files that are not valid UTF-8 or hold a NUL byte are skipped. Files are joined with
    one ``SEPARATOR`` byte.
    """
    root = Path(root) if root is not None else stdlib_root()
    chunks = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    budget = {"train": max_train_bytes, "val": max_val_bytes}
    val_files, train_files = [], []
    for path in source_files(root):
        rel = path.relative_to(root).as_posix()
        split = "val" if _is_heldout(rel, val_frac) else "train"
        if sizes[split] >= budget[split]:
            if all(sizes[s] >= budget[s] for s in sizes):
                break
            continue
        data = path.read_bytes()
        if not data or b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if split == "val":
            val_files.append((rel, sizes["val"]))
        else:
            train_files.append(rel)
        chunks[split].append(data + bytes([SEPARATOR]))
        sizes[split] += len(data) + 1
    if not chunks["train"] or not chunks["val"]:
        raise ValueError(f"no Python files for both splits under {root}")

    def to_tensor(parts):
        return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)

    return Corpus(to_tensor(chunks["train"]), to_tensor(chunks["val"]), val_files, train_files, str(root))


def get_batch(tokens: torch.Tensor, batch_size: int, ctx: int, generator: torch.Generator):
    """``batch_size`` random windows: inputs ``[B, ctx]`` and next-byte targets, int64."""
    starts = torch.randint(0, tokens.numel() - ctx - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(ctx + 1)
    window = tokens[idx].long()
    return window[:, :-1], window[:, 1:]


# ---------------------------------------------------------------------------- activation sparsity
def torch_abs_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """AbsTopK as the published code writes it: ``torch.topk`` of ``|x|`` along the last
    dimension, the kept entries scattered into zeros (the gradient reaches the kept ones)."""
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))


ABS_TOPK = {"sparsekern": sparsekern.abs_topk, "torch": torch_abs_topk}


class AbsTopK(nn.Module):
    """At every token, keep the ``k`` entries of largest magnitude of the last dimension
    (``gelu=True``: of ``F.gelu(x)``, the MLP's activation, which sparsekern fuses into the select).

    ``k = 0`` (or ``k >= width``): the identity (or the GELU). ``impl``: ``"sparsekern"``
    (``sparsekern.abs_topk``, ``sparsekern.gelu_abs_topk``) or ``"torch"`` (``torch_abs_topk``)."""

    def __init__(self, k: int, impl: str = "sparsekern", gelu: bool = False):
        super().__init__()
        self.k = int(k)
        self.impl = impl
        self.gelu = gelu

    def forward(self, x):
        if self.k <= 0 or self.k >= x.shape[-1]:
            return F.gelu(x) if self.gelu else x
        if self.gelu and self.impl == "sparsekern":
            return sparsekern.gelu_abs_topk(x, self.k)
        return ABS_TOPK[self.impl](F.gelu(x) if self.gelu else x, self.k)

    def extra_repr(self):
        return f"k={self.k}, impl={self.impl!r}" + (", gelu=True" if self.gelu else "")


def act_k(width: int, fraction: float) -> int:
    """Entries AbsTopK keeps at a site of ``width``: ``round(fraction * width)``, at least 1; 0 when off."""
    if fraction <= 0:
        return 0
    return max(1, min(width, round(fraction * width)))


def act_sizes(d_model: int, d_mlp: int, fraction: float, locations) -> dict:
    """``k`` at every site of ``ACT_LOCATIONS``: ``act_k`` of its width where ``locations``
    names it, 0 (no AbsTopK) elsewhere."""
    unknown = set(locations) - set(ACT_LOCATIONS)
    if unknown:
        raise ValueError(f"unknown AbsTopK locations {sorted(unknown)}; known: {ACT_LOCATIONS}")
    widths = {loc: d_model for loc in ACT_LOCATIONS}
    widths["mlp"] = d_mlp
    return {loc: act_k(widths[loc], fraction) if loc in locations else 0 for loc in ACT_LOCATIONS}


def abs_topk_sites(model: nn.Module) -> dict:
    """``k`` of every AbsTopK that acts (k > 0), by module name."""
    return {name: m.k for name, m in model.named_modules() if isinstance(m, AbsTopK) and m.k > 0}


def set_abs_topk_impl(model: nn.Module, impl: str) -> nn.Module:
    if impl not in ABS_TOPK:
        raise ValueError(f"impl must be one of {tuple(ABS_TOPK)}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, AbsTopK):
            m.impl = impl
    return model


# ---------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, act: dict):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.act_q, self.act_k, self.act_v = AbsTopK(act["q"]), AbsTopK(act["k"]), AbsTopK(act["v"])
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        # AbsTopK on each head-concatenated vector, before the heads are split.
        q, k, v = (z.reshape(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
                   for z in (self.act_q(q), self.act_k(k), self.act_v(v)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, act: dict):
        super().__init__()
        self.fc = nn.Linear(d_model, d_mlp, bias=False)
        self.act = AbsTopK(act["mlp"], gelu=True)
        self.proj = nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: dict):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.act_norm1 = AbsTopK(act["norm1"])
        self.attn = CausalSelfAttention(d_model, n_heads, act)
        self.norm2 = nn.RMSNorm(d_model)
        self.act_norm2 = AbsTopK(act["norm2"])
        self.mlp = MLP(d_model, d_mlp, act)
        self.act_resid = AbsTopK(act["resid"])  # the residual stream after the block

    def forward(self, x):
        x = x + self.attn(self.act_norm1(self.norm1(x)))
        x = x + self.mlp(self.act_norm2(self.norm2(x)))
        return self.act_resid(x)


class GPT(nn.Module):
    def __init__(self, *, d_model=512, n_layers=4, n_heads=8, d_mlp=2048, ctx=64, act_fraction=0.25,
                 act_locations=ACT_LOCATIONS, **_):
        super().__init__()
        self.ctx = ctx
        act = act_sizes(d_model, d_mlp, act_fraction, act_locations)
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp, act) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model)
        self.act_final = AbsTopK(act["final_norm"])
        self.unembed = nn.Linear(d_model, VOCAB, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.ctx:
            raise ValueError(f"sequence length {t} exceeds the context {self.ctx}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.act_final(self.norm(x)))


# ---------------------------------------------------------------------------- the published way
class _MaskedLinearFunction(torch.autograd.Function):
    """``y = x @ (W * mask).T`` by a dense matmul, with the dense weight gradient ``dy.T @ x``
    (so pruned weights can grow back, as with ``SparseLinear(dense_grad=True)``)."""

    @staticmethod
    def forward(ctx, x, weight, mask):
        masked = weight * mask
        ctx.save_for_backward(x, masked)
        return F.linear(x, masked)

    @staticmethod
    def backward(ctx, grad_out):
        x, masked = ctx.saved_tensors
        grad_x = grad_out @ masked
        grad_w = grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_w, None


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is masked in the forward pass (the mask a buffer, all ones at
    first), its gradient dense: the published code's weight-sparse layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, requires_grad=False))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "MaskedLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x):
        y = _MaskedLinearFunction.apply(x, self.weight, self.mask)
        return y if self.bias is None else y + self.bias


@torch.no_grad()
def torch_topk_mask(weight: torch.Tensor, k: int, min_per_row: int = 0) -> torch.Tensor:
    """The published projection's new mask: the ``k`` largest ``|W|``, each row's
    ``min_per_row`` largest first (they rank above every other entry), by ``torch.topk`` over
    the flattened magnitudes and a scatter; a float mask shaped like ``weight``."""
    mag = weight.abs()
    if min_per_row > 0:
        floor = mag.topk(min_per_row, dim=1, sorted=False).indices
        mag = mag.scatter(1, floor, float("inf"))
    idx = mag.flatten().topk(k, sorted=False).indices
    return torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device).scatter_(0, idx, 1).view_as(weight)


class TorchTopKProjector:
    """The published projection: call ``step()`` after every ``optimizer.step()``. Call ``t``
    keeps, in every ``MaskedLinear``, the ``round(schedule(t) * numel)`` entries of largest
    magnitude (the count of ``sparsekern.count_for_density``), at least ``min_per_neuron`` per
    output row: a new mask by ``torch_topk_mask``, the weight zeroed off it. A layer at full
    density is left alone. Optimizer state is not touched (dense moments)."""

    def __init__(self, model: nn.Module, schedule, *, min_per_neuron: int = 0):
        self.layers = [m for m in model.modules() if isinstance(m, MaskedLinear)]
        if not self.layers:
            raise ValueError("model holds no MaskedLinear (use to_published first)")
        self.schedule = schedule
        self.min_per_neuron = min_per_neuron
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        density = self.schedule(self.steps)
        for layer in self.layers:
            numel = layer.weight.numel()
            k = int(round(density * numel))
            check_floor(layer, self.min_per_neuron, k)
            if k < numel:
                mask = torch_topk_mask(layer.weight, k, self.min_per_neuron)
                layer.mask.copy_(mask)
                layer.weight.mul_(mask)
        self.steps += 1


def check_floor(layer: nn.Module, min_per_row: int, k: int) -> None:
    """Raise ``ValueError`` when ``min_per_row`` entries per output row need more than ``k``."""
    if min_per_row * layer.out_features > k:
        raise ValueError(f"k={k} is smaller than the {min_per_row * layer.out_features} entries the "
                         f"floor min_per_row={min_per_row} keeps")


# ---------------------------------------------------------------------------- the three models
def build_model(model_config: dict, *, kind: str = "dense", seed: int | None = None) -> nn.Module:
    """The GPT of ``model_config`` as run ``kind`` (one of ``RUNS``) trains it, dense at first:
    ``"dense"`` with ``nn.Linear``, ``"sparsekern"`` with ``SparseLinear(dense_grad=True)``,
    ``"published"`` with ``MaskedLinear``. The same ``seed`` gives the same initial weights."""
    if kind not in RUNS:
        raise ValueError(f"kind must be one of {RUNS}, got {kind!r}")
    if seed is not None:
        torch.manual_seed(seed)
    model = GPT(**model_config)
    if kind == "sparsekern":
        return to_sparsekern(model, model_config["block_size"], model_config.get("format", "auto"))
    if kind == "published":
        return to_published(model)
    return model


def build_models(cfg: Config) -> dict:
    """The three runs' models, by name (``RUNS``), from one set of initial weights."""
    dense = build_model(cfg.model_config(), kind="dense", seed=cfg.seed)
    return {"sparsekern": to_sparsekern(copy.deepcopy(dense), cfg.block_size, cfg.format),
            "published": to_published(copy.deepcopy(dense)),
            "dense": dense}


def to_sparsekern(model: nn.Module, block_size: int, format: str = "auto") -> nn.Module:
    """Every ``nn.Linear`` of ``model`` as a dense-start ``SparseLinear(dense_grad=True)``, in
    place; AbsTopK by ``sparsekern.abs_topk``."""
    # dense_grad: the full dense weight gradient, so a projection can regrow pruned weights.
    model = sparsekern.sparsify(model, density=1.0, block_size=block_size, dense_grad=True, format=format)
    return set_abs_topk_impl(model, "sparsekern")


def to_published(model: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` of ``model`` as a ``MaskedLinear`` (same weights, mask all ones), in
    place; AbsTopK by ``torch_abs_topk``."""
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, m in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, MaskedLinear.from_linear(m))
    return set_abs_topk_impl(model, "torch")


def sparse_layers(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, sparsekern.SparseLinear)}


def projected_layers(model: nn.Module) -> dict:
    """The layers a projection keeps sparse: ``SparseLinear`` or ``MaskedLinear``, by name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (sparsekern.SparseLinear, MaskedLinear))}


def linear_weights(model: nn.Module) -> dict:
    """Weight of every linear layer (sparse or dense), by module name."""
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, sparsekern.SparseLinear))}


# ---------------------------------------------------------------------------- training
def density_schedule(cfg: Config) -> sparsekern.DensitySchedule:
    return sparsekern.DensitySchedule(cfg.density, cfg.steps, anneal_start=cfg.anneal_start,
                                      anneal_end=cfg.anneal_end)


def warmup_steps(cfg: Config) -> int:
    return max(1, round(cfg.warmup_frac * cfg.steps))


def actual_density(model: nn.Module) -> float:
    layers = list(projected_layers(model).values())
    if not layers:
        return 1.0
    nnz = sum(int(torch.count_nonzero(m.weight)) for m in layers)
    return nnz / sum(m.weight.numel() for m in layers)


def check_floor_fits(model: nn.Module, cfg: Config) -> None:
    """Fail before training, not half-way, when the floors need more than the final count:
    every layer plans its final projection (which checks the floors and writes nothing)."""
    for name, m in sparse_layers(model).items():
        try:
            m.plan_projection(cfg.density, granularity="element", min_per_row=cfg.min_per_neuron)
        except ValueError as error:
            raise ValueError(f"--min-per-neuron {cfg.min_per_neuron} does not fit {name} at --density "
                             f"{cfg.density} ({error}): lower it or raise the density") from error


def make_optimizer(model: nn.Module, cfg: Config, *, fused: bool) -> torch.optim.AdamW:
    """AdamW, weight decay on the matrices and embeddings (not on the RMSNorm gains);
    ``fused``: torch's fused implementation, else its default."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.95), **extra)


class Trainer:
    """One run (``kind``, one of ``RUNS``), a step at a time, so that the runs can take turns
    step by step and meet the same machine load; ``train`` runs one to the end.

    The sparse runs project every linear weight after each optimizer step (``sparsekern``:
    ``sparsekern.Projector``; ``published``: ``TorchTopKProjector``) and follow
    ``sparsekern.SharkfinLR``; the dense run follows the base schedule alone. Each run draws
    its batches from its own generator seeded with ``cfg.seed``: the same batches in the
    same order for all. ``step_times`` holds the run's own step times.
    """

    def __init__(self, model: nn.Module, corpus: Corpus, cfg: Config, *, kind: str, log=print):
        if kind not in RUNS:
            raise ValueError(f"kind must be one of {RUNS}, got {kind!r}")
        self.model, self.corpus, self.cfg, self.kind, self.log = model, corpus, cfg, kind, log
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model, cfg, fused=cfg.fused_adamw and kind != "published")
        self.schedule = self.projector = None
        if kind == "dense":
            base = sparsekern.linear_warmup_decay(cfg.steps, warmup_steps(cfg))
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, base)
        else:
            self.schedule = density_schedule(cfg)
            self.scheduler = sparsekern.SharkfinLR(self.optimizer, self.schedule, warmup_steps=warmup_steps(cfg))
            if kind == "sparsekern":
                check_floor_fits(model, cfg)
                self.projector = sparsekern.Projector(model, self.schedule, granularity="element",
                                                      min_per_neuron=cfg.min_per_neuron)
            else:
                for name, layer in projected_layers(model).items():
                    try:
                        check_floor(layer, cfg.min_per_neuron, int(round(cfg.density * layer.weight.numel())))
                    except ValueError as error:
                        raise ValueError(f"--min-per-neuron {cfg.min_per_neuron} does not fit {name} at "
                                         f"--density {cfg.density} ({error})") from error
                self.projector = TorchTopKProjector(model, self.schedule, min_per_neuron=cfg.min_per_neuron)
        self.steps_done = 0
        self.step_times = []
        self.phase_times = dict.fromkeys(PHASES, 0.0)
        self.losses = []

    @property
    def elapsed(self) -> float:
        return sum(self.step_times)

    def step(self) -> float:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        start = time.perf_counter()
        model.train()
        x, y = get_batch(self.corpus.train, cfg.batch_size, cfg.ctx, self.data_gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        t_forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t_backward = time.perf_counter()
        if cfg.grad_clip_rms > 0:
            sparsekern.clip_grad_rms_(self.params, max_rms=cfg.grad_clip_rms)
        optimizer.step()
        t_optimizer = time.perf_counter()
        if self.projector is not None:
            self.projector.step()
        self.scheduler.step()
        value = loss.item()
        end = time.perf_counter()
        self.step_times.append(end - start)
        for phase, took in zip(PHASES, (t_forward - start, t_backward - t_forward, t_optimizer - t_backward,
                                        end - t_optimizer)):
            self.phase_times[phase] += took
        self.losses.append(value)
        self.steps_done += 1
        done = self.steps_done
        if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
            n = done % cfg.log_every or cfg.log_every
            density = f"  density {actual_density(model):.4f}" if self.kind != "dense" else ""
            self.log(f"[{self.kind:10s}] step {done:5d}/{cfg.steps}  loss {sum(self.losses[-n:]) / n:.4f}"
                     f"{density}  {n * cfg.batch_size * cfg.ctx / sum(self.step_times[-n:]):7.0f} tok/s")
        return value

    def stats(self) -> dict:
        tail = self.losses[-20:] or [float("nan")]
        tokens = self.steps_done * self.cfg.batch_size * self.cfg.ctx
        split = math.ceil(self.cfg.anneal_end * self.cfg.steps)  # the first step at the target density
        return {"train_time_s": self.elapsed, "tokens_per_s": tokens / self.elapsed if self.elapsed else 0.0,
                "annealing_time_s": sum(self.step_times[:split]), "at_target_time_s": sum(self.step_times[split:]),
                "phase_time_s": dict(self.phase_times), "tokens": tokens,
                "final_train_loss": sum(tail) / len(tail)}


def train(model: nn.Module, corpus: Corpus, cfg: Config, *, kind: str, log=print) -> dict:
    """Train ``model`` in place for ``cfg.steps`` steps as run ``kind`` (see ``Trainer``);
    returns its stats: wall time, throughput, mean loss of the last 20 steps."""
    trainer = Trainer(model, corpus, cfg, kind=kind, log=log)
    for _ in range(cfg.steps):
        trainer.step()
    return trainer.stats()


def train_in_turns(trainers: dict) -> None:
    """Every trainer's steps, taking turns step by step; the first of each step rotates, so
    no run always follows the same one (caches, the load left by the one before)."""
    order = list(trainers.values())
    steps = order[0].cfg.steps
    for i in range(steps):
        for trainer in order[i % len(order):] + order[:i % len(order)]:
            trainer.step()


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loss(model: nn.Module, corpus: Corpus, cfg: Config) -> float:
    """Mean next-byte cross-entropy (nats) over fixed held-out windows (the same for every model)."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    total = 0.0
    for _ in range(cfg.eval_batches):
        x, y = get_batch(corpus.val, cfg.batch_size, cfg.ctx, gen)
        total += F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    model.train()
    return total / cfg.eval_batches


_STRING_PREFIXES = {"", "r", "u", "b", "br", "rb"}  # no f-strings: Python 3.12 tokenizes them apart


def byte_offsets(text: str):
    """``offset(row, col)``: the byte offset in ``text`` as UTF-8 of tokenize's position (row
    from 1, column in characters)."""
    lines = io.StringIO(text, newline="").readlines()  # the lines tokenize numbers
    line_starts, pos = [], 0
    for line in lines:
        line_starts.append(pos)
        pos += len(line.encode("utf-8"))

    def offset(row, col):
        return line_starts[row - 1] + len(lines[row - 1][:col].encode("utf-8"))

    return offset


def quote_literal_offsets(source: bytes) -> list[tuple[int, int]]:
    """``(closing quote, opening quote)`` byte offsets of every one-line ``'...'`` / ``"..."`` literal.

    Triple-quoted strings, f-strings and strings continued over lines are left out.
    """
    text = source.decode("utf-8")
    offset = byte_offsets(text)
    pairs = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text, newline="").readline):
            if tok.type != tokenize.STRING or tok.start[0] != tok.end[0]:
                continue
            s = tok.string
            body = s.lstrip("rRbBuU")
            prefix = s[: len(s) - len(body)].lower()
            if prefix not in _STRING_PREFIXES or len(body) < 2 or body[:3] in ("'''", '"""'):
                continue
            if body[0] != body[-1] or body[0] not in "'\"":
                continue
            pairs.append((offset(tok.end[0], tok.end[1] - 1), offset(tok.start[0], tok.start[1] + len(prefix))))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # a file tokenize cannot read to the end: keep the literals found before
    return pairs


def heldout_sources(corpus: Corpus):
    """``(start offset in corpus.val, source bytes)`` of every held-out file."""
    ends = [start for _, start in corpus.val_files[1:]] + [corpus.val.numel()]
    for (_, start), end in zip(corpus.val_files, ends):
        yield start, bytes(corpus.val[start:end - 1].tolist())  # without the separator


def visible_closer_cases(corpus: Corpus, ctx: int, pairs_of) -> list[int]:
    """Positions in ``corpus.val`` of the closers that ``pairs_of(source)`` lists, as ``(closer,
    opener)`` offsets in each held-out file, whose opener lies within the ``ctx`` bytes before
    them, within the same file: the prompt (those ``ctx`` bytes) shows the opener."""
    positions = []
    for start, source in heldout_sources(corpus):
        positions.extend(start + close for close, opener in pairs_of(source) if close - opener <= ctx and close >= ctx)
    return positions


def quote_cases(corpus: Corpus, ctx: int, max_cases: int) -> torch.Tensor:
    """Positions in ``corpus.val`` of closing quotes whose opening quote lies in the ``ctx``
    bytes before them, within the same file (``visible_closer_cases``).

    The model sees the ``ctx`` bytes up to the closing quote and must prefer the quote
    that opened the literal; a literal longer than the context would hide the answer, so it
    is left out. At most ``max_cases``, evenly spread over all literals found.
    """
    positions = visible_closer_cases(corpus, ctx, quote_literal_offsets)
    if len(positions) > max_cases:
        step = len(positions) / max_cases
        positions = [positions[int(i * step)] for i in range(max_cases)]
    positions = torch.tensor(positions, dtype=torch.long)
    if not bool(torch.isin(corpus.val[positions], torch.tensor(QUOTES, dtype=corpus.val.dtype)).all()):
        raise RuntimeError("a quote-closing case does not point at a quote byte")  # an offset bug
    return positions


@torch.no_grad()
def quote_accuracy(model: nn.Module, val: torch.Tensor, positions: torch.Tensor, ctx: int, batch: int = 64) -> float:
    """Fraction of cases where the next-byte logit of the matching quote beats the other quote's."""
    if positions.numel() == 0:
        return float("nan")
    model.eval()
    correct = 0
    for chunk in positions.split(batch):
        x = val[chunk[:, None] - ctx + torch.arange(ctx)].long()
        logits = model(x)[:, -1]
        target = val[chunk].long()
        other = torch.where(target == QUOTES[0], QUOTES[1], QUOTES[0])
        correct += int((logits.gather(1, target[:, None]) > logits.gather(1, other[:, None])).sum())
    model.train()
    return correct / positions.numel()


def layer_report(model: nn.Module, cfg: Config, published: nn.Module | None = None) -> dict:
    """Nonzeros of every sparse layer of the sparsekern ``model`` against the target count, its
    format and layout, and (with ``published``) the published run's nonzeros in the same layer."""
    report = {}
    for name, m in sparse_layers(model).items():
        numel = m.weight.numel()
        entry = {"shape": list(m.weight.shape), "nnz": int(torch.count_nonzero(m.weight)), "format": m.format,
                 "target_nnz": sparsekern.count_for_density(cfg.density, numel)}
        if isinstance(m.layout, sparsekern.BlockLayout):
            grid_rows, grid_cols = m.layout.grid
            entry.update(active_blocks=m.layout.nnz_blocks, blocks=grid_rows * grid_cols)
        else:
            entry["layout_nnz"] = m.layout.nnz
        entry["density"] = entry["nnz"] / numel
        if published is not None:
            other = published.get_submodule(name)
            entry["published_nnz"] = int(torch.count_nonzero(other.weight))
            entry["published_mask_nnz"] = int(torch.count_nonzero(other.mask))
        report[name] = entry
    return report


# ---------------------------------------------------------------------------- checkpoint
def save_checkpoint(model: nn.Module, cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / CHECKPOINT)
    meta = {"model": cfg.model_config(), "density": cfg.density, "granularity": "element",
            "min_per_neuron": cfg.min_per_neuron, "qkv_abs_topk": QKV_ACT_SCOPE,
            "abs_topk_sites": abs_topk_sites(model)}
    (out / CHECKPOINT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(out: Path) -> nn.Module:
    """The sparsekern model saved in ``out``: SparseLinear layers with the saved layouts (each
    layer's ``layout_mask`` in the state_dict), the AbsTopK sites of its config."""
    out = Path(out)
    meta = json.loads((out / CHECKPOINT_CONFIG).read_text())
    model = build_model(meta["model"], kind="sparsekern")
    model.load_state_dict(torch.load(out / CHECKPOINT, weights_only=True))
    model.eval()
    return model


# ---------------------------------------------------------------------------- driver
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": _cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_isa": sparsekern.cpu_isa(),
            "python": platform.python_version(), "torch": torch.__version__,
            "sparsekern": sparsekern.__version__, "backends": sparsekern.available_backends(),
            "abs_topk_backend": abs_topk_backends.available_backends("cpu", torch.float32)[0],
            # Timings on a shared machine depend on what else runs: the 1-minute load average.
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


@dataclass
class Result:
    figures: dict  # what figures.json holds
    models: dict  # the three trained models, by run name
    corpus: Corpus

    @property
    def sparse(self) -> nn.Module:
        return self.models["sparsekern"]

    @property
    def dense(self) -> nn.Module:
        return self.models["dense"]


def run(cfg: Config, *, log=print) -> Result:
    """Train the three runs on the same data, taking turns, evaluate them, save the sparsekern
    checkpoint and ``figures.json`` in ``cfg.out``; return the figures and models."""
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        # One thread by default: on a machine shared with other work, extra OpenMP threads
        # wait on each other, and one thread per run keeps the turns comparable.
        torch.set_num_threads(cfg.threads)
    # Denormal floats (tiny gradients and Adam moments late in training) are slow on CPUs;
    # flushing them to zero is the usual CPU-training setting; torch's default is off.
    torch.set_flush_denormal(True)
    try:
        return _run(cfg, log)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous_threads)


def _run(cfg: Config, log) -> Result:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    machine = machine_info()  # before the run: the load average it started under
    corpus = load_corpus(max_train_bytes=cfg.max_train_bytes, max_val_bytes=cfg.max_val_bytes, val_frac=cfg.val_frac)
    log(f"corpus: {corpus.root}: {len(corpus.train_files)} train files ({corpus.train.numel() / 1e6:.2f} MB), "
        f"{len(corpus.val_files)} held-out files ({corpus.val.numel() / 1e6:.2f} MB)")
    cases = quote_cases(corpus, cfg.quote_ctx, cfg.quote_cases)
    n_double = int((corpus.val[cases] == QUOTES[1]).sum()) if cases.numel() else 0

    models = build_models(cfg)
    n_params = sum(p.numel() for p in models["dense"].parameters())
    sites = abs_topk_sites(models["dense"])
    log(f"model: {n_params / 1e6:.2f} M parameters, {len(sparse_layers(models['sparsekern']))} sparse layers, "
        f"target density {cfg.density:g} (element-wise, >= {cfg.min_per_neuron} per neuron), "
        f"{len(sites)} AbsTopK sites (fraction {cfg.act_fraction:g}; q, k, v per {QKV_ACT_SCOPE}), "
        f"{cfg.steps} steps of {cfg.batch_size}x{cfg.ctx} tokens, three runs taking turns")

    trainers = {name: Trainer(model, corpus, cfg, kind=name, log=log) for name, model in models.items()}
    t_train = time.perf_counter()
    train_in_turns(trainers)
    t_eval = time.perf_counter()
    results = {}
    for name, trainer in trainers.items():
        stats = trainer.stats()
        stats["val_loss"] = evaluate_loss(trainer.model, corpus, cfg)
        stats["quote_accuracy"] = quote_accuracy(trainer.model, corpus.val, cases, cfg.quote_ctx)
        stats["optimizer"] = "AdamW fused" if trainer.optimizer.defaults.get("fused") else "AdamW (torch default)"
        results[name] = stats

    layers = layer_report(models["sparsekern"], cfg, models["published"])
    save_checkpoint(models["sparsekern"], cfg, out)
    times = {name: results[name]["train_time_s"] for name in RUNS}
    figures = {
        "config": dataclasses.asdict(cfg),
        "machine": machine,
        "corpus": {"root": corpus.root, "train_files": len(corpus.train_files), "val_files": len(corpus.val_files),
                   "train_bytes": corpus.train.numel(), "val_bytes": corpus.val.numel()},
        "parameters": n_params,
        "runs": results,
        "wall_time_ratio_sparsekern_over_published": times["sparsekern"] / times["published"],
        "wall_time_ratio_sparsekern_over_dense": times["sparsekern"] / times["dense"],
        "abs_topk": {"fraction": cfg.act_fraction, "locations": list(cfg.act_locations),
                     "qkv": QKV_ACT_SCOPE, "sites": sites,
                     "implementations": {"sparsekern": "sparsekern.abs_topk", "published": "torch.topk + scatter",
                                         "dense": "sparsekern.abs_topk"}},
        "layers": layers,
        "sparse_total": {"nnz": sum(v["nnz"] for v in layers.values()),
                         "published_nnz": sum(v["published_nnz"] for v in layers.values()),
                         "target_nnz": sum(v["target_nnz"] for v in layers.values()),
                         "numel": sum(math.prod(v["shape"]) for v in layers.values())},
        "quote": {"cases": int(cases.numel()), "double_quote_cases": n_double,
                  "majority_baseline": max(n_double, cases.numel() - n_double) / max(1, cases.numel()),
                  **{f"{name}_accuracy": results[name]["quote_accuracy"] for name in RUNS}},
    }
    figures["setup_time_s"] = t_train - t0
    figures["training_time_s"] = t_eval - t_train  # the three runs' steps and the turns between them
    figures["evaluation_time_s"] = time.perf_counter() - t_eval
    figures["total_time_s"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    log(summary(figures))
    log(f"saved {out / CHECKPOINT}, {out / CHECKPOINT_CONFIG}, {out / FIGURES}")
    return Result(figures, models, corpus)


def _ratio(runs: dict, key: str, other: str) -> float:
    """``runs["sparsekern"][key] / runs[other][key]``; NaN when the latter is 0 (no such steps)."""
    below = runs[other][key]
    return runs["sparsekern"][key] / below if below else float("nan")


def summary(fig: dict) -> str:
    runs, cfg, machine = fig["runs"], fig["config"], fig["machine"]
    lines = ["", "=== results ===",
             f"machine: {machine['processor']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch "
             f"thread(s), CPU kernels {machine['cpu_isa']}, torch {machine['torch']}, load at start "
             f"{machine['load_average_1min']:.2f}",
             f"{cfg['n_layers']} layers, d_model {cfg['d_model']}, d_mlp {cfg['d_mlp']}, "
             f"{fig['parameters'] / 1e6:.2f} M parameters, density {cfg['density']:g}, {cfg['steps']} steps of "
             f"{cfg['batch_size']}x{cfg['ctx']} tokens, quote task context {cfg['quote_ctx']} bytes",
             f"quote closing: {fig['quote']['cases']} held-out cases, majority baseline "
             f"{fig['quote']['majority_baseline']:.3f}",
             "",
             f"{'run':12s} {'val loss':>9s} {'quote acc':>9s} {'train s':>8s} {'ms/step':>8s} "
             f"{'annealing s':>11s} {'at target s':>11s}   fwd / bwd / optim / proj s   optimizer"]
    for name in RUNS:
        r = runs[name]
        phases = " / ".join(f"{r['phase_time_s'][p]:.1f}" for p in PHASES)
        lines.append(f"{name:12s} {r['val_loss']:9.4f} {r['quote_accuracy']:9.3f} {r['train_time_s']:8.1f} "
                     f"{1e3 * r['train_time_s'] / cfg['steps']:8.1f} {r['annealing_time_s']:11.1f} "
                     f"{r['at_target_time_s']:11.1f}   {phases:26s}   {r['optimizer']}")
    lines += ["",
              f"training wall time ratios: sparsekern/published {fig['wall_time_ratio_sparsekern_over_published']:.3f}"
              f"   sparsekern/dense {fig['wall_time_ratio_sparsekern_over_dense']:.3f}",
              f"  annealing (steps before the target density): sparsekern/published "
              f"{_ratio(runs, 'annealing_time_s', 'published'):.3f}   sparsekern/dense "
              f"{_ratio(runs, 'annealing_time_s', 'dense'):.3f}",
              f"  at the target density: sparsekern/published {_ratio(runs, 'at_target_time_s', 'published'):.3f}"
              f"   sparsekern/dense {_ratio(runs, 'at_target_time_s', 'dense'):.3f}",
              f"AbsTopK: {len(fig['abs_topk']['sites'])} sites, fraction {fig['abs_topk']['fraction']:g} "
              f"(q, k, v per {fig['abs_topk']['qkv']}); sparsekern.abs_topk backend "
              f"{fig['machine']['abs_topk_backend']}",
              "nonzeros per layer (target; sparsekern format and layout; published run):"]
    for name, v in fig["layers"].items():
        where = (f"blocks {v['active_blocks']}/{v['blocks']}" if "blocks" in v
                 else f"element layout {v['layout_nnz']}")
        lines.append(f"  {name:18s} {str(tuple(v['shape'])):12s} target {v['target_nnz']:6d}  sparsekern "
                     f"{v['nnz']:6d} ({v['format']}, {where})  published {v['published_nnz']:6d}")
    total = fig["sparse_total"]
    lines.append(f"  {'total':18s} {total['numel']:12d} target {total['target_nnz']:6d}  sparsekern "
                 f"{total['nnz']:6d}  published {total['published_nnz']:6d}")
    lines.append(f"total run time {fig['total_time_s']:.1f} s (set-up {fig['setup_time_s']:.1f} s, training "
                 f"{fig['training_time_s']:.1f} s, evaluation and saving {fig['evaluation_time_s']:.1f} s)")
    return "\n".join(lines)


def parse_args(argv=None) -> Config:
    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = p.add_argument
    arg("--steps", type=int, default=defaults.steps, help="training steps (every run)")
    arg("--density", type=float, default=defaults.density, help="target fraction of nonzero weights")
    arg("--d-model", type=int, default=defaults.d_model, help="residual width")
    arg("--layers", dest="n_layers", type=int, default=defaults.n_layers, help="transformer blocks")
    arg("--heads", dest="n_heads", type=int, default=defaults.n_heads, help="attention heads")
    arg("--d-mlp", type=int, default=defaults.d_mlp, help="MLP hidden width")
    arg("--ctx", type=int, default=defaults.ctx, help="context length in bytes")
    arg("--batch-size", type=int, default=defaults.batch_size, help="windows per step")
    arg("--lr", type=float, default=defaults.lr,
        help="AdamW peak learning rate of the base schedule (the sparse runs: times 1/sqrt(density))")
    arg("--warmup-frac", type=float, default=defaults.warmup_frac, help="warm-up, as a fraction of the steps")
    arg("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay (matrices, embeddings)")
    arg("--act-fraction", type=float, default=defaults.act_fraction,
        help="AbsTopK: keep this fraction of the entries at every paper site (after each RMSNorm, after q, "
             "k, v, after the MLP activation, the residual stream after each block); 0 = off")
    arg("--format", choices=sparsekern.SparseLinear.FORMATS, default=defaults.format,
        help="the sparsekern layers' format: auto (per layer and step, the cheapest for its nonzeros), "
             "dense (F.linear on the masked weight), block, or element (the nonzeros themselves)")
    arg("--min-per-neuron", type=int, default=defaults.min_per_neuron, help="nonzeros kept in every output row")
    arg("--grad-clip-rms", type=float, default=defaults.grad_clip_rms, help="global gradient-RMS clip; 0 = off")
    arg("--fused-adamw", action=argparse.BooleanOptionalAction, default=defaults.fused_adamw,
        help="fused AdamW for the sparsekern and dense runs (the published run keeps torch's default)")
    arg("--seed", type=int, default=defaults.seed, help="initial weights and data order")
    arg("--max-train-bytes", type=int, default=defaults.max_train_bytes, help="training corpus budget")
    arg("--quote-cases", type=int, default=defaults.quote_cases, help="most quote-closing cases")
    arg("--quote-ctx", type=int, default=defaults.quote_ctx, help="context bytes before each closing quote")
    arg("--eval-batches", type=int, default=defaults.eval_batches, help="held-out batches for the loss")
    arg("--log-every", type=int, default=defaults.log_every, help="steps between progress lines; 0 = none")
    arg("--threads", type=int, default=defaults.threads, help="torch CPU threads; 0 = torch's default")
    arg("--out", default=defaults.out, help="output directory")
    args = p.parse_args(argv)
    return dataclasses.replace(defaults, **vars(args))


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
