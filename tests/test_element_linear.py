"""The element format's three products, every backend that can run here, against the fp64
reference: fresh random data, NaN in every weight entry off the layout, NaN-poisoned outputs;
shapes from 1 to 2049 a side, empty and full layouts, a single nonzero, a full row or column
with the rest empty, skewed rows, 3-D and non-contiguous inputs, bias or none, every CPU
instruction set, the dense weight gradient; opcheck, gradcheck, torch.compile, properties."""

import warnings
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekern
from sparsekern import ElementLayout
from sparsekern.element import ops
from sparsekern.element.backends import REGISTRY
from linear_cases import run_element_case

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The Triton kernels run CPU tensors only under the interpreter, which is slow: their small
# cases are in tests/test_element_triton.py.
CASES = [(b, d) for d in DTYPES for b in REGISTRY.available("cpu", d) if b != "triton"]
COMPILED = [b for b in REGISTRY.available("cpu") if b not in ("reference", "triton")]


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def layout_from(mask) -> ElementLayout:
    return ElementLayout.from_mask(torch.as_tensor(mask, dtype=torch.bool))


def special_layouts():
    """name -> mask: the shapes a kernel gets wrong first."""
    gen = torch.Generator().manual_seed(7)
    one = torch.zeros(40, 50, dtype=torch.bool)
    one[13, 29] = True
    full_row = torch.zeros(40, 50, dtype=torch.bool)
    full_row[5] = True
    full_col = torch.zeros(40, 50, dtype=torch.bool)
    full_col[:, 44] = True
    skewed = torch.rand(64, 300, generator=gen) < 0.01
    skewed[17] = True  # one row holding about half the nonzeros
    return {"single": one, "full-row": full_row, "full-col": full_col, "skewed": skewed,
            "empty": torch.zeros(30, 20, dtype=torch.bool), "full": torch.ones(30, 20, dtype=torch.bool)}


@pytest.mark.parametrize("backend,dtype", CASES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 1.0])
def test_products_match_reference(backend, dtype, density):
    layout = ElementLayout.random((70, 100), density, generator=torch.Generator().manual_seed(seed_of(density)))
    run_element_case(backend, dtype, 37, layout, bias=density != 0.3, seed=seed_of(backend, density))


@pytest.mark.parametrize("backend,dtype", CASES, ids=str)
@pytest.mark.parametrize("name", list(special_layouts()))
def test_special_layouts(backend, dtype, name):
    run_element_case(backend, dtype, 21, layout_from(special_layouts()[name]), seed=seed_of(name))


@pytest.mark.parametrize("backend", COMPILED + ["reference"])
@pytest.mark.parametrize("shape,M", [((1, 1), 1), ((1, 2049), 3), ((2049, 1), 5), ((33, 257), 300),
                                     ((257, 33), 129), ((3, 2049), 17), ((5000, 40), 70), ((9000, 8), 20)],
                         ids=str)
def test_shapes_and_tiles(backend, shape, M):
    # M of 300 and 129: several tiles of M and a partial one; widths of 2049, 5000 and 9000
    # columns (the input gradient's width is out_features): narrower tiles of M.
    density = min(1.0, 400 / (shape[0] * shape[1]) + 0.01)
    layout = ElementLayout.random(shape, density, generator=torch.Generator().manual_seed(seed_of(shape)))
    run_element_case(backend, torch.float32, M, layout, seed=seed_of(shape, M))


@pytest.mark.parametrize("backend,dtype", CASES, ids=str)
def test_3d_and_noncontiguous_inputs(backend, dtype):
    layout = ElementLayout.random((48, 80), 0.2, generator=torch.Generator().manual_seed(3))
    run_element_case(backend, dtype, None, layout, batch_shape=(3, 11))
    run_element_case(backend, dtype, None, layout, batch_shape=(2, 9), noncontiguous=True, bias=False)


@pytest.mark.parametrize("backend", COMPILED + ["reference"])
def test_dense_weight_grad(backend):
    layout = ElementLayout.random((40, 64), 0.1, generator=torch.Generator().manual_seed(4))
    run_element_case(backend, torch.float32, 19, layout, dense_weight_grad=True)


ISAS = ("portable", "avx2", "avx512", "amx")


