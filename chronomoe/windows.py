"""A snapshot window's counts: the events or count rows since the previous snapshot, summed per layer.

Pure functions (numpy in, numpy out, no state): they validate a window and
reduce it to ``(counts [L, E] int64, n_experts [L])``, what
:func:`chronomoe.snapshots.build_snapshot` takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import compress
from operator import attrgetter

import numpy as np

from .errors import InvalidInputError
from .events import INT64_LIMIT, RoutingEvent
from .metrics import pad_counts, sum_counts_by_layer


def events_of_mode(events: Iterable[RoutingEvent], mode: str) -> Sequence[RoutingEvent]:
    """The events of ``mode``, in order; ``events`` itself (no copy) when all of them are of ``mode``."""
    if not isinstance(events, (list, tuple)):
        events = list(events)  # read once per field below
    modes = list(map(attrgetter("mode"), events))
    if modes.count(mode) == len(modes):
        return events
    return list(compress(events, [event_mode == mode for event_mode in modes]))


def validate_counts_matrix(
    counts: np.ndarray | Sequence[Sequence[int]], n_experts: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check a window's counts matrix and return ``(counts int64 [L, E], n_experts [L])``."""
    if isinstance(counts, np.ndarray) or (hasattr(counts, "detach") and hasattr(counts, "cpu")):
        matrix = np.asarray(counts.detach().cpu() if hasattr(counts, "detach") else counts)
    else:
        try:
            rows = [np.asarray(row) for row in counts]
        except (TypeError, ValueError):  # not iterable, or a ragged row
            raise InvalidInputError(
                "counts", counts, "must be a [n_layers, n_experts] matrix or a list of per-layer rows"
            ) from None
        ragged = len({row.shape for row in rows}) > 1
        for index, row in enumerate(rows if ragged else ()):
            if (
                row.ndim != 1
                or row.dtype == np.bool_
                or not (np.issubdtype(row.dtype, np.integer) or np.issubdtype(row.dtype, np.floating))
            ):
                raise InvalidInputError(
                    f"counts[{index}]", row.tolist(), "must be a 1-D row of integer per-expert counts"
                )
        matrix = pad_counts(rows)[0] if ragged else np.asarray(rows)
        if ragged and n_experts is None:
            n_experts = [len(row) for row in rows]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise InvalidInputError("counts", matrix.shape, "must be a [n_layers, n_experts] matrix with n_experts >= 1")
    if not (np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)):
        raise InvalidInputError("counts.dtype", str(matrix.dtype), "must be an integer type")
    if np.issubdtype(matrix.dtype, np.floating):
        bad = ~np.isfinite(matrix) | (matrix != np.round(matrix))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInputError(f"counts[{where[0]}][{where[1]}]", matrix[where].item(), "is not an integer count")
    if matrix.size and matrix.min() < 0:
        where = tuple(int(i) for i in np.argwhere(matrix < 0)[0])
        raise InvalidInputError(f"counts[{where[0]}][{where[1]}]", matrix[where].item(), "is negative")
    row_totals = matrix.sum(axis=1, dtype=np.float64)
    if matrix.size and row_totals.max() >= INT64_LIMIT:
        largest = int(np.argmax(row_totals))
        raise InvalidInputError(
            f"counts[{largest}]", matrix[largest].tolist(), "sums beyond the int64 range of token counts"
        )
    matrix = matrix.astype(np.int64, copy=False)
    if n_experts is None:
        widths = np.full(len(matrix), matrix.shape[1], dtype=np.int64)
    else:
        widths = np.asarray(n_experts, dtype=np.int64)
        if widths.shape != (len(matrix),) or widths.min(initial=1) < 1 or widths.max(initial=1) > matrix.shape[1]:
            raise InvalidInputError(
                "n_experts", widths.tolist(), f"must give 1..{matrix.shape[1]} for each of {len(matrix)} layers"
            )
        padding = np.arange(matrix.shape[1])[None, :] >= widths[:, None]
        stray = padding & (matrix != 0)
        if stray.any():
            layer, column = (int(i) for i in np.argwhere(stray)[0])
            raise InvalidInputError(
                f"counts[{layer}][{column}]",
                matrix[layer, column].item(),
                f"is padding (n_experts[{layer}]={int(widths[layer])}) and must be 0",
            )
    return matrix, widths


