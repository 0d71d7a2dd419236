"""Paths specific to the "cuda" backend's kernels, on CUDA tensors (tests/test_gpu.py runs
the full correctness matrix for every backend, this one included).

Skipped without a CUDA device or without the compiled CUDA kernels: no GPU is available to
this project's CI, so none of these has run yet.
"""

import pytest
import torch

import sparsekern
from conftest import TF32_EPS, assert_close_to_reference, assert_within_twice_torch, random_weight
from linear_cases import cuda_tf32, run_linear_case
from sparsekern.block.backends import get_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)"),
    pytest.mark.skipif(
        torch.cuda.is_available() and get_backend("cuda").unavailable_reason() is not None,
        reason="the extension was built without CUDA kernels",
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _ieee(ieee_fp32):
    """The fp32 bar is IEEE (conftest.ieee_fp32); TF32 is tested separately."""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [256, 250, 251], ids=["aligned", "even", "odd"])
def test_aligned_and_unaligned_rows(dtype, K):
    # K = 256: 16-byte cp.async for every operand. 250 / 251: rows not 16-byte aligned, so the
    # element-wise fallback loads (and partial edge blocks on K).
    run_linear_case("cuda", dtype, M=130, N=192, K=K, block_size=(32, 64), density=0.5, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 128, (16, 128), (128, 16)], ids=str)
def test_few_blocks_split_the_batch(dtype, block_size):
    # A few active blocks and a long batch: the weight gradient splits M over many CTAs and
    # adds the partial sums atomically (fp32 scratch for fp16/bf16). 128x128 blocks make a 2x2
    # grid here, where 0.05 would keep none.
    density = 0.25 if block_size == 128 else 0.05
    layout = run_linear_case("cuda", dtype, M=4099, N=130, K=140, block_size=block_size, density=density,
                             device="cuda")
    assert 1 <= layout.nnz_blocks <= 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_weight_and_batch_of_one(dtype):
    gen = torch.Generator().manual_seed(5)
    layout = sparsekern.BlockLayout.random((96, 80), 16, 0.5, generator=gen, device="cuda")
    # A weight that is a column-sliced view (row stride 100): read in place, never copied.
    big = torch.randn(96, 100, generator=gen).to("cuda", dtype)
    weight = big[:, :80]
    weight.masked_fill_(~layout.to_mask(), float("nan"))
    x = torch.randn(1, 80, generator=gen).to("cuda", dtype)
    y = sparsekern.block_sparse_linear(x, weight, layout, backend="cuda")
    w_masked = torch.where(layout.to_mask(), weight, 0)
    expected = x.double() @ w_masked.double().t()
    assert_close_to_reference(y.cpu(), expected.cpu(), (x @ w_masked.t()).cpu(), name="y")


def test_tf32_flag_changes_the_fp32_path():
    gen = torch.Generator().manual_seed(1)
    layout = sparsekern.BlockLayout.random((128, 256), 32, 0.5, generator=gen, device="cuda")
    w = random_weight(layout, torch.float32, "cuda", gen)
    x = torch.randn(64, 256, generator=gen).cuda()
    w_masked = torch.where(layout.to_mask(), w, 0)
    expected = x.double() @ w_masked.double().t()
    exact = sparsekern.block_sparse_linear(x, w, layout, backend="cuda")
    with cuda_tf32(True):
        tf32 = sparsekern.block_sparse_linear(x, w, layout, backend="cuda")
        cublas_tf32 = x @ w_masked.t()
    assert_close_to_reference(exact.cpu(), expected.cpu(), name="IEEE fp32")
    assert_within_twice_torch(tf32.cpu(), expected.cpu(), cublas_tf32.cpu(), TF32_EPS, name="TF32")
    exact_err = (exact.double() - expected).abs().max().item()
    tf32_err = (tf32.double() - expected).abs().max().item()
    assert tf32_err > exact_err  # TF32 rounds the inputs to 10 mantissa bits: visibly less exact


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_different_devices_are_rejected():
    from sparsekern import _C

    layout = sparsekern.BlockLayout.random((32, 32), 16, 0.5, device="cuda:0")
    x = torch.randn(4, 32, device="cuda:1")
    w = torch.randn(32, 32, device="cuda:0")
    with pytest.raises(RuntimeError, match="must be on"):
        _C.bsmm_forward_cuda(x, w, None, layout.row_ptr, layout.col_idx, 16, 16, False)
