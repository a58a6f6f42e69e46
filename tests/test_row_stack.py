"""RowStack (chronomoe/io/run_reader_base.py): count matrices stacked as they are read, whatever their widths."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe.io.run_reader_base import RowStack

matrices = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from([2, 2, 2, 3])).map(
        lambda shape: np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape) + 10 * shape[0]
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(matrices, st.integers(0, 40))
def test_the_stack_holds_every_row_in_order_and_is_one_array_only_for_one_width(appended, hint):
    rows = RowStack()
    rows.reserve(hint)
    for matrix in appended:
        rows.append(matrix)
    nonempty = [matrix for matrix in appended if len(matrix)]
    widths = {matrix.shape[1] for matrix in nonempty}
    kept = rows.matrices()
    assert [row.tolist() for matrix in kept for row in matrix] == [
        row.tolist() for matrix in nonempty for row in matrix
    ]
    stacked = rows.stacked()
    if len(widths) == 1:
        assert stacked is not None and np.array_equal(stacked, np.concatenate(nonempty))
    else:
        assert stacked is None


def test_a_stack_grows_past_its_hint_and_is_trimmed_to_its_rows():
    rows = RowStack()
    rows.reserve(3)
    for start in range(0, 20, 4):
        rows.append(np.arange(start, start + 4, dtype=np.int64).reshape(2, 2))
    stacked = rows.stacked()
    assert stacked is not None and stacked.shape == (10, 2)
    assert stacked.reshape(-1).tolist() == list(range(20))
