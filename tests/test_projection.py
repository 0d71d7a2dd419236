"""Top-k projection: every backend against the sort-based rule, the rule against brute force,
block mode, floors and bad input."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekern
from sparsekern import topk_project_
from sparsekern.backend import BackendUnavailableError
from sparsekern.projection.backends import REGISTRY

from projection_cases import DTYPES, KINDS, bits, check_projection, make_weight, projection_backends_here

# The fused backends (the reference is checked against brute force below). The Triton
# interpreter is slow: its cases are in test_projection_triton.py, small.
FUSED = [b for b in projection_backends_here() if b not in ("reference", "triton")]
BACKENDS = ["reference"] + FUSED


def brute_force_keep(mag, k, min_per_row=0, min_per_col=0):
    """The rule written out with Python loops: floors first, then the largest rest, ties by index."""
    rows, cols = mag.shape
    vals = mag.tolist()
    order = lambda cells: sorted(cells, key=lambda rc: (-vals[rc[0]][rc[1]], rc[0] * cols + rc[1]))  # noqa: E731
    floor = set()
    for r in range(rows):
        floor |= set(order([(r, c) for c in range(cols)])[:min_per_row])
    for c in range(cols):
        floor |= set(order([(r, c) for r in range(rows)])[:min_per_col])
    assert len(floor) <= k
    rest = order([rc for rc in itertools.product(range(rows), range(cols)) if rc not in floor])
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for r, c in list(floor) + rest[: k - len(floor)]:
        keep[r, c] = True
    return keep


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), kind=st.sampled_from(KINDS), data=st.data(),
       seed=st.integers(0, 2**16))
def test_reference_rule_matches_brute_force(rows, cols, kind, data, seed):
    w = make_weight(kind, (rows, cols), torch.float32, torch.Generator().manual_seed(seed))
    min_per_row = data.draw(st.integers(0, min(cols, 2)))
    min_per_col = data.draw(st.integers(0, min(rows, 2)))
    n_floor = int(sparsekern.projection.reference.floor_mask(w.abs(), min_per_row, min_per_col).sum())
    k = data.draw(st.integers(n_floor, rows * cols))
    keep = brute_force_keep(w.abs(), k, min_per_row, min_per_col)
    got = w.clone()
    result = topk_project_(got, k, min_per_row=min_per_row, min_per_col=min_per_col, backend="reference")
    assert torch.equal(bits(got), bits(torch.where(keep, w, 0.0)))
    assert result.nnz == int((got != 0).sum()) <= k
    kept = w.abs()[keep]
    assert result.threshold == (kept.min().item() if k else math.inf)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (40, 72), (130, 33)])
def test_element_mode_matches_rule(backend, dtype, kind, shape, generator):
    w = make_weight(kind, shape, dtype, generator)
    n = w.numel()
    for k in sorted({0, 1, n // 64, n // 3, n - 1, n}):
        check_projection(w, k, backend, block_size=(16, 32))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_large_matrices_match_rule(backend, dtype, kind, generator):
    # Large enough for the C++ kernel's sampled-bracket pass and several threads.
    w = make_weight(kind, (600, 520), dtype, generator)
    n = w.numel()
    for k in (0, n // 64, n // 2, 5, n - 3, n):
        check_projection(w, k, backend, block_size=(32, 16))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ("normal", "ties"))
@pytest.mark.parametrize("floors", [(1, 0), (0, 2), (3, 1), (4, 4)])
def test_floors_match_rule(backend, dtype, kind, floors, generator):
    w = make_weight(kind, (37, 50), dtype, generator)
    min_per_row, min_per_col = floors
    n_floor = int(sparsekern.projection.reference.floor_mask(w.abs().float(), *floors).sum())
    for k in sorted({n_floor, n_floor + 1, w.numel() // 4, w.numel()}):
        check_projection(w, k, backend, min_per_row=min_per_row, min_per_col=min_per_col)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_floors_where_blocks_of_32_are_skipped(backend, dtype, generator):
    # The CPU row floor skips a block of 32 whose largest |w| cannot enter the row's list; the
    # largest entries in the last, partial block, and ties equal to the list's last key in
    # later blocks (which must not displace the earlier ones), are the edges of that skip.
    w = (torch.rand(6, 100, generator=generator) * 0.5).to(dtype)
    w[0, 96:] = torch.tensor([4.0, -3.0, 2.0, 1.5]).to(dtype)  # the whole floor in the partial block
    w[1, :] = 0.25
    w[1, 40] = w[1, 70] = 1.0  # two above, then ties everywhere: the lowest indices win
    w[2, 5], w[2, 33], w[2, 64], w[2, 99] = 1.0, -1.0, 1.0, -1.0  # four equal maxima in four blocks
    w[3, 31], w[3, 32] = 2.0, -2.0  # the two sides of a block boundary
    for k in (24, 30, 200):
        check_projection(w, k, backend, min_per_row=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_floors_large(backend, generator):
    w = make_weight("normal", (640, 512), torch.float32, generator)
    check_projection(w, w.numel() // 64, backend, min_per_row=4, min_per_col=2, block_size=32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [16, (32, 16), (16, 64)])
@pytest.mark.parametrize("kind", ("normal", "ties"))
def test_block_mode_matches_rule(backend, dtype, block_size, kind, generator):
    w = make_weight(kind, (70, 100), dtype, generator)
    bs = sparsekern.block.layout.normalize_block_size(block_size)
    n_blocks = math.prod(sparsekern.block.layout.block_grid((70, 100), bs))
    for k in sorted({0, 1, n_blocks // 3, n_blocks}):
        check_projection(w, k, backend, granularity="block", block_size=bs)
    n_floor = int(sparsekern.projection.reference.floor_mask(sparsekern.block_norms(w, bs), 1, 1).sum())
    check_projection(w, max(n_blocks // 2, n_floor), backend, granularity="block", block_size=bs,
                     min_per_row=1, min_per_col=1)


def test_block_mode_against_brute_force(generator):
    w = make_weight("ties", (64, 96), torch.float32, generator)
    scores = sparsekern.block_norms(w, (16, 32))
    keep = brute_force_keep(scores, 5, 1, 0)
    got = w.clone()
    result = topk_project_(got, 5, granularity="block", block_size=(16, 32), min_per_row=1)
    mask = keep.repeat_interleave(16, 0).repeat_interleave(32, 1)  # written out: 64 x 96 is whole blocks
    assert torch.equal(got, torch.where(mask, w, 0.0))
    assert result.threshold == scores[keep].min().item()


def test_kept_entries_and_negative_zero():
    w = torch.tensor([[-0.0, 3.0, -2.0], [0.0, -3.0, 1.0]])
    for backend in BACKENDS:
        got = w.clone()
        result = topk_project_(got, 5, backend=backend)
        # Kept: |3|, |-3|, |-2|, |1|, then the first zero (-0.0 at index 0), kept as -0.0.
        assert torch.equal(bits(got), bits(torch.tensor([[-0.0, 3.0, -2.0], [0.0, -3.0, 1.0]])))
        assert (result.k, result.nnz, result.threshold) == (5, 4, 0.0)
        got = w.clone()
        result = topk_project_(got, 2, backend=backend)  # the tie at 3 is exact: both kept
        assert torch.equal(got, torch.tensor([[0.0, 3.0, 0.0], [0.0, -3.0, 0.0]]))
        assert (result.nnz, result.threshold) == (2, 3.0)
        got = w.clone()
        result = topk_project_(got, 1, backend=backend)  # a split tie: the lowest index wins
        assert torch.equal(got, torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_weight(backend, generator):
    base = torch.randn(50, 80, generator=generator)
    w = base.t()  # a transposed view: projected in place through its strides
    expected = w.clone()
    check_projection(expected, 300, backend)
    topk_project_(w, 300, backend=backend)
    got = expected.clone()
    topk_project_(got, 300, backend="reference")
    assert torch.equal(w, got)
    assert w.data_ptr() == base.data_ptr()


def test_parameter_requiring_grad_is_projected(generator):
    p = torch.nn.Parameter(torch.randn(20, 30, generator=generator))
    result = topk_project_(p, 40)
    assert result.nnz == 40 and int((p != 0).sum()) == 40 and p.requires_grad


def test_automatic_choice_prefers_the_fused_backend(monkeypatch):
    monkeypatch.delenv(REGISTRY.env_var, raising=False)
    chosen = REGISTRY.select(None, torch.device("cpu"), torch.float32, None).name
    assert chosen == (FUSED[0] if FUSED else "reference")
    assert REGISTRY.select(None, torch.device("cpu"), torch.float64, None).name == "reference"


# ------------------------------------------------------------------ bad input
def _weight():
    return torch.randn(24, 40, generator=torch.Generator().manual_seed(3))


BAD = [
    (dict(k=-1), ValueError, r"k must be in \[0, 960\]"),
    (dict(k=961), ValueError, r"k must be in \[0, 960\]"),
    (dict(k=2.5), TypeError, "k must be an int"),
    (dict(k=True), TypeError, "k must be an int"),
    (dict(k=10, granularity="row"), ValueError, "granularity must be one of"),
    (dict(k=10, granularity="block"), ValueError, "block_size is required"),
    (dict(k=10, granularity="block", block_size=12), ValueError, "block_size sides"),
    (dict(k=7, granularity="block", block_size=16), ValueError, r"k must be in \[0, 6\] \(the number of blocks\)"),
    (dict(k=10, min_per_row=-1), ValueError, "min_per_row must be in"),
    (dict(k=10, min_per_row=41), ValueError, "min_per_row must be in"),
    (dict(k=10, min_per_col=25), ValueError, "min_per_col must be in"),
    (dict(k=10, min_per_row=1), ValueError, "k=10 is smaller than the 24 entries the floors"),
    (dict(k=3, granularity="block", block_size=16, min_per_col=2), ValueError, "k=3 is smaller than the 6 blocks"),
    (dict(k=10, backend="tpu"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_arguments_change_nothing(backend, kwargs, exc, match):
    w = _weight()
    before = w.clone()
    kwargs = dict(kwargs)
    kwargs.setdefault("backend", backend)
    k = kwargs.pop("k")
    with pytest.raises(exc, match=match):
        topk_project_(w, k, **kwargs)
    assert torch.equal(bits(w), bits(before))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("granularity", ["element", "block"])
def test_non_finite_weight_changes_nothing(backend, dtype, bad, granularity):
    for shape, where in (((24, 40), (23, 39)), ((600, 520), (300, 7))):  # small, and the bracket pass
        w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        w[where] = bad
        before = w.clone()
        with pytest.raises(ValueError, match="weight must be finite"):
            topk_project_(w, 3, granularity=granularity, block_size=16, min_per_row=0, backend=backend)
        with pytest.raises(ValueError, match="weight must be finite"):
            topk_project_(w, w.shape[0] * 2, granularity="element", min_per_row=2, backend=backend)
        assert torch.equal(bits(w), bits(before))


@pytest.mark.parametrize("weight,exc,match", [
    (torch.arange(12).view(3, 4), TypeError, "weight must be a floating-point tensor"),
    ([[1.0, 2.0]], TypeError, "weight must be a torch.Tensor"),
    (torch.randn(3, 4, 5), ValueError, "weight must be a 2-D tensor"),
    (torch.randn(0, 4), ValueError, r"k must be in \[0, 0\]"),
])
def test_bad_weight(weight, exc, match):
    with pytest.raises(exc, match=match):
        topk_project_(weight, 1)


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    w = _weight()
    with pytest.raises(BackendUnavailableError, match="backend='triton' cannot run this call"):
        topk_project_(w, 3, backend="triton")
    with pytest.raises(BackendUnavailableError, match="backend='cpu' cannot run this call: .*float64"):
        topk_project_(w.double(), 3, backend="cpu")


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv(REGISTRY.env_var, "tpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        topk_project_(_weight(), 3)


@pytest.mark.skipif(not FUSED, reason="no fused projection backend can run CPU tensors here")
@pytest.mark.parametrize("backend", FUSED)
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 90), dtype=st.sampled_from(DTYPES), kind=st.sampled_from(KINDS),
       data=st.data(), seed=st.integers(0, 2**16))
def test_fused_backend_matches_rule_property(backend, rows, cols, dtype, kind, data, seed):
    w = make_weight(kind, (rows, cols), dtype, torch.Generator().manual_seed(seed))
    min_per_row = data.draw(st.integers(0, min(cols, 3)))
    min_per_col = data.draw(st.integers(0, min(rows, 3)))
    n_floor = int(sparsekern.projection.reference.floor_mask(w.abs().float(), min_per_row, min_per_col).sum())
    k = data.draw(st.integers(n_floor, rows * cols))
    block = data.draw(st.sampled_from([None, 16, (32, 64)]))
    check_projection(w, k, backend, min_per_row=min_per_row, min_per_col=min_per_col, block_size=block)


@pytest.mark.skipif("cpu" not in FUSED, reason="the compiled extension has no projection kernels here")
def test_cpu_entry_points_check_their_arguments():
    from sparsekern._extension import extension

    ext = extension()
    w = torch.randn(8, 12)
    plan = ext.topk_select_cpu(w, None, 5)
    with pytest.raises(ValueError, match="k must be in"):
        ext.topk_select_cpu(w, None, 97)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        ext.topk_select_cpu(w.t(), None, 5)
    with pytest.raises(TypeError, match="weight must be float32, float16 or bfloat16"):
        ext.topk_select_cpu(w.double(), None, 5)
    with pytest.raises(ValueError, match="forced must be a contiguous bool tensor of weight's shape"):
        ext.topk_select_cpu(w, torch.zeros(8, 11, dtype=torch.bool), 5)
    with pytest.raises(TypeError, match="forced must be bool"):
        ext.topk_select_cpu(w, torch.zeros(8, 12), 5)
    with pytest.raises(ValueError, match="plan must be the int64 tensor"):
        ext.topk_apply_cpu(w, None, plan[:-1], 0, 0)
    with pytest.raises(ValueError, match="block_out and block_in must both be"):
        ext.topk_apply_cpu(w, None, plan, 16, 0)
    bad = plan.clone()
    bad[3] = 64  # more row chunks than weight has rows
    with pytest.raises(ValueError, match="plan does not fit weight"):
        ext.topk_apply_cpu(w, None, bad, 0, 0)
    nnz, counts, index = ext.topk_apply_cpu(w, None, plan, 0, 0)
    assert index is None
    assert nnz == 5 and counts is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("floors", [(1, 0), (0, 3), (2, 2), (13, 9)])
def test_sort_free_floors_match_sorted_floors(kind, floors, generator):
    # The floor set of the Triton backend (torch.topk values + tie scan) against the sort.
    from sparsekern.projection import floors as fast

    mag = make_weight(kind, (9, 13), torch.float32, generator).abs()
    assert torch.equal(fast.floor_mask(mag, *floors), sparsekern.projection.reference.floor_mask(mag, *floors))


@pytest.mark.skipif("cpu" not in FUSED, reason="the compiled extension has no projection kernels here")
@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512", "amx"])
def test_cpu_instruction_sets_agree(isa, generator):
    # The passes are built once per instruction set (topk_portable.cpp, topk_avx2.cpp).
    from sparsekern._extension import extension

    order = ["portable", "avx2", "avx512", "amx"]
    if order.index(isa) > order.index(extension().cpu_best_isa()):
        pytest.skip(f"this CPU does not support {isa}")
    previous = sparsekern.set_cpu_isa(isa)
    try:
        for kind in ("normal", "ties"):
            w = make_weight(kind, (600, 520), torch.float32, generator)
            check_projection(w, w.numel() // 64, "cpu", block_size=32)
            check_projection(w, w.numel() // 4, "cpu", min_per_row=3, min_per_col=1)
            check_projection(w, w.numel(), "cpu")
    finally:
        sparsekern.set_cpu_isa(previous)
