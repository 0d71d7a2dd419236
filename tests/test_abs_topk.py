"""AbsTopK (``sparsekern.abs_topk``, ``sparsekern.AbsTopK``): every backend that runs here
against the sort-based reference, bit for bit, with poisoned outputs; the reference against a
brute-force oracle and against torch.topk + scatter; ties, NaN/Inf, -0/+0; k = 0, 1, n; odd and
long rows; 1-D to 3-D, non-contiguous and empty inputs; every dtype; gradients; opcheck;
torch.compile; bad input; every CPU instruction set; the C++ entry point's checks."""

from __future__ import annotations

import math

import pytest
import torch

import sparsekern
from sparsekern._alloc import poisoned_outputs
from sparsekern._extension import extension
from sparsekern.activation import AbsTopK, AbsTopKFunction, abs_topk, ops, reference
from sparsekern.activation.backends import REGISTRY
from sparsekern.backend import BackendUnavailableError

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The backends that run CPU tensors for speed or as the oracle; the GPU backends (triton under
# the interpreter included) have tests of their own.
BACKENDS = [name for name in ("cpu", "reference")
            if not REGISTRY.get(name).reasons(torch.device("cpu"), torch.float32, None)]
CASES = [pytest.param(b, d, id=f"{b}-{str(d)[6:]}") for b in BACKENDS for d in DTYPES if d in REGISTRY.get(b).dtypes]
COMPILED = "cpu" in BACKENDS
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64,
         torch.float16: torch.int16, torch.bfloat16: torch.int16}
# Odd lengths around the kernel's paths: nth_element rows (<= 64), radix rows, partial groups of
# 64, one more than a power of two; 70001 is longer than a 16-bit counter or bin range.
LENGTHS = (1, 2, 7, 33, 64, 65, 130, 1000, 8193)


def assert_bitwise(actual, expected, what="values"):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, f"{what}: {actual.shape} {actual.dtype}"
    bits = _BITS[actual.dtype]
    same = actual.contiguous().view(bits) == expected.contiguous().view(bits)
    if not bool(same.all()):
        where = (~same).nonzero()[:5].tolist()
        at = tuple(zip(*where))
        raise AssertionError(f"{what} differ at {where}: {actual[at]} vs {expected[at]}")


def make(kind: str, shape, dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "ties":  # many equal magnitudes, of both signs
        x = torch.round(x * 2) / 2
    elif kind == "signed_equal":  # every magnitude equal: pure index order
        x = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.5, 1.5).double()
    elif kind == "zeros":  # -0 and +0 tie; a few nonzeros
        x = torch.where(torch.rand(shape, generator=gen) < 0.5, -0.0, 0.0).double()
        some = torch.rand(shape, generator=gen) < 0.1
        x = torch.where(some, x + torch.randn(shape, generator=gen, dtype=torch.float64), x)
    elif kind == "special":  # NaN (with a sign and payloads), +-Inf, +-0 among normal values
        r = torch.rand(shape, generator=gen)
        x = torch.where(r < 0.1, math.nan, x)
        x = torch.where((r >= 0.1) & (r < 0.15), -math.nan, x)
        x = torch.where((r >= 0.15) & (r < 0.2), math.inf, x)
        x = torch.where((r >= 0.2) & (r < 0.25), -math.inf, x)
        x = torch.where((r >= 0.25) & (r < 0.3), -0.0, x)
    elif kind == "all_nan":
        x = torch.full(shape, math.nan, dtype=torch.float64)
    elif kind == "tiny":  # subnormals of the dtype, and values that round to zero in it
        x = x * {torch.float32: 1e-40, torch.float64: 1e-310, torch.float16: 1e-6, torch.bfloat16: 1e-40}[dtype]
    x = x.to(dtype)
    if kind == "special" and x.numel():  # NaNs with other payloads than torch's canonical one
        flat = x.view(-1).view(_BITS[dtype])
        nan = torch.isnan(x.view(-1))
        flat[nan] = flat[nan] | torch.randint(0, 4, flat[nan].shape, generator=gen).to(_BITS[dtype])
    return x


