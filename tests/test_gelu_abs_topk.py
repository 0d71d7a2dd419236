"""GELU then AbsTopK (``sparsekern.gelu_abs_topk``, ``sparsekern.GeluAbsTopK``): every backend that
runs here against the two calls it fuses, bit for bit, with poisoned outputs, forward and
backward; ties, NaN/Inf, k = 0 and n, 1-D to 3-D and non-contiguous inputs, every dtype, both
GELUs; gradcheck; opcheck; torch.compile; bad input; the C++ entry points' checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsekern
from sparsekern._alloc import poisoned_outputs
from sparsekern._extension import extension
from sparsekern.activation import GeluAbsTopK, gelu_abs_topk, ops, reference
from sparsekern.activation.backends import REGISTRY

from test_abs_topk import BACKENDS, CASES, COMPILED, LENGTHS, assert_bitwise, assert_compiles_fullgraph, make

APPROXIMATE = ("none", "tanh")


def assert_same_up_to_nan_bits(actual, want, what):
    """Equal bit for bit, but for NaNs' payloads and signs, and in float64 and float32 for the
    last bit: torch's GELU derivative differs by that between its vector loop and the scalar one
    it runs on a tail (float64 everywhere; float32's tanh form with AVX-512, seen on a Xeon), and
    where the tails fall depends on how a tensor is cut into chunks. About 2 ulp each."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(actual), nan), what
    a, w = torch.where(nan, 0, actual), torch.where(nan, 0, want)
    if actual.dtype in (torch.float64, torch.float32):
        rtol = 4e-16 if actual.dtype == torch.float64 else 2.4e-7
        torch.testing.assert_close(a, w, rtol=rtol, atol=0)
    else:
        assert_bitwise(a, w, what)


def expected(x, k, approximate="none"):
    """The two calls the op fuses: torch's GELU, then the AbsTopK oracle."""
    return reference.abs_topk(F.gelu(x, approximate=approximate), k)


@pytest.mark.parametrize("approximate", APPROXIMATE)
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "special", "all_nan", "tiny"])
@pytest.mark.parametrize("backend,dtype", CASES)
def test_matches_gelu_then_abs_topk(backend, dtype, kind, approximate):
    for n in LENGTHS:
        x = make(kind, (5, n), dtype, seed=n)
        for k in sorted({0, 1, n // 4, n // 2, n}):
            with poisoned_outputs():
                values, kept = ops.gelu_abs_topk(x, k, approximate, backend)
            want_values, want_kept = expected(x, k, approximate)
            assert torch.equal(kept, want_kept), (n, k)
            assert_bitwise(values, want_values)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_rows_shapes_and_layouts(backend):
    # More rows than one chunk of the fused pass (256 KiB) on every thread; 3-D, non-contiguous
    # (against the GELU of the contiguous copy: torch's GELU of a strided tensor can take its
    # scalar path, a last bit off the vector one, and so break ties another way).
    x = make("ties", (3, 700, 129), torch.float32, seed=3)
    for t in (x, x.transpose(0, 1), x[:, ::2], x[0, 0]):
        values = gelu_abs_topk(t, 40, backend=backend)
        assert values.shape == t.shape
        assert_bitwise(values, expected(t.contiguous(), 40)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_many_rows_on_every_thread(backend):
    # Large enough for torch's threads (which do not inherit the caller's dispatch state: its
    # GELU there once saw an input requiring grad and refused).
    x = make("normal", (64, 3000), torch.float32, seed=5).requires_grad_()
    g = make("normal", x.shape, torch.float32, seed=6)
    (dx,) = torch.autograd.grad(gelu_abs_topk(x, 700, backend=backend), x, g)
    kept = expected(x.detach(), 700)[1]
    assert_bitwise(dx, reference.gelu_abs_topk_backward(g, x.detach(), kept), "dx")


@pytest.mark.parametrize("backend,dtype", CASES)
def test_gradient(backend, dtype):
    # where(kept, gelu_backward(grad, x), 0); the two calls' gradient too, up to the sign of the
    # zeros off the kept (theirs is 0 * gelu'(x)). NaNs and Infs are kept first here (k is
    # larger than their number), so the two agree everywhere.
    base = make("special", (2, 6, 50), dtype, seed=12)
    for x in (base.clone(), base.transpose(0, 2).clone().transpose(0, 2)):
        x.requires_grad_()
        g = make("normal", x.shape, dtype, seed=13)
        (dx,) = torch.autograd.grad(gelu_abs_topk(x, 30, backend=backend), x, g)
        (composed,) = torch.autograd.grad(sparsekern.abs_topk(F.gelu(x), 30, backend="reference"), x, g)
        kept = expected(x.detach(), 30)[1]
        assert_same_up_to_nan_bits(dx, reference.gelu_abs_topk_backward(g, x.detach(), kept), "dx")
        torch.testing.assert_close(dx, composed, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unkept_infinity_gets_a_zero_gradient(backend):
    # The two calls give 0 * gelu'(inf) = NaN there; the fused op's gradient is 0 off the kept.
    # torch's GELU of -inf is NaN, and of +inf NaN too on some CPUs (AVX-512) but +inf on others:
    # either way k = 1 keeps a NaN at one infinity, so the other is an unkept infinity.
    x = torch.tensor([[float("inf"), 5.0, 4.0, -float("inf")]], requires_grad=True)
    (dx,) = torch.autograd.grad(gelu_abs_topk(x, 1, backend=backend), x, torch.ones(1, 4))
    kept = expected(x.detach(), 1)[1][0]
    assert kept.sum() == 1 and (kept[0] or kept[3])
    assert torch.equal(dx[0][~kept], torch.zeros(3))


@pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
@pytest.mark.parametrize("approximate", APPROXIMATE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_cpu_backward_pass_is_the_reference(dtype, approximate):
    x = make("special", (300, 257), dtype, seed=21)
    g = make("special", (300, 257), dtype, seed=22)
    kept = make("normal", (300, 257), torch.float32, seed=23) > 0.3
    assert_same_up_to_nan_bits(extension().gelu_abs_topk_backward_cpu(g, x, kept, approximate),
                               reference.gelu_abs_topk_backward(g, x, kept, approximate), "dx")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x = make("normal", (3, 4, 9), torch.float64, seed=11).requires_grad_()
    for k in (0, 1, 4, 9):
        assert torch.autograd.gradcheck(lambda t: gelu_abs_topk(t, k, backend=backend), (x,))
    assert torch.autograd.gradgradcheck(lambda t: gelu_abs_topk(t, 4, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = make("normal", (5, 37), torch.float32, seed=14)
    for args in ((x, 9, "none", backend), (x, 0, "tanh", backend), (x, 37, "none", backend),
                 (x.view(5, 1, 37), 3, "none", backend), (x.double(), 9, "tanh", backend)):
        torch.library.opcheck(ops.gelu_abs_topk, args)


def test_compile_fullgraph_forward_and_backward():
    assert_compiles_fullgraph(gelu_abs_topk, expected)


def test_module():
    m = GeluAbsTopK(3, approximate="tanh")
    x = torch.randn(4, 10)
    assert torch.equal(m(x), expected(x, 3, "tanh")[0])
    m.k = 5
    assert int((m(x) != 0).sum(-1).max()) <= 5
    assert repr(m) == "GeluAbsTopK(k=5, approximate='tanh')"


@pytest.fixture
def no_kernel(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a kernel ran before the arguments were checked")
    for name in REGISTRY.names():
        for method in ("forward", "gelu_forward"):
            if hasattr(REGISTRY.get(name), method):
                monkeypatch.setattr(REGISTRY.get(name), method, boom)


@pytest.mark.parametrize("x,k,kwargs,exc,match", [
    (torch.randn(3, 5), 2.0, {}, TypeError, "k must be a Python int, got float"),
    (torch.randn(3, 5), 6, {}, ValueError, r"k must be in \[0, 5\].*got 6"),
    (torch.randn(3, 5), -1, {}, ValueError, r"k must be in \[0, 5\].*got -1"),
    (torch.arange(15).view(3, 5), 2, {}, TypeError, "x must be a floating-point tensor"),
    (torch.randn(3, 5), 2, {"approximate": "erf"}, ValueError, "approximate must be one of"),
    (torch.randn(3, 5), 2, {"approximate": None}, ValueError, "approximate must be one of"),
    (torch.randn(3, 5), 2, {"backend": 3}, TypeError, "backend must be"),
    (torch.randn(3, 5), 2, {"backend": "tpu"}, ValueError, "backend must be one of"),
])
def test_bad_arguments(no_kernel, x, k, kwargs, exc, match):
    before = x.clone()
    with pytest.raises(exc, match=match):
        gelu_abs_topk(x, k, **kwargs)
    assert torch.equal(x, before)


def test_bad_module_arguments(no_kernel):
    with pytest.raises(TypeError, match="k must be a Python int"):
        GeluAbsTopK(2.5)
    with pytest.raises(ValueError, match="k must be >= 0"):
        GeluAbsTopK(-1)
    with pytest.raises(ValueError, match="approximate must be one of"):
        GeluAbsTopK(2, approximate="fast")


@pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
def test_cpu_entry_points_check_their_arguments():
    forward, backward = extension().gelu_abs_topk_cpu, extension().gelu_abs_topk_backward_cpu
    x = torch.randn(4, 6)
    kept = torch.ones(4, 6, dtype=torch.bool)
    for f, args, exc, match in (
        (forward, (x.int(), 2), TypeError, "x must be float32, float64, float16 or bfloat16"),
        (forward, (x.t(), 2), ValueError, "x must be contiguous"),
        (forward, (x, 7), ValueError, r"k must be in \[0, 6\], got 7"),
        (forward, (x, 2, "erf"), ValueError, "approximate must be 'none' or 'tanh'"),
        (forward, (x, 2, "none", torch.empty(4, 5)), RuntimeError, "out must have shape"),
        (forward, (x, 2, "none", x), ValueError, "must not overlap x"),
        (backward, (x, x, kept[:, :3].contiguous()), ValueError, "one shape"),
        (backward, (x, x, kept.float()), TypeError, "kept must be bool"),
        (backward, (x.double(), x, kept), TypeError, "grad must have x's dtype"),
        (backward, (x, x.t().contiguous().t(), kept), ValueError, "x must be contiguous"),
        (backward, (x, x, kept, "erf"), ValueError, "approximate must be 'none' or 'tanh'"),
    ):
        with pytest.raises(exc, match=match):
            f(*args)
