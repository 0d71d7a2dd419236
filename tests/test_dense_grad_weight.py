"""The dense weight gradient with sparse activations (sparsekern/dense_grad_weight.py): the same
``grad_out.T @ x`` whichever side is walked, for operands of every sparsity."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
import torch

import sparsekern
from sparsekern._extension import extension
from sparsekern import dense_grad_weight as gw

pytestmark = pytest.mark.skipif(extension() is None or not hasattr(extension(), "esmm_sparse_operand_grad_weight_cpu"),
                                reason="needs the compiled extension sparsekern._C (CPU kernels)")

SPARSE_SIDES = ("input", "grad_out")


def reference(grad_out, x):
    return grad_out.double().t() @ x.double()


def assert_close(out, grad_out, x):
    ref = reference(grad_out, x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert not out.isnan().any()
    scale = max(ref.abs().max().item(), 1e-30)
    # fp32 accumulation over len(rows) terms: the error bound of a sum that long, relative to the
    # largest term of the result; far below 1e-5 at these sizes.
    err = (out.double() - ref).abs().max().item() / scale
    assert err < 2e-6, f"relative error {err:.2e}"


def abs_topk(x, k):
    idx = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def sparse_rows(rows, cols, density, generator, pattern="random"):
    """A [rows, cols] operand with about `density` of its entries nonzero, and no exact zero elsewhere."""
    x = torch.randn(rows, cols, generator=generator)
    x = torch.where(x == 0, torch.ones_like(x), x)
    if pattern == "relu":
        shift = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - density)).item() if 0 < density < 1 else 0
        return torch.relu(x - shift) if 0 < density < 1 else (x.abs() if density == 1 else torch.zeros_like(x))
    if pattern == "abstopk":
        return abs_topk(x, round(density * cols))
    keep = torch.rand(rows, cols, generator=generator) < density
    return torch.where(keep, x, 0)


@pytest.mark.parametrize("side", SPARSE_SIDES)
@pytest.mark.parametrize("density", [0.0, 0.03, 0.25, 0.5, 0.9, 1.0])
def test_either_side_any_density(side, density):
    g = torch.Generator().manual_seed(int(density * 100) + len(side))
    grad_out = sparse_rows(300, 130, density if side == "grad_out" else 1.0, g)
    x = sparse_rows(300, 70, density if side == "input" else 1.0, g)
    out = gw.grad_weight(grad_out, x, side)
    assert_close(out, grad_out, x)
    if density == 0.0:
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("pattern", ["abstopk", "relu"])
@pytest.mark.parametrize("side", SPARSE_SIDES)
def test_activation_patterns_both_sides_sparse(pattern, side):
    g = torch.Generator().manual_seed(7)
    x = sparse_rows(513, 200, 0.25, g, pattern)
    grad_out = sparse_rows(513, 96, 0.25, g, "abstopk")
    assert_close(gw.grad_weight(grad_out, x, side), grad_out, x)


@pytest.mark.parametrize("side", SPARSE_SIDES)
def test_rows_without_and_with_every_nonzero(side):
    g = torch.Generator().manual_seed(3)
    x = sparse_rows(200, 64, 0.3, g)
    grad_out = sparse_rows(200, 48, 0.3, g)
    x[::7] = 0  # tokens with no nonzero
    x[3::11] = torch.randn(len(range(3, 200, 11)), 64, generator=g)  # tokens with every entry
    grad_out[1::5] = 0
    x[:, 5] = 0  # a column (feature) with no nonzero
    grad_out[:, 9] = 0
    assert_close(gw.grad_weight(grad_out, x, side), grad_out, x)


@pytest.mark.parametrize("side", SPARSE_SIDES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 40, 3), (17, 1, 9), (97, 33, 129), (2049, 24, 40), (64, 600, 17)])
def test_edge_shapes(side, shape):
    m, n, k = shape
    g = torch.Generator().manual_seed(m * 7 + n)
    grad_out = sparse_rows(m, n, 0.4, g)
    x = sparse_rows(m, k, 0.4, g)
    assert_close(gw.grad_weight(grad_out, x, side), grad_out, x)


@pytest.mark.parametrize("side", SPARSE_SIDES)
def test_no_rows_or_no_columns(side):
    # An empty reduction (no tokens) gives exact zeros, never a crash; empty outputs work.
    for m, n, k in ((0, 5, 7), (0, 1, 1), (6, 0, 3), (6, 4, 0)):
        grad_out, x = torch.randn(m, n), torch.randn(m, k)
        out = gw.grad_weight(grad_out, x, side)
        assert out.shape == (n, k) and torch.equal(out, torch.zeros(n, k))


ISAS = ("portable", "avx2", "avx512", "amx")


@contextlib.contextmanager
def running_isa(isa):
    """The CPU kernels of instruction set `isa` within the block (a skip where this CPU lacks it)."""
    if ISAS.index(isa) > ISAS.index(extension().cpu_best_isa()):
        pytest.skip(f"this CPU does not support {isa}")
    previous = sparsekern.set_cpu_isa(isa)
    try:
        yield
    finally:
        sparsekern.set_cpu_isa(previous)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("side", SPARSE_SIDES)
@pytest.mark.parametrize("chunk_rows, s_block", [(0, 0), (16, 64), (48, 72), (128, 24)])
def test_every_isa_chunk_and_block(isa, side, chunk_rows, s_block):
    # The kernel reads the dense side in panels of chunk_rows rows by 64 columns and keeps the
    # running sums of s_block columns of the sparse side: forced small here, so that every run
    # has several chunks (the last one short), several blocks (the last one short), a last
    # panel narrower than 64 and columns left over from the register transpose of the output.
    g = torch.Generator().manual_seed(chunk_rows + s_block + len(side))
    grad_out = sparse_rows(301, 157, 0.25, g, "abstopk")
    x = sparse_rows(301, 203, 0.25, g, "abstopk")
    x[40:60] = 0  # a whole chunk of rows without a nonzero on either side
    grad_out[40:60] = 0
    out = torch.full((157, 203), float("nan"))
    with running_isa(isa):
        extension().esmm_sparse_operand_grad_weight_cpu(grad_out, x, side == "input", out=out,
                                                        chunk_rows=chunk_rows, s_block=s_block)
    assert_close(out, grad_out, x)


def test_forced_chunk_and_block_out_of_range_raise():
    ext = extension()
    g, x = torch.randn(8, 3), torch.randn(8, 4)
    with pytest.raises(ValueError, match="chunk_rows"):
        ext.esmm_sparse_operand_grad_weight_cpu(g, x, True, chunk_rows=-1)
    with pytest.raises(ValueError, match="chunk_rows"):
        ext.esmm_sparse_operand_grad_weight_cpu(g, x, True, chunk_rows=5000)
    with pytest.raises(ValueError, match="s_block"):
        ext.esmm_sparse_operand_grad_weight_cpu(g, x, False, s_block=-3)


@pytest.mark.parametrize("side", SPARSE_SIDES)
def test_out_may_not_overlap_an_operand(side):
    g = torch.Generator().manual_seed(4)
    grad_out = sparse_rows(16, 16, 0.3, g)
    x = sparse_rows(16, 16, 0.3, g)
    with pytest.raises(ValueError, match="overlap"):
        extension().esmm_sparse_operand_grad_weight_cpu(grad_out, x, side == "input", out=grad_out)


def test_second_order_through_dense_grad():
    # create_graph: the backward is differentiable again (the plain product), as F.linear's is.
    torch.manual_seed(0)
    layer = sparsekern.SparseLinear(12, 10, density=0.5, format="dense", dense_grad=True).double()
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    (dw,) = torch.autograd.grad(layer(x).square().sum(), layer.weight, create_graph=True)
    (dx2,) = torch.autograd.grad(dw.square().sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    w = torch.where(layer.layout.to_mask(), layer.weight.detach(), 0).requires_grad_()
    (dw_ref,) = torch.autograd.grad((x_ref @ w.t() + layer.bias.detach()).square().sum(), w, create_graph=True)
    (dx2_ref,) = torch.autograd.grad(dw_ref.square().sum(), x_ref)
    torch.testing.assert_close(dx2, dx2_ref)


@pytest.mark.parametrize("side", SPARSE_SIDES)
def test_every_output_written(side):
    g = torch.Generator().manual_seed(11)
    grad_out = sparse_rows(120, 50, 0.2, g)
    x = sparse_rows(120, 45, 0.2, g)
    x[:, :3] = 0
    grad_out[:, -4:] = 0  # outputs whose sum has no term at all must still be written (zeros)
    out = torch.full((50, 45), float("nan"))
    extension().esmm_sparse_operand_grad_weight_cpu(grad_out, x, side == "input", out=out)
    assert_close(out, grad_out, x)


@pytest.mark.parametrize("side", SPARSE_SIDES)
def test_strided_operands(side):
    g = torch.Generator().manual_seed(5)
    grad_big = sparse_rows(90, 80, 0.3, g)
    x_t = sparse_rows(60, 90, 0.3, g).t()  # columns contiguous: copied to rows first
    grad_out = grad_big[:, 10:70]  # rows contiguous, leading dimension 80
    assert_close(gw.grad_weight(grad_out, x_t, side), grad_out, x_t)


def test_choice_follows_the_sparser_side():
    g = torch.Generator().manual_seed(0)
    dense_x = sparse_rows(2048, 1024, 1.0, g)
    dense_g = sparse_rows(2048, 1024, 1.0, g)
    assert gw.choose_side(dense_g, dense_x) == "dense"  # a dense input takes today's path
    sparse_x = sparse_rows(2048, 1024, 0.05, g)
    assert gw.choose_side(dense_g, sparse_x) == "input"
    sparse_g = sparse_rows(2048, 1024, 0.05, g)
    assert gw.choose_side(sparse_g, dense_x) == "grad_out"
    assert gw.choose_side(sparse_g, sparse_rows(2048, 1024, 0.01, g)) == "input"
    assert gw.choose_side(sparse_g.double(), sparse_x.double()) == "dense"  # fp64: no kernel
    assert gw.choose_side(sparse_g[:8, :8], sparse_x[:8, :8]) == "dense"  # too small to measure


def test_a_skipped_zero_never_meets_inf_or_nan():
    # 0 * inf is NaN in the dense product: the kernel checks the side it reads densely and, when
    # it holds an Inf or NaN, the dense product runs instead, so auto gives its NaNs exactly.
    g = torch.Generator().manual_seed(1)
    grad_out = sparse_rows(2048, 1024, 0.05, g)
    x = sparse_rows(2048, 1024, 1.0, g)
    x[5, 7] = float("inf")
    x[9, 3] = float("nan")
    assert gw.choose_side(grad_out, x) == "grad_out"  # chosen by the nonzeros; x's Inf found while walking
    out = gw.dense_grad_weight(grad_out, x)
    ref = grad_out.t() @ x
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)  # the dense product itself
    forced = gw.grad_weight(grad_out, x, "grad_out")  # forced: x's zeros met by nothing are skipped
    assert forced.isnan().sum() < ref.isnan().sum()
    # An Inf on the walked side itself is walked: its products are the dense product's.
    x = sparse_rows(2048, 1024, 0.05, g)
    x[5, 7] = float("inf")
    dense_g = sparse_rows(2048, 1024, 1.0, g)
    assert gw.choose_side(dense_g, x) == "input"
    out = gw.dense_grad_weight(dense_g, x)
    ref = dense_g.t() @ x
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("side", ["input", "grad_out"])
def test_an_inf_anywhere_on_the_dense_side_is_found(isa, side):
    # Every entry of the side read densely reaches a panel or the check of a chunk without a
    # nonzero, on every instruction set: the first and last rows, a chunk the walked side skips,
    # the first, a whole and the partial last panel.
    g = torch.Generator().manual_seed(4)
    walked = sparse_rows(203, 90, 0.2, g)
    walked[48:64] = 0  # chunk 3 of 16 rows without a nonzero
    with running_isa(isa):
        for row in (0, 202, 50):
            for col in (0, 63, 69, 127, 156):
                dense = torch.randn(203, 157, generator=g)
                dense[row, col] = float("-inf") if col else float("nan")
                grad_out, x = (dense, walked) if side == "input" else (walked, dense)
                ref = grad_out.t() @ x
                out = torch.full(ref.shape, 1.0)
                extension().esmm_sparse_operand_grad_weight_cpu(grad_out, x, side == "input", out=out, chunk_rows=16,
                                                                s_block=64, dense_if_not_finite=True)
                torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
                assert out.isnan().any()


def test_sparse_linear_dense_grad_uses_it_and_matches_dense():
    torch.manual_seed(0)
    layer = sparsekern.SparseLinear(1024, 2048, density=1 / 64, format="element", dense_grad=True)
    x = abs_topk(torch.randn(2048, 1024), 256).requires_grad_()
    y = layer(x)
    grad = abs_topk(torch.randn_like(y), 512)
    assert gw.choose_side(grad, x.detach()) != "dense"
    y.backward(grad)
    ref = reference(grad, x.detach())
    err = (layer.weight.grad.double() - ref).abs().max().item() / ref.abs().max().item()
    assert err < 2e-6
    assert (layer.weight.grad != 0).float().mean() > 0.5  # dense: pruned entries get gradients


def test_operator_opcheck():
    g = torch.Generator().manual_seed(2)
    grad_out = sparse_rows(64, 32, 0.3, g)
    x = sparse_rows(64, 16, 0.3, g)
    torch.library.opcheck(torch.ops.sparsekern.dense_grad_weight.default, (grad_out, x))


def test_bad_arguments_raise():
    ext = extension()
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="side"):
        gw.grad_weight(torch.randn(8, 3), x, "both")
    with pytest.raises(ValueError, match="same rows"):
        ext.esmm_sparse_operand_grad_weight_cpu(torch.randn(7, 3), x, True)
    with pytest.raises(TypeError, match="float32"):
        ext.esmm_sparse_operand_grad_weight_cpu(torch.randn(8, 3).double(), x, True)
    with pytest.raises(ValueError, match="2-D"):
        ext.esmm_sparse_operand_grad_weight_cpu(torch.randn(8, 3, 1), x, False)
    with pytest.raises(ValueError, match="contiguous rows"):
        ext.esmm_sparse_operand_grad_weight_cpu(torch.randn(3, 8).t(), x, False)
    with pytest.raises(RuntimeError, match="shape"):
        ext.esmm_sparse_operand_grad_weight_cpu(torch.randn(8, 3), x, False, out=torch.empty(4, 3))


def test_listing_and_products_under_address_sanitizer(tmp_path):
    # The launcher and kernels (csrc/cpu/esmm_sparse_operand*) built with AddressSanitizer and
    # UBSan, on 400 small random cases per instruction set this CPU runs: any read or write past
    # the listing's spare slots, a panel's edge or the kept scratch stops the program.
    from test_cuda_build import _cxx

    if _cxx() is None:
        pytest.skip("no C++ compiler found to build the sanitized host program")
    root = Path(__file__).resolve().parents[1]
    cpu = root / "csrc" / "cpu"
    exe = tmp_path / "sparse_operand_asan"
    sources = [root / "tests" / "cpu_host" / "sparse_operand_asan.cpp", cpu / "esmm_sparse_operand.cpp"] + [
        cpu / f"esmm_sparse_operand_{isa}.cpp" for isa in ("portable", "avx2", "avx512")]
    build = subprocess.run([_cxx(), "-std=c++20", "-O1", "-g", "-fsanitize=address,undefined",
                            "-fno-sanitize-recover=undefined", "-pthread", f"-I{cpu}", *map(str, sources), "-o",
                            str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    best = extension().cpu_best_isa()
    for isa in ("portable", "avx2", "avx512"):
        if ISAS.index(isa) > ISAS.index(best):
            continue
        run = subprocess.run([str(exe), isa, "400"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and run.stdout.strip().endswith("ok 400 cases"), (
            isa, run.stdout[-3000:] + run.stderr[-3000:])


def test_operand_stats():
    t = torch.tensor([[0.0, 1.0, -0.0], [float("nan"), 0.0, 2.0]])
    assert extension().operand_stats_cpu(t) == (3, False)
    assert extension().operand_stats_cpu(torch.ones(5, 7)) == (35, True)
    assert extension().operand_stats_cpu(torch.tensor([[float("-inf"), 1.0]])) == (2, False)
    assert extension().operand_stats_cpu(torch.zeros(0, 4)) == (0, True)
    # A sample: rows 0, 3, 6 of 7 (row 4's NaN unseen).
    rows = torch.zeros(7, 5)
    rows[0, :2], rows[3, :1], rows[4, :] = 1.0, 2.0, float("nan")
    rows[6] = 3.0
    assert extension().operand_stats_cpu(rows, 3) == (8, True)
    assert extension().operand_stats_cpu(rows, 1) == (13, False)
    assert extension().operand_stats_cpu(rows, 100) == (2, True)
    with pytest.raises(ValueError, match="row_step"):
        extension().operand_stats_cpu(rows, 0)
    assert gw.sampled_density(torch.zeros(0, 4)) == 1.0
    sparse = abs_topk(torch.randn(2048, 512), 128)
    assert gw.sampled_density(sparse) == 0.25  # AbsTopK: every row alike
    # Rows of different counts: the sample is rows 0, 2, 4, ... of 256 (one in 256 // 128).
    uneven = torch.zeros(256, 10)
    for r in range(256):
        uneven[r, : r % 7] = 1.0
    assert gw.sampled_density(uneven) == (uneven[::2] != 0).sum().item() / uneven[::2].numel()
    assert gw.sampled_density(uneven) != (uneven != 0).float().mean().item()


def test_element_forward_with_no_reduction_writes_the_bias():
    # The fix that keeps an empty reduction (zero rows above) from dividing by zero is in the
    # element kernel's plan, which the forward shares: in_features = 0 gives the bias.
    bias = torch.randn(3)
    ptr, idx = torch.zeros(4, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    y = extension().esmm_forward_cpu(torch.randn(5, 0), torch.randn(3, 0), bias, ptr, idx)
    assert torch.equal(y, bias.expand(5, 3))