def run(x, k, backend):
    """The backend's (values, kept) through the operator, outputs poisoned."""
    with poisoned_outputs():
        return ops.abs_topk(x, k, backend)


def check(x, k, backend):
    values, kept = run(x, k, backend)
    ref_values, ref_kept = reference.abs_topk(x, k)
    assert torch.equal(kept, ref_kept), f"kept differs for k={k}, shape {tuple(x.shape)}"
    assert_bitwise(values, ref_values)
    assert int(kept.sum()) == k * (x.numel() // max(x.shape[-1], 1))
    return values, kept


# ------------------------------------------------------------------ the reference itself


def brute_force_order(row: list[float]) -> list[int]:
    def rank(v):
        return (2, 0.0) if math.isnan(v) else (1, 0.0) if math.isinf(v) else (0, abs(v))
    return sorted(range(len(row)), key=lambda i: (tuple(-r for r in rank(row[i])), i))


@pytest.mark.parametrize("kind", ["normal", "ties", "signed_equal", "zeros", "special", "all_nan"])
def test_reference_order_matches_brute_force(kind):
    for n in (1, 5, 33):
        x = make(kind, (4, n), torch.float32, seed=n)
        order = reference.magnitude_order(x)
        for r in range(4):
            assert order[r].tolist() == brute_force_order(x[r].tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_matches_torch_topk_without_ties(dtype):
    # The published code's path: torch.topk on |x|, gather, scatter into zeros.
    x = make("normal", (6, 300), dtype, seed=3)
    for k in (1, 17, 150, 299):
        idx = torch.topk(x.abs(), k, dim=-1).indices
        expected = torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))
        for backend in BACKENDS:
            if dtype in REGISTRY.get(backend).dtypes:
                assert_bitwise(abs_topk(x, k, backend=backend), expected)


# --------------------------------------------------------------- backends against it


@pytest.mark.parametrize("kind", ["normal", "ties", "signed_equal", "zeros", "special", "all_nan", "tiny"])
@pytest.mark.parametrize("backend,dtype", CASES)
def test_matches_reference(backend, dtype, kind):
    for n in LENGTHS:
        x = make(kind, (3, n), dtype, seed=n)
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            check(x, k, backend)


@pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_long_rows(dtype):
    for kind in ("normal", "ties"):
        x = make(kind, (2, 70001), dtype, seed=7)
        for k in (1, 20000, 69999):
            check(x, k, "cpu")


