"""Records to Arrow tables and back, for the Parquet tables of :mod:`chronomoe.io.parquet_schema`.

Events take a vectorised path both ways: a batch of events of one width
becomes columns with one ``numpy`` stack of their counts
(:func:`events_columns`: the counts as an int32 matrix, the other columns as
a table); rows read back are checked column by column with
numpy (the model's invariants: non-negative counts summing to
``token_count``, ``n_experts`` equal to the width, ``1 <= top_k <=
n_experts``, finite floats, known modes, non-empty run ids) and become events
without a second validation (:func:`events_from_table`). A row that fails a
check is validated in full by ``RoutingEvent.model_validate``, which names
what is wrong, so reading accepts and rejects what the model does. The other
tables go through the models' JSON form (:func:`records_table`,
:func:`records_from_table`), each row validated.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from ..errors import CorruptRecordError, InvalidInputError
from ..events import MODES, RoutingEvent
from .parquet_schema import COUNTS_FIELD, COUNTS_LIMIT, EVENTS_TABLE, TABLE_MODELS, table_layout
from .parse_errors import PARSE_ERRORS, describe_parse_error

_SCALARS = ("timestamp", "run_id", "step", "mode", "layer_id", "n_experts", "top_k", "token_count", "loss", "aux_loss")
"""Event fields stored as one value per row."""
_GATHERED = (*_SCALARS, "expert_token_counts", "router_prob_sums")
_gather = operator.itemgetter(*_GATHERED)
"""Applied to a record's field dict (``vars(event)``): half the time of reading the fields as attributes."""
_COUNTS_INDEX = table_layout(EVENTS_TABLE, 1).schema.get_field_index(COUNTS_FIELD)
"""Where the counts column lies among ``routing_events``' columns (the same at every width)."""


def records_table(table: str, records: Sequence[BaseModel]) -> pa.Table:
    """The rows of ``records`` (of the table's model; not events) as an Arrow table of the table's schema."""
    layout = table_layout(table)
    return pa.Table.from_pylist([layout.to_row(record.model_dump(mode="json")) for record in records], layout.schema)


def events_columns(events: Sequence[RoutingEvent]) -> tuple[pa.Table, np.ndarray]:
    """Events of one width (``n_experts``) as the table of ``routing_events``' other columns (its schema without
    ``expert_token_counts``) and their counts, ``[events, width]`` int32.

    Raises :class:`~chronomoe.errors.InvalidInputError` naming the event when a count reaches 2**31 (beyond the
    table's int32 counts) or the widths differ.
    """
    width = events[0].n_experts
    # One itemgetter call per event, then columns by zip: several times fewer Python calls than a getattr per field.
    fields = dict(zip(_GATHERED, zip(*map(_gather, map(vars, events)), strict=True), strict=True))
    if fields["n_experts"].count(width) != len(events):
        raise InvalidInputError("events.n_experts", sorted(set(fields["n_experts"])), "must be one width")
    counts = np.concatenate(fields["expert_token_counts"]).reshape(len(events), width)
    if counts.size and counts.max() >= COUNTS_LIMIT:
        row = int(np.argmax(counts.max(axis=1)))
        raise InvalidInputError(
            f"events[{row}].expert_token_counts",
            int(counts[row].max()),
            "is beyond the int32 counts of Parquet storage (use storage='jsonl' for such counts)",
        )
    schema = _other_columns_schema(width)
    columns: dict[str, Any] = {name: list(fields[name]) for name in _SCALARS}
    sums = fields["router_prob_sums"]
    if all(map(operator.is_, sums, repeat(None))):  # (not count(None): it compares arrays with ==)
        columns["router_prob_sums"] = pa.nulls(len(events), schema.field("router_prob_sums").type)
    else:
        columns["router_prob_sums"] = pa.array(
            [None if value is None else value.tolist() for value in sums], schema.field("router_prob_sums").type
        )
    table = pa.table({field.name: columns[field.name] for field in schema}, schema=schema)
    return table, counts.astype(np.int32)


