"""What is specific to the "cpu" backend (the C++ kernels of csrc/cpu/).

The generic correctness matrix (tests/test_linear_backends.py) runs this backend like any
other; here: every compiled instruction-set path against the reference, the run-time ISA
switch, float64 refused clearly, the C++ entry points' own argument checks (a wrong direct
call raises, never reads out of bounds), scratch memory, and property-based comparisons.

The extension is built by `make install`; a missing build fails these tests unless the
build was skipped on purpose (SPARSEKERN_SKIP_EXTENSION=1).
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekern
from sparsekern.block import reference
from sparsekern._alloc import poisoned_outputs
from sparsekern._extension import extension, unavailable_reason
from sparsekern import cpu_isa, set_cpu_isa
from sparsekern.backend import BackendUnavailableError
from sparsekern.block.backends import get_backend, select
from sparsekern.block.backends.cpu import bf16_on_tiles
from conftest import assert_close_to_reference, random_weight

if os.environ.get("SPARSEKERN_SKIP_EXTENSION", "0") not in ("", "0"):
    pytest.skip("the compiled extension was not built (SPARSEKERN_SKIP_EXTENSION=1)", allow_module_level=True)

ISAS = ("portable", "avx2", "avx512", "amx")


def _C():
    why = unavailable_reason("bsmm_forward_cpu", "bsmm_grad_input_cpu", "bsmm_grad_weight_cpu")
    assert why is None, why
    return extension()


def supported_isas():
    best = _C().cpu_best_isa()
    return ISAS[: ISAS.index(best) + 1]


@pytest.fixture(params=ISAS)
def isa(request):
    """Each compiled path in turn (skipped where this CPU lacks it); restores the choice."""
    if request.param not in supported_isas():
        pytest.skip(f"this CPU does not support {request.param}")
    previous = set_cpu_isa(request.param)
    yield request.param
    set_cpu_isa(previous)


def make_case(N, K, M, block, density, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = sparsekern.BlockLayout.random((N, K), block, density, generator=gen)
    weight = random_weight(layout, dtype, generator=gen)  # NaN outside the active blocks
    # Scaled so outputs stay of size one (what the tolerance table is for) however long K is.
    x = (torch.randn(M, K, generator=gen) / K**0.5).to(dtype)
    grad = torch.randn(M, N, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(dtype)
    return layout, weight, x, grad, bias


def check_products(layout, weight, x, grad, bias, *, poison=True):
    """The three products of the cpu backend against the fp64 reference (and, for bf16, the
    2x bar of torch's own bf16 result); dW exactly zero off the layout."""
    bo, bi = layout.block_size
    backend = get_backend("cpu")
    mask = layout.to_mask()
    w0 = torch.where(mask, weight, 0)
    ctx = poisoned_outputs() if poison else torch.no_grad()
    with ctx:
        y = backend.forward(x, weight, bias, layout.row_ptr, layout.col_idx, bo, bi)
        dx = backend.grad_input(grad, weight, layout.col_ptr, layout.row_idx, bo, bi)
        dw = backend.grad_weight(grad, x, layout.block_row, layout.col_idx, bo, bi)
    b64 = bias.double() if bias is not None else None
    expected = {
        "y": reference.forward(x.double(), w0.double(), b64, layout.row_ptr, layout.col_idx, bo, bi),
        "dx": reference.grad_input(grad.double(), w0.double(), layout.col_ptr, layout.row_idx, bo, bi),
        "dw": reference.grad_weight(grad.double(), x.double(), layout.block_row, layout.col_idx, bo, bi),
    }
    own = {
        "y": reference.forward(x, w0, bias, layout.row_ptr, layout.col_idx, bo, bi),
        "dx": reference.grad_input(grad, w0, layout.col_ptr, layout.row_idx, bo, bi),
        "dw": reference.grad_weight(grad, x, layout.block_row, layout.col_idx, bo, bi),
    }
    for name, actual in (("y", y), ("dx", dx), ("dw", dw)):
        assert actual.dtype == x.dtype, f"{name}: dtype {actual.dtype}"
        if actual.numel() == 0:  # no rows: only the shape to check
            assert actual.shape == expected[name].shape, name
            continue
        assert_close_to_reference(actual, expected[name], own[name], name=name)
    assert (dw[~mask] == 0).all(), "dW must be exactly zero outside the active blocks"


# ----------------------------------------------------------- every compiled path

SHAPES = [
    # N, K, M, block, density: edges partial, rectangular blocks, several M tiles and slivers
    (70, 100, 37, (16, 16), 0.5),
    (100, 70, 33, (16, 32), 0.5),
    (130, 200, 17, (64, 16), 0.6),
    (300, 129, 5, (128, 64), 0.7),
    (256, 256, 64, (32, 32), 0.3),
    (96, 80, 1, (32, 16), 1.0),  # full layout, a single row
    (50, 40, 3, (16, 16), 0.0),  # empty layout: y = bias, dx = 0, dW = 0
    (64, 2100, 150, (16, 128), 0.4),  # long rows: M tiles smaller than M, many slivers
    # Block rows of many blocks (about 56 active), the last one cut at the K edge (1000 = 62 x 16
    # + 8); the second shape for the input gradient, which walks the 1000-wide side.
    (96, 1000, 40, (32, 16), 0.9),
    (1000, 96, 40, (16, 32), 0.9),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SHAPES, ids=str)
def test_every_isa_matches_reference(isa, case, dtype):
    assert cpu_isa() == isa
    layout, weight, x, grad, bias = make_case(*case, dtype=dtype, seed=len(case[3]) + case[0])
    check_products(layout, weight, x, grad, bias)
    check_products(layout, weight, x, grad, None)


def test_every_isa_on_strided_operands(isa):
    # Transposed weight storage (column stride != 1), a transposed x and a sliced grad: the
    # weight is read through its strides, never copied.
    layout, weight, x, grad, bias = make_case(90, 75, 21, (32, 16), 0.5, seed=7)
    weight_t = weight.t().contiguous().t()
    x_t = x.t().contiguous().t()
    grad_wide = torch.randn(21, 2 * 90)[:, ::2]
    grad_slice = torch.cat([grad, torch.randn(21, 5)], 1)[:, :90]
    assert weight_t.stride() == (1, 90) and not x_t.is_contiguous() and not grad_slice.is_contiguous()
    check_products(layout, weight_t, x_t, grad_slice, bias)
    check_products(layout, weight, x, grad_wide.contiguous(), bias)
    check_products(layout, weight, x, grad_wide, bias)


def test_weight_gradient_over_several_chunks_of_rows(isa):
    # The weight gradient packs M in chunks of about 4M floats of panels (128 rows here, for
    # n + k = 32064) and adds each chunk's sums into dW: three chunks, the last one partial.
    layout, weight, x, grad, bias = make_case(64, 32000, 300, (32, 64), 0.3, seed=11)
    check_products(layout, weight, x, grad, bias)
    # Partial edge blocks (N and K edges), summed outside dW across the chunks.
    layout, weight, x, grad, bias = make_case(70, 32010, 300, (32, 64), 0.3, seed=12)
    check_products(layout, weight, x, grad, bias)
    # bf16 takes all of M at once (no fp32 accumulator the size of the active blocks).
    layout, weight, x, grad, bias = make_case(64, 32000, 300, (32, 64), 0.3, dtype=torch.bfloat16, seed=11)
    check_products(layout, weight, x, grad, bias)


AMX_SHAPES = [
    # N, K, M, block, density; bf16 on the tiles needs K and block_in multiples of 32
    (96, 64, 45, (32, 32), 0.6),  # rows: a step and a partial one (45 = 32 + 13)
    (80, 128, 33, (16, 32), 0.5),  # 16-wide block rows: one column tile
    (100, 96, 70, (64, 32), 0.5),  # partial block rows at the N edge (100 = 64 + 36)
    (128, 256, 20, (128, 64), 0.4),  # wide blocks, fewer rows than a step
    (64, 8192, 100, (32, 32), 0.3),  # several tiles of rows (one step of 32 rows each here)
    (64, 96, 50, (32, 64), 0.6),  # input gradient on the tiles with a partial block row (K edge)
    (96, 64, 0, (32, 32), 0.5),  # no rows
    (64, 64, 40, (32, 32), 0.0),  # empty layout
]


@pytest.mark.parametrize("case", AMX_SHAPES, ids=str)
def test_bf16_on_the_amx_tiles(case):
    if "amx" not in supported_isas():
        pytest.skip("this CPU (or OS) does not offer AMX")
    N, K, M, block, density = case
    previous = set_cpu_isa("amx")
    try:
        # The forward is on the tiles; the input gradient (n_in = N, block transposed) where it fits.
        assert bf16_on_tiles(K, block)
        assert bf16_on_tiles(N, block[::-1]) == (N % 32 == 0 and block[0] % 32 == 0)
        layout, weight, x, grad, bias = make_case(N, K, M, block, density, dtype=torch.bfloat16, seed=N + M)
        check_products(layout, weight, x, grad, bias)
        check_products(layout, weight, x, grad, None)
        # Weight stored transposed, or every other column of a wider one; x with a row stride:
        # the tiles' other packing paths.
        weight_t = weight.t().contiguous().t()
        weight_strided = torch.stack([weight, torch.randn_like(weight)], 2).flatten(1)[:, ::2]
        assert weight_strided.stride() == (2 * K, 2)
        assert torch.equal(weight_strided.view(torch.int16), weight.view(torch.int16))  # NaN off the layout
        x_wide = torch.cat([x, torch.randn(M, 32).to(x.dtype)], 1)[:, :K]
        check_products(layout, weight_t, x_wide, grad, bias)
        check_products(layout, weight_strided, x, grad, None)
        weight_odd_rows = torch.cat([weight, weight[:, :1]], 1)[:, :K]  # rows an odd number of elements apart
        assert weight_odd_rows.stride() == (K + 1, 1)
        check_products(layout, weight_odd_rows, x, grad, bias)
    finally:
        set_cpu_isa(previous)
    # Below AMX the same products take the AVX-512 kernels.
    previous = set_cpu_isa("avx512")
    try:
        assert not bf16_on_tiles(K, block)
    finally:
        set_cpu_isa(previous)


def test_bf16_runs_on_the_tiles_where_it_fits():
    # The tile unit treats bf16 subnormals as zero and the AVX-512 kernels do not: products of
    # a subnormal input tell which kernel ran.
    if "amx" not in supported_isas():
        pytest.skip("this CPU (or OS) does not offer AMX")
    backend = get_backend("cpu")
    layout = sparsekern.BlockLayout.from_block_mask(torch.ones(1, 1, dtype=torch.bool), (32, 32), (32, 32))
    tiny = torch.full((4, 32), 1e-39, dtype=torch.bfloat16)
    big = torch.full((32, 32), 1e30, dtype=torch.bfloat16)
    assert tiny[0, 0] != 0 and tiny[0, 0].abs() < torch.finfo(torch.bfloat16).tiny  # subnormal
    for isa, expect_zero in (("amx", True), ("avx512", False)):
        previous = set_cpu_isa(isa)
        try:
            y = backend.forward(tiny, big, None, layout.row_ptr, layout.col_idx, 32, 32)
            dx = backend.grad_input(tiny, big, layout.col_ptr, layout.row_idx, 32, 32)
            dw = backend.grad_weight(tiny, big[:4], layout.block_row, layout.col_idx, 32, 32)
        finally:
            set_cpu_isa(previous)
        for name, out in (("y", y), ("dx", dx), ("dw", dw)):
            assert bool((out == 0).all()) == expect_zero, f"{name} on {isa}: {out.flatten()[:4]}"


def test_bf16_accumulates_in_fp32(isa):
    # A long reduction where bf16 accumulation would drift far past 2x torch's own error.
    layout, weight, x, grad, bias = make_case(32, 4096, 8, (32, 32), 1.0, dtype=torch.bfloat16, seed=3)
    check_products(layout, weight, x, grad, bias)


# ------------------------------------------------------------- the ISA switch

def test_isa_switch_and_its_errors():
    best = _C().cpu_best_isa()
    assert best in ISAS
    previous = set_cpu_isa("portable")
    try:
        assert cpu_isa() == "portable"
        assert set_cpu_isa(best) == "portable"
        assert cpu_isa() == best
        with pytest.raises(ValueError, match="must be one of"):
            set_cpu_isa("sse9")
        assert cpu_isa() == best
        for unsupported in ISAS[ISAS.index(best) + 1:]:
            with pytest.raises(ValueError, match="does not support"):
                set_cpu_isa(unsupported)
    finally:
        set_cpu_isa(previous)


@pytest.mark.parametrize("env", ["portable", "avx2"])
def test_environment_variable_caps_the_isa(env):
    if env not in supported_isas():
        pytest.skip(f"this CPU does not support {env}")
    code = (
        "import torch, sparsekern\n"
        "from sparsekern import cpu_isa\n"
        "from sparsekern.block import reference as R\n"
        "L = sparsekern.BlockLayout.random((50, 70), 16, 0.5, generator=torch.Generator().manual_seed(0))\n"
        "w = torch.randn(50, 70) * L.to_mask(); x = torch.randn(9, 70)\n"
        "y = sparsekern.block_sparse_linear(x, w, L, backend='cpu')\n"
        "e = (y.double() - R.forward(x.double(), w.double(), None, L.row_ptr, L.col_idx, 16, 16)).abs().max()\n"
        "print(cpu_isa(), float(e))\n"
    )
    env_vars = dict(os.environ, SPARSEKERN_CPU_ISA=env)
    out = subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True, text=True, check=True)
    name, err = out.stdout.split()
    assert name == env
    assert float(err) < 1e-4


