"""The element format's Triton kernels against the fp64 reference: on CUDA tensors when there is
a GPU, else on CPU tensors under the Triton interpreter (conftest sets TRITON_INTERPRET=1),
where the cases are kept small (the interpreter runs each program in Python).

Fresh random data, NaN in every weight entry off the layout, NaN-poisoned outputs, fp32 /
fp16 / bf16 (the kernels use no tl.dot, so the interpreter's bf16 tl.dot bug does not apply):
empty and full layouts, a single nonzero, a full row or column with the rest empty, a row
holding half the nonzeros, empty rows around the nonzeros, shapes not multiples of the tiles,
int64 pointers, expanded and transposed operands; the backend forced through ``sparse_linear``
(forward and backward) and its refusal where it cannot run.
"""

import zlib

import pytest
import torch

import sparsekern
from sparsekern import ElementLayout
from sparsekern.element import reference
from sparsekern.element.backends import REGISTRY
from conftest import assert_close_to_reference, interpreting
from linear_cases import run_element_case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    bool(REGISTRY.get("triton").reasons(torch.device(DEVICE), torch.float32, None)),
    reason=f"the element triton backend cannot run {DEVICE} tensors here (no GPU, no TRITON_INTERPRET)")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKEND = REGISTRY.get("triton")


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def layout_of(mask) -> ElementLayout:
    return ElementLayout.from_mask(torch.as_tensor(mask, dtype=torch.bool)).to(DEVICE)


def random_layout(shape, density, seed) -> ElementLayout:
    return ElementLayout.random(shape, density, generator=torch.Generator().manual_seed(seed), device=DEVICE)


def special_masks():
    """name -> mask, each a few chunks of nonzeros at most (the interpreter's pace)."""
    gen = torch.Generator().manual_seed(5)
    one = torch.zeros(19, 23, dtype=torch.bool)
    one[11, 7] = True
    full_row = torch.zeros(19, 40, dtype=torch.bool)
    full_row[4] = True  # all the nonzeros in one row, the rest empty
    full_col = torch.zeros(33, 21, dtype=torch.bool)
    full_col[:, 20] = True
    skewed = torch.rand(24, 70, generator=gen) < 0.02
    skewed[9] = True  # one row holding about half the nonzeros: it spans several weight-gradient chunks
    gaps = torch.zeros(40, 30, dtype=torch.bool)
    gaps[[0, 17, 18, 39]] = torch.rand(4, 30, generator=gen) < 0.3  # empty rows before, between, after
    return {"single": one, "full-row": full_row, "full-col": full_col, "skewed": skewed, "gaps": gaps,
            "empty": torch.zeros(17, 9, dtype=torch.bool), "full": torch.ones(13, 11, dtype=torch.bool)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.4, 1.0])
def test_products_match_reference(dtype, density):
    # M = 37: a partial tile of rows; 20 out / 24 in: a full and a partial tile of features.
    layout = random_layout((20, 24), density, seed_of(density))
    run_element_case("triton", dtype, 37, layout, bias=density != 0.4, seed=seed_of(dtype, density), device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(special_masks()))
def test_special_layouts(dtype, name):
    run_element_case("triton", dtype, 9, layout_of(special_masks()[name]), seed=seed_of(name), device=DEVICE)


@pytest.mark.parametrize("shape,M", [((1, 1), 1), ((1, 17), 3), ((17, 1), 2), ((17, 33), 65), ((33, 17), 1)],
                         ids=str)
def test_odd_shapes(shape, M):
    # M = 65: two tiles of rows, the second of one row; 33 features: three tiles, the last of one.
    layout = random_layout(shape, 0.3 if shape[0] * shape[1] > 1 else 1.0, seed_of(shape))
    run_element_case("triton", torch.float32, M, layout, seed=seed_of(shape, M), device=DEVICE)


def test_3d_and_noncontiguous_inputs():
    layout = random_layout((18, 20), 0.2, 3)
    run_element_case("triton", torch.float32, None, layout, batch_shape=(2, 5), device=DEVICE)
    run_element_case("triton", torch.float16, None, layout, batch_shape=(3, 4), noncontiguous=True,
                     bias=False, device=DEVICE)


