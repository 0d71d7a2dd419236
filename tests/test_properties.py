"""Property-based tests: random shapes, block sizes, densities and layouts, every backend
against the reference."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cpu_backends
from linear_cases import run_linear_case

SIDES = st.sampled_from([16, 32, 64])
BACKENDS = [b for b in cpu_backends() if b != "reference"]


@pytest.mark.skipif(not BACKENDS, reason="only the reference backend can run CPU tensors here")
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    M=st.integers(1, 80),
    N=st.integers(1, 150),
    K=st.integers(1, 150),
    block=st.tuples(SIDES, SIDES),
    density=st.floats(0.0, 1.0),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_backend_matches_reference(backend, M, N, K, block, density, bias, seed):
    run_linear_case(backend, torch.float32, M, N, K, block, density, bias=bias, seed=seed)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    block=st.tuples(SIDES, st.sampled_from([16, 32, 64, 128])),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_layout_invariants(rows, cols, block, density, seed):
    import sparsekern

    layout = sparsekern.BlockLayout.random((rows, cols), block, density,
                                           generator=torch.Generator().manual_seed(seed))
    mask = layout.to_block_mask()
    assert layout.nnz_blocks == int(mask.sum()) == round(density * mask.numel())
    # The row-major and column-major indices list the same set of blocks.
    csr = set(zip(layout.block_row.tolist(), layout.col_idx.tolist()))
    cols_of = torch.repeat_interleave(torch.arange(mask.shape[1]), (layout.col_ptr[1:] - layout.col_ptr[:-1]).long())
    csc = set(zip(layout.row_idx.tolist(), cols_of.tolist()))
    assert csr == csc == set(map(tuple, mask.nonzero().tolist()))
    # from_weight of the element mask recovers the layout exactly.
    assert sparsekern.BlockLayout.from_weight(layout.to_mask().float(), block) == layout
