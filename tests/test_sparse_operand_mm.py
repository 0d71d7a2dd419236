"""Products with a sparse operand (sparsekern/sparse_operand_mm.py): ``a @ b`` and ``a @ b.T``
walking the nonzeros of ``a``, the same result as the dense product for ``a`` of every
sparsity, and the dense format's forward and input gradient that use it."""

from __future__ import annotations

import pytest
import torch

import sparsekern
from sparsekern import sparse_operand_mm as som
from sparsekern._extension import extension

from test_dense_grad_weight import ISAS, running_isa, sparse_rows

pytestmark = pytest.mark.skipif(extension() is None or not hasattr(extension(), "esmm_sparse_operand_matmul_cpu"),
                                reason="needs the compiled extension sparsekern._C (CPU kernels)")

TRANSPOSES = (False, True)


def operand_b(rows, cols, transpose_b, generator):
    """b such that a @ b' has a [.., rows] on the left: b' = b, or b.T when transpose_b."""
    b = torch.randn(rows, cols, generator=generator)
    return b.t().contiguous() if transpose_b else b


def reference(a, b, transpose_b):
    b = b.double()
    return a.double() @ (b.t() if transpose_b else b)


def assert_close(out, a, b, transpose_b):
    ref = reference(a, b, transpose_b)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert not out.isnan().any()
    scale = max(ref.abs().max().item(), 1e-30)
    err = (out.double() - ref).abs().max().item() / scale  # fp32 sums: far below 1e-5 here
    assert err < 2e-6, f"relative error {err:.2e}"


@pytest.mark.parametrize("transpose_b", TRANSPOSES)
@pytest.mark.parametrize("density", [0.0, 0.03, 0.25, 0.5, 1.0])
def test_any_density(transpose_b, density):
    g = torch.Generator().manual_seed(int(density * 100) + transpose_b)
    a = sparse_rows(300, 130, density, g)
    b = operand_b(130, 70, transpose_b, g)
    out = som.matmul(a, b, transpose_b, walk=True)
    assert_close(out, a, b, transpose_b)
    if density == 0.0:
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("pattern", ["abstopk", "relu"])
@pytest.mark.parametrize("transpose_b", TRANSPOSES)
def test_activation_patterns_and_empty_and_full_rows(pattern, transpose_b):
    g = torch.Generator().manual_seed(7)
    a = sparse_rows(513, 200, 0.25, g, pattern)
    a[::9] = 0  # tokens with no nonzero
    a[4::13] = torch.randn(len(range(4, 513, 13)), 200, generator=g)  # tokens with every entry
    a[:, 17] = 0  # a feature with no nonzero
    b = operand_b(200, 96, transpose_b, g)
    assert_close(som.matmul(a, b, transpose_b, walk=True), a, b, transpose_b)


@pytest.mark.parametrize("transpose_b", TRANSPOSES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 40, 3), (17, 1, 9), (97, 33, 129), (2049, 24, 40), (64, 600, 17)])
def test_edge_shapes(transpose_b, shape):
    t, r, d = shape
    g = torch.Generator().manual_seed(t * 7 + r)
    a = sparse_rows(t, r, 0.4, g)
    b = operand_b(r, d, transpose_b, g)
    assert_close(som.matmul(a, b, transpose_b, walk=True), a, b, transpose_b)


@pytest.mark.parametrize("transpose_b", TRANSPOSES)
def test_no_reduction_or_no_output(transpose_b):
    # An empty reduction gives exact zeros, never a crash; empty outputs work.
    for t, r, d in ((5, 0, 7), (1, 0, 1), (0, 4, 3), (6, 4, 0)):
        a = torch.randn(t, r)
        b = torch.randn(d, r) if transpose_b else torch.randn(r, d)
        out = som.matmul(a, b, transpose_b, walk=True)
        assert out.shape == (t, d) and torch.equal(out, torch.zeros(t, d))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("transpose_b", TRANSPOSES)
@pytest.mark.parametrize("chunk_rows, s_block", [(0, 0), (16, 64), (48, 72), (128, 24), (7, 5)])
def test_every_isa_chunk_and_block(isa, transpose_b, chunk_rows, s_block):
    # Forced small chunks (of a's columns) and blocks (of a's rows) so that every run has several
    # of each, the last ones short, a last panel narrower than 64 columns, and (transposed b)
    # panel rows left over from the register transposes; the output poisoned first.
    g = torch.Generator().manual_seed(chunk_rows + s_block + transpose_b)
    a = sparse_rows(301, 203, 0.25, g, "abstopk")
    a[:, 40:60] = 0  # a whole chunk of the reduction without a nonzero
    b = operand_b(203, 157, transpose_b, g)
    out = torch.full((301, 157), float("nan"))
    with running_isa(isa):
        extension().esmm_sparse_operand_matmul_cpu(a, b, transpose_b, out=out, chunk_rows=chunk_rows,
                                                   s_block=s_block)
    assert_close(out, a, b, transpose_b)


