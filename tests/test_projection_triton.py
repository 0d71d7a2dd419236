"""The Triton projection backend: under the interpreter on CPU (small cases: the interpreter
is slow), on the GPU when there is one, and compiled ahead of time for sm_80 / sm_90."""

import pytest
import torch

from conftest import interpreting
from projection_cases import check_projection, make_weight, projection_backends_here

HERE = "triton" in projection_backends_here()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not HERE and DEVICE == "cpu",
                                reason="the Triton backend needs CUDA or TRITON_INTERPRET=1")
# No tl.dot here, so the interpreter's bf16 matmul bug does not apply: bf16 is checked too.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["normal", "ties", "negzero", "tiny"])
def test_element_mode_matches_rule(dtype, kind, generator):
    w = make_weight(kind, (5, 150), dtype, generator).to(DEVICE)  # two programs per row
    n = w.numel()
    for k in (0, 1, n // 7, n - 1, n):
        check_projection(w, k, "triton", block_size=(16, 32))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_floors_match_rule(dtype, generator):
    w = make_weight("ties", (12, 40), dtype, generator).to(DEVICE)
    check_projection(w, 200, "triton", min_per_row=3, min_per_col=2)
    check_projection(w, 480, "triton", min_per_row=1)


def test_strided_weight(generator):
    base = torch.randn(40, 6, generator=generator).to(DEVICE)
    check_projection(base.t(), 50, "triton", block_size=16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_on_gpu(dtype, generator):
    w = make_weight("normal", (1000, 3000), dtype, generator).cuda()
    check_projection(w, w.numel() // 64, "triton", min_per_row=4, block_size=32)


@pytest.mark.skipif(not interpreting(), reason="runs where the tests use the interpreter (no GPU)")
def test_kernels_compile_ahead_of_time_for_sm80_and_sm90():
    from sparsekern.triton.topk_aot import report_in_subprocess

    reports = report_in_subprocess()
    kernels = {"topk_hist", "topk_pick", "topk_ties", "topk_apply"}
    assert {(r["kernel"], r["arch"], r["dtype"]) for r in reports} == {
        (k, a, d) for k in kernels for a in (80, 90) for d in ("fp32", "fp16", "bf16")}
    assert all(r["spill_bytes"] == 0 for r in reports), [r for r in reports if r["spill_bytes"]]
