import pytest
import torch

from sparsekern import BlockLayout, count_for_density


def brute_force_index(block_mask):
    """Index lists built the obvious way, to check the vectorised construction."""
    rows, cols = block_mask.shape
    csr = [(r, c) for r in range(rows) for c in range(cols) if block_mask[r, c]]
    csc = [(r, c) for c in range(cols) for r in range(rows) if block_mask[r, c]]
    row_ptr = [0]
    for r in range(rows):
        row_ptr.append(row_ptr[-1] + int(block_mask[r].sum()))
    col_ptr = [0]
    for c in range(cols):
        col_ptr.append(col_ptr[-1] + int(block_mask[:, c].sum()))
    return csr, csc, row_ptr, col_ptr


@pytest.mark.parametrize("block_size", [16, (32, 16), (16, 64), 128])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_index_matches_brute_force(block_size, density):
    gen = torch.Generator().manual_seed(7)
    layout = BlockLayout.random((300, 200), block_size, density, generator=gen)
    mask = layout.to_block_mask()
    csr, csc, row_ptr, col_ptr = brute_force_index(mask)
    assert layout.row_ptr.tolist() == row_ptr
    assert layout.col_ptr.tolist() == col_ptr
    assert list(zip(layout.block_row.tolist(), layout.col_idx.tolist())) == csr
    assert layout.row_idx.tolist() == [r for r, _ in csc]
    for t in layout.index_tensors():
        assert t.dtype == torch.int32


def test_random_has_exact_count_and_properties():
    layout = BlockLayout.random((100, 70), (32, 16), 0.37, generator=torch.Generator().manual_seed(0))
    n_blocks = 4 * 5  # ceil(100/32) x ceil(70/16)
    assert layout.grid == (4, 5)
    assert layout.nnz_blocks == round(0.37 * n_blocks) == count_for_density(0.37, n_blocks)
    assert layout.density == pytest.approx(layout.nnz_blocks / n_blocks)
    assert layout.block_size == (32, 16)
    assert layout.shape == (100, 70)
    assert "BlockLayout(" in repr(layout) and "(32, 16)" in repr(layout)


def test_random_is_reproducible_with_generator():
    a = BlockLayout.random((64, 64), 16, 0.5, generator=torch.Generator().manual_seed(1))
    b = BlockLayout.random((64, 64), 16, 0.5, generator=torch.Generator().manual_seed(1))
    c = BlockLayout.random((64, 64), 16, 0.5, generator=torch.Generator().manual_seed(2))
    assert a == b
    assert a != c


def test_to_mask_clips_edge_blocks():
    block_mask = torch.tensor([[True, False], [False, True]])
    layout = BlockLayout.from_block_mask(block_mask, 16, (20, 18))
    mask = layout.to_mask()
    assert mask.shape == (20, 18)
    assert mask[:16, :16].all() and not mask[:16, 16:].any()
    assert not mask[16:, :16].any() and mask[16:, 16:].all()
    assert mask.sum() == 16 * 16 + 4 * 2


def test_from_weight_finds_blocks_with_any_nonzero():
    weight = torch.zeros(40, 50)
    weight[0, 0] = 1.0  # block (0, 0)
    weight[39, 49] = -2.0  # the partial corner block (1, 1) with block 32
    weight[5, 40] = float("nan")  # NaN is nonzero: block (0, 1)
    layout = BlockLayout.from_weight(weight, 32)
    assert layout.to_block_mask().tolist() == [[True, True], [False, True]]


def test_from_block_mask_roundtrip_and_equality():
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(3, 4, generator=gen) > 0.5
    layout = BlockLayout.from_block_mask(mask, (16, 32), (48, 128))
    assert torch.equal(layout.to_block_mask(), mask)
    assert layout == BlockLayout.from_block_mask(mask.clone(), (16, 32), (48, 128))
    assert layout != BlockLayout.from_block_mask(mask, (16, 32), (47, 128))  # shape differs
    assert layout != BlockLayout.from_block_mask(~mask, (16, 32), (48, 128))


def test_to_block_mask_is_a_copy():
    layout = BlockLayout.random((32, 32), 16, 0.5, generator=torch.Generator().manual_seed(0))
    m = layout.to_block_mask()
    m.fill_(True)
    assert layout.to_block_mask().sum() == 2


@pytest.mark.parametrize("bad", [0, 8, 24, 256, (16,), (16, 16, 16), "32", 32.0, True])
def test_bad_block_size(bad):
    with pytest.raises((ValueError, TypeError), match="block_size"):
        BlockLayout.random((64, 64), bad, 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_density(bad):
    with pytest.raises(ValueError, match="density"):
        BlockLayout.random((64, 64), 16, bad)


def test_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        BlockLayout.random((0, 64), 16, 0.5)
    with pytest.raises(ValueError, match="block_mask"):
        BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 16, (64, 64))
    with pytest.raises(ValueError, match="weight"):
        BlockLayout.from_weight(torch.ones(4), 16)


def test_layout_keeps_its_own_copy_of_the_mask():
    mask = torch.tensor([[True, False], [False, False]])
    layout = BlockLayout.from_block_mask(mask, 16, (32, 32))
    mask[1, 1] = True  # the caller's tensor changes; the layout must not
    assert layout.nnz_blocks == 1 and layout.to_block_mask().sum() == 1
