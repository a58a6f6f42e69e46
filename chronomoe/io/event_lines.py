"""Events' JSONL lines read in batches, their counts parsed by numpy from the lines' bytes: :func:`event_batches`.

At 256 experts most of an event's line is its two integer arrays,
``expert_token_counts`` and ``active_experts``; parsing them as JSON builds
a Python int per value, which costs more than all the rest of reading. So
for a line in the writer's canonical form
(:func:`~chronomoe.io.serialize.event_line`):

* the bytes inside both arrays are cut out of the line, and the rest (about
  250 bytes) is parsed by orjson and checked field by field
  (:func:`_accepts_fields`);
* the counts of a batch's lines of one width are joined and parsed by one
  ``np.fromstring`` call, after byte-level checks that make the result the
  JSON's integers exactly (digits and commas only, no empty number, no
  leading zero; a number beyond int64 reads as ``2**63 - 1``, which the
  bound below refuses), then checked with vectorised numpy tests:
  ``n_experts`` counts each, at most ``2**62 // n_experts`` (so their sum
  cannot wrap), summing to ``token_count``;
* the ``active_experts`` bytes must equal those the writer would write for
  the parsed counts (the indices of the non-zero counts).

Any line that fails a check is left to the caller's full validation
(``RoutingEvent.model_validate_json``), which accepts or rejects it: the fast
path only decides to *skip* validation, never to reject, and accepts a line
only when the model would accept it with the same values (tests/test_fuzz.py
holds it to that).
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..events import MODES, RoutingEvent
from .lines import MAX_LINE_BYTES, iter_lines

COUNTS_KEY = b'"expert_token_counts":['
ACTIVE_KEY = b'"active_experts":['
_COUNTS_NAME = COUNTS_KEY[:-2]
_ACTIVE_NAME = ACTIVE_KEY[:-2]
_COMMA, _ZERO, _BRACE = 0x2C, 0x30, 0x7B

_EVENT_KEYS = frozenset(RoutingEvent.model_fields)

BATCH_LINES = 256
"""Lines read together by default: at 256 experts a batch's lines, joined counts and parsed counts (about 1.5 MB)
stay in cache; 4096 lines read about a third slower (measured on a loaded 2-core machine)."""

SAFE_TOTAL = 2**62
"""Bound on the fast path's token counts: ``n_experts`` counts of at most ``SAFE_TOTAL // n_experts`` sum
without wrapping int64, and their float64 sum is surely below RoutingEvent's ``INT64_LIMIT``; larger counts
are left to full validation."""


@dataclass
class Rows:
    """A batch's accepted lines of one width ``W``: their batch indices ``[R]``, their fields (``fields[r]`` the
    line's fields but its counts, ``active_experts`` already a tuple) and their counts ``[R, W]`` (read-only int64)."""

    indices: list[int]
    fields: list[dict[str, Any]]
    counts: np.ndarray


@dataclass
class EventBatch:
    """Consecutive lines of an events file (``line_numbers[i]``, ``lines[i]`` by batch index ``i``): those on the
    fast path in :attr:`rows` (by width), the batch indices of all others, in order, in :attr:`unaccepted`."""

    line_numbers: list[int]
    lines: list[bytes]
    rows: list[Rows] = field(default_factory=list)
    unaccepted: list[int] = field(default_factory=list)


