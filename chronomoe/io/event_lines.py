"""Events' JSONL lines read in batches, their counts parsed by numpy from the lines' bytes: :func:`event_batches`.

At 256 experts most of an event's line is its two integer arrays,
``expert_token_counts`` and ``active_experts``; parsing them as JSON builds
a Python int per value, which costs more than all the rest of reading. So
for a line in the writer's canonical form
(:func:`~chronomoe.io.serialize.event_line`):

* the bytes around both arrays are cut into pieces and matched whole by
  the byte patterns of :mod:`chronomoe.io.event_line_form`, which pin every
  key and the syntax of every scalar; the scalars are read from the
  patterns' groups by ``int()``, ``float()`` and UTF-8 decoding (no JSON
  parser) and checked (``1 <= top_k <= n_experts``, finite floats), each
  distinct piece once per batch (a step's lines share most of theirs);
* the bytes inside both arrays are those up to the next ``]``; the counts
  of a batch's lines of one width are joined and parsed by one
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
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..events import RoutingEvent
from . import event_line_form
from .event_line_form import cut_line
from .lines import MAX_LINE_BYTES, iter_lines
from .threads import available_cpus

_COMMA, _ZERO = 0x2C, 0x30

_EVENT_FIELDS = tuple(RoutingEvent.model_fields)

BATCH_LINES = 256
"""Lines read together by default: at 256 experts a batch's lines, joined counts and parsed counts (about 1.5 MB)
stay in cache; 4096 lines read about a third slower (measured on a loaded 2-core machine)."""

SAFE_TOTAL = 2**62
"""Bound on the fast path's token counts: ``n_experts`` counts of at most ``SAFE_TOTAL // n_experts`` sum
without wrapping int64, and their float64 sum is surely below RoutingEvent's ``INT64_LIMIT``; larger counts
are left to full validation."""


@dataclass
class Rows:
    """A batch's accepted lines of one width ``W``: their batch indices ``[R]``, their counts ``[R, W]`` (read-only
    int64) and, in ``columns[name][r]``, the value of every other field (``active_experts`` a tuple,
    ``router_prob_sums`` ``None``) as ``RoutingEvent`` holds it."""

    indices: list[int]
    columns: dict[str, list[Any]]
    counts: np.ndarray

    def event_fields(self, row: int) -> dict[str, Any]:
        """The fields of the event of line ``row``, in the model's order (its counts a read-only view)."""
        return {
            name: self.counts[row] if name == "expert_token_counts" else self.columns[name][row]
            for name in _EVENT_FIELDS
        }


@dataclass
class EventBatch:
    """Consecutive lines of an events file (``line_numbers[i]``, ``lines[i]`` by batch index ``i``): those on the
    fast path in :attr:`rows` (by width), the batch indices of all others, in order, in :attr:`unaccepted`."""

    line_numbers: list[int]
    lines: list[bytes]
    rows: list[Rows] = field(default_factory=list)
    unaccepted: list[int] = field(default_factory=list)


def event_batches(
    path: str | os.PathLike[str],
    batch_lines: int = BATCH_LINES,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    background_parse: bool | None = None,
) -> Iterator[EventBatch]:
    """The lines of an events file (read by :func:`~chronomoe.io.lines.iter_lines`: torn last line skipped with a
    warning, overlong line refused) in batches of ``batch_lines``, each read as :func:`read_batch` reads it.

    Lines are read one batch ahead: a batch is yielded once the next one has been read and cut. With
    ``background_parse`` (default: when this process may run on two CPUs or more) a batch's counts are parsed
    by a worker thread meanwhile, while this one reads and cuts the next batch's lines and the caller uses the
    previous batch: the worker makes one ``np.fromstring`` call per width, which releases the GIL (the checks
    stay on this thread: a worker making several numpy calls waits for the GIL at each). The batches, and an
    error reading the file (raised after every batch read before it has been yielded), are the same either way;
    the worker lives as long as the iteration.
    """
    if background_parse is None:
        background_parse = available_cpus() > 1
    lines = iter_lines(Path(path), max_line_bytes)
    with ThreadPoolExecutor(1, thread_name_prefix="chronomoe-parse") if background_parse else nullcontext() as pool:
        ahead: tuple[EventBatch, list[_WidthGroup], Future[None] | None] | None = None  # read, its parse started
        while True:
            try:
                numbered = list(islice(lines, batch_lines))
            except Exception:
                if ahead is not None:
                    yield _checked(*ahead)  # every batch read before the error, as without the worker
                raise
            if numbered:
                line_numbers, batch_lines_read = zip(*numbered, strict=True)
                with _gc_paused():
                    batch, groups = _group_lines(list(line_numbers), list(batch_lines_read))
                parsing = None if pool is None else pool.submit(_parse_groups, groups)
            if ahead is not None:
                yield _checked(*ahead)
            if not numbered:
                return
            ahead = batch, groups, parsing


