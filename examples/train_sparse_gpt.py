"""Train a small weight-sparse GPT on Python source code with sparsekern, on a CPU.

The setting of the published interpretable-circuit models, at small scale: a GPT-style
transformer (RMSNorm, causal attention, MLP) trained on Python source, every weight
matrix projected to its top-k entries after every optimizer step. Here:

* corpus: the ``.py`` files of the running interpreter's own standard library
  (``sysconfig.get_paths()["stdlib"]``, without ``test``/``tests`` folders and
  ``site-packages``): a real code corpus on every machine, no download. Byte-level
  tokens (vocab 256). Held-out split by file, decided by a hash of the file's relative
  path, so it does not depend on the order files are listed in.
* model: token + position embeddings (dense ``nn.Embedding``), ``n_layers`` pre-norm
  blocks (``nn.RMSNorm``, causal attention, GELU MLP), final RMSNorm, an unembedding.
  Every linear layer (qkv, attention output, MLP in/out, unembedding) is a
  ``sparsekern.SparseLinear`` in the sparse model and an ``nn.Linear`` in the dense one.
* recipe: Adam; a ``sparsekern.DensitySchedule`` from dense to ``--density`` between 1%
  and 50% of the steps; a ``sparsekern.Projector`` after every optimizer step, with a
  floor of ``--min-per-neuron`` (4) nonzeros per neuron; optional AbsTopK activation
  sparsity (``--act-topk K``: per token, keep the K largest-|.| entries of the MLP hidden
  layer and of every write into the residual stream).
  Gradient normalisation: a global-RMS clip. Before each Adam step, the RMS of all
  gradient entries of the model (one number) is computed; if it exceeds
  ``--grad-clip-rms`` (1.0) every gradient is scaled down so that it equals it.
* element-granularity projection: the layout follows the weights. The sparse layers
  use ``SparseLinear(dense_grad=True)`` (the full dense weight gradient, so pruned
  weights can grow back) and the Projector refreshes each layout from the projected
  weight's nonzero blocks. ``--granularity block`` projects whole blocks instead.

The dense model is the same network with ``nn.Linear``, the same initial weights, the
same steps, learning rates and batches (same seed, same data order). The two runs take
turns step by step (one thread each, by default), so on a shared machine both meet the
same load and the wall-time ratio (sum of each run's step times) stays fair; denormal
floats are flushed to zero during the run (they slow CPUs down). At the end the
script reports both validation losses, the wall-time ratio of the two training runs,
the nonzeros of every sparse layer against the target, and accuracy on a quote-closing
task built from held-out files; it saves a checkpoint of the sparse model
(``sparse_gpt.pt`` + ``sparse_gpt_config.json``) and the figures (``figures.json``)
in ``--out`` (default ``examples/out/``).

    python examples/train_sparse_gpt.py            # default size, a few minutes on 2 cores
    python examples/train_sparse_gpt.py --help

Every stage is a function (``load_corpus``, ``build_model``, ``Trainer``/``train``,
``evaluate_loss``, ``quote_cases``, ``quote_accuracy``, ``run``) so tests can import it.
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

VOCAB = 256
SEPARATOR = 0  # byte placed between files in the concatenated corpus (never in source text)
QUOTES = (ord("'"), ord('"'))
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
CHECKPOINT = "sparse_gpt.pt"
CHECKPOINT_CONFIG = "sparse_gpt_config.json"
FIGURES = "figures.json"


# ---------------------------------------------------------------------------- config
@dataclass
class Config:
    # model
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    ctx: int = 128
    act_topk: int = 0  # 0: no activation sparsity
    # sparsity
    density: float = 0.0625
    block_size: int = 32
    format: str = "auto"  # the sparse layers' format: "auto" (cheapest per layout), "dense", "block", "element"
    granularity: str = "element"
    min_per_neuron: int = 4
    anneal_start: float = 0.01
    anneal_end: float = 0.5
    # optimisation
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-2
    warmup_frac: float = 0.02
    grad_clip_rms: float = 1.0
    seed: int = 0
    # data and evaluation
    max_train_bytes: int = 8_000_000
    max_val_bytes: int = 1_000_000
    val_frac: float = 0.1
    eval_batches: int = 16
    quote_cases: int = 1000
    log_every: int = 50
    threads: int = 1  # torch CPU threads for the run; 0: torch's default
    out: str = str(DEFAULT_OUT)

    def model_config(self) -> dict:
        keys = ("d_model", "n_layers", "n_heads", "mlp_ratio", "ctx", "act_topk", "block_size", "format")
        return {k: getattr(self, k) for k in keys}


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


# ---------------------------------------------------------------------------- model
class AbsTopK(nn.Module):
    """Per token, keep the ``k`` entries of largest magnitude of the last dimension."""

    def __init__(self, k: int):
        super().__init__()
        self.k = int(k)

    def forward(self, x):
        if self.k <= 0 or self.k >= x.shape[-1]:
            return x
        idx = x.abs().topk(self.k, dim=-1).indices
        return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))

    def extra_repr(self):
        return f"k={self.k}"


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_hidden: int, act_topk: int):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden, bias=False)
        self.proj = nn.Linear(d_hidden, d_model, bias=False)
        self.sparse_act = AbsTopK(act_topk)

    def forward(self, x):
        return self.proj(self.sparse_act(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, act_topk: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio * d_model, act_topk)
        self.sparse_write = AbsTopK(act_topk)  # on what each sublayer writes into the residual

    def forward(self, x):
        x = x + self.sparse_write(self.attn(self.norm1(x)))
        return x + self.sparse_write(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, *, d_model=128, n_layers=2, n_heads=4, mlp_ratio=4, ctx=128, act_topk=0, **_):
        super().__init__()
        self.ctx = ctx
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, act_topk) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model)
        self.unembed = nn.Linear(d_model, VOCAB, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.ctx:
            raise ValueError(f"sequence length {t} exceeds the context {self.ctx}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.norm(x))


def build_model(model_config: dict, *, sparse: bool, seed: int | None = None) -> nn.Module:
    """The GPT of ``model_config``; with ``sparse``, every ``nn.Linear`` becomes a
    ``SparseLinear(dense_grad=True)`` holding the same weights, all blocks active (the
    density schedule starts dense). The same ``seed`` gives the same initial weights
    to the sparse and the dense model."""
    if seed is not None:
        torch.manual_seed(seed)
    model = GPT(**model_config)
    if sparse:
        model = to_sparse(model, model_config["block_size"], model_config.get("format", "auto"))
    return model


def to_sparse(model: nn.Module, block_size: int, format: str = "auto") -> nn.Module:
    """Every ``nn.Linear`` of ``model`` as a dense-start ``SparseLinear(dense_grad=True)``, in place."""
    # dense_grad: the full dense weight gradient, so a projection can regrow pruned weights.
    return sparsekern.sparsify(model, density=1.0, block_size=block_size, dense_grad=True, format=format)


def sparse_layers(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, sparsekern.SparseLinear)}


def linear_weights(model: nn.Module) -> dict:
    """Weight of every linear layer (sparse or dense), by module name."""
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, sparsekern.SparseLinear))}


# ---------------------------------------------------------------------------- training
def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then linear decay to 10%."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (1.0 - 0.9 * frac)


def clip_grad_rms_(params, max_rms: float) -> float:
    """Scale all gradients down so that the RMS over all their entries is at most ``max_rms``.

    Returns the RMS before clipping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = sum(g.numel() for g in grads)
    rms = math.sqrt(sum(float(g.pow(2).sum()) for g in grads) / max(total, 1))
    if max_rms > 0 and rms > max_rms:
        for g in grads:
            g.mul_(max_rms / rms)
    return rms


