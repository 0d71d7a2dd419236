"""The AbsTopK GPU backends ("cuda", and "triton") on CUDA tensors against the sort-based
reference, bit for bit, with NaN-poisoned outputs: ties, every magnitude equal, -0/+0, NaN with
signs and payloads, +-Inf, all-NaN rows, subnormals; k = 0, 1, n // 3, n - 1, n; rows from 1 to
70001 entries (the Triton kernel's paths: in registers up to 4096, walked in blocks beyond),
many rows; fp32/fp16/bf16; the automatic choice, the gradient, opcheck and a side stream; the
cuda entry point's argument checks on the device.

Skipped without a CUDA device (no GPU is available to this project's CI, so none of these has
run yet); a backend that cannot run here is skipped with its reasons.
"""

import math

import pytest
import torch

import sparsekern
from sparsekern._alloc import poisoned_outputs
from sparsekern.activation import ops, reference
from sparsekern.activation.backends import REGISTRY
from test_abs_topk import assert_bitwise, make

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["cuda", "triton"]
KINDS = ("normal", "ties", "signed_equal", "zeros", "special", "all_nan", "tiny")


def _needs(backend, dtype=torch.float32):
    reasons = REGISTRY.get(backend).reasons(torch.device("cuda"), dtype, None)
    if reasons:
        pytest.skip(f"{backend} cannot run here: {'; '.join(reasons)}")


def check(x, k, backend):
    x = x.cuda()
    with poisoned_outputs():
        values, kept = REGISTRY.get(backend).forward(x.contiguous(), k)
    ref_values, ref_kept = reference.abs_topk(x.cpu(), k)
    what = f"{backend} {tuple(x.shape)} {x.dtype} k={k}"
    assert values.is_cuda and kept.is_cuda and kept.dtype == torch.bool, what
    assert torch.equal(kept.cpu(), ref_kept), f"{what}: kept differs at {(kept.cpu() != ref_kept).nonzero()[:5]}"
    assert_bitwise(values.cpu(), ref_values, f"{what} values")
    return values, kept


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(backend, dtype, kind):
    _needs(backend, dtype)
    for rows, n in ((7, 1), (5, 37), (4, 1000), (3, 4096), (3, 4097), (2, 16384), (1, 70001)):
        x = make(kind, (rows, n), dtype, seed=n)
        for k in sorted({0, 1, n // 3, n - 1, n}):
            check(x, k, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_rows(backend, dtype):
    # The shapes of an activation: many tokens, a wide hidden layer, a small k.
    _needs(backend, dtype)
    for rows, n, k in ((4096, 512, 32), (300, 16384, 64), (33, 65536, 1024)):
        check(make("ties", (rows, n), dtype, seed=rows), k, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_semantics_by_hand(backend):
    nan, inf = math.nan, math.inf
    for dtype in DTYPES:
        _needs(backend, dtype)

        def kept_of(row, k):
            return check(torch.tensor([row], dtype=dtype), k, backend)[1][0].nonzero().flatten().tolist()

        assert kept_of([1.0, -1.0, 1.0, -1.0], 2) == [0, 1]
        assert kept_of([-0.0, 0.0, 0.0], 1) == [0]
        assert kept_of([5.0, -inf, nan, inf, 1e4], 1) == [2]
        assert kept_of([5.0, -inf, nan, inf, 1e4], 3) == [1, 2, 3]
        assert kept_of([nan, -nan, nan, nan], 3) == [0, 1, 2]
        values = check(torch.tensor([[-0.0, 0.0, nan, -7.0]], dtype=dtype), 3, backend)[0][0].cpu()
        assert torch.signbit(values[0]) and torch.isnan(values[2]) and values[3] == -7


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    _needs(backend)
    for shape, k in (((0, 5), 3), ((4, 0), 0), ((0, 0), 0)):
        values, kept = check(torch.empty(shape), k, backend)
        assert values.shape == shape and kept.shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_api_gradient_opcheck_and_a_side_stream(backend):
    _needs(backend)
    x = make("special", (2, 3, 300), torch.float32, seed=5).cuda().requires_grad_()
    y = sparsekern.abs_topk(x, 40, backend=backend)
    ref_values, ref_kept = reference.abs_topk(x.detach().cpu(), 40)
    assert_bitwise(y.detach().cpu(), ref_values)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad.cpu(), ref_kept.float())
    torch.library.opcheck(ops.abs_topk, (make("ties", (4, 50), torch.float16, seed=6).cuda(), 7, backend))
    stream = torch.cuda.Stream()
    xs = make("ties", (64, 2000), torch.bfloat16, seed=7).cuda()
    with torch.cuda.stream(stream):
        got = sparsekern.abs_topk(xs, 100, backend=backend)
    stream.synchronize()
    assert_bitwise(got.cpu(), reference.abs_topk(xs.cpu(), 100)[0])


def test_automatic_choice_for_cuda_tensors():
    chosen = REGISTRY.automatic_choice("cuda", torch.float16, None)
    expected = next(n for n in BACKENDS if not REGISTRY.get(n).reasons(torch.device("cuda"), torch.float16, None))
    assert chosen == expected


def test_cuda_entry_point_checks_its_arguments():
    _needs("cuda")
    from sparsekern import _C

    x = torch.randn(4, 10, device="cuda")
    with pytest.raises(ValueError, match="contiguous"):
        _C.abs_topk_cuda(x.t(), 2)
    with pytest.raises(ValueError, match="2-D"):
        _C.abs_topk_cuda(x[0], 2)
    with pytest.raises(ValueError, match="k must be in"):
        _C.abs_topk_cuda(x, 11)
    with pytest.raises(ValueError, match="k must be in"):
        _C.abs_topk_cuda(x, -1)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        _C.abs_topk_cuda(x.double(), 2)
    with pytest.raises(ValueError, match="must not overlap"):
        _C.abs_topk_cuda(x, 2, x, None)
    with pytest.raises(RuntimeError, match="out must be"):
        _C.abs_topk_cuda(x, 2, torch.empty(4, 10, device="cuda", dtype=torch.float16), None)
    values, kept = _C.abs_topk_cuda(x, 3)
    assert torch.equal(kept.cpu(), reference.abs_topk(x.cpu(), 3)[1])
