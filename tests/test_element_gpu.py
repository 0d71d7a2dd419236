"""The element format's GPU backends ("cuda", and "triton" where it is registered and can run)
on CUDA tensors against the fp64 reference: NaN in every weight entry off the layout,
NaN-poisoned outputs; densities 0 to 1, the layouts a kernel gets wrong first (a single
nonzero, a full row or column, a row holding half the nonzeros, empty, full), several tiles of
M and of features with partial ones, int32 and int64 pointers, 3-D and non-contiguous inputs,
fp32/fp16/bf16; the cuda entry points' index checks on the device.

Skipped without a CUDA device (no GPU is available to this project's CI, so none of these has
run yet); a backend that cannot run here is skipped with its reasons.
"""

import pytest
import torch

import sparsekern
from linear_cases import run_element_case
from sparsekern import ElementLayout
from sparsekern.element.backends import REGISTRY
from test_element_linear import seed_of, special_layouts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = [name for name in ("cuda", "triton") if name in REGISTRY.names()]


@pytest.fixture(autouse=True)
def _ieee(ieee_fp32):
    """The fp32 bar is IEEE (conftest.ieee_fp32): torch's own fp32 result without TF32."""


def _needs(backend, dtype):
    reasons = REGISTRY.get(backend).reasons(torch.device("cuda"), dtype, None)
    if reasons:
        pytest.skip(f"{backend} cannot run here: {'; '.join(reasons)}")


def _random(shape, density, seed):
    return ElementLayout.random(shape, density, generator=torch.Generator().manual_seed(seed), device="cuda")


def _with_int64_pointers(layout):
    """The same layout with the int64 pointers of layouts past 2^31 nonzeros."""
    layout.row_ptr, layout.col_ptr = layout.row_ptr.long(), layout.col_ptr.long()
    return layout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 1.0])
def test_products_match_reference(backend, dtype, density):
    _needs(backend, dtype)
    layout = _random((70, 100), density, seed_of(density))
    run_element_case(backend, dtype, 37, layout, bias=density != 0.3, device="cuda", seed=seed_of(backend, density))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(special_layouts()))
def test_special_layouts(backend, dtype, name):
    _needs(backend, dtype)
    layout = ElementLayout.from_mask(special_layouts()[name].to("cuda"))
    run_element_case(backend, dtype, 21, layout, device="cuda", seed=seed_of(name))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,M", [((257, 33), 300), ((33, 2049), 130), ((1000, 300), 129), ((9000, 8), 65)],
                         ids=str)
def test_tiles_and_chunks(backend, dtype, shape, M):
    # Several tiles of M and of features, partial ones, many chunks of the reduction (2049
    # columns; 9000 for the input gradient).
    _needs(backend, dtype)
    layout = _random(shape, min(1.0, 2000 / (shape[0] * shape[1])), seed_of(shape))
    run_element_case(backend, dtype, M, layout, device="cuda", seed=seed_of(shape, M))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int64_pointers_and_strided_inputs(backend, dtype):
    _needs(backend, dtype)
    layout = _with_int64_pointers(_random((48, 80), 0.2, 3))
    run_element_case(backend, dtype, None, layout, batch_shape=(3, 11), device="cuda")
    run_element_case(backend, dtype, None, layout, batch_shape=(2, 9), noncontiguous=True, bias=False, device="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_headline_shape_bf16(backend):
    # The shape the kernels are designed for (x[M, 2048] @ W[8192, 2048].T at 1/256), M cut to 256.
    _needs(backend, torch.bfloat16)
    run_element_case(backend, torch.bfloat16, 256, _random((8192, 2048), 1 / 256, 11), device="cuda", seed=11)


def test_automatic_choice_on_cuda_is_a_gpu_backend():
    chosen = REGISTRY.select(None, torch.device("cuda"), torch.bfloat16, None).name
    runnable = [b for b in BACKENDS if not REGISTRY.get(b).reasons(torch.device("cuda"), torch.bfloat16, None)]
    assert chosen == (runnable[0] if runnable else "reference")


def test_cuda_entry_points_check_the_index_on_the_device():
    _needs("cuda", torch.float32)
    from sparsekern._extension import extension

    C = extension()
    layout = _random((40, 70), 0.2, 5)
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    x, w, g = (torch.randn(s, device="cuda") for s in ((5, 70), (40, 70), (5, 40)))
    expected = C.esmm_forward_cuda(x, w, None, row_ptr, col_idx)
    bad = col_idx.clone()
    bad[3] = 70  # past in_features
    with pytest.raises(RuntimeError, match="invalid element index"):
        C.esmm_forward_cuda(x, w, None, row_ptr, bad)
    with pytest.raises(RuntimeError, match="col_ptr must have 71 entries"):
        C.esmm_grad_input_cuda(g, w, col_ptr[:-1], row_idx)
    with pytest.raises(RuntimeError, match="must be on"):
        C.esmm_grad_weight_cuda(g, x, row_ptr.cpu(), col_idx)
    # A passed check is remembered per index tensor; an in-place change is checked again.
    good = col_idx.clone()
    torch.testing.assert_close(C.esmm_forward_cuda(x, w, None, row_ptr, good), expected, rtol=0, atol=0)
    good[0] = 70
    with pytest.raises(RuntimeError, match="invalid element index"):
        C.esmm_forward_cuda(x, w, None, row_ptr, good)
    # int64 pointers give the same result
    torch.testing.assert_close(C.esmm_forward_cuda(x, w, None, row_ptr.long(), col_idx), expected, rtol=0, atol=0)


def test_sparse_linear_runs_on_cuda_by_default():
    layout = _random((64, 96), 0.1, 9)
    w = torch.randn(64, 96, device="cuda") * layout.to_mask()
    y = sparsekern.sparse_linear(torch.randn(7, 96, device="cuda"), w, layout)
    assert y.shape == (7, 64) and y.is_cuda
