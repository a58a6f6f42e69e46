"""The fast events loader: :func:`iter_events`, which accepts and rejects exactly what ``RoutingEvent`` does.

A line in the writer's canonical form (:func:`~chronomoe.io.serialize.event_line`:
the exact keys, integer scalars, ``null`` router_prob_sums, integer counts)
skips pydantic: its counts are copied into an int64 matrix, one matrix per
width, and checked with vectorised numpy tests (non-negative, a sum that
cannot wrap, equal to ``token_count``, non-zero columns equal to
``active_experts``); any line that fails a check, or is not canonical, is
validated in full from its bytes by ``RoutingEvent.model_validate_json``,
which accepts or rejects it. So the fast path only decides to *skip*
validation, never to reject: the tests of the fast events loader in
``tests/test_fuzz.py`` hold it to that.
"""

from __future__ import annotations

import gc
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import CorruptRecordError
from ..events import MODES, RoutingEvent
from .lines import MAX_LINE_BYTES, iter_lines
from .parse_errors import PARSE_ERRORS, describe_parse_error


def iter_events(
    path: str | os.PathLike[str], batch_lines: int = 4096, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[RoutingEvent]:
    """Stream validated events from a JSONL file, ``batch_lines`` lines at a time.

    Same contract as :func:`~chronomoe.io.reader.iter_records` with ``RoutingEvent`` validation,
    about twice as fast at 256 experts: each line in the writer's canonical
    form has its counts copied into an int64 matrix as it is parsed, and is
    checked with vectorised numpy tests; any other line is validated in full
    from its bytes (``RoutingEvent.model_validate_json``), so the loader
    accepts and rejects exactly what ``RoutingEvent`` does.
    """
    path = Path(path)
    lines = iter_lines(path, max_line_bytes)
    while True:
        with _gc_paused():
            batch = _EventBatch(path)
            for line_number, line in lines:
                batch.add(line_number, line)
                if len(batch) == batch_lines:
                    break
            events = batch.events()
        if not events:
            return
        yield from events


_EVENT_FIELDS = tuple(RoutingEvent.model_fields)
_EVENT_KEYS = frozenset(_EVENT_FIELDS)


def _is_canonical_event(record: Any) -> bool:
    """Whether a parsed line has the exact keys and scalar types the writer produces, and a list of
    ``n_experts`` counts (which :class:`_CountRows` checks, with ``token_count`` and ``active_experts``).

    Each check here and in :class:`_CountRows` is needed: tests/test_fuzz.py names, for each, a line the
    loader gets wrong without it. Checks that others imply are left out: ``n_experts >= 1`` (by
    ``1 <= top_k <= n_experts``), the type of ``mode`` (no other type equals a mode) and the type of
    ``active_experts`` (no other type equals the list :meth:`_CountRows.build` compares it with).
    """
    if type(record) is not dict or record.keys() != _EVENT_KEYS:
        return False
    step, layer_id, n_experts, top_k = record["step"], record["layer_id"], record["n_experts"], record["top_k"]
    counts = record["expert_token_counts"]
    return (
        type(step) is int
        and step >= 0
        and type(layer_id) is int
        and layer_id >= 0
        and type(n_experts) is int
        and type(top_k) is int
        and 1 <= top_k <= n_experts
        and type(record["run_id"]) is str
        and record["run_id"] != ""
        and record["mode"] in MODES
        and type(record["timestamp"]) is float
        and math.isfinite(record["timestamp"])  # orjson reads no non-finite number, but another parser may
        and type(record["token_count"]) is int
        and type(counts) is list
        and len(counts) == n_experts  # so the count matrix is as wide as the line is long, not as a number on it
        and record["router_prob_sums"] is None
        and all(
            value is None or (type(value) is float and math.isfinite(value))
            for value in (record["loss"], record["aux_loss"])
        )
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing allocates thousands of acyclic
    containers per batch, and the collections they trigger cost about a tenth
    of the load time (measured at 256 experts)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_SAFE_TOTAL = 2**62
"""Bound on the fast path's token counts: ``n_experts`` counts of at most ``_SAFE_TOTAL // n_experts``
sum without wrapping int64, and their float64 sum is surely below RoutingEvent's ``INT64_LIMIT``;
larger counts are left to full validation."""

_ROWS_BYTES = 2**18
"""Size of one :class:`_CountRows` matrix: large enough for cheap vectorised checks, small enough that
a batch allocates little beyond its events."""


class _CountRows:
    """Counts of canonical lines of one width, each copied into a row of an int64 matrix as soon as the line
    is parsed, with the batch indices, parsed records and bytes of those lines.

    Copying right away frees each line's list of Python ints before the next line is parsed, so that
    parsing reuses warm memory instead of faulting in fresh pages (keeping the lists to the end of the
    batch made loading about 20% slower at 256 experts). The lines' bytes are kept until :meth:`build`,
    for the full validation of those it does not accept: at most one matrix of lines per width.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.matrix = np.empty((max(1, _ROWS_BYTES // (8 * width)), width), np.int64)
        self.indices: list[int] = []
        self.records: list[dict[str, Any]] = []
        self.lines: list[bytes] = []
        self._pack_row = struct.Struct(f"{width}q").pack_into

    @property
    def full(self) -> bool:
        """Whether every row is taken."""
        return len(self.indices) == len(self.matrix)

    def take(self, index: int, record: dict[str, Any], line: bytes) -> bool:
        """Copy ``record``'s counts (a list of ``width`` items) into the next row if ``np.asarray`` would
        make them an int64 array of the same values, and return True; otherwise return False (full
        validation decides).

        A taken record's counts are ``None`` until :meth:`build` puts its row there.
        """
        counts = record["expert_token_counts"]
        if int not in map(type, counts):
            return False  # no integer: floats, strings, ... or booleans only (a bool array, which the model rejects)
        try:
            # Refuses floats, strings, null, containers and integers beyond int64; booleans among integers
            # count 0 or 1, as in np.asarray.
            self._pack_row(self.matrix.data, len(self.indices) * self.matrix.strides[0], *counts)
        except struct.error:
            return False
        record["expert_token_counts"] = None  # frees the list now
        self.indices.append(index)
        self.records.append(record)
        self.lines.append(line)
        return True

    def build(self, events: list[RoutingEvent | None], unaccepted: dict[int, bytes]) -> None:
        """Make an event of each taken record whose counts are non-negative and sum to ``token_count``, and
        whose ``active_experts`` are the non-zero columns, into ``events``; put the line of each other record
        into ``unaccepted`` (full validation decides). Both are keyed by batch index."""
        # Events' counts are views of this matrix: read-only, and trimmed to the rows taken so that events
        # hold no spare rows.
        counts = self.matrix if self.full else self.matrix[: len(self.indices)].copy()
        counts.flags.writeable = False
        valid = ((counts.min(axis=1) >= 0) & (counts.max(axis=1) <= _SAFE_TOTAL // self.width)).tolist()
        totals = counts.sum(axis=1).tolist()  # exact where valid
        active_counts = np.count_nonzero(counts, axis=1).tolist()
        every_expert = list(range(self.width))
        every_expert_tuple = tuple(every_expert)  # shared by all events whose experts are all active
        taken = zip(self.indices, self.records, self.lines, counts, valid, totals, active_counts, strict=True)
        for index, record, line, row, is_valid, total, active_count in taken:
            if is_valid and record["token_count"] == total:
                if active_count == self.width:
                    expected, active = every_expert, every_expert_tuple
                else:
                    expected = row.nonzero()[0].tolist()
                    active = tuple(expected)
                if record["active_experts"] == expected:
                    record["expert_token_counts"], record["active_experts"] = row, active
                    events[index] = RoutingEvent.trusted(**record)
                    continue
            unaccepted[index] = line


class _EventBatch:
    """Lines of an events file parsed one by one (:meth:`add`), then made events together (:meth:`events`).

    Canonical lines become events one :class:`_CountRows` at a time, as soon as it is full. Every line the
    fast path does not accept is validated in full at the end from its bytes, by ``model_validate_json``:
    the model's own parser, not orjson's reading of the line (orjson reads an integer beyond 64 bits as a
    float, where the model reads an integer).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events_made: list[RoutingEvent | None] = []  # by batch index; None until made
        self.line_numbers: list[int] = []  # by batch index
        self.unaccepted: dict[int, bytes] = {}  # by batch index: the lines left to full validation
        self.filling: dict[int, _CountRows] = {}  # by width

    def __len__(self) -> int:
        """Lines added."""
        return len(self.line_numbers)

    def add(self, line_number: int, line: bytes) -> None:
        """Parse a line (CorruptRecordError if it is not JSON); a canonical one goes to its width's rows."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise CorruptRecordError(str(self.path), line_number, describe_parse_error(error)) from None
        index = len(self.line_numbers)
        self.events_made.append(None)
        self.line_numbers.append(line_number)
        if _is_canonical_event(record):
            width = record["n_experts"]
            rows = self.filling.get(width)
            if rows is None:
                rows = self.filling[width] = _CountRows(width)
            if rows.take(index, record, line):
                if rows.full:
                    rows.build(self.events_made, self.unaccepted)
                    del self.filling[width]
                return
        self.unaccepted[index] = line

    def events(self) -> list[RoutingEvent]:
        """The events of the lines added, in order; raises CorruptRecordError naming the first line that
        full validation rejects."""
        for rows in self.filling.values():
            rows.build(self.events_made, self.unaccepted)
        events: list[RoutingEvent] = []
        for index, event in enumerate(self.events_made):
            if event is None:
                try:
                    event = RoutingEvent.model_validate_json(self.unaccepted[index])
                except PARSE_ERRORS as error:
                    line_number = self.line_numbers[index]
                    raise CorruptRecordError(str(self.path), line_number, describe_parse_error(error)) from None
            events.append(event)
        return events
