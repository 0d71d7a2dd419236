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
many cases of either answer, so knowing nothing costs ln 2 nats):
* ``quote``: close a one-line string with the quote that opened it, ``'`` or ``"`` (the literals
  of the example's ``quote_cases``), where the opening quote lies within the prompt;
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
def _line_offsets(text: str) -> tuple:
    lines = io.StringIO(text, newline="").readlines()
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line.encode("utf-8"))
    return lines, starts


def bracket_close_offsets(source: bytes, ctx: int) -> list:
    """``(offset of the closer, offset of its opener)`` of every ``)`` or ``]`` that closes a
    ``(`` or ``[`` in ``source`` (by the tokenizer: brackets in strings and comments do not count)."""
    text = source.decode("utf-8")
    lines, starts = _line_offsets(text)
    pairs, stack = [], []

    def offset(row, col):
        return starts[row - 1] + len(lines[row - 1][:col].encode("utf-8"))

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


def quote_close_offsets(source: bytes) -> list:
    """``(offset of the closing quote, offset of the opening quote)`` of every one-line
    ``'...'``/``"..."`` literal: the literals ``train_sparse_gpt.closing_quote_offsets`` keeps
    (no triple quotes, no f-strings, one line), with where each opens."""
    ex = load_example()
    text = source.decode("utf-8")
    lines, starts = _line_offsets(text)
    pairs = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text, newline="").readline):
            if tok.type != tokenize.STRING or tok.start[0] != tok.end[0]:
                continue
            body = tok.string.lstrip("rRbBuU")
            prefix = tok.string[: len(tok.string) - len(body)].lower()
            if prefix not in ex._STRING_PREFIXES or len(body) < 2 or body[:3] in ("'''", '"""'):
                continue
            if body[0] != body[-1] or body[0] not in "'\"":
                continue
            row, line = tok.start[0] - 1, lines[tok.start[0] - 1]
            opener = starts[row] + len(line[:tok.start[1] + len(prefix)].encode("utf-8"))
            closer = starts[row] + len(line[:tok.end[1] - 1].encode("utf-8"))
            pairs.append((closer, opener))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # a file tokenize cannot read to the end: keep the literals found before
    return pairs


def _spread(positions: list, max_cases: int) -> list:
    if len(positions) > max_cases:
        step = len(positions) / max_cases
        positions = [positions[int(i * step)] for i in range(max_cases)]
    return positions


def visible_cases(corpus, ctx: int, max_cases: int, pairs_of, answers) -> torch.Tensor:
    """Positions in ``corpus.val`` of the closers ``pairs_of(source)`` finds whose opener is
    within the ``ctx`` bytes before them (the prompt shows it), evenly spread, at most ``max_cases``."""
    val = corpus.val
    ends = [start for _, start in corpus.val_files[1:]] + [val.numel()]
    positions = []
    for (_, start), end in zip(corpus.val_files, ends):
        source = bytes(val[start:end - 1].tolist())  # without the separator
        positions.extend(start + close for close, opener in pairs_of(source)
                         if close - opener <= ctx and start + close >= ctx)
    positions = torch.tensor(_spread(positions, max_cases), dtype=torch.long)
    if positions.numel() and not bool(torch.isin(val[positions], torch.tensor(answers, dtype=val.dtype)).all()):
        raise RuntimeError(f"a case does not point at one of {[chr(a) for a in answers]}")  # an offset bug
    return positions


def bracket_cases(corpus, ctx: int, max_cases: int) -> torch.Tensor:
    """``)``/``]`` closers whose opener is in the prompt."""
    return visible_cases(corpus, ctx, max_cases, lambda src: bracket_close_offsets(src, ctx), (ord(")"), ord("]")))


def quote_cases(corpus, ctx: int, max_cases: int) -> torch.Tensor:
    """Closing quotes whose opening quote is in the prompt (a longer literal hides the answer)."""
    return visible_cases(corpus, ctx, max_cases, quote_close_offsets, load_example().QUOTES)


def task_from_positions(name: str, val: torch.Tensor, positions: torch.Tensor, ctx: int, candidates) -> BinaryTask:
    """The ``BinaryTask`` whose prompts are the ``ctx`` bytes before each position and whose
    answer is the byte at it (one of ``candidates``)."""
    inputs = val[positions[:, None] - ctx + torch.arange(ctx)].long()
    answer = val[positions].long()
    labels = (answer == candidates[1]).long()
    if not bool(((answer == candidates[0]) | (answer == candidates[1])).all()):
        raise RuntimeError(f"task {name}: an answer is neither candidate")
    return BinaryTask(name, inputs, tuple(candidates), labels)


def split_task(task: BinaryTask) -> tuple:
    """Even-numbered cases to train the masks, odd-numbered ones to bisect and report on (both
    spread over every held-out file)."""
    index = torch.arange(len(task))
    return task.subset(index[0::2]), task.subset(index[1::2])


def balanced(val: torch.Tensor, positions: torch.Tensor, candidates, max_cases: int) -> torch.Tensor:
    """At most ``max_cases // 2`` positions answered by each candidate, evenly spread over the
    files, in corpus order: the tasks are balanced, so a model that knows nothing scores ln 2."""
    per_class = max_cases // 2
    chosen = []
    for c in candidates:
        of_class = positions[val[positions] == c].tolist()
        chosen += _spread(of_class, per_class)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def build_tasks(corpus, ctx: int, max_cases: int) -> dict:
    """``{"quote": BinaryTask, "bracket": BinaryTask}`` from the corpus's held-out files, each
    with as many cases of either answer (at most ``max_cases // 2`` each)."""
    ex = load_example()
    many = 10**9
    specs = {"quote": (quote_cases(corpus, ctx, many), ex.QUOTES),
             "bracket": (bracket_cases(corpus, ctx, many), (ord(")"), ord("]")))}
    return {name: task_from_positions(name, corpus.val, balanced(corpus.val, positions, cands, max_cases), ctx, cands)
            for name, (positions, cands) in specs.items()}
