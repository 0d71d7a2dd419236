"""ElementLayout: the CSR and CSC indices, the builders, equality, devices, bad input."""

import pytest
import torch

from sparsekern import ElementLayout, count_for_density


def test_indices_match_the_mask():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(37, 53, generator=gen) < 0.2
    layout = ElementLayout.from_mask(mask)
    assert layout.shape == (37, 53) and layout.nnz == int(mask.sum())
    assert layout.row_ptr.dtype == layout.col_ptr.dtype == torch.int32
    assert layout.col_idx.dtype == layout.row_idx.dtype == torch.int32
    for r in range(37):  # CSR: each row's columns, ascending
        cols = layout.col_idx[layout.row_ptr[r]:layout.row_ptr[r + 1]]
        assert torch.equal(cols.long(), mask[r].nonzero().flatten())
    for c in range(53):  # CSC: each column's rows, ascending
        rows = layout.row_idx[layout.col_ptr[c]:layout.col_ptr[c + 1]]
        assert torch.equal(rows.long(), mask[:, c].nonzero().flatten())
    assert torch.equal(layout.to_mask(), mask)
    assert layout.density == pytest.approx(mask.float().mean().item())


def test_from_weight_counts_nan_as_nonzero_and_copies_nothing_it_keeps():
    w = torch.zeros(4, 5)
    w[1, 2], w[3, 0], w[0, 4] = 1.5, float("nan"), -2.0
    layout = ElementLayout.from_weight(w)
    assert layout.nnz == 3 and torch.equal(layout.to_mask(), (w != 0))
    w.zero_()  # the layout owns its indices
    assert layout.nnz == 3 and layout.to_mask().sum() == 3


@pytest.mark.parametrize("density", [0.0, 1 / 64, 0.37, 1.0])
def test_random_keeps_exactly_the_count(density):
    layout = ElementLayout.random((64, 96), density, generator=torch.Generator().manual_seed(1))
    assert layout.nnz == count_for_density(density, 64 * 96)
    again = ElementLayout.random((64, 96), density, generator=torch.Generator().manual_seed(1))
    assert layout == again
    if 0 < density < 1:
        other = ElementLayout.random((64, 96), density, generator=torch.Generator().manual_seed(2))
        assert layout != other


def test_equality_repr_and_device():
    layout = ElementLayout.random((8, 9), 0.5, generator=torch.Generator().manual_seed(3))
    assert layout == ElementLayout.from_mask(layout.to_mask())
    assert layout != ElementLayout.random((9, 8), 0.5)
    assert layout.to("cpu") is layout and layout.device == torch.device("cpu")
    assert "ElementLayout(shape=(8, 9), nnz=36/72" in repr(layout)
    assert (layout == object()) is False


def test_from_entries_is_the_layout_of_the_mask():
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(29, 41, generator=gen) < 0.3
    rows, cols = mask.nonzero(as_tuple=True)
    layout = ElementLayout.from_entries((29, 41), rows, cols.int())
    assert layout == ElementLayout.from_mask(mask) and torch.equal(layout.to_mask(), mask)
    assert torch.equal(layout.row_idx, ElementLayout.from_mask(mask).row_idx)
    empty = ElementLayout.from_entries((3, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert empty.nnz == 0 and not empty.to_mask().any()
    with pytest.raises(ValueError, match="row-major"):  # out of order
        ElementLayout.from_entries((29, 41), rows.flip(0), cols.flip(0))
    with pytest.raises(ValueError, match="each once"):  # an entry twice
        ElementLayout.from_entries((29, 41), torch.cat([rows[:1], rows]), torch.cat([cols[:1], cols]))
    with pytest.raises(ValueError, match=r"index a \(29, 41\) weight"):
        ElementLayout.from_entries((29, 41), rows, cols + 41)
    with pytest.raises(ValueError, match="as many entries"):
        ElementLayout.from_entries((29, 41), rows, cols[1:])
    with pytest.raises(TypeError, match="cols must be a 1-D integer tensor"):
        ElementLayout.from_entries((29, 41), rows, cols.float())
    with pytest.raises(ValueError, match="shape"):
        ElementLayout.from_entries((0, 41), rows, cols)


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        ElementLayout(torch.ones(3, 3))
    with pytest.raises(ValueError, match="mask must be 2-D"):
        ElementLayout(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask.shape"):
        ElementLayout(torch.ones(0, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape must be"):
        ElementLayout.random((3, -1), 0.5)
    with pytest.raises(ValueError, match="density must be in"):
        ElementLayout.random((3, 3), 1.5)
    with pytest.raises(ValueError, match="weight must be a 2-D tensor"):
        ElementLayout.from_weight(torch.ones(3))