def window_counts(
    events: Sequence[RoutingEvent], n_layers: int | None = None, chunk_rows: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum a window's events per layer: ``(counts [L, E], n_experts [L], layer_ids [L])``.

    Layers are ``0..n_layers-1``; a layer without events gets zero counts and
    the expert count 1 (it is ``no_data``). Raises when events of one layer
    disagree on ``n_experts`` or a ``layer_id`` is outside ``0..n_layers-1``.

    Rows are gathered ``chunk_rows`` at a time into one reused buffer, so the
    window is never copied whole (for 58 layers x 256 experts x 1,000 steps
    that copy alone would be 118 MB).
    """
    count = len(events)
    # One pass per field with a C-level getter. Not one getter of several
    # fields: its tuple per event sets off collections of the garbage
    # collector, which walk every event (measured 2-3x slower).
    layer_of_event = np.fromiter(map(attrgetter("layer_id"), events), dtype=np.int64, count=count)
    width_of_event = np.fromiter(map(attrgetter("n_experts"), events), dtype=np.int64, count=count)
    if n_layers is None:
        n_layers = int(layer_of_event.max()) + 1 if count else 0
    if count and layer_of_event.max() >= n_layers:
        index = int(np.argmax(layer_of_event >= n_layers))
        raise InvalidInputError(
            f"events[{index}].layer_id", int(layer_of_event[index]), f"is outside 0..n_layers-1 (n_layers={n_layers})"
        )
    widths = np.ones(n_layers, dtype=np.int64)
    widths[layer_of_event] = width_of_event
    disagree = widths[layer_of_event] != width_of_event
    if disagree.any():
        index = int(np.argmax(disagree))
        layer = int(layer_of_event[index])
        raise InvalidInputError(
            f"events[{index}].n_experts",
            int(width_of_event[index]),
            f"disagrees with other events of layer {layer} in this window (n_experts={int(widths[layer])})",
        )
    totals = np.zeros((n_layers, int(widths.max(initial=1))), dtype=np.int64)
    rows = list(map(attrgetter("expert_token_counts"), events))
    layers_with_events = np.flatnonzero(np.bincount(layer_of_event, minlength=n_layers))
    event_widths = np.unique(widths[layers_with_events]).tolist()
    for width in event_widths:
        if len(event_widths) == 1:
            rows_of_width, layer_of_row = rows, layer_of_event
        else:
            selected = np.flatnonzero(width_of_event == width)
            rows_of_width, layer_of_row = [rows[i] for i in selected.tolist()], layer_of_event[selected]
        totals[:, :width] += _sum_rows_by_layer(rows_of_width, layer_of_row, n_layers, width, chunk_rows)
    return totals, widths, np.arange(n_layers, dtype=np.int64)


def _sum_rows_by_layer(
    rows: list[np.ndarray], layer_of_row: np.ndarray, n_layers: int, width: int, chunk_rows: int
) -> np.ndarray:
    # Chunks of whole steps keep the regular step-major layout that
    # sum_counts_by_layer reduces without a scatter.
    chunk_rows = max(n_layers, chunk_rows - chunk_rows % n_layers)
    buffer = np.empty(min(chunk_rows, len(rows)) * width, dtype=np.int64)
    totals = np.zeros((n_layers, width), dtype=np.int64)
    for start in range(0, len(rows), chunk_rows):
        part = rows[start : start + chunk_rows]
        block = buffer[: len(part) * width]
        np.concatenate(part, out=block)
        totals += sum_counts_by_layer(
            layer_of_row[start : start + len(part)], block.reshape(len(part), width), n_layers
        )
    return totals