@functools.lru_cache(maxsize=16)
def _other_columns_schema(width: int) -> pa.Schema:
    return table_layout(EVENTS_TABLE, width).schema.remove(_COUNTS_INDEX)


def events_from_table(table: pa.Table, path: str, first_row: int = 1) -> list[RoutingEvent]:
    """The events of rows of ``routing_events`` (see the module docstring).

    Raises :class:`~chronomoe.errors.CorruptRecordError` naming ``path`` and the row (``first_row`` is the number
    of the table's first row in its file, from 1) that the model rejects.
    """
    if table.num_rows == 0:
        return []
    counts_column = table.column("expert_token_counts").combine_chunks()
    width = counts_column.type.list_size
    counts = counts_column.values.to_numpy().astype(np.int64).reshape(-1, width)
    counts.flags.writeable = False
    scalars = {name: table.column(name).to_pylist() for name in _SCALARS}
    sums_column = table.column("router_prob_sums")
    has_sums = sums_column.null_count < table.num_rows
    sums = sums_column.to_pylist() if has_sums else None
    good = _good_rows(table, counts, width)
    every_expert = tuple(range(width))
    active_counts = np.count_nonzero(counts, axis=1).tolist()
    events: list[RoutingEvent] = []
    for row in range(table.num_rows):
        values = {name: scalars[name][row] for name in _SCALARS}
        if good[row] and (sums is None or sums[row] is None):
            values["expert_token_counts"] = counts[row]
            values["active_experts"] = (
                every_expert if active_counts[row] == width else tuple(counts[row].nonzero()[0].tolist())
            )
            values["router_prob_sums"] = None
            events.append(RoutingEvent.trusted(**values))
            continue
        values["expert_token_counts"] = counts[row]
        values["router_prob_sums"] = None if sums is None else sums[row]
        try:
            events.append(RoutingEvent.model_validate(values))
        except PARSE_ERRORS as error:
            raise CorruptRecordError(path, first_row + row, describe_parse_error(error)) from None
    return events


def _good_rows(table: pa.Table, counts: np.ndarray, width: int) -> list[bool]:
    """Which rows hold what the model accepts as they are (False: the model decides)."""

    def column(name: str) -> np.ndarray:
        values: np.ndarray = table.column(name).to_numpy(zero_copy_only=False)
        return values

    def finite_or_null(name: str) -> np.ndarray:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)  # null -> nan
        usable: np.ndarray = np.isfinite(values) | table.column(name).is_null().to_numpy(zero_copy_only=False)
        return usable

    token_count = table.column("token_count")
    top_k = column("top_k")
    run_ids = table.column("run_id").to_pylist()
    good = (
        (counts.min(axis=1) >= 0)
        & (counts.sum(axis=1) == np.nan_to_num(token_count.to_numpy(zero_copy_only=False).astype(np.float64), nan=-1))
        & (column("n_experts") == width)
        & (top_k >= 1)
        & (top_k <= width)
        & (column("step") >= 0)
        & (column("layer_id") >= 0)
        & np.isfinite(column("timestamp"))
        & np.isin(column("mode"), MODES)
        & np.array([bool(run_id) for run_id in run_ids])
        & finite_or_null("loss")
        & finite_or_null("aux_loss")
    )
    result: list[bool] = good.tolist()
    return result


def records_from_table(table: str, rows: pa.Table, path: str, first_row: int = 1) -> Iterator[Any]:
    """The records of rows of a table other than events, each validated by its model.

    Raises :class:`~chronomoe.errors.CorruptRecordError` naming ``path`` and the row the model rejects.
    """
    layout = table_layout(table)
    model = TABLE_MODELS[table]
    for offset, row in enumerate(rows.to_pylist()):
        try:
            yield model.model_validate(layout.from_row(row))
        except PARSE_ERRORS as error:
            raise CorruptRecordError(path, first_row + offset, describe_parse_error(error)) from None
