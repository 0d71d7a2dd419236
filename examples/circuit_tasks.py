"""The end-to-end example's GPT as ``sparsekern.circuits`` sees it (its node sites and the
matrices between them), and two binary next-token tasks from held-out Python source.

Node sites (the paper's node locations; each an AbsTopK module of ``train_sparse_gpt.GPT``,
masked after its AbsTopK): per block ``i`` ``blocks.i.act_norm1`` (residual channels after the
first RMSNorm), ``blocks.i.attn.act_q``/``act_k``/``act_v`` (q, k, v channels, heads
concatenated), ``blocks.i.act_norm2``, ``blocks.i.mlp.act`` (MLP neurons after GELU),
``blocks.i.act_resid`` (the residual stream at the end of the block); then ``act_final``.

Edges (``gpt_graph``): a nonzero weight between a kept input node and a kept output node of
    blocks.i.attn.qkv   act_norm1          -> act_q, act_k, act_v  (rows: q, then k, then v)
    blocks.i.attn.out   act_v              -> act_resid            (attention mixes positions, not channels:
                                                                    out's column c reads v channel c)
    blocks.i.mlp.fc     act_norm2          -> mlp.act              (fc row j is neuron j before GELU)
    blocks.i.mlp.proj   mlp.act            -> act_resid
    unembed             act_final          -> the two candidate tokens' logits
Not counted (no weight matrix): q-k products, the residual additions, the RMSNorm gains, and
the embeddings.

Tasks (``BinaryTask``, the last ``ctx`` bytes before the answer as the prompt), both balanced (as
many cases of either answer, so knowing nothing costs ln 2 nats), each as two tasks from disjoint
held-out files (``split_by_file``): one to learn the masks on, one to bisect and report on:
* ``quote``: close a one-line string with the quote that opened it, ``'`` or ``"`` (the example's
  ``quote_cases``: the opening quote lies within the prompt);
* ``bracket``: close the innermost open bracket with ``)`` or ``]``, at every ``)`` or ``]`` of
  held-out source whose opener lies within the prompt (nested brackets make it a matter of
  depth: in ``f(a[i], b)`` the ``]`` closes before the ``)``).
"""

from __future__ import annotations

import importlib.util
import io
import sys
import tokenize
from pathlib import Path

import torch

from sparsekern.circuits import BinaryTask, CircuitGraph, MatrixEdges

HERE = Path(__file__).resolve().parent


def load_example():
    """``examples/train_sparse_gpt.py`` as a module (registered in ``sys.modules``)."""
    name = "train_sparse_gpt"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "train_sparse_gpt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- the GPT's graph
BLOCK_SITES = ("act_norm1", "attn.act_q", "attn.act_k", "attn.act_v", "act_norm2", "mlp.act", "act_resid")


def gpt_sites(model) -> list:
    """The node sites of the GPT, in the order of the forward pass."""
    sites = [f"blocks.{i}.{s}" for i in range(len(model.blocks)) for s in BLOCK_SITES]
    return sites + ["act_final"]


def gpt_graph(model, candidates) -> CircuitGraph:
    """The matrices of the GPT between its sites (module docstring); the logits' kept nodes are
    the task's two candidate tokens."""
    matrices = []
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        matrices += [MatrixEdges(f"{b}.attn.qkv", (f"{b}.act_norm1",),
                                 (f"{b}.attn.act_q", f"{b}.attn.act_k", f"{b}.attn.act_v")),
                     MatrixEdges(f"{b}.attn.out", (f"{b}.attn.act_v",), (f"{b}.act_resid",)),
                     MatrixEdges(f"{b}.mlp.fc", (f"{b}.act_norm2",), (f"{b}.mlp.act",)),
                     MatrixEdges(f"{b}.mlp.proj", (f"{b}.mlp.act",), (f"{b}.act_resid",))]
    matrices.append(MatrixEdges("unembed", ("act_final",), ("logits",)))
    vocab = model.unembed.out_features
    return CircuitGraph(matrices, fixed_nodes={"logits": (vocab, [int(c) for c in candidates])})