# ---------------------------------------------------- dtypes and the backend choice

def test_automatic_choice_for_cpu_tensors_is_cpu():
    for dtype in (torch.float32, torch.bfloat16):
        assert select(None, torch.device("cpu"), dtype, (32, 32)).name == "cpu"


def test_float64_is_refused_clearly():
    backend = get_backend("cpu")
    reasons = backend.reasons(torch.device("cpu"), torch.float64, (16, 16))
    assert any("float64" in r for r in reasons)
    layout = sparsekern.BlockLayout.random((32, 32), 16, 0.5)
    w, x = torch.randn(32, 32, dtype=torch.float64), torch.randn(4, 32, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float64"):
        sparsekern.block_sparse_linear(x, w, layout, backend="cpu")
    # Automatic choice falls back to a backend that has float64.
    assert select(None, torch.device("cpu"), torch.float64, (16, 16)).name != "cpu"
    # The C++ entry point itself refuses it too.
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        _C().bsmm_forward_cpu(x, w, None, layout.row_ptr, layout.col_idx, 16, 16)


def test_autograd_end_to_end_against_reference_backend():
    # Through autograd (3-D input, bias, a non-uniform upstream gradient), against the
    # reference backend in fp64; NaN outside the active blocks.
    gen = torch.Generator().manual_seed(5)
    layout = sparsekern.BlockLayout.random((72, 90), (16, 32), 0.5, generator=gen)
    w = random_weight(layout, torch.float32, "cpu", gen).requires_grad_()
    b = torch.randn(72, generator=gen, requires_grad=True)
    x = torch.randn(2, 7, 90, generator=gen, requires_grad=True)
    results = {}
    for name, dtype in (("cpu", torch.float32), ("reference", torch.float64)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (w, b, x)]
        y = sparsekern.block_sparse_linear(leaves[2], leaves[0], layout, leaves[1], backend=name)
        (y * torch.arange(72.0, dtype=dtype)).sum().backward()
        results[name] = (y.detach(), *(t.grad for t in leaves))
    for what, actual, expected in zip(("y", "dW", "db", "dx"), results["cpu"], results["reference"]):
        if what == "dW":  # exact zeros off the layout, compared on it
            assert (actual[~layout.to_mask()] == 0).all()
        assert_close_to_reference(actual, expected, name=what)


# ------------------------------------------------ the C++ entry points' own checks

def _good_args():
    layout = sparsekern.BlockLayout.random((64, 48), 16, 0.5, generator=torch.Generator().manual_seed(1))
    w = torch.randn(64, 48)
    x = torch.randn(5, 48)
    g = torch.randn(5, 64)
    return layout, w, x, g


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


FORWARD_BAD = [
    ("x 1-D", lambda L, w, x, g: (x[0], w, None, L.row_ptr, L.col_idx, 16, 16), "x must be 2-D"),
    ("x wrong width", lambda L, w, x, g: (x[:, :40], w, None, L.row_ptr, L.col_idx, 16, 16), "48 columns"),
    ("dtype mismatch", lambda L, w, x, g: (x.bfloat16(), w, None, L.row_ptr, L.col_idx, 16, 16), "dtype"),
    ("int weight", lambda L, w, x, g: (x.int(), w.int(), None, L.row_ptr, L.col_idx, 16, 16), "float32 or bfloat16"),
    ("bias shape", lambda L, w, x, g: (x, w, torch.randn(63), L.row_ptr, L.col_idx, 16, 16), "bias must have shape"),
    ("bias dtype", lambda L, w, x, g: (x, w, torch.randn(64).double(), L.row_ptr, L.col_idx, 16, 16), "bias"),
    ("block side", lambda L, w, x, g: (x, w, None, L.row_ptr, L.col_idx, 8, 16), "block sides"),
    ("block side 48", lambda L, w, x, g: (x, w, None, L.row_ptr, L.col_idx, 16, 48), "block sides"),
    ("row_ptr int64", lambda L, w, x, g: (x, w, None, L.row_ptr.long(), L.col_idx, 16, 16), "row_ptr must be int32"),
    ("row_ptr 2-D", lambda L, w, x, g: (x, w, None, L.row_ptr[None], L.col_idx, 16, 16), "row_ptr must be 1-D"),
    ("row_ptr short", lambda L, w, x, g: (x, w, None, L.row_ptr[:-1], L.col_idx, 16, 16), "must have 5 entries"),
    ("row_ptr strided", lambda L, w, x, g: (x, w, None, torch.zeros(10, dtype=torch.int32)[::2], L.col_idx[:0],
                                            16, 16), "contiguous"),
    ("row_ptr first", lambda L, w, x, g: (x, w, None, L.row_ptr + 1, L.col_idx, 16, 16), "start at 0"),
    ("row_ptr last", lambda L, w, x, g: (x, w, None, L.row_ptr, L.col_idx[:-1], 16, 16), "last pointer"),
    ("row_ptr huge", lambda L, w, x, g: (x, w, None, _i32([0, 0, 0, 0, 10**6]), L.col_idx, 16, 16),
     "last pointer"),
    ("row_ptr decreasing", lambda L, w, x, g: (x, w, None, _i32([0, 3, 1, 2, 3]), _i32([0, 1, 2]), 16, 16),
     "non-decreasing"),
    ("col_idx out of range", lambda L, w, x, g: (x, w, None, _i32([0, 1, 1, 1, 1]), _i32([3]), 16, 16),
     "out of range"),
    ("col_idx negative", lambda L, w, x, g: (x, w, None, _i32([0, 1, 1, 1, 1]), _i32([-1]), 16, 16),
     "out of range"),
    ("col_idx duplicate", lambda L, w, x, g: (x, w, None, _i32([0, 2, 2, 2, 2]), _i32([1, 1]), 16, 16),
     "ascending"),
    ("out shape", lambda L, w, x, g: (x, w, None, L.row_ptr, L.col_idx, 16, 16, torch.empty(5, 63)),
     "out must have shape"),
    ("out dtype", lambda L, w, x, g: (x, w, None, L.row_ptr, L.col_idx, 16, 16, torch.empty(5, 64).double()),
     "out must be"),
]


@pytest.mark.parametrize("name,make,match", FORWARD_BAD, ids=[c[0] for c in FORWARD_BAD])
def test_forward_entry_point_checks(name, make, match):
    args = make(*_good_args())
    with pytest.raises((RuntimeError, ValueError), match=match):
        _C().bsmm_forward_cpu(*args)


GRAD_INPUT_BAD = [
    ("grad wrong width", lambda L, w, x, g: (g[:, :60], w, L.col_ptr, L.row_idx, 16, 16), "64 columns"),
    ("col_ptr length", lambda L, w, x, g: (g, w, L.row_ptr, L.row_idx, 16, 16), "must have 4 entries"),
    ("row_idx out of range", lambda L, w, x, g: (g, w, _i32([0, 1, 1, 1]), _i32([4]), 16, 16), "out of range"),
    ("row_idx int64", lambda L, w, x, g: (g, w, L.col_ptr, L.row_idx.long(), 16, 16), "row_idx must be int32"),
    ("dtype mismatch", lambda L, w, x, g: (g.double(), w, L.col_ptr, L.row_idx, 16, 16), "dtype"),
]


@pytest.mark.parametrize("name,make,match", GRAD_INPUT_BAD, ids=[c[0] for c in GRAD_INPUT_BAD])
def test_grad_input_entry_point_checks(name, make, match):
    args = make(*_good_args())
    with pytest.raises(RuntimeError, match=match):
        _C().bsmm_grad_input_cpu(*args)


GRAD_WEIGHT_BAD = [
    ("rows differ", lambda L, w, x, g: (g[:4], x, L.block_row, L.col_idx, 16, 16), "same number of rows"),
    ("lengths differ", lambda L, w, x, g: (g, x, L.block_row[:-1], L.col_idx, 16, 16), "same length"),
    ("block_row out of range", lambda L, w, x, g: (g, x, _i32([4]), _i32([0]), 16, 16), "out of range"),
    ("col_idx out of range", lambda L, w, x, g: (g, x, _i32([0]), _i32([3]), 16, 16), "out of range"),
    ("duplicate block", lambda L, w, x, g: (g, x, _i32([1, 1]), _i32([2, 2]), 16, 16), "once each"),
    ("not row-major", lambda L, w, x, g: (g, x, _i32([2, 1]), _i32([0, 0]), 16, 16), "row-major"),
    ("float64", lambda L, w, x, g: (g.double(), x.double(), L.block_row, L.col_idx, 16, 16), "float32 or bfloat16"),
    ("block side", lambda L, w, x, g: (g, x, L.block_row, L.col_idx, 16, 100), "block sides"),
]


@pytest.mark.parametrize("name,make,match", GRAD_WEIGHT_BAD, ids=[c[0] for c in GRAD_WEIGHT_BAD])
def test_grad_weight_entry_point_checks(name, make, match):
    args = make(*_good_args())
    with pytest.raises(RuntimeError, match=match):
        _C().bsmm_grad_weight_cpu(*args)


def test_extension_says_what_it_was_built_with():
    built = _C().built_with
    assert torch.__version__ in built and "CPU" in built


# ------------------------------------------------------------------- memory

_MEMORY_SCRIPT = r"""
import resource, sys, torch, sparsekern
from sparsekern._extension import extension
C = extension()
torch.set_num_threads(2)
N = K = 4096  # a 64 MiB fp32 weight, at full density: the worst case for scratch
L = sparsekern.BlockLayout.random((N, K), 32, 1.0)
w = torch.randn(N, K); x = torch.randn(64, K); g = torch.randn(64, N)
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
C.bsmm_forward_cpu(x[:1, :32], w[:32, :32].contiguous(), None, L.row_ptr[:2] * 0, L.col_idx[:0], 32, 32)  # warm up
base = peak_mib()
C.bsmm_forward_cpu(x, w, None, L.row_ptr, L.col_idx, 32, 32)
C.bsmm_grad_input_cpu(g, w, L.col_ptr, L.row_idx, 32, 32)
fwd = peak_mib() - base
dw = C.bsmm_grad_weight_cpu(g, x, L.block_row, L.col_idx, 32, 32)
print(fwd, peak_mib() - base)
"""


def test_scratch_memory_stays_below_the_weight():
    # Forward and input gradient allocate nothing the size of the weight (64 MiB here); the
    # weight gradient allocates its output and nothing else of that size. Peak RSS growth in
    # a fresh process measures every allocation, torch's and the kernels' own.
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    fwd, bwd = map(float, out.stdout.split())
    assert fwd < 32, f"forward + input gradient grew the peak by {fwd:.0f} MiB (weight: 64 MiB)"
    assert bwd < 64 + 32, f"weight gradient grew the peak by {bwd:.0f} MiB (its output: 64 MiB)"


# ------------------------------------------------------------- property-based

@settings(max_examples=30, deadline=None)
@given(
    M=st.integers(0, 60),
    N=st.integers(1, 200),
    K=st.integers(1, 200),
    block=st.tuples(st.sampled_from([16, 32, 64, 128]), st.sampled_from([16, 32, 64, 128])),
    density=st.floats(0.0, 1.0),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    isa_name=st.sampled_from(ISAS),
    seed=st.integers(0, 2**16),
)
def test_random_problems_match_reference(M, N, K, block, density, bias, dtype, isa_name, seed):
    if isa_name not in supported_isas():
        isa_name = "portable"
    previous = set_cpu_isa(isa_name)
    try:
        layout, weight, x, grad, b = make_case(N, K, M, block, density, dtype=dtype, seed=seed)
        check_products(layout, weight, x, grad, b if bias else None)
    finally:
        set_cpu_isa(previous)


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned-rows", "odd-rows"])
def test_every_isa_on_large_kernel_allocated_outputs(isa, aligned):
    # Outputs over 4 MiB take the extension's own allocation (huge pages, a cache of freed
    # buffers, streaming stores): unpoisoned, three rounds so cached buffers are reused.
    N, K = (1024, 1152) if aligned else (1030, 1101)
    for seed in range(3):
        layout, weight, x, grad, bias = make_case(N, K, 1100, (64, 32), 0.15, seed=seed)
        check_products(layout, weight, x, grad, bias, poison=False)