@pytest.mark.parametrize("backend,dtype", CASES)
def test_the_semantics_by_hand(backend, dtype):
    nan, inf = math.nan, math.inf

    def kept_of(row, k):
        return run(torch.tensor([row], dtype=dtype), k, backend)[1][0].nonzero().flatten().tolist()

    assert kept_of([1.0, -1.0, 1.0, -1.0], 2) == [0, 1]          # ties: the lower index
    assert kept_of([-2.0, 3.0, 2.0, -3.0], 3) == [0, 1, 3]        # +-equal magnitudes tie too
    assert kept_of([-0.0, 0.0, 0.0], 1) == [0]                    # -0 and +0 tie
    assert kept_of([5.0, -inf, nan, inf, 1e4], 1) == [2]          # NaN above everything
    assert kept_of([5.0, -inf, nan, inf, 1e4], 3) == [1, 2, 3]    # then +-Inf
    assert kept_of([nan, nan, nan, nan], 2) == [0, 1]             # NaNs tie among themselves
    assert kept_of([1.0, 2.0, 3.0], 0) == []
    assert kept_of([1.0, 2.0, 3.0], 3) == [0, 1, 2]
    values = run(torch.tensor([[-0.0, 0.0, nan, -7.0]], dtype=dtype), 3, backend)[0][0]
    assert torch.signbit(values[0]) and torch.isnan(values[2]) and values[3] == -7  # bit for bit
    values = run(torch.tensor([[-1.0, -2.0, -3.0]], dtype=dtype), 1, backend)[0][0]
    assert not torch.signbit(values[:2]).any()  # dropped entries are +0, never -0


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_layouts(backend):
    x3 = make("normal", (2, 5, 40), torch.float32, seed=1)
    for x in (x3[0, 0], x3[0], x3, x3.transpose(1, 2), x3[:, :, ::3], x3.transpose(0, 2)):
        for k in (0, 1, x.shape[-1] // 2, x.shape[-1]):
            values, kept = check(x, k, backend)
            assert values.shape == x.shape and values.is_contiguous()
            assert_bitwise(abs_topk(x, k, backend=backend), values)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    for shape, ks in (((0, 5), (0, 3, 5)), ((4, 0), (0,)), ((0,), (0,)), ((2, 0, 3), (0, 2)), ((0, 0), (0,))):
        x = torch.empty(shape)
        for k in ks:
            values, kept = check(x, k, backend)
            assert values.shape == shape and kept.dtype == torch.bool


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_new_memory_and_input_unchanged(backend):
    x = make("special", (8, 100), torch.float32, seed=2)
    before = x.clone()
    for k in (0, 50, 100):
        values = abs_topk(x, k, backend=backend)
        assert values.data_ptr() != x.data_ptr()
        values.add_(1)
        assert_bitwise(x, before, "x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_rows_over_every_thread_count(backend):
    x = make("ties", (701, 97), torch.float32, seed=5)  # 68k entries: the parallel path
    expected = reference.abs_topk(x, 30)[0]
    threads = torch.get_num_threads()
    try:
        for t in sorted({1, 2, threads}):
            torch.set_num_threads(t)
            assert_bitwise(abs_topk(x, 30, backend=backend), expected)
    finally:
        torch.set_num_threads(threads)


ISAS = ("portable", "avx2", "avx512", "amx")


@pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_isa(isa):
    best = extension().cpu_best_isa()
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this CPU does not support {isa}")
    previous = sparsekern.set_cpu_isa(isa)
    try:
        for dtype in DTYPES:
            for kind in ("normal", "ties", "special"):
                for n in (33, 1000, 8193):
                    x = make(kind, (3, n), dtype, seed=n + 1)
                    for k in (1, n // 4, n - 1):
                        check(x, k, "cpu")
    finally:
        sparsekern.set_cpu_isa(previous)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x = make("normal", (3, 4, 9), torch.float64, seed=11).requires_grad_()
    for k in (0, 1, 4, 9):
        assert torch.autograd.gradcheck(lambda t: abs_topk(t, k, backend=backend), (x,))
    assert torch.autograd.gradgradcheck(lambda t: abs_topk(t, 4, backend=backend), (x,))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_gradient_is_the_kept_mask_times_grad(backend, dtype):
    base = make("special", (2, 6, 50), dtype, seed=12)
    for x in (base.clone(), base.transpose(0, 2).clone().transpose(0, 2)):  # contiguous and not
        x.requires_grad_()
        g = make("normal", x.shape, dtype, seed=13)
        values = abs_topk(x, 20, backend=backend)
        (dx,) = torch.autograd.grad(values, x, g)
        kept = reference.abs_topk(x.detach(), 20)[1]
        assert_bitwise(dx, torch.where(kept, g, torch.zeros((), dtype=dtype)), "dx")


@pytest.mark.skipif(extension() is None or not hasattr(extension(), "abs_topk_backward_cpu"),
                    reason="needs the compiled extension sparsekern._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_fused_backward_is_the_where_bit_for_bit(dtype):
    # The backward's one pass (used when the backward need not be differentiable) against
    # torch.where, on gradients holding NaN, +-Inf and -0: kept entries copied, others +0.
    g = make("special", (4, 300), dtype, seed=21)
    kept = make("normal", (4, 300), torch.float32, seed=22) > 0.3
    fused = extension().abs_topk_backward_cpu(g, kept)
    assert_bitwise(fused, torch.where(kept, g, torch.zeros((), dtype=dtype)), "dx")
    with pytest.raises(ValueError, match="one shape"):
        extension().abs_topk_backward_cpu(g, kept[:, :10].contiguous())
    with pytest.raises(TypeError, match="bool"):
        extension().abs_topk_backward_cpu(g, kept.float())
    with pytest.raises(ValueError, match="contiguous"):
        extension().abs_topk_backward_cpu(g.t(), kept.t())


def test_function_marks_kept_non_differentiable():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    values, kept = AbsTopKFunction.apply(x, 3, "reference")
    assert values.requires_grad and not kept.requires_grad


# ------------------------------------------------------------------- operator, compile


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = make("normal", (5, 37), torch.float32, seed=14)
    for args in ((x, 9, backend), (x, 0, backend), (x, 37, backend), (x.view(5, 1, 37), 3, backend),
                 (x[:, 0], 2, backend), (x.double(), 9, backend)):
        torch.library.opcheck(ops.abs_topk, args)


def test_op_is_registered():
    assert hasattr(torch.ops.sparsekern, "abs_topk")


def assert_compiles_fullgraph(activation, oracle):
    """``activation(x, k)`` under torch.compile(fullgraph=True), forward and backward, exactly as
    eager; with dynamic shapes, ``oracle(x, k)``'s values bit for bit."""
    torch._dynamo.reset()

    def f(x, w):
        return (activation(x @ w, 5) * 2).sum(-1)

    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 24, dtype=torch.float64, requires_grad=True)
    eager = f(x, w)
    eager_grads = torch.autograd.grad(eager.sum(), (x, w))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, w)
    grads = torch.autograd.grad(out.sum(), (x, w))
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Dynamic shapes: n and k become symbols (the range check is traced, not a graph break).
    dynamic = torch.compile(activation, fullgraph=True, dynamic=True, backend="aot_eager")
    for shape, k in (((3, 10), 4), ((5, 12), 6), ((2, 3, 7), 7)):
        x = make("ties", shape, torch.float32, seed=k)
        assert_bitwise(dynamic(x, k), oracle(x, k)[0])


def test_compile_fullgraph_forward_and_backward():
    assert_compiles_fullgraph(abs_topk, reference.abs_topk)


def test_compile_module_inductor():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), AbsTopK(4))
    x = torch.randn(3, 12)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