def read_batch(line_numbers: list[int], lines: list[bytes]) -> EventBatch:
    """Parse the lines on the fast path (module docstring); the others are listed in ``unaccepted``."""
    batch, groups = _group_lines(line_numbers, lines)
    return _checked(batch, groups, None)


def _group_lines(line_numbers: list[int], lines: list[bytes]) -> tuple[EventBatch, list[_WidthGroup]]:
    """A batch's lines cut into pieces and grouped by width (those whose pieces do not read are unaccepted)."""
    batch = EventBatch(line_numbers, lines)
    groups: dict[int, _WidthGroup] = {}  # by n_experts
    # Each distinct piece parsed once: a step's lines share their opening and tail, a layer's its layer part.
    openings, layer_parts = _Parsed(event_line_form.opening), _Parsed(event_line_form.layer_part)
    tails = _Parsed(event_line_form.tail)
    for index, line in enumerate(lines):
        pieces = cut_line(line)
        if pieces is not None:
            opening, layer_part, counts, active, tail = pieces
            opened, layer, ended = openings[opening], layer_parts[layer_part], tails[tail]
            if opened is not None and layer is not None and ended is not None:
                group = groups.get(layer[2])
                if group is None:
                    group = groups[layer[2]] = _WidthGroup(layer[2])
                group.lines.append((index, opened, layer, ended, counts, active))
                continue
        batch.unaccepted.append(index)
    for group in groups.values():
        group.prepare()
    return batch, list(groups.values())


def _parse_groups(groups: list[_WidthGroup]) -> None:
    for group in groups:
        group.parse()


def _checked(batch: EventBatch, groups: list[_WidthGroup], parsing: Future[None] | None) -> EventBatch:
    """``batch`` with the rows of its groups that pass every check, once their counts are parsed (by
    ``parsing``, or here when it is ``None``)."""
    if parsing is None:
        _parse_groups(groups)
    else:
        parsing.result()
    with _gc_paused():
        for group in groups:
            rows = group.check(batch.unaccepted)
            if rows is not None:
                batch.rows.append(rows)
        batch.unaccepted.sort()
    return batch


class _Parsed(dict[bytes, Any]):
    """A parser's result for each piece of bytes, each computed once, when first looked up."""

    def __init__(self, parse: Callable[[bytes], Any]) -> None:
        super().__init__()
        self.parse = parse

    def __missing__(self, piece: bytes) -> Any:
        value = self[piece] = self.parse(piece)
        return value


_Line = tuple[
    int, tuple[float, str, int], tuple[str, int, int, int], tuple[int, float | None, float | None], bytes, bytes
]
"""A line whose pieces read: its batch index, its opening, layer part and tail as read, its counts' and active experts'
bytes."""