def event_batches(
    path: str | os.PathLike[str], batch_lines: int = BATCH_LINES, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[EventBatch]:
    """The lines of an events file (read by :func:`~chronomoe.io.lines.iter_lines`: torn last line skipped with a
    warning, overlong line refused) in batches of ``batch_lines``, each read by :func:`read_batch`."""
    lines = iter_lines(Path(path), max_line_bytes)
    while numbered := list(islice(lines, batch_lines)):
        with _gc_paused():
            batch = read_batch([number for number, _ in numbered], [line for _, line in numbered])
        yield batch


def read_batch(line_numbers: list[int], lines: list[bytes]) -> EventBatch:
    """Parse the lines on the fast path (module docstring); the others are listed in ``unaccepted``."""
    batch = EventBatch(line_numbers, lines)
    candidates: dict[int, _Candidates] = {}  # by width
    for index, line in enumerate(lines):
        cut = _cut(line)
        if cut is not None:
            rest, counts, active = cut
            try:
                fields = orjson.loads(rest)
            except orjson.JSONDecodeError:
                fields = None  # full validation reports it
            if _accepts_fields(fields, counts):
                width = fields["n_experts"]
                group = candidates.get(width)
                if group is None:
                    group = candidates[width] = _Candidates(width)
                group.add(index, fields, counts, active)
                continue
        batch.unaccepted.append(index)
    for group in candidates.values():
        rows = group.check(batch.unaccepted)
        if rows.indices:
            batch.rows.append(rows)
    batch.unaccepted.sort()
    return batch


def _cut(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(rest, counts, active)``: the bytes inside the line's ``expert_token_counts`` and ``active_experts``
    arrays, and the line with both arrays emptied; ``None`` unless each key is written once, plainly, counts first.

    With no backslash in the line no string holds an escaped quote, so each ``"expert_token_counts"`` in the
    bytes is a whole JSON string, and when there is one it is the key whose array is cut: no duplicate key,
    written another way, can hold the value the model reads.
    """
    start = line.find(COUNTS_KEY)
    if start < 0:
        return None
    start += len(COUNTS_KEY)
    end = line.find(b"]", start)
    active_start = line.find(ACTIVE_KEY, end)
    if end < 0 or active_start < 0:
        return None
    active_start += len(ACTIVE_KEY)
    active_end = line.find(b"]", active_start)
    if active_end < 0:
        return None
    rest = line[:start] + line[end:active_start] + line[active_end:]
    # The cut bytes must be digits and commas (checked later) for the line to be accepted: the checks below, on the
    # rest, are checks of the line.
    if b"\\" in rest or rest.count(_COUNTS_NAME) != 1 or rest.count(_ACTIVE_NAME) != 1 or rest[0] != _BRACE:
        return None
    return rest, line[start:end], line[active_start:active_end]


def _accepts_fields(fields: Any, counts: bytes) -> bool:
    """Whether the rest of a line has the exact keys and scalar types the writer produces, and ``counts`` (the
    bytes of its counts) ``n_experts`` numbers made of digits.

    Each check is needed: tests/test_fuzz.py names, for each, a line the loader gets wrong without it. Checks that
    others imply are left out: ``n_experts >= 1`` (by ``1 <= top_k <= n_experts``) and the type of ``mode`` (no
    other type equals a mode). The arrays cut out read ``[]``: :func:`_cut` makes sure they are the keys' values.
    """
    if type(fields) is not dict or fields.keys() != _EVENT_KEYS:
        return False
    step, layer_id, n_experts, top_k = fields["step"], fields["layer_id"], fields["n_experts"], fields["top_k"]
    return (
        type(step) is int
        and step >= 0
        and type(layer_id) is int
        and layer_id >= 0
        and type(n_experts) is int
        and type(top_k) is int
        and 1 <= top_k <= n_experts
        and type(fields["run_id"]) is str
        and fields["run_id"] != ""
        and fields["mode"] in MODES
        and type(fields["timestamp"]) is float
        and math.isfinite(fields["timestamp"])  # orjson reads no non-finite number, but another parser may
        and type(fields["token_count"]) is int
        and fields["router_prob_sums"] is None
        and all(
            value is None or (type(value) is float and math.isfinite(value))
            for value in (fields["loss"], fields["aux_loss"])
        )
        and len(counts) >= 2 * n_experts - 1  # room for n_experts numbers (their count is checked by numpy)
    )


class _Candidates:
    """Lines of one width whose fields passed :func:`_accepts_fields`, with the bytes of their arrays."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.indices: list[int] = []
        self.fields: list[dict[str, Any]] = []
        self.counts: list[bytes] = []
        self.active: list[bytes] = []

    def add(self, index: int, fields: dict[str, Any], counts: bytes, active: bytes) -> None:
        self.indices.append(index)
        self.fields.append(fields)
        self.counts.append(counts)
        self.active.append(active)

    def check(self, unaccepted: list[int]) -> Rows:
        """Parse the counts and return the rows whose counts, ``token_count`` and ``active_experts`` pass the
        checks, their fields completed with ``active_experts``; append the indices of the others to ``unaccepted``."""
        width = self.width
        if not _numbers_only(b",".join(self.counts)):  # rare: leave the lines at fault to full validation
            self._keep([_numbers_only(counts) for counts in self.counts], unaccepted)
        # A -1 after each line's counts (no count reads negative: digits only) checks that each has `width` of them.
        values = np.fromstring(b",-1,".join(self.counts) + b",-1", np.int64, sep=",") if self.counts else np.zeros(0)
        if values.size != len(self.counts) * (width + 1) or (values[width :: width + 1] != -1).any():  # rare
            self._keep([counts.count(b",") + 1 == width for counts in self.counts], unaccepted)
            return self.check(unaccepted)
        counts = values.reshape(-1, width + 1)[:, :width]
        counts.flags.writeable = False
        valid = (counts.max(axis=1, initial=0) <= SAFE_TOTAL // width).tolist()
        totals = counts.sum(axis=1).tolist()  # exact where valid
        active_counts = np.count_nonzero(counts, axis=1).tolist()
        names = [b"%d" % expert for expert in range(width)]
        every_expert, every_expert_tuple = b",".join(names), tuple(range(width))
        kept: list[int] = []
        rows = Rows([], [], counts)
        rows_of = zip(self.indices, self.fields, self.active, valid, totals, active_counts, strict=True)
        for row, (index, fields, active, is_valid, total, active_count) in enumerate(rows_of):
            if is_valid and fields["token_count"] == total:
                if active_count == width:
                    expected, active_experts = every_expert, every_expert_tuple
                else:
                    nonzero = counts[row].nonzero()[0].tolist()
                    expected, active_experts = b",".join([names[expert] for expert in nonzero]), tuple(nonzero)
                if active == expected:
                    fields["active_experts"] = active_experts
                    rows.indices.append(index)
                    rows.fields.append(fields)
                    kept.append(row)
                    continue
            unaccepted.append(index)
        if len(kept) < len(counts):
            rows.counts = counts[kept]
            rows.counts.flags.writeable = False
        return rows

    def _keep(self, keep: list[bool], unaccepted: list[int]) -> None:
        """Keep the lines marked in ``keep``; append the indices of the others to ``unaccepted``."""
        unaccepted.extend(index for index, kept in zip(self.indices, keep, strict=True) if not kept)
        self.indices = [index for index, kept in zip(self.indices, keep, strict=True) if kept]
        self.fields = [fields for fields, kept in zip(self.fields, keep, strict=True) if kept]
        self.counts = [counts for counts, kept in zip(self.counts, keep, strict=True) if kept]
        self.active = [active for active, kept in zip(self.active, keep, strict=True) if kept]


def _numbers_only(counts: bytes) -> bool:
    """Whether ``counts`` is numbers made of digits, separated by single commas, none with a leading zero: what
    ``np.fromstring(counts, np.int64, sep=",")`` reads as JSON does, but that a number beyond int64 reads as
    ``2**63 - 1`` (which :data:`SAFE_TOTAL` refuses)."""
    if not counts:
        return False
    data = np.frombuffer(counts, np.uint8)
    comma = data == _COMMA
    digit = (data - _ZERO) < 10  # uint8 arithmetic: bytes below "0" wrap to large values
    if not (comma | digit).all() or comma[0] or comma[-1] or (comma[1:] & comma[:-1]).any():
        return False
    starts = np.empty_like(comma)  # the first digit of each number
    starts[0], starts[1:] = True, comma[:-1]
    return not (starts[:-1] & (data[:-1] == _ZERO) & digit[1:]).any()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing allocates thousands of acyclic containers per batch, and the
    collections they trigger cost about a tenth of the load time (measured at 256 experts)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
