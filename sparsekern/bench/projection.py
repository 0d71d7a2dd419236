"""The projection pass: ``sparsekern.topk_project_`` against a plain-torch top-k.

Granularity ``block`` keeps the ``k`` blocks of largest L2 norm; ``element`` (written
block ``1x1`` in the tables) keeps the ``k`` entries of largest magnitude. Each
backend's result is checked against the torch baseline (same entries kept, kept
values untouched; in element mode, entries tied at the k-th magnitude may differ) before timing. The projection works in place, so every timed call
gets the original weight back first, untimed.
"""

from __future__ import annotations

import torch

from ..block.layout import block_grid, count_for_density, expand_block_mask
from ..module import block_norms, top_blocks
from .cases import DTYPES, ELEMENT, Case
from .impls import NotAvailable


def granularity(case: Case) -> str:
    return "element" if case.block == ELEMENT else "block"


def keep_count(case: Case) -> int:
    """``k`` for ``topk_project_``: entries kept (element) or blocks kept (block)."""
    n, k = case.shape.n, case.shape.k
    if case.block == ELEMENT:
        return count_for_density(case.density, n * k)
    rows, cols = block_grid((n, k), case.block)
    return count_for_density(case.density, rows * cols)


def torch_topk_(weight: torch.Tensor, k: int, gran: str, block) -> torch.Tensor:
    """The baseline: torch.topk on magnitudes (element) or block norms (block), then a masked fill."""
    if gran == "element":
        flat = weight.view(-1)
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device)
        keep[torch.topk(flat.abs(), k, sorted=False).indices] = True
        flat.masked_fill_(~keep, 0)
        return weight
    blocks = top_blocks(block_norms(weight, block), k)
    return weight.masked_fill_(~expand_block_mask(blocks, block, weight.shape), 0)


def callables(case: Case, device: torch.device, backends: list[str], seed: int, original: torch.Tensor | None = None):
    """``[(name, kind, fn(i), setup(i), check())]``: the torch baseline first, then each backend.

    ``check()`` runs the projection once on the original weight and returns the fraction
    of entries whose kept/zeroed status or value differs from the baseline's (0 is right).
    """
    import sparsekern

    if original is None:  # a test may give its own (with ties, say)
        gen = torch.Generator(device=device).manual_seed(seed)
        original = torch.randn(case.shape.n, case.shape.k, generator=gen, device=device).to(DTYPES[case.dtype])
    k, gran = keep_count(case), granularity(case)
    expected = torch_topk_(original.clone(), k, gran, case.block)
    # Element mode: torch.topk keeps any of the entries tied at the k-th magnitude (and a large
    # random weight has such ties), sparsekern the lowest indices; either is right there.
    tied = None
    if gran == "element" and 0 < k <= original.numel():
        magnitude = original.abs()
        tied = magnitude == magnitude.flatten().kthvalue(original.numel() - k + 1).values

    def make(project):
        work = original.clone()

        def setup(i):
            work.copy_(original)

        def fn(i):
            project(work)

        def check():
            setup(0)
            fn(0)
            same = (work == expected) | (work.isnan() & expected.isnan())
            if tied is not None and (work != 0).sum() == (expected != 0).sum():
                same |= tied
            return 1.0 - same.float().mean().item()
        return fn, setup, check

    out = [("torch-topk", "baseline", *make(lambda w: torch_topk_(w, k, gran, case.block)))]
    if gran == "block":  # block scores are a small grid: one code path whatever the backend
        out.append(("sparsekern", "sparsekern", *make(
            lambda w: sparsekern.topk_project_(w, k, granularity="block", block_size=case.block))))
        return out
    for name in backends:
        def project(w, name=name):
            sparsekern.topk_project_(w, k, granularity="element", backend=name)
        out.append((name, "sparsekern", *make(project)))
    return out


def backend_names(named, device: torch.device, dtypes) -> list[str]:
    """Projection backends to time: those in ``named`` it knows, or every automatic one that can run."""
    from ..projection.backends import REGISTRY

    if named is not None:
        return [n for n in named if n in REGISTRY.names()]
    return [n for n in REGISTRY.names() if REGISTRY.get(n).automatic(device)
            and any(not REGISTRY.get(n).reasons(device, d, None) for d in dtypes)]


def probe(check) -> float:
    """Run a check, turning a backend's refusal (it cannot run this dtype or device) into NotAvailable."""
    from ..backend import BackendUnavailableError

    try:
        return check()
    except BackendUnavailableError as err:
        raise NotAvailable(" ".join(str(err).split())) from err