def _operands(layout, dtype=torch.float32, M=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    N, K = layout.shape
    w = torch.where(layout.to_mask().cpu(), torch.randn(N, K, generator=gen), float("nan"))
    x = torch.randn(M, K, generator=gen)
    g = torch.randn(M, N, generator=gen)
    b = torch.randn(N, generator=gen)
    return [t.to(DEVICE, dtype) for t in (w, x, g, b)]


def _expected(layout, w, x, g, b):
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    w64, x64, g64, b64 = (t.double() for t in (w, x, g, b))
    return (reference.forward(x64, w64, b64, row_ptr, col_idx), reference.grad_input(g64, w64, col_ptr, row_idx),
            reference.grad_weight(g64, x64, row_ptr, col_idx))


def test_int64_pointers_give_the_same_result():
    # Layouts past 2^31 nonzeros have int64 pointers; the kernels take either type.
    layout = random_layout((20, 24), 0.3, 8)
    w, x, g, b = _operands(layout)
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    assert row_ptr.dtype == torch.int32
    narrow = (BACKEND.forward(x, w, b, row_ptr, col_idx), BACKEND.grad_input(g, w, col_ptr, row_idx),
              BACKEND.grad_weight(g, x, row_ptr, col_idx))
    wide = (BACKEND.forward(x, w, b, row_ptr.long(), col_idx), BACKEND.grad_input(g, w, col_ptr.long(), row_idx),
            BACKEND.grad_weight(g, x, row_ptr.long(), col_idx))
    for a, e, name in zip(wide, narrow, ("y", "dx", "dw")):
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def test_expanded_and_transposed_operands():
    # An expanded gradient (stride 0, as from y.sum().backward()), a transposed x and weight.
    layout = random_layout((20, 24), 0.3, 9)
    w, x, g, b = _operands(layout)
    g = g[:1].expand_as(g)
    x = x.t().contiguous().t()
    w_t = w.t().contiguous().t()  # the same values, column-major
    assert g.stride(0) == 0 and not x.is_contiguous() and not w_t.is_contiguous()
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    actual = (BACKEND.forward(x, w_t, b, row_ptr, col_idx), BACKEND.grad_input(g, w_t, col_ptr, row_idx),
              BACKEND.grad_weight(g, x, row_ptr, col_idx))
    for a, e, name in zip(actual, _expected(layout, w, x, g, b), ("y", "dx", "dw")):
        assert_close_to_reference(a.cpu(), e.cpu(), name=name)


def test_weight_gradient_is_exactly_zero_off_the_layout():
    layout = random_layout((20, 24), 0.2, 10)
    w, x, g, b = _operands(layout)
    dw = BACKEND.grad_weight(g, x, *layout.index_tensors()[:2])
    mask = layout.to_mask()
    assert (dw[~mask] == 0).all()
    assert (dw[mask] != 0).all()  # random data: every entry on the layout is written


def test_forced_through_sparse_linear_forward_and_backward():
    layout = random_layout((20, 24), 0.25, 11)
    w, x, g, b = _operands(layout, M=6)
    ws = w.clone().requires_grad_()
    xs = x.clone().requires_grad_()
    y = sparsekern.sparse_linear(xs, ws, layout, b, backend="triton")
    y.backward(g)
    expected = _expected(layout, w, x, g, b)
    for a, e, name in zip((y, xs.grad, ws.grad), expected, ("y", "dx", "dw")):
        assert_close_to_reference(a.detach().cpu(), e.cpu(), name=name)


@pytest.mark.skipif(DEVICE != "cpu" or not interpreting(), reason="checks the refusal without the interpreter")
def test_refused_on_cpu_tensors_without_the_interpreter(monkeypatch):
    layout = random_layout((20, 24), 0.25, 12)
    w, x, g, b = _operands(layout)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(sparsekern.BackendUnavailableError, match="backend='triton'.*TRITON_INTERPRET=1"):
        sparsekern.sparse_linear(x, w, layout, backend="triton")
    monkeypatch.setenv("SPARSEKERN_BACKEND", "triton")
    with pytest.raises(sparsekern.BackendUnavailableError, match="SPARSEKERN_BACKEND='triton'.*TRITON_INTERPRET=1"):
        sparsekern.sparse_linear(x, w, layout)
    # Never chosen automatically for CPU tensors, with or without the interpreter.
    monkeypatch.delenv("SPARSEKERN_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert REGISTRY.select(None, torch.device("cpu"), torch.float32, None).name != "triton"


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (none present)")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", [1 / 64, 0.3])
def test_larger_shapes_on_the_gpu(dtype, density, ieee_fp32):
    layout = random_layout((333, 270), density, seed_of(density))
    run_element_case("triton", dtype, 300, layout, seed=seed_of(dtype, density), device=DEVICE)
    skewed = torch.rand(500, 300, generator=torch.Generator().manual_seed(1)) < density
    skewed[123] = True
    run_element_case("triton", dtype, 257, layout_of(skewed), seed=seed_of(dtype), device=DEVICE)


def test_opcheck_every_op():
    # The outputs' metadata against the fake implementations, and the ops under AOT dispatch.
    # The schema test (the same operators, checked with every other backend in
    # test_element_linear.py) is left out: under the interpreter it takes seconds an op.
    from sparsekern.element import ops

    layout = random_layout((12, 20), 0.2, 13)
    w, x, g, b = _operands(layout, M=5)
    w = torch.nan_to_num(w, nan=0.0)  # opcheck compares results across runs: NaN never equals itself
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    for op, args in [(ops.esmm_forward, (x, w, b, row_ptr, col_idx, "triton")),
                     (ops.esmm_grad_input, (g, w, col_ptr, row_idx, "triton")),
                     (ops.esmm_grad_weight, (g, x, row_ptr, col_idx, "triton"))]:
        torch.library.opcheck(op, args, test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))
