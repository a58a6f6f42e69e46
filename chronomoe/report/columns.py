"""Time columns: a run's snapshots grouped into at most ``max_columns`` columns of equal size, for drawing.

A long run has more snapshots than a figure has pixels (58 layers x 10,000
snapshots). The report draws *columns* of ``width`` consecutive snapshots,
``width`` a power of two chosen so that there are at most ``max_columns``:

* :class:`ColumnSums` sums per-snapshot arrays (each layer's tokens per
  expert) into columns while the snapshots stream by, doubling ``width``
  (merging neighbouring columns) whenever one more column would not fit, so
  it holds at most ``max_columns`` sums whatever the run's length;
* :func:`reduce_columns` reduces a per-snapshot matrix to columns of a given
  width with a named reduction (the worst value of each column: ``min`` for
  Neff, ``max`` for Top2, MaxVio and the alert state), or ``last``.

A column covers the snapshot windows of its snapshots: from the step after
the previous column's last snapshot to its own last snapshot's step
(:func:`column_edges`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import InvalidInputError

DEFAULT_MAX_COLUMNS = 512
"""Columns of a report's heatmaps at most: about one per two pixels of a page's 1,100-pixel-wide figures."""

Reduction = Literal["min", "max", "last"]


def check_max_columns(max_columns: int) -> int:
    """Refuse a column budget that is not an even integer >= 2 (bools refused too), naming it.

    Even, because full columns are merged in pairs.
    """
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 2 or max_columns % 2:
        raise InvalidInputError("max_columns", max_columns, "must be an even integer >= 2")
    return max_columns


class ColumnSums:
    """Per-snapshot arrays of one shape summed into at most ``max_columns`` columns of ``width`` snapshots.

    Feed the snapshots in order with :meth:`add`; :attr:`sums` is then
    ``[n_columns, *shape]``. The shape can grow between snapshots (a layer or
    an expert seen for the first time): earlier columns hold zeros there.
    """

    def __init__(self, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        self.max_columns = check_max_columns(max_columns)
        self.width = 1
        self.snapshots = 0
        self._sums = np.zeros((max_columns, 0, 0), dtype=np.int64)

    @property
    def sums(self) -> np.ndarray:
        """``[n_columns, *shape]``: the sums of the columns so far (the last one may be partial)."""
        return self._sums[: -(-self.snapshots // self.width)]

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Add one snapshot: ``values`` ``[k, m]`` into rows ``rows`` ``[k]`` of the frame (columns 0..m-1)."""
        column = self.snapshots // self.width
        if column == self.max_columns:
            self._merge_pairs()
            column = self.snapshots // self.width
        needed_rows = int(rows.max(initial=-1)) + 1
        _, frame_rows, frame_width = self._sums.shape
        if needed_rows > frame_rows or values.shape[1] > frame_width:
            self._grow(max(needed_rows, frame_rows), max(values.shape[1], frame_width))
        self._sums[column, rows, : values.shape[1]] += values
        self.snapshots += 1

    def _merge_pairs(self) -> None:
        merged = self._sums[0::2] + self._sums[1::2]
        self._sums = np.concatenate([merged, np.zeros_like(merged)])
        self.width *= 2

    def _grow(self, frame_rows: int, frame_width: int) -> None:
        grown = np.zeros((self.max_columns, frame_rows, frame_width), dtype=np.int64)
        _, old_rows, old_width = self._sums.shape
        grown[:, :old_rows, :old_width] = self._sums
        self._sums = grown


def reduce_columns(values: np.ndarray, width: int, reduction: Reduction) -> np.ndarray:
    """``[ceil(S / width), ...]``: each column of ``width`` consecutive rows of ``values`` ``[S, ...]`` reduced.

    ``min`` and ``max`` ignore NaN (a column of NaN only stays NaN) and work
    on integer arrays too; ``last`` takes the column's last row.
    """
    if reduction not in ("min", "max", "last"):
        raise InvalidInputError("reduction", reduction, "must be 'min', 'max' or 'last'")
    count = len(values)
    n_columns = -(-count // width)
    if reduction == "last":
        last: np.ndarray = values[np.minimum(np.arange(1, n_columns + 1) * width, count) - 1]
        return last
    padded_shape = (n_columns * width, *values.shape[1:])
    operation: np.ufunc
    if np.issubdtype(values.dtype, np.floating):
        padded = np.full(padded_shape, np.nan, dtype=values.dtype)
        operation = np.fmin if reduction == "min" else np.fmax  # fmin/fmax skip NaN without warnings
    else:
        limits = np.iinfo(values.dtype)
        padded = np.full(padded_shape, limits.max if reduction == "min" else limits.min, dtype=values.dtype)
        operation = np.minimum if reduction == "min" else np.maximum
    padded[:count] = values
    reduced: np.ndarray = operation.reduce(padded.reshape(n_columns, width, *values.shape[1:]), axis=1)
    return reduced


def column_edges(steps: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first_step, last_step)`` ``[n_columns]`` of the snapshot windows each column covers.

    A snapshot's window is ``(previous snapshot's step, its step]``; the first
    snapshot's window is taken as wide as the second's (or one step).
    """
    if len(steps) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first_width = int(steps[1] - steps[0]) if len(steps) > 1 else 1
    window_starts = np.concatenate([[steps[0] - max(first_width, 1)], steps[:-1]]) + 1
    last = reduce_columns(steps, width, "last")
    first = window_starts[::width][: len(last)]
    return first.astype(np.int64), last.astype(np.int64)