def actual_density(model: nn.Module) -> float:
    weights = list(sparse_layers(model).values())
    if not weights:
        return 1.0
    nnz = sum(int(torch.count_nonzero(m.weight)) for m in weights)
    return nnz / sum(m.weight.numel() for m in weights)


def neuron_floor(cfg: Config) -> int:
    """The Projector's per-row floor: entries in element mode; in block mode, counted in
    blocks, the fewest blocks per block row that can hold ``min_per_neuron`` entries per row."""
    if cfg.granularity == "element":
        return cfg.min_per_neuron
    return math.ceil(cfg.min_per_neuron / cfg.block_size)


def check_floor_fits(model: nn.Module, cfg: Config) -> None:
    """Fail before training, not half-way, when the floors need more than the final count:
    every layer plans its final projection (which checks the floors and writes nothing)."""
    for name, m in sparse_layers(model).items():
        try:
            m.plan_projection(cfg.density, granularity=cfg.granularity, min_per_row=neuron_floor(cfg))
        except ValueError as error:
            raise ValueError(f"--min-per-neuron {cfg.min_per_neuron} does not fit {name} at --density "
                             f"{cfg.density} ({error}): lower it or raise the density") from error


class Trainer:
    """One training run, a step at a time, so that the dense and the sparse run can take
    turns step by step and meet the same machine load; ``train`` runs one to the end.

    With ``sparse``, every linear weight is projected after each optimizer step. Each
    run draws its batches from its own generator seeded with ``cfg.seed``: the same
    batches in the same order for both. ``elapsed`` sums the run's own step times.
    """

    def __init__(self, model: nn.Module, corpus: Corpus, cfg: Config, *, sparse: bool, log=print):
        self.model, self.corpus, self.cfg, self.sparse, self.log = model, corpus, cfg, sparse, log
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.95))
        self.projector = None
        if sparse:
            check_floor_fits(model, cfg)
            schedule = sparsekern.DensitySchedule(cfg.density, cfg.steps, anneal_start=cfg.anneal_start,
                                                  anneal_end=cfg.anneal_end)
            self.projector = sparsekern.Projector(model, schedule, granularity=cfg.granularity,
                                                  min_per_neuron=neuron_floor(cfg))
        self.steps_done = 0
        self.elapsed = 0.0
        self.losses = []
        self._since_log = 0.0

    def step(self) -> float:
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        start = time.perf_counter()
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(self.steps_done, cfg)
        x, y = get_batch(self.corpus.train, cfg.batch_size, cfg.ctx, self.data_gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_rms_(self.params, cfg.grad_clip_rms)
        optimizer.step()
        if self.projector is not None:
            self.projector.step()
        value = loss.item()
        took = time.perf_counter() - start
        self.elapsed += took
        self._since_log += took
        self.losses.append(value)
        self.steps_done += 1
        done = self.steps_done
        if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
            n = done % cfg.log_every or cfg.log_every
            density = f"  density {actual_density(model):.4f}" if self.sparse else ""
            self.log(f"[{'sparse' if self.sparse else 'dense '}] step {done:5d}/{cfg.steps}  "
                     f"loss {sum(self.losses[-n:]) / n:.4f}{density}  "
                     f"{n * cfg.batch_size * cfg.ctx / self._since_log:8.0f} tok/s")
            self._since_log = 0.0
        return value

    def stats(self) -> dict:
        tail = self.losses[-20:] or [float("nan")]
        tokens = self.steps_done * self.cfg.batch_size * self.cfg.ctx
        return {"train_time_s": self.elapsed, "tokens_per_s": tokens / self.elapsed if self.elapsed else 0.0,
                "final_train_loss": sum(tail) / len(tail)}


def train(model: nn.Module, corpus: Corpus, cfg: Config, *, sparse: bool, log=print) -> dict:
    """Train ``model`` in place for ``cfg.steps`` steps (see ``Trainer``); returns its stats:
    wall time, throughput, mean loss of the last 20 steps."""
    trainer = Trainer(model, corpus, cfg, sparse=sparse, log=log)
    for _ in range(cfg.steps):
        trainer.step()
    return trainer.stats()


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


def closing_quote_offsets(source: bytes) -> list[int]:
    """Byte offsets of the closing quote of every one-line ``'...'`` / ``"..."`` literal.

    Triple-quoted strings, f-strings and strings continued over lines are left out.
    """
    text = source.decode("utf-8")
    lines = io.StringIO(text, newline="").readlines()  # the lines tokenize numbers
    line_starts, pos = [], 0
    for line in lines:
        line_starts.append(pos)
        pos += len(line.encode("utf-8"))
    offsets = []
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
            row, col = tok.end[0] - 1, tok.end[1] - 1  # the closing quote's character
            line = lines[row]
            offsets.append(line_starts[row] + len(line[:col].encode("utf-8")))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # a file tokenize cannot read to the end: keep the literals found before
    return offsets


def quote_cases(corpus: Corpus, ctx: int, max_cases: int) -> torch.Tensor:
    """Positions in ``corpus.val`` of closing quotes with ``ctx`` bytes before them.

    The model sees the ``ctx`` bytes up to the closing quote and must prefer the quote
    that opened the literal. At most ``max_cases``, evenly spread over all literals found.
    """
    val = corpus.val
    ends = [start for _, start in corpus.val_files[1:]] + [val.numel()]
    positions = []
    for (_, start), end in zip(corpus.val_files, ends):
        source = bytes(val[start:end - 1].tolist())  # without the separator
        positions.extend(start + off for off in closing_quote_offsets(source) if start + off >= ctx)
    if len(positions) > max_cases:
        step = len(positions) / max_cases
        positions = [positions[int(i * step)] for i in range(max_cases)]
    positions = torch.tensor(positions, dtype=torch.long)
    if not bool(torch.isin(val[positions], torch.tensor(QUOTES, dtype=val.dtype)).all()):
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


def layer_report(model: nn.Module, cfg: Config) -> dict:
    """Nonzeros of every sparse layer against the target count, and its active blocks."""
    report = {}
    for name, m in sparse_layers(model).items():
        numel = m.weight.numel()
        entry = {"shape": list(m.weight.shape), "nnz": int(torch.count_nonzero(m.weight)), "format": m.format}
        if isinstance(m.layout, sparsekern.BlockLayout):
            grid_rows, grid_cols = m.layout.grid
            entry.update(active_blocks=m.layout.nnz_blocks, blocks=grid_rows * grid_cols)
        else:
            entry["layout_nnz"] = m.layout.nnz
        if cfg.granularity == "element":
            entry["target_nnz"] = sparsekern.count_for_density(cfg.density, numel)
        elif "blocks" in entry:
            entry["target_blocks"] = sparsekern.count_for_density(cfg.density, entry["blocks"])
        entry["density"] = entry["nnz"] / numel
        report[name] = entry
    return report


# ---------------------------------------------------------------------------- checkpoint
def save_checkpoint(model: nn.Module, cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / CHECKPOINT)
    meta = {"model": cfg.model_config(), "density": cfg.density, "granularity": cfg.granularity}
    (out / CHECKPOINT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(out: Path) -> nn.Module:
    """The sparse model saved in ``out``: SparseLinear layers whose layouts come from the
    loaded weights (``load_state_dict`` refreshes them)."""
    out = Path(out)
    meta = json.loads((out / CHECKPOINT_CONFIG).read_text())
    model = build_model(meta["model"], sparse=True)
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
            "python": platform.python_version(), "torch": torch.__version__,
            "sparsekern": sparsekern.__version__, "backends": sparsekern.available_backends(),
            # Timings on a shared machine depend on what else runs: the 1-minute load average.
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


@dataclass
class Result:
    figures: dict  # what figures.json holds
    dense: nn.Module
    sparse: nn.Module
    corpus: Corpus


def run(cfg: Config, *, log=print) -> Result:
    """Train the dense and the sparse model on the same data, evaluate both, save the
    sparse checkpoint and ``figures.json`` in ``cfg.out``; return the figures and models."""
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        # One thread by default: the matrices are small, and on a machine shared with
        # other work, extra OpenMP threads wait on each other (measured ~10x slower with 2).
        torch.set_num_threads(cfg.threads)
    # Denormal floats (tiny gradients and Adam moments late in training) are slow on CPUs:
    # measured here, they made dense steps up to ~1.7x slower mid-run and skewed the ratio.
    # Flushing them to zero is the usual CPU-training setting; torch's default is off.
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
    cases = quote_cases(corpus, cfg.ctx, cfg.quote_cases)
    n_double = int((corpus.val[cases] == QUOTES[1]).sum()) if cases.numel() else 0

    dense = build_model(cfg.model_config(), sparse=False, seed=cfg.seed)
    sparse = to_sparse(copy.deepcopy(dense), cfg.block_size, cfg.format)  # the same initial weights
    n_params = sum(p.numel() for p in dense.parameters())
    log(f"model: {n_params / 1e6:.3f} M parameters, {len(sparse_layers(sparse))} sparse layers, "
        f"target density {cfg.density} ({cfg.granularity}), {cfg.steps} steps of {cfg.batch_size}x{cfg.ctx} tokens")

    # The two runs take turns, step by step: on a shared machine both meet the same load,
    # so the ratio of their summed step times is fair even when the load changes.
    trainers = {name: Trainer(model, corpus, cfg, sparse=name == "sparse", log=log)
                for name, model in (("dense", dense), ("sparse", sparse))}
    for _ in range(cfg.steps):
        for trainer in trainers.values():
            trainer.step()
    results = {}
    for name, trainer in trainers.items():
        model = trainer.model
        stats = trainer.stats()
        stats["val_loss"] = evaluate_loss(model, corpus, cfg)
        stats["quote_accuracy"] = quote_accuracy(model, corpus.val, cases, cfg.ctx)
        results[name] = stats
        log(f"[{name}] val loss {stats['val_loss']:.4f}  quote accuracy {stats['quote_accuracy']:.3f}  "
            f"train time {stats['train_time_s']:.1f} s")

    layers = layer_report(sparse, cfg)
    save_checkpoint(sparse, cfg, out)
    figures = {
        "config": dataclasses.asdict(cfg),
        "machine": machine,
        "corpus": {"root": corpus.root, "train_files": len(corpus.train_files), "val_files": len(corpus.val_files),
                   "train_bytes": corpus.train.numel(), "val_bytes": corpus.val.numel()},
        "parameters": n_params,
        "dense": results["dense"],
        "sparse": results["sparse"],
        "wall_time_ratio_sparse_over_dense": results["sparse"]["train_time_s"] / results["dense"]["train_time_s"],
        "layers": layers,
        "sparse_total": {"nnz": sum(v["nnz"] for v in layers.values()),
                         "numel": sum(math.prod(v["shape"]) for v in layers.values())},
        "quote": {"cases": int(cases.numel()), "double_quote_cases": n_double,
                  "majority_baseline": max(n_double, cases.numel() - n_double) / max(1, cases.numel()),
                  "sparse_accuracy": results["sparse"]["quote_accuracy"],
                  "dense_accuracy": results["dense"]["quote_accuracy"]},
    }
    figures["total_time_s"] = time.perf_counter() - t0
    (out / FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    log(summary(figures))
    log(f"saved {out / CHECKPOINT}, {out / CHECKPOINT_CONFIG}, {out / FIGURES}")
    return Result(figures, dense, sparse, corpus)


def summary(fig: dict) -> str:
    sparse, dense = fig["sparse"], fig["dense"]
    lines = ["", "=== results ===",
             f"validation loss (nats/byte): sparse {sparse['val_loss']:.4f}   dense {dense['val_loss']:.4f}",
             f"training wall time: sparse {sparse['train_time_s']:.1f} s   dense {dense['train_time_s']:.1f} s   "
             f"ratio sparse/dense {fig['wall_time_ratio_sparse_over_dense']:.2f}",
             f"quote closing ({fig['quote']['cases']} held-out cases, majority baseline "
             f"{fig['quote']['majority_baseline']:.3f}): sparse {fig['quote']['sparse_accuracy']:.3f}   "
             f"dense {fig['quote']['dense_accuracy']:.3f}",
             "nonzeros per layer (target; active blocks or the element layout):"]
    for name, v in fig["layers"].items():
        target = v.get("target_nnz", v.get("target_blocks"))
        unit = "" if "target_nnz" in v else " blocks"
        where = (f"blocks {v['active_blocks']}/{v['blocks']}" if "blocks" in v
                 else f"element layout of {v['layout_nnz']}")
        lines.append(f"  {name:22s} {str(tuple(v['shape'])):12s} nnz {v['nnz']:7d} (target {target}{unit}; {where})")
    lines.append(f"total run time {fig['total_time_s']:.1f} s")
    return "\n".join(lines)


def parse_args(argv=None) -> Config:
    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = p.add_argument
    arg("--steps", type=int, default=defaults.steps, help="training steps (both runs)")
    arg("--density", type=float, default=defaults.density, help="target fraction of nonzero weights")
    arg("--d-model", type=int, default=defaults.d_model, help="residual width")
    arg("--layers", dest="n_layers", type=int, default=defaults.n_layers, help="transformer blocks")
    arg("--heads", dest="n_heads", type=int, default=defaults.n_heads, help="attention heads")
    arg("--mlp-ratio", type=int, default=defaults.mlp_ratio, help="MLP hidden width / d_model")
    arg("--ctx", type=int, default=defaults.ctx, help="context length in bytes")
    arg("--batch-size", type=int, default=defaults.batch_size, help="windows per step")
    arg("--lr", type=float, default=defaults.lr, help="Adam peak learning rate")
    arg("--act-topk", type=int, default=defaults.act_topk,
        help="AbsTopK: keep the K largest-|.| activations per token (MLP hidden, residual writes); 0 = off")
    arg("--granularity", choices=("element", "block"), default=defaults.granularity,
        help="project single weights (the published recipe) or whole blocks")
    arg("--block-size", type=int, default=defaults.block_size, help="SparseLinear block side")
    arg("--format", choices=sparsekern.SparseLinear.FORMATS, default=defaults.format,
        help="the sparse layers' format: auto (per layer and step, the cheapest of the others for its "
             "nonzeros), dense (F.linear on the masked weight), block (32x32 blocks: at element-wise "
             "densities every block stays active) or element (the nonzeros themselves)")
    arg("--min-per-neuron", type=int, default=defaults.min_per_neuron,
        help="nonzeros kept in every output row (block mode: in blocks, rounded up)")
    arg("--grad-clip-rms", type=float, default=defaults.grad_clip_rms, help="global gradient-RMS clip; 0 = off")
    arg("--seed", type=int, default=defaults.seed, help="initial weights and data order")
    arg("--max-train-bytes", type=int, default=defaults.max_train_bytes, help="training corpus budget")
    arg("--quote-cases", type=int, default=defaults.quote_cases, help="most quote-closing cases")
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
