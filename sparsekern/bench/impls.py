"""The implementations a case times, and the problem they all run on.

* ``dense``: ``F.linear`` on the masked dense weight (cuBLAS on a GPU, MKL/oneDNN on a
  CPU): the baseline every speedup is relative to.
* ``sparsekern:<backend>``: ``sparse_linear`` with that backend forced, on a weight holding
  NaN outside its layout (a backend that reads one shows it): a ``BlockLayout``, or an
  ``ElementLayout`` for the element format's cases (block ``ELEMENT``).
* ``torch-bsr``: ``F.linear`` with the weight as ``to_sparse_bsr(block)``.
* ``torch-csr``: ``torch.sparse.mm`` with the weight as ``to_sparse_csr()``.
* ``sparseprop``: SparseProp's ``SparseLinear`` (``pip install sparseprop``; optional, imported
  only when the peer is prepared): its own CSR weight and C++ (AVX2, OpenMP) forward and
  backward kernels, CPU and fp32 only; its weight gradient is the nonzeros' values.

Before timing, each implementation runs the pass once and its results are checked
against an fp64 reference of the same problem (``verified`` in every row); torch's
sparse paths that are not implemented for a device, dtype or pass are reported as
not available, with torch's reason, instead of timed.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F

from ..element import ElementLayout
from ..block.layout import BlockLayout
from ..linear import sparse_linear
from .cases import DTYPES, ELEMENT, Case

PEERS = ("bsr", "csr", "sparseprop")
# The peers run when --peers is not given, by format: SparseProp's layer is an element-format
# (unstructured CSR) peer; where the package is not installed its row says so (n/a).
DEFAULT_PEERS = {"block": ("bsr", "csr"), "element": ("bsr", "csr", "sparseprop")}
SPARSEPROP_MISSING = "sparseprop is not installed (pip install sparseprop)"

# Relative error floor (against the largest reference entry) by dtype; the bar is the
# larger of this and twice dense F.linear's own error in that dtype on the same problem,
# the tests' rule (tests/conftest.py). Low precision: one ulp; fp32: the tests' 2e-5.
REL_FLOOR = {torch.float32: 2e-5, torch.float16: torch.finfo(torch.float16).eps,
             torch.bfloat16: torch.finfo(torch.bfloat16).eps}


class NotAvailable(Exception):
    """This implementation cannot run this case; the message says why."""


@dataclasses.dataclass
class Problem:
    """One weight, its layout and a few input sets, with the fp64 reference of set 0."""

    layout: BlockLayout | ElementLayout
    mask: torch.Tensor           # element mask of the weight
    weight_poisoned: torch.Tensor  # NaN outside the active blocks
    weight_masked: torch.Tensor    # zeros outside the active blocks
    xs: list
    grads: list
    reference: dict = dataclasses.field(default_factory=dict)

    @property
    def nnz_elements(self) -> int:
        return int(self.mask.sum())

    def expected(self) -> dict:
        if not self.reference:
            x, g, w = self.xs[0].double(), self.grads[0].double(), self.weight_masked.double()
            self.reference = {"y": F.linear(x, w), "dx": g @ w,
                              "dw": torch.where(self.mask, g.t() @ x, 0)}
        return self.reference


def make_problem(case: Case, device: torch.device, n_sets: int, seed: int) -> Problem:
    dtype = DTYPES[case.dtype]
    shape = (case.shape.n, case.shape.k)
    layout_gen = torch.Generator().manual_seed(seed)
    if case.block == ELEMENT:
        layout = ElementLayout.random(shape, case.density, generator=layout_gen, device=device)
    else:
        layout = BlockLayout.random(shape, case.block, case.density, generator=layout_gen, device=device)
    mask = layout.to_mask()
    gen = torch.Generator(device=device).manual_seed(seed)  # data drawn where it lives: fast for big GPU cases

    def randn(*size, scale=1.0):
        return (torch.randn(size, generator=gen, device=device) * scale).to(dtype)

    # No exact zero on the layout (randn draws one now and then, and fp16/bf16 round tiny ones to 0):
    # converters that keep nonzeros (to_sparse_csr, SparseProp's scipy CSR) would drop the entry,
    # and with it its weight gradient, so the check would flag a peer for the data, not its kernel.
    w = randn(*shape)
    w = w.masked_fill(w == 0, 1.0)
    xs = [randn(case.shape.m, case.shape.k, scale=case.shape.k ** -0.5) for _ in range(n_sets)]  # outputs ~ 1
    grads = [randn(case.shape.m, case.shape.n) for _ in range(n_sets)]
    return Problem(layout, mask, torch.where(mask, w, float("nan")), torch.where(mask, w, 0), xs, grads)


def input_sets(case: Case, device: torch.device) -> int:
    """How many input sets to rotate through so that, on a GPU, their operands outgrow L2."""
    if device.type != "cuda":
        return 2
    itemsize = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    per_set = (case.shape.m * (case.shape.k + case.shape.n)) * itemsize
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    return int(min(8, max(2, -(-2 * l2 // per_set))))


# ------------------------------------------------------------------ implementations
class Impl:
    """How one implementation computes ``y = x W^T`` differentiably."""

    name = ""
    kind = ""  # "dense", "sparsekern" or "peer"
    weight_grad_off_layout_zero = False  # its dW is exactly zero off the layout (checked)

    def prepare(self, problem: Problem, case: Case):
        """Per-problem state (converted weights); raises NotAvailable."""
        raise NotImplementedError

    def apply(self, state, x):
        raise NotImplementedError

    def weight_of(self, state):
        """The leaf the weight gradient is taken for."""
        return state

    def dense_weight_grad(self, grad) -> torch.Tensor:
        return grad


class Dense(Impl):
    name, kind = "dense", "dense"

    def prepare(self, problem, case):
        return problem.weight_masked.clone().requires_grad_()

    def apply(self, state, x):
        return F.linear(x, state)


class Sparsekern(Impl):
    kind = "sparsekern"
    weight_grad_off_layout_zero = True

    def __init__(self, backend: str):
        self.backend = backend
        self.name = backend

    def prepare(self, problem, case):
        weight = problem.weight_poisoned
        reasons = backend_reasons(self.backend, case, weight.device, weight.dtype)
        if reasons:
            raise NotAvailable("; ".join(reasons))
        return weight.clone().requires_grad_(), problem.layout

    def apply(self, state, x):
        weight, layout = state
        return sparse_linear(x, weight, layout, backend=self.backend)

    def weight_of(self, state):
        return state[0]


class TorchBsr(Impl):
    name, kind = "torch-bsr", "peer"

    def prepare(self, problem, case):
        n, k = problem.weight_masked.shape
        bo, bi = case.block
        if case.block == ELEMENT:
            raise NotAvailable("a BSR weight needs blocks (this case is the element format)")
        if n % bo or k % bi:
            raise NotAvailable(f"to_sparse_bsr needs the shape {n}x{k} to be a multiple of the block {bo}x{bi}")
        with warnings.catch_warnings():  # "Sparse BSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return problem.weight_masked.to_sparse_bsr((bo, bi)).requires_grad_()

    def apply(self, state, x):
        return F.linear(x, state)

    def dense_weight_grad(self, grad):
        return grad.to_dense()


class TorchCsr(Impl):
    name, kind = "torch-csr", "peer"

    def prepare(self, problem, case):
        return problem.weight_masked.to_sparse_csr().requires_grad_()

    def apply(self, state, x):
        return torch.sparse.mm(state, x.t()).t()

    def dense_weight_grad(self, grad):
        return grad.to_dense()


class SparseProp(Impl):
    """SparseProp's ``SparseLinear`` built from the masked weight, as its README does
    (``SparseLinear(dense_weight)``, i.e. ``SparseLinear.from_dense(linear)``): x is [M, K] like
    ``F.linear``'s (the layer transposes it to [K, M] for its kernels and y back itself); the
    weight leaf is ``W_val``, the nonzeros in CSR order, and so is its gradient: the check
    scatters it onto the dense [N, K] grid (``dense_weight_grad``), zeros elsewhere."""

    name, kind = "sparseprop", "peer"
    weight_grad_off_layout_zero = True  # a scatter of the nonzeros' gradient: exactly zero elsewhere

    def prepare(self, problem, case):
        weight = problem.weight_masked
        if weight.device.type != "cpu":
            raise NotAvailable("sparseprop's kernels are CPU only")
        if weight.dtype != torch.float32:
            raise NotAvailable(f"sparseprop's kernels are fp32 only (this case is {case.dtype})")
        layer_cls = import_sparseprop()
        layer = layer_cls(weight.detach().clone())
        indptr, indices = layer.W_idx
        # It converts through scipy (zeros dropped) and passes the indices through fp32
        # (exact below 2**24): its pattern must be the layout's, or its rows are not this problem.
        rows = torch.repeat_interleave(torch.arange(weight.shape[0]), indptr.diff().long())
        cols = indices.long()
        if len(cols) != problem.nnz_elements or not bool(problem.mask[rows, cols].all()):
            raise NotAvailable(f"SparseLinear's CSR holds {len(cols)} entries, not the layout's "
                               f"{problem.nnz_elements} (it keeps nonzeros only; its indices pass through fp32)")
        self._index, self._shape = (rows, cols), tuple(weight.shape)
        return layer

    def apply(self, state, x):
        return state(x)

    def weight_of(self, state):
        return state.W_val

    def dense_weight_grad(self, grad):
        dense = grad.new_zeros(self._shape)
        dense[self._index] = grad
        return dense


def import_sparseprop():
    """``sparseprop.modules.SparseLinear``, imported on first use (never with sparsekern), or
    ``NotAvailable`` saying why not. Its OpenMP kernels share torch's libgomp (same soname):
    they run on torch's thread count (``--threads``)."""
    try:
        from sparseprop.modules import SparseLinear
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] == "sparseprop":
            raise NotAvailable(SPARSEPROP_MISSING) from None
        raise NotAvailable(f"sparseprop cannot be imported: {err}") from None
    except ImportError as err:  # e.g. its extension built for another CPU or Python
        raise NotAvailable(f"sparseprop cannot be imported: {err}") from None
    return SparseLinear