@pytest.mark.skipif("cpu" not in COMPILED, reason="the compiled extension is not built")
@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_isa(isa):
    from sparsekern import set_cpu_isa
    from sparsekern._extension import extension

    best = extension().cpu_best_isa()
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this CPU does not support {isa}")
    previous = set_cpu_isa(isa)
    try:
        for shape, M in (((70, 100), 37), ((5000, 40), 33), ((33, 2049), 130)):
            layout = ElementLayout.random(shape, 0.05, generator=torch.Generator().manual_seed(seed_of(shape)))
            for dtype in (torch.float32, torch.bfloat16):
                run_element_case("cpu", dtype, M, layout, seed=seed_of(isa, shape))
    finally:
        set_cpu_isa(previous)


@pytest.mark.skipif("cpu" not in COMPILED, reason="the compiled extension is not built")
@pytest.mark.parametrize("tile_kb", ["", "16"])
@pytest.mark.parametrize("vectors", ["1", "2", "4", "8"])
def test_every_tile_width_and_chunking(vectors, tile_kb):
    # The kernels' own choice of tile width depends on the density; SPARSEKERN_ESMM_NV (read
    # once per process) forces each width of the dense x sparse products, in both work splits:
    # shared tiles (few rows of M) and tiles dealt to threads (many). With the machine's own tile
    # budget (a quarter of L2) the widths may run unchunked; SPARSEKERN_ESMM_TILE_KB=16 splits
    # the reduction into chunks at every width (3000 columns).
    import os
    import subprocess
    import sys

    script = """
import torch, sparsekern
from linear_cases import run_element_case
for shape, M, density in (((70, 3000), 5, 0.02), ((70, 3000), 600, 0.02), ((2500, 40), 300, 0.1), ((33, 257), 77, 0.5)):
    layout = sparsekern.ElementLayout.random(shape, density, generator=torch.Generator().manual_seed(M))
    for dtype in (torch.float32, torch.bfloat16):
        run_element_case("cpu", dtype, M, layout, seed=M)
print("checked")
"""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, SPARSEKERN_ESMM_NV=vectors, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SPARSEKERN_ESMM_TILE_KB", None)
    if tile_kb:
        env["SPARSEKERN_ESMM_TILE_KB"] = tile_kb
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=here, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "checked" in out.stdout, out.stderr[-3000:]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 90), k=st.integers(1, 90), m=st.integers(1, 70), density=st.floats(0, 1),
       seed=st.integers(0, 2**16), bias=st.booleans())
def test_property_every_backend_matches_reference(n, k, m, density, seed, bias):
    layout = ElementLayout.random((n, k), density, generator=torch.Generator().manual_seed(seed))
    for backend in COMPILED + ["reference"]:
        run_element_case(backend, torch.float32, m, layout, bias=bias, seed=seed)


# ------------------------------------------------------------------ operators
def sample(dtype=torch.float32):
    gen = torch.Generator().manual_seed(11)
    layout = ElementLayout.random((40, 70), 0.2, generator=gen)
    w = torch.randn(40, 70, generator=gen, dtype=dtype) * layout.to_mask()
    x = torch.randn(9, 70, generator=gen, dtype=dtype)
    g = torch.randn(9, 40, generator=gen, dtype=dtype)
    b = torch.randn(40, generator=gen, dtype=dtype)
    return layout, w, x, g, b


@pytest.mark.parametrize("backend", COMPILED + ["reference"])
def test_opcheck_every_op(backend):
    layout, w, x, g, b = sample()
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    for op, args in [(ops.esmm_forward, (x, w, b, row_ptr, col_idx, backend)),
                     (ops.esmm_forward, (x, w, None, row_ptr, col_idx, backend)),
                     (ops.esmm_grad_input, (g, w, col_ptr, row_idx, backend)),
                     (ops.esmm_grad_weight, (g, x, row_ptr, col_idx, backend))]:
        torch.library.opcheck(op, args)


def test_ops_are_registered_in_the_namespace():
    for name in ("esmm_forward", "esmm_grad_input", "esmm_grad_weight"):
        assert hasattr(torch.ops.sparsekern, name)


