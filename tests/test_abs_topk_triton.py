"""The AbsTopK Triton kernel (sparsekern/activation/triton/abs_topk.py) against the sort-based
reference, bit for bit: on CUDA tensors when there is a GPU, else on CPU tensors under the
Triton interpreter (conftest sets TRITON_INTERPRET=1), where the cases are kept small (the
interpreter runs each program, a row, in Python).

fp32 / fp16 / bf16 (no tl.dot, so the interpreter's bf16 bug does not apply), NaN-poisoned
outputs: ties of both signs, every magnitude equal, -0 and +0, NaN with signs and payloads,
+-Inf, all-NaN rows, subnormals; k = 0, 1, n // 3, n - 1, n; odd n; several rows; both kernel
paths (the row held in registers, up to MAX_ONE_CHUNK, and the row walked in blocks, with ties
across blocks); empty inputs; the backend forced through ``sparsekern.abs_topk`` (3-D input,
its gradient) and never chosen automatically for CPU tensors.
"""

import math

import pytest
import torch

import sparsekern
from sparsekern._alloc import poisoned_outputs
from sparsekern.activation import reference
from sparsekern.activation.backends import REGISTRY
from sparsekern.activation.triton.abs_topk import LOOP_BLOCK, MAX_ONE_CHUNK, abs_topk_config
from test_abs_topk import assert_bitwise, make

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    bool(REGISTRY.get("triton").reasons(torch.device(DEVICE), torch.float32, None)),
    reason=f"the AbsTopK triton backend cannot run {DEVICE} tensors here (no GPU, no TRITON_INTERPRET)")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKEND = REGISTRY.get("triton")
KINDS = ("normal", "ties", "signed_equal", "zeros", "special", "all_nan", "tiny")


def check(x, k):
    """The backend's (values, kept) on x (2-D) against the reference's, outputs poisoned."""
    x = x.to(DEVICE)
    with poisoned_outputs():
        values, kept = BACKEND.forward(x.contiguous(), k)
    ref_values, ref_kept = reference.abs_topk(x, k)
    what = f"{tuple(x.shape)} {x.dtype} k={k}"
    assert kept.dtype == torch.bool and kept.device == x.device, what
    assert torch.equal(kept, ref_kept), f"{what}: kept differs at {(kept != ref_kept).nonzero()[:5].tolist()}"
    assert_bitwise(values, ref_values, f"{what} values")
    return values, kept


def test_launch_sizes_cover_both_paths():
    # The cases below reach both paths of the kernel; the loop's blocks are smaller than a row.
    assert abs_topk_config(MAX_ONE_CHUNK, torch.float32)["ONE_CHUNK"]
    assert not abs_topk_config(MAX_ONE_CHUNK + 1, torch.float16)["ONE_CHUNK"]
    assert LOOP_BLOCK < MAX_ONE_CHUNK
    for n in (1, 37, 128, 129, 1000, MAX_ONE_CHUNK):
        cfg = abs_topk_config(n, torch.bfloat16)
        assert cfg["BLOCK_N"] >= n and cfg["KEY_BITS"] == 16
        assert cfg["BLOCK_N"] // (32 * cfg["num_warps"]) <= 16  # at most 16 entries a thread: no spills


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(dtype, kind):
    # n = 37: odd, one partial block; 5 rows, each its own program.
    x = make(kind, (5, 37), dtype, seed=len(kind))
    for k in (0, 1, 12, 36, 37):
        check(x, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_odd_lengths(dtype):
    for n in (1, 2, 3, 129, 1001):
        x = make("ties", (2, n), dtype, seed=n)
        for k in sorted({0, 1, n // 3, n - 1, n}):
            check(x, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_long_rows_walked_in_blocks(dtype):
    # Past MAX_ONE_CHUNK the row is walked LOOP_BLOCK at a time: the threshold's ties lie in
    # several blocks (every magnitude equal: the kept ties are the first k), and a NaN in the
    # last, partial block must be found first.
    n = MAX_ONE_CHUNK + LOOP_BLOCK // 2 + 3
    x = make("signed_equal", (1, n), dtype, seed=1)
    for k in (1, LOOP_BLOCK + 5, n - 1):
        check(x, k)
    x = make("ties", (2, n), dtype, seed=2)
    x[1, n - 2] = math.nan
    for k in (1, n // 2):
        check(x, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_longest_row_held_in_registers(dtype):
    x = make("special", (1, MAX_ONE_CHUNK), dtype, seed=3)
    check(x, MAX_ONE_CHUNK // 3)


def test_the_semantics_by_hand():
    nan, inf = math.nan, math.inf
    for dtype in DTYPES:
        def kept_of(row, k):
            return check(torch.tensor([row], dtype=dtype), k)[1][0].nonzero().flatten().tolist()

        assert kept_of([1.0, -1.0, 1.0, -1.0], 2) == [0, 1]
        assert kept_of([-0.0, 0.0, 0.0], 1) == [0]
        assert kept_of([5.0, -inf, nan, inf, 1e4], 1) == [2]
        assert kept_of([5.0, -inf, nan, inf, 1e4], 3) == [1, 2, 3]
        assert kept_of([nan, -nan, nan, nan], 3) == [0, 1, 2]
        values = check(torch.tensor([[-0.0, 0.0, nan, -7.0]], dtype=dtype), 3)[0][0]
        assert torch.signbit(values[0]) and torch.isnan(values[2]) and values[3] == -7
        values = check(torch.tensor([[-1.0, -2.0, -3.0]], dtype=dtype), 1)[0][0]
        assert not torch.signbit(values[:2]).any()  # dropped entries are +0, never -0


def test_rows_are_independent():
    # Many rows of different contents in one launch: each program selects its own row only.
    x = torch.cat([make(kind, (3, 65), torch.float32, seed=i) for i, kind in enumerate(KINDS)])
    values, kept = check(x, 20)
    assert (kept.sum(1) == 20).all()


def test_empty_inputs():
    for shape, k in (((0, 5), 3), ((4, 0), 0), ((0, 0), 0)):
        values, kept = check(torch.empty(shape), k)
        assert values.shape == shape and kept.shape == shape


def test_forced_through_the_public_api_with_its_gradient():
    x = make("ties", (2, 3, 40), torch.float32, seed=4).to(DEVICE).requires_grad_()
    y = sparsekern.abs_topk(x, 9, backend="triton")
    assert_bitwise(y, reference.abs_topk(x.detach(), 9)[0])
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, reference.abs_topk(x.detach(), 9)[1].float())


def test_chosen_automatically_for_cuda_tensors_only():
    assert BACKEND.automatic(torch.device("cuda")) and not BACKEND.automatic(torch.device("cpu"))
    if DEVICE == "cpu":
        assert REGISTRY.automatic_choice("cpu", torch.float32, None) != "triton"
    assert BACKEND.reasons(torch.device(DEVICE), torch.float64, None)  # fp64: not a Triton dtype here
