"""The "cuda" projection backend (csrc/cuda/topk_*) on CUDA tensors, against the sort-based
rule: every dtype and kind of weight (heavy ties, negative zeros, denormals), k from 0 to n,
floors, block counts, strided weights, several CTAs per row, and a large matrix. Skips
without a GPU (tests/test_projection_cuda_build.py runs the same kernels on an emulation)."""

import pytest
import torch

from projection_cases import DTYPES, KINDS, check_projection, make_weight
from sparsekern.projection import prepare_projection
from sparsekern.projection.backends import REGISTRY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)"),
    pytest.mark.skipif(
        torch.cuda.is_available() and REGISTRY.get("cuda").reasons(torch.device("cuda"), torch.float32, None) != [],
        reason="the cuda projection backend cannot run here (see REGISTRY.get('cuda').reasons)",
    ),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(5, 150), (3, 2500), (130, 70)])
def test_element_mode_matches_rule(dtype, kind, shape, generator):
    w = make_weight(kind, shape, dtype, generator).cuda()
    n = w.numel()
    for k in (0, 1, n // 7, n // 2, n - 1, n):
        check_projection(w, k, "cuda", block_size=(16, 32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_floors_match_rule(dtype, generator):
    w = make_weight("ties", (12, 40), dtype, generator).cuda()
    check_projection(w, 200, "cuda", min_per_row=3, min_per_col=2)
    check_projection(w, 36, "cuda", min_per_row=3)  # exactly the floor set
    check_projection(w, 480, "cuda", min_per_row=1, block_size=16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_weights(dtype, generator):
    base = make_weight("ties", (300, 40), dtype, generator).cuda()
    check_projection(base.t(), 2000, "cuda", block_size=16)
    check_projection(base[:, 3:37], 5000, "cuda", block_size=(32, 16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large(dtype, generator):
    w = make_weight("normal", (1000, 3000), dtype, generator).cuda()
    check_projection(w, w.numel() // 64, "cuda", min_per_row=4, block_size=32)
    w = make_weight("ties", (1000, 3000), dtype, generator).cuda()
    check_projection(w, w.numel() // 3, "cuda", block_size=(64, 128))


def test_plans_do_not_write_and_match_triton_when_present(generator):
    w = make_weight("ties", (64, 300), torch.float16, generator).cuda()
    before = w.clone()
    prepared = prepare_projection(w, 5000, min_per_row=2, backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(w, before), "planning changed the weight"
    result = prepared.apply()
    if "triton" in REGISTRY.available("cuda", torch.float16, None):
        other = before.clone()
        expected = prepare_projection(other, 5000, min_per_row=2, backend="triton").apply()
        assert torch.equal(w, other) and result.nnz == expected.nnz and result.threshold == expected.threshold


def test_entry_points_reject_bad_arguments():
    from sparsekern import _C

    w = torch.randn(8, 8, device="cuda")
    with pytest.raises(TypeError, match="weight must be float32, float16 or bfloat16"):
        _C.topk_select_cuda(w.double(), None, 3)
    with pytest.raises(ValueError, match="k must be in"):
        _C.topk_select_cuda(w, None, 65)
    with pytest.raises(ValueError, match="forced must be a contiguous bool tensor"):
        _C.topk_select_cuda(w, torch.zeros(8, 7, dtype=torch.bool, device="cuda"), 3)
    with pytest.raises(ValueError, match="overlapping"):
        _C.topk_select_cuda(torch.randn(1, 8, device="cuda").expand(8, 8), None, 3)
    state, ties = _C.topk_select_cuda(w, None, 3)
    with pytest.raises(ValueError, match="ties_before must be"):
        _C.topk_apply_cuda(w, None, state, ties[:-1], 0, 0)
    with pytest.raises(RuntimeError, match="block sides"):
        _C.topk_apply_cuda(w, None, state, ties, 16, 24)