def test_strided_operands():
    g = torch.Generator().manual_seed(5)
    a = sparse_rows(90, 80, 0.3, g)[:, 10:70]  # rows contiguous, leading dimension 80
    b = torch.randn(60, 100, generator=g)[:, 20:70]
    assert_close(som.matmul(a, b, False, walk=True), a, b, False)
    bt = torch.randn(50, 90, generator=g)[:, 5:65]  # b.T's rows of length 60, leading dimension 90
    assert_close(som.matmul(a, bt, True, walk=True), a, bt, True)
    a_cols = sparse_rows(60, 90, 0.3, g).t()  # columns contiguous: copied to rows first
    assert_close(som.matmul(a_cols, b[:60], False, walk=True), a_cols, b[:60], False)


def test_choice():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2048, 1024, generator=g)
    assert not som.walks(sparse_rows(2048, 1024, 1.0, g), w, True)  # a dense input takes the dense product
    sparse = sparse_rows(2048, 1024, 0.25, g, "abstopk")
    assert som.walks(sparse, w, True)
    assert som.walks(sparse, w.t().contiguous(), False)
    assert not som.walks(sparse, w[:128], True)  # 128 columns out: the listing would not pay
    assert not som.walks(sparse.double(), w.double(), True)  # fp64: no kernel
    assert not som.walks(sparse[:8, :8], w[:8, :8], True)  # too small to measure


@pytest.mark.parametrize("isa, walks", [("avx2", False), ("avx512", True)])
def test_choice_follows_the_fit_of_the_instruction_set_running(isa, walks):
    # A quarter-dense input against 512 dense columns: walked where the kernels run AVX-512
    # without AMX (the Zen 4 EPYC's fit: 0.57-0.66x dense time), not under the AVX2 fit.
    g = torch.Generator().manual_seed(3)
    a = sparse_rows(1024, 2048, 0.25, g, "abstopk")
    w = torch.randn(512, 2048, generator=g)
    with running_isa(isa):
        assert som.walks(a, w, True) is walks
        assert som.walks(a, w.t().contiguous(), False) is walks


def test_a_skipped_zero_never_meets_inf_or_nan():
    # 0 * inf is NaN in the dense product: where b holds an Inf or NaN the kernel finds it in its
    # panels and the dense product runs instead, so the choice gives the dense product's NaNs exactly.
    g = torch.Generator().manual_seed(1)
    a = sparse_rows(2048, 1024, 0.1, g)
    b = torch.randn(2048, 1024, generator=g)
    b[5, 7] = float("inf")
    b[9, 3] = float("nan")
    assert som.walks(a, b, True)  # chosen by a's nonzeros; b's Inf is found while walking
    out, ref = som.sparse_operand_mm(a, b, True), a @ b.t()
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)  # the dense product itself
    # Forced, the walk skips a's zeros whatever b holds (documented): fewer NaNs than the dense product.
    forced = som.matmul(a, b, True, walk=True)
    assert forced.isnan().sum() < ref.isnan().sum()
    # An Inf or NaN of a itself is walked: its products are the dense product's.
    b = torch.randn(2048, 1024, generator=g)
    a[5, 7], a[6, 8] = float("inf"), float("nan")
    assert som.walks(a, b, True)
    out, ref = som.sparse_operand_mm(a, b, True), a @ b.t()
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("transpose_b", TRANSPOSES)
@pytest.mark.parametrize("where", ["first", "last", "chunk without nonzeros"])
def test_an_inf_anywhere_in_b_is_found(isa, transpose_b, where):
    # Every entry of b reaches a panel or the check of a chunk that has no nonzero, on every
    # instruction set, in the whole and the partial panels and the transposed reads.
    g = torch.Generator().manual_seed(3)
    a = sparse_rows(150, 203, 0.2, g)
    a[:, 48:64] = 0  # chunk 3 of the reduction (chunk_rows 16: rows 48 to 63 of b) without a nonzero
    b_rows = {"first": 0, "last": 202, "chunk without nonzeros": 50}[where]
    with running_isa(isa):
        for b_col in (0, 63, 69, 127, 156):  # both ends of the first and of a whole panel, the partial last one
            b = torch.randn(203, 157, generator=g)  # b' [203, 157]
            b[b_rows, b_col] = float("inf")
            b = b.t().contiguous() if transpose_b else b
            ref = a @ (b.t() if transpose_b else b)
            out = torch.full(ref.shape, 1.0)
            extension().esmm_sparse_operand_matmul_cpu(a, b, transpose_b, out=out, chunk_rows=16, s_block=64,
                                                       dense_if_not_finite=True)
            torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
            assert out.isnan().any()


