"""The private entry points (the ``sparsekern::*`` operators and the compiled ``sparsekern._C``
functions): empty shapes, outputs that resize, ``out=`` that overlaps an input, projection plans
from another weight, block sides that overflow, counters that cannot wrap.

The empty-shape sweep runs in a subprocess, so that a crash (the SIGFPE of issue 13) fails the
test with the case that crashed instead of killing pytest.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsekern
from sparsekern._extension import extension

ROOT = Path(__file__).resolve().parents[1]
ext = extension()
needs_ext = pytest.mark.skipif(ext is None or not hasattr(ext, "bsmm_forward_cpu"),
                               reason="the compiled extension is not built here")

# ------------------------------------------------------------------ empty shapes

CPU_DTYPES = (torch.float32, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SIDES = (0, 3)  # M
FEATURES = (0, 40)  # N and K: 40 is not a multiple of the block side


def _isas():
    order = ["portable", "avx2", "avx512", "amx"]
    best = ext.cpu_best_isa() if ext is not None else "portable"
    return order[: order.index(best) + 1]


def _blocks(n, side=32):
    return -(-n // side)


def _full_csr(n_outer, n_inner):
    """Every position listed: (ptr, idx) int32."""
    ptr = torch.arange(n_outer + 1, dtype=torch.int32) * n_inner
    idx = torch.arange(n_inner, dtype=torch.int32).repeat(n_outer)
    return ptr, idx


def _empty_index(n_outer):
    return torch.zeros(n_outer + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)


def _empty_cases():
    """(name, callable) for every operator, backend, dtype and shape class with an empty side or
    no listed entry; each callable returns the result and the reference result to compare."""
    g = torch.Generator().manual_seed(0)
    for (m, n, k), full, dtype in itertools.product(itertools.product(SIDES, FEATURES, FEATURES), (False, True),
                                                    ALL_DTYPES):
        if m and n and k and full:
            continue  # nothing empty: the other tests' business
        yield from _empty_cases_of(g, m, n, k, full, dtype)


def _empty_cases_of(g, m, n, k, full, dtype):
    ops = torch.ops.sparsekern
    x, w, dy, b = (torch.randn(*shape, generator=g).to(dtype) for shape in ((m, k), (n, k), (m, n), (n,)))
    nbr, nbc = _blocks(n), _blocks(k)
    index = _full_csr if full else lambda n_outer, n_inner: _empty_index(n_outer)
    rp, ci = index(nbr, nbc)
    cp, ri = index(nbc, nbr)
    brow = torch.repeat_interleave(torch.arange(nbr, dtype=torch.int32), rp[1:] - rp[:-1])
    erp, eci = index(n, k)
    ecp, eri = index(k, n)
    shape = f"M={m} N={n} K={k} {'all listed' if full else 'none listed'} {str(dtype)[6:]}"
    products = {
        "bsmm_forward": lambda be: ops.bsmm_forward(x, w, None, rp, ci, 32, 32, be),
        "bsmm_forward bias": lambda be: ops.bsmm_forward(x, w, b, rp, ci, 32, 32, be),
        "bsmm_grad_input": lambda be: ops.bsmm_grad_input(dy, w, cp, ri, 32, 32, be),
        "bsmm_grad_weight": lambda be: ops.bsmm_grad_weight(dy, x, brow, ci, 32, 32, be),
        "esmm_forward": lambda be: ops.esmm_forward(x, w, None, erp, eci, be),
        "esmm_forward bias": lambda be: ops.esmm_forward(x, w, b, erp, eci, be),
        "esmm_grad_input": lambda be: ops.esmm_grad_input(dy, w, ecp, eri, be),
        "esmm_grad_weight": lambda be: ops.esmm_grad_weight(dy, x, erp, eci, be),
    }
    backends = ["reference"] + (["cpu"] if dtype in CPU_DTYPES else [])
    for (name, call), backend in itertools.product(products.items(), backends):
        yield f"{name} {backend} {shape}", lambda call=call, backend=backend: (call(backend), call("reference"))
    if full or (m and n and k):
        return  # the rest has no index: once per empty shape
    exact = (dy.double().t() @ x.double()).to(dtype)  # zeros, or an empty [N, K]
    yield f"dense_grad_weight {shape}", lambda: (ops.dense_grad_weight(dy, x), exact)
    if dtype == torch.float32 and ext is not None:
        for sparse_input in (False, True):  # the sparse-operand kernel, forced to each side
            yield (f"esmm_sparse_operand_grad_weight_cpu sparse_input={sparse_input} {shape}",
                   lambda s=sparse_input: (ext.esmm_sparse_operand_grad_weight_cpu(dy, x, s), exact))
        for transpose_b in (False, True):  # a @ b walking a: x @ w.T, dy @ w
            a, b = (x, w) if transpose_b else (dy, w)
            want = (a.double() @ (b.double().t() if transpose_b else b.double())).to(dtype)
            yield (f"esmm_sparse_operand_matmul_cpu transpose_b={transpose_b} {shape}",
                   lambda a=a, b=b, t=transpose_b, want=want: (ext.esmm_sparse_operand_matmul_cpu(a, b, t), want))
            yield (f"sparse_operand_mm transpose_b={transpose_b} {shape}",
                   lambda a=a, b=b, t=transpose_b, want=want: (ops.sparse_operand_mm(a, b, t), want))
        yield f"operand_stats_cpu {shape}", lambda: (torch.tensor(ext.operand_stats_cpu(x)),
                                                    torch.tensor((int(torch.count_nonzero(x)), True)))
    # AbsTopK on the rows of x, k = 0 and k = n; its backward.
    for kk, backend in itertools.product(sorted({0, k}), ["reference", "cpu"]):
        yield (f"abs_topk k={kk} {backend} {shape}",
               lambda kk=kk, backend=backend: (ops.abs_topk(x, kk, backend), ops.abs_topk(x, kk, "reference")))
    if ext is not None:
        kept = torch.zeros(x.shape, dtype=torch.bool)
        yield f"abs_topk_backward_cpu {shape}", lambda: (ext.abs_topk_backward_cpu(x, kept), torch.zeros_like(x))
    # The projection of an empty weight keeps nothing and changes nothing (block counts: zeros).
    if n == 0 or k == 0:
        for backend, granularity in itertools.product(sparsekern.projection_backends("cpu", dtype),
                                                      ("element", "block")):
            def project(backend=backend, granularity=granularity):
                result = sparsekern.topk_project_(w, 0, granularity=granularity, block_size=16, backend=backend)
                return (torch.tensor(result[1:3]), result.block_counts), (torch.tensor((0, 0)), rp.new_zeros(
                    _blocks(n, 16), _blocks(k, 16)))
            yield f"topk_project_ {granularity} {backend} {shape}", project


def _same(got, want) -> bool:
    if isinstance(got, (tuple, list)):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want))
    return got.shape == want.shape and got.dtype == want.dtype and torch.equal(got, want)


def _sweep() -> None:
    """Runs every case on every CPU instruction set, printing each before it runs (so a crash names
    it); prints MISMATCH lines for results that differ from the reference."""
    for isa in _isas():
        sparsekern.set_cpu_isa(isa)
        for name, case in _empty_cases():
            print(f"RUN {isa} {name}", flush=True)
            try:
                got, want = case()
            except Exception as e:  # noqa: BLE001 (reported, and the sweep goes on)
                print(f"MISMATCH {isa} {name}: raised {type(e).__name__}: {e}".splitlines()[0], flush=True)
                continue
            if not _same(got, want):
                print(f"MISMATCH {isa} {name}: {got!r} != {want!r}".replace("\n", " "), flush=True)
    print("DONE", flush=True)


@needs_ext
def test_empty_shapes_return_empty_or_zero_results_for_every_op_backend_dtype_and_isa():
    # Issue 13 item 8: bsmm_grad_weight with N = K = 0 divided by zero (SIGFPE) and killed the process.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.splitlines()
    ran = [line for line in lines if line.startswith("RUN ")]
    assert proc.returncode == 0 and lines and lines[-1] == "DONE", (
        f"the sweep died (exit code {proc.returncode}) at: {ran[-1] if ran else 'start'}\n{proc.stderr[-3000:]}")
    mismatches = [line for line in lines if line.startswith("MISMATCH")]
    assert not mismatches, "\n".join(mismatches[:20])
    assert len(ran) > 500  # the sweep really ran its cases



# ------------------------------------------------------------------ outputs resize like torch's

SIDE = 1100  # [SIDE, SIDE] fp32 is 4.6 MiB, past the size from which CPU outputs go on huge pages


def _assert_resizes(t: torch.Tensor, name: str) -> None:
    t = t.detach()
    assert t.untyped_storage().nbytes() >= 4 << 20, f"{name}: too small to test the huge-page outputs"
    before = t.clone()
    t.resize_(2 * t.shape[0], t.shape[1])  # a larger storage, through the tensor's allocator
    assert torch.equal(t[: before.shape[0]], before), f"{name}: resize_ lost the values"


@needs_ext
def test_large_cpu_outputs_and_gradients_resize_like_nn_linear():
    # Issue 13 item 11: outputs over 4 MiB were from_blob tensors: "Trying to resize storage that is
    # not resizable". Every op and gradient whose output the CPU kernels allocate.
    from sparsekern import BlockLayout, ElementLayout, SparseLinear

    g = torch.Generator().manual_seed(0)
    x, w, dy = (torch.randn(SIDE, SIDE, generator=g) for _ in range(3))
    outputs = {"issue's example": SparseLinear(1024, 2048, format="element")(torch.randn(1024, 1024))}
    layouts = {"block": (sparsekern.block_sparse_linear, BlockLayout.random((SIDE, SIDE), 32, 0.25, generator=g)),
               "element": (sparsekern.element_sparse_linear, ElementLayout(torch.rand(SIDE, SIDE, generator=g) < 0.25))}
    for fmt, (linear, layout) in layouts.items():
        xx, weight = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = linear(xx, weight, layout, backend="cpu")
        y.backward(dy)
        outputs.update({f"{fmt} forward": y, f"{fmt} grad_input": xx.grad, f"{fmt} grad_weight": weight.grad})
    xx = x.clone().requires_grad_()
    values = sparsekern.abs_topk(xx, 100, backend="cpu")
    values.backward(dy)
    outputs.update({"abs_topk": values, "abs_topk backward": xx.grad})
    sparse = torch.where(dy > 1, dy, 0)
    outputs["dense weight gradient, sparse operand"] = ext.esmm_sparse_operand_grad_weight_cpu(sparse, x, False)
    outputs["projection floors"] = ext.topk_floors_cpu(torch.randn(4 * SIDE, SIDE, generator=g), 1, 0)[0]
    for name, t in outputs.items():
        _assert_resizes(t, name)



# ------------------------------------------------------------------ out= that overlaps an input

N_OUT = 64


def _overlapping_out_calls():
    """(entry point, its call with an ``out`` that overlaps an input, that input's name, the
    tensors to find unchanged) for every CPU entry point that takes an output."""
    g = torch.Generator().manual_seed(0)
    n = N_OUT
    x, dy = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    buf = torch.randn(2 * n * n, generator=g)
    w = buf[: n * n].view(n, n)
    into_w = buf[n * n // 2: n * n // 2 + n * n].view(n, n)  # half of it is w's second half
    rp, ci = _full_csr(2, 2)
    brow = torch.tensor([0, 0, 1, 1], dtype=torch.int32)
    erp, eci = _full_csr(n, n)
    values = torch.empty(n, n)
    kept = values.view(-1).view(torch.uint8)[: n * n].view(n, n).view(torch.bool)  # values' first bytes
    return [
        ("bsmm_forward_cpu", lambda: ext.bsmm_forward_cpu(x, w, None, rp, ci, 32, 32, x), "out", "x", (x, w)),
        ("bsmm_forward_cpu", lambda: ext.bsmm_forward_cpu(x, w, None, rp, ci, 32, 32, into_w), "out", "weight", (x, w)),
        ("bsmm_grad_input_cpu", lambda: ext.bsmm_grad_input_cpu(dy, w, rp, ci, 32, 32, dy), "out", "grad_out",
         (dy, w)),
        ("bsmm_grad_weight_cpu", lambda: ext.bsmm_grad_weight_cpu(dy, x, brow, ci, 32, 32, x), "out", "x", (dy, x)),
        ("esmm_forward_cpu", lambda: ext.esmm_forward_cpu(x, w, None, erp, eci, into_w), "out", "weight", (x, w)),
        ("esmm_grad_input_cpu", lambda: ext.esmm_grad_input_cpu(dy, w, erp, eci, dy), "out", "grad_out", (dy, w)),
        ("esmm_grad_weight_cpu", lambda: ext.esmm_grad_weight_cpu(dy, x, erp, eci, dy), "out", "grad_out", (dy, x)),
        ("esmm_sparse_operand_grad_weight_cpu", lambda: ext.esmm_sparse_operand_grad_weight_cpu(dy, x, True, x),
         "out", "x", (dy, x)),
        ("abs_topk_cpu", lambda: ext.abs_topk_cpu(x, 5, values, kept), "values_out", "kept_out", (x,)),
    ]


@needs_ext
@pytest.mark.parametrize("case", range(len(_overlapping_out_calls()) if ext is not None else 0))
def test_an_out_that_overlaps_an_input_is_refused_before_anything_is_written(case):
    # Issue 13 item 14: an out= aliasing the input gave a wrong result (the kernels read what they
    # write); now a clear error, inputs untouched.
    name, call, out_name, input_name, inputs = _overlapping_out_calls()[case]
    before = [t.clone() for t in inputs]
    with pytest.raises(ValueError, match=f"{out_name} must not overlap {input_name}"):
        call()
    assert all(torch.equal(t, b) for t, b in zip(inputs, before)), f"{name} wrote before refusing"


def test_an_out_that_shares_no_memory_with_the_inputs_is_used():
    # The check is by memory spans: disjoint views of one buffer are fine.
    buf = torch.randn(3, N_OUT, N_OUT)
    x, w, out = buf[0], buf[1], buf[2]
    rp, ci = _full_csr(2, 2)
    y = ext.bsmm_forward_cpu(x, w, None, rp, ci, 32, 32, out)
    assert y.data_ptr() == out.data_ptr()
    torch.testing.assert_close(y, x @ w.t())



# ------------------------------------------------------------------ projection plans from another weight

needs_cpu_projection = pytest.mark.skipif(ext is None or not hasattr(ext, "topk_select_cpu"),
                                          reason="the compiled extension has no projection kernels here")


@needs_cpu_projection
def test_the_cpu_select_plan_applies_only_to_its_weight_and_mask_unchanged():
    # Issue 13 item 14: a plan from another weight (or the same one changed since) was applied
    # silently, keeping entries by another matrix's cutoff and ties.
    g = torch.Generator().manual_seed(0)
    w, other = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    forced = torch.zeros(8, 12, dtype=torch.bool)
    forced[0, :3] = True
    stale = "the plan was made by topk_select_cpu for another weight or floor mask, or before one of them changed"
    cases = {
        "another weight": lambda: ext.topk_apply_cpu(other, None, ext.topk_select_cpu(w, None, 5), 0, 0),
        "another mask": lambda: ext.topk_apply_cpu(w, None, ext.topk_select_cpu(w, forced, 5), 0, 0),
        "another mask's copy": lambda: ext.topk_apply_cpu(w, forced.clone(), ext.topk_select_cpu(w, forced, 5), 0, 0),
    }
    for name, call in cases.items():
        before = (w.clone(), other.clone())
        with pytest.raises(ValueError, match=stale):
            call()
        assert torch.equal(w, before[0]) and torch.equal(other, before[1]), f"{name}: written before refusing"
    plan = ext.topk_select_cpu(w, None, 5)
    w[0, 0] = 100.0  # changed since the select (an in-place write through torch)
    with pytest.raises(ValueError, match=stale):
        ext.topk_apply_cpu(w, None, plan, 0, 0)
    plan = ext.topk_select_cpu(w, None, 5)
    version = w._version
    assert ext.topk_apply_cpu(w, None, plan, 0, 0)[0] == 5
    assert w._version > version  # the write pass counts as an in-place op: autograd and old plans see it
    with pytest.raises(ValueError, match=stale):
        ext.topk_apply_cpu(w, None, plan, 0, 0)  # its weight changed (by the plan itself)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_a_prepared_projection_refuses_a_weight_changed_since(backend):
    # Issue 13 item 14, the Python side: prepare_projection's plan against a weight that changed
    # shape, storage or values before apply().
    if backend not in sparsekern.projection_backends("cpu"):
        pytest.skip(f"no {backend} projection here")
    from sparsekern.projection import prepare_projection

    g = torch.Generator().manual_seed(0)
    changes = {
        "values": lambda w: w.detach().mul_(-1),  # detach() shares the version counter; .data would not
        "storage": lambda w: setattr(w, "data", torch.randn(16, 24, generator=g)),
        "shape": lambda w: setattr(w, "data", torch.randn(24, 16, generator=g)),
    }
    for name, change in changes.items():
        w = torch.nn.Parameter(torch.randn(16, 24, generator=g))
        prepared = prepare_projection(w, 50, backend=backend)
        change(w)
        before = w.detach().clone()
        with pytest.raises(RuntimeError, match="weight changed after this projection was planned"):
            prepared.apply()
        assert torch.equal(w.detach(), before), f"{name}: written before refusing"
    w = torch.randn(16, 24, generator=g)
    prepared = prepare_projection(w, 50, backend=backend)
    assert prepared.apply().nnz == 50
    with pytest.raises(RuntimeError, match="or the plan was applied already"):
        prepared.apply()


# ------------------------------------------------------------------ sides and block sizes near int64's limit

@needs_cpu_projection
def test_huge_block_sides_count_one_block_instead_of_wrapping():
    # Issue 13 item 14: ceil_div(n + b - 1) wrapped for block sides near 2^63 (a negative block grid).
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    for bo, bi in ((2**63 - 1, 2**63 - 1), (3, 2**63 - 1), (2**62, 5)):
        nnz, counts, _ = ext.topk_apply_cpu(w, None, ext.topk_select_cpu(w, None, 40), bo, bi)
        expected = sparsekern.projection.reference.block_counts(w, (min(bo, 8), min(bi, 12)))
        assert nnz == 40 and torch.equal(counts, expected), (bo, bi)


@needs_ext
def test_sides_near_int64_max_raise_a_clear_error():
    # Stride-0 views can have a side of 2^63 - 1: the index checks' n + 1 and the block counts wrapped.
    huge = torch.randn(1, 1).expand(2**63 - 1, 1)
    x = torch.randn(2, 1)
    ptr, idx = torch.zeros(2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    calls = {
        "bsmm_forward_cpu": lambda: ext.bsmm_forward_cpu(x, huge, None, ptr, idx, 32, 32),
        "esmm_forward_cpu": lambda: ext.esmm_forward_cpu(x, huge, None, ptr, idx),
        "esmm_grad_weight_cpu": lambda: ext.esmm_grad_weight_cpu(torch.randn(1, 1).expand(1, 2**63 - 1), x[:1],
                                                                 ptr, idx),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"must have sides below 2\^62"):
            call()



# ------------------------------------------------------------------ in-place projection of overlapping memory

def _overlapping_weights():
    base = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    return {
        "expanded": base.expand(64, 64),  # the example
        "as_strided": torch.as_strided(base.clone().view(-1), (8, 8), (1, 1)),  # torch says "too hard"
        "as_strided (4, 6)": torch.as_strided(base.clone().view(-1), (5, 7), (4, 6)),  # 3 rows down = 2 columns on
    }


@pytest.mark.parametrize("granularity", ["element", "block"])
def test_projecting_a_weight_with_overlapping_memory_raises_before_writing_in_every_backend(granularity):
    # Issue 13 item 12g: the reference backend was silently wrong on an expanded weight, the cpu
    # backend raised torch's "more than one element of the written-to tensor refers to a single
    # memory location".
    block = 16 if granularity == "block" else None
    for backend in sparsekern.projection_backends("cpu"):
        for name, w in _overlapping_weights().items():
            before = w.clone()
            with pytest.raises(ValueError, match=r"weight has overlapping memory \(expanded\?\); clone\(\) it"):
                sparsekern.topk_project_(w, 1, granularity=granularity, block_size=block, backend=backend)
            assert torch.equal(w, before), f"{backend}, {name}: written before refusing"


def test_strided_weights_without_overlap_are_projected():
    # The check is exact: strides (4, 6) over 3 x 4 entries never meet (the first repeat is 3 rows down).
    storage = torch.randn(64, generator=torch.Generator().manual_seed(0))
    for shape, strides in (((3, 4), (4, 6)), ((4, 3), (1, 4)), ((5, 2), (2, 1))):
        for backend in sparsekern.projection_backends("cpu"):
            w = torch.as_strided(storage.clone(), shape, strides)
            expected = w.clone()
            sparsekern.topk_project_(expected, 4, backend="reference")
            sparsekern.topk_project_(w, 4, backend=backend)
            assert torch.equal(w, expected), (shape, strides, backend)


def test_the_exact_overlap_rule_matches_a_brute_force_count():
    from sparsekern._checks import has_internal_overlap

    for rows, cols, s0, s1 in itertools.product(range(6), range(6), range(7), range(7)):
        t = torch.as_strided(torch.empty(64), (rows, cols), (s0, s1))
        offsets = {i * s0 + j * s1 for i in range(rows) for j in range(cols)}
        assert has_internal_overlap(t) == (len(offsets) < rows * cols), (rows, cols, s0, s1)



# ------------------------------------------------------------------ counters that cannot wrap
# Issue 13 item 9: the CPU select's uint32 histogram wrapped for a row chunk of 2^32 entries (an
# 8 GiB bf16 weight kept every entry), and the Triton projection's global histogram was int32.
# Such a weight cannot be allocated here. What is proven instead: (1) the CPU histogram code, run
# with 8-bit sub-counters, counts 100003 entries of one chunk exactly and plans exactly k (so
# the 32-bit ones, flushed the same way into 64-bit bins, count any chunk below 2^64), and its
# bin search is exact above 2^32; (2) the Triton histogram and digit-pick kernels carry counts
# above 2^31 and 2^32; (3) statically, every histogram, tie and nonzero count of the three
# projections is 64-bit, and AbsTopK (per-row int32 counts) refuses rows of 2^31 entries.


def test_cpu_select_counts_exactly_with_counters_narrower_than_a_chunk(tmp_path):
    from test_cuda_build import _build_host_program

    exe = tmp_path / "topk_counts_check"
    _build_host_program("topk_counts_check.cpp", exe, "-O1", "-Wall", "-Werror")
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def _source(path: str) -> str:
    return (ROOT / path).read_text()


def test_projection_counts_are_64_bit_in_the_sources():
    cpu = _source("csrc/cpu/topk_kernels.h")
    assert "using HistCount = uint64_t;" in cpu
    # Every histogram buffer and bin pointer is HistCount (the 32-bit sub-counters are flushed).
    assert not re.search(r"uint32_t\s*\*\s*hist|vector<uint32_t>\s+hists?\b", cpu)
    assert re.search(r"std::vector<HistCount> hists\(", cpu) and "HistCount* hist" in cpu
    cuda_select, cuda_apply = _source("csrc/cuda/topk_select_kernels.cuh"), _source("csrc/cuda/topk_apply_kernel.cuh")
    # Per-CTA counts (at most 1024 columns) are 32-bit; the global ones 64-bit.
    assert "unsigned long long* hist" in cuda_select and "int64_t* ties_before" in cuda_select
    assert "unsigned long long* nnz" in cuda_apply
    binding = _source("csrc/bindings.cpp")
    assert "Tensor hist = at::empty({256}, longs);" in binding
    from sparsekern.projection.triton import topk_launch  # noqa: F401 (imports triton)

    launch = _source("sparsekern/projection/triton/topk_launch.py")
    assert "COUNT = torch.int64" in launch
    for name in ("hist", "ties_before", "nnz"):
        assert re.search(rf"{name} = torch\.zeros\([^\n]*dtype=COUNT", launch), name
    # AbsTopK counts per row in 32 bits: every backend refuses rows of 2^31 entries.
    assert "n <= INT32_MAX" in binding


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_histogram_and_pick_carry_counts_above_2_31(monkeypatch):
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    from sparsekern.projection.triton.topk_kernels import _topk_hist_kernel, _topk_pick_kernel
    from sparsekern.projection.triton.topk_launch import COUNT

    device = "cuda" if torch.cuda.is_available() else "cpu"
    w = torch.full((1, 128), 2.0, device=device)  # 128 equal keys: one bin of the top digit
    hist = torch.zeros(256, dtype=COUNT, device=device)
    top = int(w.view(torch.int32)[0, 0]) >> 24
    hist[top] = 2**31 - 100  # as if the rest of a huge weight had been counted already
    state = torch.zeros(2, dtype=torch.int64, device=device)
    _topk_hist_kernel[(1, 1)](w, w, hist, state, 128, 128, 1, SHIFT=24, FIRST=True, HAS_FORCED=False,
                              KEY_BITS=32, BLOCK_C=128)
    assert int(hist[top]) == 2**31 + 28
    # The pick: the k-th largest of 2^32 + 5 keys in the top bin and 3 above it.
    hist.zero_()
    hist[top], hist[255] = 2**32 + 5, 3
    state = torch.tensor([0, 2**32 + 4], dtype=torch.int64, device=device)
    _topk_pick_kernel[(1,)](hist, state)
    assert state.tolist() == [top, 2**32 + 1] and int(hist.abs().sum()) == 0


def test_abs_topk_refuses_rows_its_int32_counts_cannot_hold():
    x = torch.empty(0, 2**31)  # no memory: only the row length matters
    backends = [b for b in ("cpu", "triton") if b in sparsekern.activation.backends.REGISTRY.available("cpu", x.dtype)]
    for backend in backends:
        with pytest.raises(ValueError, match=r"rows must be shorter than 2\^31"):
            sparsekern.activation.backends.get_backend(backend).forward(x, 0)



# ------------------------------------------------------------------ the same checks on the GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or ext is None or not hasattr(ext, "topk_select_cuda"),
                    reason="needs a CUDA GPU and the CUDA kernels")
def test_cuda_entry_points_refuse_foreign_plans_and_overlapping_outputs():
    w, other = torch.randn(8, 300, device="cuda"), torch.randn(8, 300, device="cuda")
    state, ties = ext.topk_select_cuda(w, None, 100)
    stale = "the plan was made by topk_select_cuda for another weight"
    with pytest.raises(ValueError, match=stale):
        ext.topk_apply_cuda(other, None, state, ties, 0, 0)
    with pytest.raises(ValueError, match="state must be a plan's state that topk_select_cuda returned"):
        ext.topk_apply_cuda(w, None, state.clone(), ties, 0, 0)
    nnz, _ = ext.topk_apply_cuda(w, None, state, ties, 0, 0)
    assert int(nnz) == 100
    with pytest.raises(ValueError, match=stale):  # the plan changed its own weight
        ext.topk_apply_cuda(w, None, state, ties, 0, 0)
    with pytest.raises(ValueError, match=r"weight has overlapping memory \(expanded\?\); clone\(\) it"):
        ext.topk_select_cuda(torch.as_strided(torch.randn(64, device="cuda"), (8, 8), (1, 1)), None, 3)
    x = torch.randn(64, 64, device="cuda")
    rp, ci = _full_csr(2, 2)
    with pytest.raises(ValueError, match="out must not overlap x"):
        ext.bsmm_forward_cuda(x, x.clone(), None, rp.cuda(), ci.cuda(), 32, 32, False, x)
    values = torch.empty(64, 64, device="cuda")
    kept = values.view(-1).view(torch.uint8)[: 64 * 64].view(64, 64).view(torch.bool)
    with pytest.raises(ValueError, match="values_out must not overlap kept_out"):
        ext.abs_topk_cuda(x, 5, values, kept)


if __name__ == "__main__":
    _sweep()