# ----------------------------------------------------------------------------- the module


def test_module():
    m = AbsTopK(3)
    assert m.k == 3 and repr(m) == "AbsTopK(k=3)" and not list(m.parameters()) and m.state_dict() == {}
    assert repr(AbsTopK(2, backend="reference")) == "AbsTopK(k=2, backend='reference')"
    x = make("normal", (4, 10), torch.float32, seed=15)
    assert_bitwise(m(x), abs_topk(x, 3))
    m.k = 7  # a plain attribute: annealing changes it
    assert int((m(x) != 0).sum()) == 4 * 7
    assert sparsekern.AbsTopK is AbsTopK and sparsekern.abs_topk is abs_topk


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def no_kernel(monkeypatch):
    """Fails the test if any backend's forward is reached."""
    def boom(*a, **k):
        raise AssertionError("a kernel ran before the arguments were checked")
    for name in REGISTRY.names():
        monkeypatch.setattr(REGISTRY.get(name), "forward", boom)


@pytest.mark.parametrize("x,k,exc,match", [
    (torch.randn(3, 5), 2.0, TypeError, "k must be a Python int, got float"),
    (torch.randn(3, 5), True, TypeError, "k must be a Python int, got bool"),
    (torch.randn(3, 5), torch.tensor(2), TypeError, "k must be a Python int, got Tensor"),
    (torch.randn(3, 5), None, TypeError, "k must be a Python int"),
    (torch.randn(3, 5), -1, ValueError, r"k must be in \[0, 5\].*got -1"),
    (torch.randn(3, 5), 6, ValueError, r"k must be in \[0, 5\].*got 6"),
    (torch.randn(3, 0), 1, ValueError, r"k must be in \[0, 0\]"),
    (torch.arange(15).view(3, 5), 2, TypeError, "x must be a floating-point tensor"),
    (torch.ones(3, 5, dtype=torch.bool), 2, TypeError, "x must be a floating-point tensor"),
    (torch.randn(3, 5, dtype=torch.complex64), 2, TypeError, "x must be a floating-point tensor"),
    ([[1.0, 2.0]], 1, TypeError, "x must be a torch.Tensor, got list"),
    (torch.tensor(3.0), 0, ValueError, "x must have at least one dimension"),
])
def test_bad_arguments(no_kernel, x, k, exc, match):
    before = x.clone() if isinstance(x, torch.Tensor) else None
    with pytest.raises(exc, match=match):
        abs_topk(x, k)
    if before is not None:
        assert torch.equal(x, before)