def backend_reasons(name: str, case: Case, device, dtype) -> list[str]:
    """Why sparsekern backend ``name`` cannot run ``case`` (its format's registry); empty if it can."""
    if case.block == ELEMENT:
        from ..element.backends import REGISTRY

        if name not in REGISTRY.names():
            return [f"{name} has no element-format backend"]
        return REGISTRY.get(name).reasons(device, dtype, None)
    from ..block.backends import get_backend

    return get_backend(name).reasons(device, dtype, case.block)


def memory_floor(problem: Problem, pass_: str):
    """``fn(i)`` reading the pass's inputs and writing its outputs once each (a sum and a fill):
    the memory traffic no implementation of the pass avoids."""
    n = len(problem.xs)
    x0, g0, w = problem.xs[0], problem.grads[0], problem.weight_masked
    outputs = {"forward": [g0.new_empty(g0.shape)],
               "backward": [x0.new_empty(x0.shape), w.new_empty(w.shape)],
               "forward+backward": [g0.new_empty(g0.shape), x0.new_empty(x0.shape), w.new_empty(w.shape)]}[pass_]
    reads = {"forward": ("xs",), "backward": ("xs", "grads"), "forward+backward": ("xs", "grads")}[pass_]

    def floor(i):
        for name in reads:
            getattr(problem, name)[i % n].sum()
        for out in outputs:
            out.zero_()
        return outputs
    return floor