def test_gradcheck_float64_reference():
    layout, w, x, g, b = sample(torch.float64)
    inputs = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, w, b: sparsekern.element_sparse_linear(x, w, layout, b, backend="reference"), inputs)


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    layout, w, x, g, b = sample()
    w = w.requires_grad_()

    def f(x, w, b):
        return sparsekern.sparse_linear(torch.relu(x), w, layout, b)

    eager = f(x, w, b)
    eager.sum().backward()
    expected_grad = w.grad.clone()
    w.grad = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        out = compiled(x, w, b)
        out.sum().backward()
    traced = [str(m.message) for m in caught if "lru_cache" in str(m.message) or m.filename.endswith("_extension.py")]
    assert not traced, traced
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(w.grad, expected_grad)


# ------------------------------------------------------------------ choice and bad input
def test_automatic_choice_on_cpu_is_the_compiled_backend():
    expected = "cpu" if "cpu" in COMPILED else "reference"
    assert REGISTRY.select(None, torch.device("cpu"), torch.float32, None).name == expected
    assert REGISTRY.select(None, torch.device("cpu"), torch.float64, None).name == "reference"


@pytest.mark.parametrize("name", ["cuda"])
def test_forcing_a_gpu_backend_on_cpu_tensors_says_why(name, monkeypatch):
    layout, w, x, g, b = sample()
    with pytest.raises(sparsekern.BackendUnavailableError, match="runs on cuda tensors, not cpu"):
        sparsekern.sparse_linear(x, w, layout, backend=name)
    monkeypatch.setenv("SPARSEKERN_BACKEND", name)
    with pytest.raises(sparsekern.BackendUnavailableError, match="SPARSEKERN_BACKEND"):
        sparsekern.sparse_linear(x, w, layout)


def test_bad_arguments_raise_before_any_kernel():
    layout, w, x, g, b = sample()
    with pytest.raises(ValueError, match="layout.shape must equal weight.shape"):
        sparsekern.sparse_linear(x[:, :60], w[:, :60], layout, None)
    with pytest.raises(ValueError, match="x.shape"):
        sparsekern.sparse_linear(x[:, :5], w, layout)
    with pytest.raises(TypeError, match="x must match weight"):
        sparsekern.sparse_linear(x.double(), w, layout)
    with pytest.raises(TypeError, match="layout must be a sparsekern.BlockLayout or sparsekern.ElementLayout"):
        sparsekern.sparse_linear(x, w, layout.to_mask())
    with pytest.raises(TypeError, match="layout must be a sparsekern.ElementLayout"):
        sparsekern.element_sparse_linear(x, w, sparsekern.BlockLayout.random((40, 70), 16, 0.5))
    with pytest.raises(ValueError, match="backend must be one of"):
        sparsekern.sparse_linear(x, w, layout, backend="nope")


@pytest.mark.skipif("cpu" not in COMPILED, reason="the compiled extension is not built")
def test_cpu_entry_points_check_the_index():
    from sparsekern._extension import extension

    C = extension()
    layout, w, x, g, b = sample()
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    bad_col = col_idx.clone()
    bad_col[3] = 70  # past in_features
    with pytest.raises(RuntimeError, match="invalid element index"):
        C.esmm_forward_cpu(x, w, None, row_ptr, bad_col)
    unsorted = col_idx.clone()
    unsorted[[0, 1]] = unsorted[[1, 0]]
    with pytest.raises(RuntimeError, match="ascending"):
        C.esmm_grad_weight_cpu(g, x, row_ptr, unsorted)
    with pytest.raises(RuntimeError, match="col_ptr must have 71 entries"):
        C.esmm_grad_input_cpu(g, w, col_ptr[:-1], row_idx)
    short_ptr = row_ptr.clone()
    short_ptr[-1] -= 1
    with pytest.raises(RuntimeError, match="invalid element index"):
        C.esmm_forward_cpu(x, w, None, short_ptr, col_idx)
    with pytest.raises(RuntimeError, match="must be int32 or int64"):
        C.esmm_forward_cpu(x, w, None, row_ptr.float(), col_idx)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        C.esmm_forward_cpu(x.double(), w.double(), None, row_ptr, col_idx)
    # int64 pointers (the type of layouts past 2^31 nonzeros) give the same result
    torch.testing.assert_close(C.esmm_forward_cpu(x, w, b, row_ptr.long(), col_idx),
                               C.esmm_forward_cpu(x, w, b, row_ptr, col_idx), rtol=0, atol=0)