class _WidthGroup:
    """Lines of one ``n_experts`` whose pieces read (:mod:`chronomoe.io.event_line_form`): :meth:`prepare`, then
    :meth:`parse` (which a worker thread may run), then :meth:`check`."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.lines: list[_Line] = []
        self.rejected: list[int] = []  # batch indices of lines whose counts are not `width` numbers
        self.joined = b""  # the lines' counts joined for parsing, each followed by ",-1"
        self.values = np.zeros(0, np.int64)  # `joined` parsed

    def prepare(self) -> None:
        """Leave the lines whose counts are not digits and single commas to full validation (in
        :attr:`rejected`); join the others' counts for :meth:`parse`."""
        count_bytes = [line[4] for line in self.lines]
        if not _numbers_only(b",".join(count_bytes)):  # rare: leave the lines at fault to full validation
            count_bytes = self._keep([_numbers_only(counts) for counts in count_bytes])
        self._join(count_bytes)

    def _join(self, count_bytes: list[bytes]) -> None:
        """:attr:`joined`: the counts, each line's followed by a -1 (no count reads negative: digits only), which
        checks that each line has ``width`` of them."""
        self.joined = b",-1,".join(count_bytes) + b",-1" if count_bytes else b""

    def parse(self) -> None:
        """Parse :attr:`joined` into :attr:`values`: one ``np.fromstring`` call, which releases the GIL while it
        parses and touches nothing but this group, so a worker thread may run it."""
        if self.joined:
            self.values = np.fromstring(self.joined, np.int64, sep=",")

    def check(self, unaccepted: list[int]) -> Rows | None:
        """After :meth:`parse`: the rows whose counts and ``active_experts`` pass the checks (``None`` if none);
        append the batch indices of the others to ``unaccepted``."""
        width, values = self.width, self.values
        if values.size != len(self.lines) * (width + 1) or (values[width :: width + 1] != -1).any():  # rare
            self._join(self._keep([line[4].count(b",") + 1 == width for line in self.lines]))
            self.parse()
            values = self.values
        unaccepted += self.rejected
        if not self.lines:  # nothing built for a width whose lines all failed (it may be 10**17)
            return None
        with_sentinel = values.reshape(-1, width + 1)
        counts = with_sentinel[:, :width]
        totals = with_sentinel.sum(axis=1) + 1  # exact where the bound below holds
        token_counts = np.array([line[3][0] for line in self.lines], np.int64)  # below 10**18 (the pattern)
        if values.max(initial=0) <= SAFE_TOTAL // width:  # the usual case: one test for the whole group
            passed = totals == token_counts
        else:
            passed = (counts.max(axis=1) <= SAFE_TOTAL // width) & (totals == token_counts)
        every_active = np.count_nonzero(values) == values.size  # no zero count (the sentinels are not zero)
        names, every_expert, every_expert_tuple = _expert_names(width)
        kept: list[_Line] = []
        kept_rows: list[int] = []
        active_experts: list[tuple[int, ...]] = []
        for row in np.flatnonzero(passed).tolist():
            line = self.lines[row]
            if every_active or counts[row].all():
                expected, active = every_expert, every_expert_tuple
            else:
                nonzero = counts[row].nonzero()[0].tolist()
                expected, active = b",".join([names[expert] for expert in nonzero]), tuple(nonzero)
            if line[5] == expected:
                kept.append(line)
                kept_rows.append(row)
                active_experts.append(active)
        if len(kept) < len(self.lines):
            kept_indices = {line[0] for line in kept}
            unaccepted.extend(line[0] for line in self.lines if line[0] not in kept_indices)
            counts = counts[kept_rows]
        if not kept:
            return None
        counts.flags.writeable = False
        _, openings, layer_parts, tails, _, _ = zip(*kept, strict=True)
        columns = {
            "timestamp": [opening[0] for opening in openings],
            "run_id": [opening[1] for opening in openings],
            "step": [opening[2] for opening in openings],
            "mode": [layer_part[0] for layer_part in layer_parts],
            "layer_id": [layer_part[1] for layer_part in layer_parts],
            "n_experts": [width] * len(kept),
            "top_k": [layer_part[3] for layer_part in layer_parts],
            "active_experts": active_experts,
            "token_count": [tail[0] for tail in tails],
            "router_prob_sums": [None] * len(kept),
            "loss": [tail[1] for tail in tails],
            "aux_loss": [tail[2] for tail in tails],
        }
        return Rows([line[0] for line in kept], columns, counts)

    def _keep(self, keep: list[bool]) -> list[bytes]:
        """Keep the lines marked in ``keep`` (the others' batch indices to :attr:`rejected`); return the counts'
        bytes of those kept."""
        if not all(keep):
            self.rejected += [line[0] for line, kept in zip(self.lines, keep, strict=True) if not kept]
            self.lines = [line for line, kept in zip(self.lines, keep, strict=True) if kept]
        return [line[4] for line in self.lines]


@lru_cache(maxsize=8)
def _expert_names(width: int) -> tuple[list[bytes], bytes, tuple[int, ...]]:
    """Each expert index of a width as the writer writes it, all of them joined by commas (the ``active_experts``
    of a line whose experts are all active), and as a tuple."""
    names = [b"%d" % expert for expert in range(width)]
    return names, b",".join(names), tuple(range(width))


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