# torch's own paths by the name they are reported under (the peers as --peers spells them:
# "torch-" + one of PEERS).
BASELINES = {"dense": Dense, "torch-bsr": TorchBsr, "torch-csr": TorchCsr}
# Peers from other packages, optional (not in BASELINES: benchmarks/ runs those unconditionally).
OTHER_PEERS = {"sparseprop": SparseProp}


def peer_name(peer: str) -> str:
    """The name a --peers entry is reported under: torch-bsr, torch-csr, sparseprop."""
    return peer if peer in OTHER_PEERS else f"torch-{peer}"


def by_name(name: str) -> Impl:
    """dense, torch-bsr, torch-csr, sparseprop, or a sparsekern backend."""
    if name in OTHER_PEERS:
        return OTHER_PEERS[name]()
    return BASELINES[name]() if name in BASELINES else Sparsekern(name)


def implementations(backends: list[str], peers: list[str]) -> list[Impl]:
    """Dense first (the baseline), then sparsekern's backends, then the peers (torch's sparse
    paths, SparseProp)."""
    impls: list[Impl] = [Dense()] + [Sparsekern(b) for b in backends]
    impls += [by_name(peer_name(p)) for p in peers]
    return impls


# ------------------------------------------------------------------ passes
def pass_callable(impl: Impl, state, problem: Problem, pass_: str):
    """``fn(i)`` running ``pass_`` on input set ``i % n`` with ``impl``."""
    n = len(problem.xs)
    weight = impl.weight_of(state)
    if pass_ == "forward":
        def forward(i):
            with torch.no_grad():
                return impl.apply(state, problem.xs[i % n])
        return forward

    xs = [x.detach().clone().requires_grad_() for x in problem.xs]
    if pass_ == "backward":
        ys = [impl.apply(state, x) for x in xs]  # graphs kept; only the backward is timed

        def backward(i):
            j = i % n
            return torch.autograd.grad(ys[j], (xs[j], weight), problem.grads[j], retain_graph=True)
        return backward

    def forward_backward(i):
        j = i % n
        y = impl.apply(state, xs[j])
        return (y, *torch.autograd.grad(y, (xs[j], weight), problem.grads[j]))
    return forward_backward


def relative_errors(impl: Impl, problem: Problem, pass_: str, out) -> dict[str, float]:
    """Each result's largest error, relative to the largest reference entry."""
    expected = problem.expected()
    if pass_ == "forward":
        got = {"y": out}
    elif pass_ == "backward":
        got = {"dx": out[0], "dw": out[1]}
    else:
        got = {"y": out[0], "dx": out[1], "dw": out[2]}
    errors = {}
    for key, value in got.items():
        value = value.detach()
        if key == "dw":
            value = impl.dense_weight_grad(value)
            if not impl.weight_grad_off_layout_zero:  # dense computes dW everywhere: compare on the layout
                value = torch.where(problem.mask, value, 0)
        ref = expected[key]
        scale = ref.abs().max().item() or 1.0
        diff = (value.double() - ref).abs().max().item()
        errors[key] = diff / scale if diff == diff else float("inf")  # NaN -> inf
    return errors


def tolerance(dtype: torch.dtype, dense_error: float | None) -> float:
    floor = REL_FLOOR.get(dtype, 1e-10)
    return max(floor, 2 * dense_error) if dense_error is not None else floor