@pytest.mark.parametrize("bias", [False, True])
def test_dense_format_walks_a_sparse_input_and_output_gradient(bias):
    # The dense format (an annealed schedule's dense steps) on AbsTopK's input and output gradient:
    # the forward, dx and dW all match the dense reference, with NaN in every masked-out weight.
    torch.manual_seed(0)
    layer = sparsekern.SparseLinear(1024, 2048, density=0.5, format="dense", dense_grad=True, bias=bias)
    with torch.no_grad():
        layer.weight[~layer.layout.to_mask()] = float("nan")
    x = sparsekern.abs_topk(torch.randn(1024, 1024), 256).requires_grad_()
    grad = sparsekern.abs_topk(torch.randn(1024, 2048), 512)
    masked = torch.where(layer.layout.to_mask(), layer.weight.detach(), 0)
    assert som.walks(x.detach(), masked, True) and som.walks(grad, masked, False)  # the paths under test
    y = layer(x)
    y.backward(grad)
    ref_y = reference(x.detach(), masked, True) + (layer.bias.detach().double() if bias else 0)
    for out, ref in ((y, ref_y), (x.grad, reference(grad, masked, False)),
                     (layer.weight.grad, grad.double().t() @ x.detach().double())):
        err = (out.double() - ref).abs().max().item() / ref.abs().max().item()
        assert err < 2e-6, f"relative error {err:.2e}"


def test_dense_format_second_order_is_the_plain_product():
    # create_graph: the input gradient must be differentiable again, so the operator (which has
    # no derivative) is not used there.
    torch.manual_seed(1)
    layer = sparsekern.SparseLinear(512, 1024, density=0.5, format="dense", dense_grad=True, bias=False)
    x = sparsekern.abs_topk(torch.randn(512, 512), 128).requires_grad_()
    (dx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    (dw2,) = torch.autograd.grad(dx.square().sum(), layer.weight)
    w = torch.where(layer.layout.to_mask(), layer.weight.detach(), 0).requires_grad_()
    x_ref = x.detach().requires_grad_()
    (dx_ref,) = torch.autograd.grad((x_ref @ w.t()).square().sum(), x_ref, create_graph=True)
    (dw2_ref,) = torch.autograd.grad(dx_ref.square().sum(), w)
    torch.testing.assert_close(dx, dx_ref, rtol=2e-5, atol=1e-5)
    mask = layer.layout.to_mask()  # outside it the two differ by design (dense_grad: dW's rule for y only)
    torch.testing.assert_close(torch.where(mask, dw2, 0), torch.where(mask, dw2_ref, 0), rtol=2e-5, atol=1e-4)


def test_operator_opcheck_and_compile():
    g = torch.Generator().manual_seed(2)
    a = sparse_rows(64, 32, 0.3, g)
    b = torch.randn(16, 32, generator=g)
    torch.library.opcheck(torch.ops.sparsekern.sparse_operand_mm.default, (a, b, True))
    torch.library.opcheck(torch.ops.sparsekern.sparse_operand_mm.default, (a, b.t().contiguous(), False))
    compiled = torch.compile(lambda a, b: torch.ops.sparsekern.sparse_operand_mm(a, b, True), fullgraph=True)
    torch.testing.assert_close(compiled(a, b), a @ b.t())


def test_bad_arguments_raise():
    ext = extension()
    a = torch.randn(8, 4)
    with pytest.raises(ValueError, match="must match"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(5, 3), False)
    with pytest.raises(ValueError, match="must match"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(4, 3), True)
    with pytest.raises(TypeError, match="float32"):
        ext.esmm_sparse_operand_matmul_cpu(a.double(), torch.randn(4, 3), False)
    with pytest.raises(ValueError, match="2-D"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(4, 3, 1), False)
    with pytest.raises(ValueError, match="contiguous rows"):
        ext.esmm_sparse_operand_matmul_cpu(torch.randn(4, 8).t(), torch.randn(4, 3), False)
    with pytest.raises(ValueError, match="chunk_rows"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(4, 3), False, chunk_rows=5000)
    with pytest.raises(ValueError, match="s_block"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(4, 3), False, s_block=-1)
    with pytest.raises(ValueError, match="overlap"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(4, 8), False, out=a)
    with pytest.raises(RuntimeError, match="shape"):
        ext.esmm_sparse_operand_matmul_cpu(a, torch.randn(4, 3), False, out=torch.empty(8, 4))