# ---------------------------------------------------------------------------- tasks
def bracket_close_offsets(source: bytes) -> list:
    """``(offset of the closer, offset of its opener)`` of every ``)`` or ``]`` that closes a
    ``(`` or ``[`` in ``source`` (by the tokenizer: brackets in strings and comments do not count)."""
    text = source.decode("utf-8")
    offset = load_example().byte_offsets(text)
    pairs, stack = [], []

    try:
        for tok in tokenize.generate_tokens(io.StringIO(text, newline="").readline):
            if tok.type != tokenize.OP or tok.string not in "()[]{}" or len(tok.string) != 1:
                continue
            if tok.string in "([{":
                stack.append((tok.string, offset(*tok.start)))
            elif stack:
                opener, where = stack.pop()
                if tok.string in ")]" and opener + tok.string in ("()", "[]"):
                    pairs.append((offset(*tok.start), where))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # a file tokenize cannot read to the end: keep the pairs found before
    return pairs


def _spread(positions: list, max_cases: int) -> list:
    if max_cases <= 0:
        return []
    if len(positions) > max_cases:
        step = len(positions) / max_cases
        positions = [positions[int(i * step)] for i in range(max_cases)]
    return positions


def bracket_cases(corpus, ctx: int) -> torch.Tensor:
    """Positions in ``corpus.val`` of the ``)``/``]`` closers whose opener is in the prompt."""
    return torch.tensor(load_example().visible_closer_cases(corpus, ctx, bracket_close_offsets), dtype=torch.long)


def quote_cases(corpus, ctx: int) -> torch.Tensor:
    """Closing quotes whose opening quote is in the prompt: the example's quote-closing cases."""
    return load_example().quote_cases(corpus, ctx, max_cases=10**9)


def task_from_positions(name: str, val: torch.Tensor, positions: torch.Tensor, ctx: int, candidates) -> BinaryTask:
    """The ``BinaryTask`` whose prompts are the ``ctx`` bytes before each position and whose
    answer is the byte at it (one of ``candidates``)."""
    inputs = val[positions[:, None] - ctx + torch.arange(ctx)].long()
    answer = val[positions].long()
    labels = (answer == candidates[1]).long()
    if not bool(((answer == candidates[0]) | (answer == candidates[1])).all()):
        raise RuntimeError(f"task {name}: an answer is neither candidate")
    return BinaryTask(name, inputs, tuple(candidates), labels)


def split_by_file(corpus, positions: torch.Tensor) -> tuple:
    """``(mask-training positions, evaluation positions)``: the cases of the even-numbered held-out
    files and of the odd-numbered ones. No file gives cases to both, so a circuit cannot score
    by what is common to one file (a name, a style of quoting)."""
    starts = torch.tensor([start for _, start in corpus.val_files], dtype=torch.long)
    file_index = torch.searchsorted(starts, positions, right=True) - 1
    even = file_index % 2 == 0
    return positions[even], positions[~even]


def balanced(name: str, val: torch.Tensor, positions: torch.Tensor, candidates, max_cases: int) -> torch.Tensor:
    """As many positions answered by either candidate (at most ``max_cases // 2`` each, as many as
    the rarer one has), evenly spread over the cases in corpus order: the tasks are balanced,
    so a model that knows nothing scores ln 2. A ``ValueError`` naming task ``name`` when that
    leaves no case."""
    of_class = [positions[val[positions] == c].tolist() for c in candidates]
    per_class = min(max_cases // 2, *map(len, of_class))
    if per_class < 1:
        raise ValueError(f"task {name}: no balanced cases (max_cases {max_cases}; cases per answer "
                         f"{ {chr(c): len(p) for c, p in zip(candidates, of_class)} }): more held-out source "
                         f"or a larger max_cases")
    chosen = []
    for cases in of_class:
        chosen += _spread(cases, per_class)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def build_tasks(corpus, ctx: int, max_cases: int) -> dict:
    """``{"quote": (train, eval), "bracket": (train, eval)}``: two ``BinaryTask`` each from disjoint
    held-out files (``split_by_file``), each balanced (at most ``max_cases // 4`` cases of either
    answer): the masks are learned on ``train``, and the bisection and every reported loss use
    ``eval``."""
    ex = load_example()
    specs = {"quote": (quote_cases(corpus, ctx), ex.QUOTES),
             "bracket": (bracket_cases(corpus, ctx), (ord(")"), ord("]")))}
    return {name: tuple(task_from_positions(name, corpus.val, balanced(f"{name} ({half})", corpus.val, part,
                                                                       candidates, max_cases // 2), ctx, candidates)
                        for half, part in zip(("mask training", "evaluation"), split_by_file(corpus, positions)))
            for name, (positions, candidates) in specs.items()}