def test_bad_module_arguments(no_kernel):
    with pytest.raises(TypeError, match="k must be a Python int"):
        AbsTopK(2.5)
    with pytest.raises(TypeError, match="k must be a Python int"):
        AbsTopK(False)
    with pytest.raises(ValueError, match="k must be >= 0"):
        AbsTopK(-1)
    with pytest.raises(ValueError, match=r"k must be in \[0, 4\]"):
        AbsTopK(5)(torch.randn(2, 4))
    with pytest.raises(TypeError, match="backend must be"):
        abs_topk(torch.randn(2, 4), 1, backend=3)


def test_unknown_and_unavailable_backends(no_kernel, monkeypatch):
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        abs_topk(x, 1, backend="tpu")
    with pytest.raises(BackendUnavailableError, match="backend='cpu' cannot run this call: .*not meta"):
        abs_topk(torch.empty(2, 4, device="meta"), 1, backend="cpu")
    monkeypatch.setenv("SPARSEKERN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        abs_topk(x, 1)


def test_environment_variable_forces_a_backend(monkeypatch):
    calls = []
    backend = REGISTRY.get("reference")
    original = backend.forward
    monkeypatch.setattr(backend, "forward", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setenv("SPARSEKERN_BACKEND", "reference")
    abs_topk(torch.randn(2, 4), 1)
    assert calls == [1]
    monkeypatch.delenv("SPARSEKERN_BACKEND")
    abs_topk(torch.randn(2, 4), 1)
    assert calls == [1] or not COMPILED


@pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
def test_cpu_entry_point_checks_its_arguments():
    f = extension().abs_topk_cpu
    x = torch.randn(4, 6)
    for args, exc, match in (
        ((x.int(), 2), TypeError, "x must be float32, float64, float16 or bfloat16"),
        ((x.view(2, 2, 6), 2), ValueError, "x must be 2-D"),
        ((x[0], 2), ValueError, "x must be 2-D"),
        ((x.t(), 2), ValueError, "x must be contiguous"),
        ((x, 7), ValueError, r"k must be in \[0, 6\], got 7"),
        ((x, -1), ValueError, r"k must be in \[0, 6\], got -1"),
        ((x.to_sparse(), 2), ValueError, "x must be a dense CPU tensor"),
        ((x, 2, torch.empty(4, 5)), RuntimeError, "out must have shape"),
        ((x, 2, torch.empty(4, 6, dtype=torch.float64)), RuntimeError, "out must be Float"),
        ((x, 2, None, torch.empty(4, 6)), RuntimeError, "out must be Bool"),
        ((x, 2, x), ValueError, "must not overlap x"),
        ((x, 2, None, x.view(-1).view(torch.bool)[:24].view(4, 6)), ValueError, "must not overlap x"),
    ):
        with pytest.raises(exc, match=match):
            f(*args)
