"""Many routing events at once: the implementation of :meth:`RoutingEvent.from_lists`.

Why a batch: one validated ``RoutingEvent(...)`` costs more than a whole
event of the seed's plain dataclass (a pydantic call, Python validators and
a numpy conversion per event). A batch converts all its count rows into one
int64 matrix (``array.fromlist``, the cheapest exact conversion of Python
ints, which is half the batch's time), checks the rules of ``RoutingEvent``
on the whole batch (numpy reductions over the matrix, type tests of the
other values, once for a value shared by all events), and assembles each
event that passes with :meth:`Record.trusted`.

Exactness: an event takes that fast path only when each of its values has a
plain type (``int``, ``float``, ``str``; counts as a list of integers, or a
row of an integer array) and passes every rule. Every other event is built
by ``RoutingEvent(...)`` itself, in batch order, so a batch accepts and
rejects what building its events one at a time does, with the same errors (a
note added to the error gives the event's index in the batch). The one
difference is told in :func:`_list_matrix`."""

from __future__ import annotations

import array
import functools
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidInputError
from .modes import MODES

SCALARS = ("timestamp", "run_id", "step", "mode", "layer_id", "n_experts", "top_k", "loss", "aux_loss")
"""The fields given as one value for the whole batch or one value per event, in the order events are built."""

MAX_COUNT = 2**62
"""Rows of ``n`` counts take the fast path only when each count is at most ``MAX_COUNT // n``: their int64 sums
cannot wrap, and their float64 sums are surely below ``2**63``, from which ``RoutingEvent`` rejects counts (it
decides the rarer rows with larger counts)."""


def build_events(
    event_type: Any, columns: dict[str, Any], expert_token_counts: Any, router_prob_sums: Any = None
) -> list[Any]:
    """The events of one batch, of ``event_type`` (:class:`~chronomoe.events.RoutingEvent`, passed in by its
    ``from_lists``: this module must not import events.py, which imports it), see
    :meth:`RoutingEvent.from_lists` for the other arguments.

    ``columns`` maps each name of :data:`SCALARS` to one value for every event
    or a list, tuple or 1-D array of one value per event (``timestamp`` may be
    ``None``: the time now, the same for every event). Raises
    :class:`InvalidInputError` naming the argument when a per-event argument
    has another length than ``expert_token_counts``, and what
    ``RoutingEvent(...)`` raises for the first event it rejects.
    """
    if isinstance(expert_token_counts, (str, bytes, Mapping)) or not hasattr(expert_token_counts, "__len__"):
        raise InvalidInputError(
            "expert_token_counts", expert_token_counts, "must be a sequence of count rows, one per event"
        )
    size = len(expert_token_counts)
    if columns["timestamp"] is None:
        columns["timestamp"] = time.time()
    per_event = {name: _column(name, value, size) for name, value in columns.items() if _is_column(value)}
    if router_prob_sums is not None and not _is_column(router_prob_sums):
        raise InvalidInputError("router_prob_sums", router_prob_sums, "must be None or one row (or None) per event")
    sums = [None] * size if router_prob_sums is None else _column("router_prob_sums", router_prob_sums, size)
    if size == 0:
        return []
    counts = _count_matrix(expert_token_counts, size)
    ok = counts.ok
    plain = any(ok) and _plain_values(
        columns, per_event, None if router_prob_sums is None else sums, counts.matrix.shape[1]
    )
    if plain is not True:
        ok = [False] * size if plain is False else [a and b for a, b in zip(ok, plain, strict=True)]
    values = [per_event[name] if name in per_event else [columns[name]] * size for name in SCALARS]
    # One comprehension building each event from a dict literal: assembling the events is a fifth of a batch's
    # time; an explicit loop with tuple unpacking costs a fifth more, and keywords (RoutingEvent.trusted) 1 us
    # more per event than the dict.
    return [
        event_type.trusted_from_dict(
            {
                "timestamp": timestamp,
                "run_id": run_id,
                "step": step,
                "mode": mode,
                "layer_id": layer_id,
                "n_experts": n_experts,
                "top_k": top_k,
                "expert_token_counts": row,
                "active_experts": active_experts,
                "token_count": total,
                "router_prob_sums": None,
                "loss": loss,
                "aux_loss": aux_loss,
            }
        )
        if fast
        else _validated(event_type, index, values, expert_token_counts[index], sums[index])
        for index, (
            fast,
            row,
            active_experts,
            total,
            timestamp,
            run_id,
            step,
            mode,
            layer_id,
            n_experts,
            top_k,
            loss,
            aux_loss,
        ) in enumerate(zip(ok, counts.matrix, counts.active, counts.totals, *values, strict=True))
    ]


def _validated(event_type: Any, index: int, values: list[list[Any]], counts: Any, sums: Any) -> Any:
    """Event ``index`` built by ``RoutingEvent(...)``; its error, if any, noted with the index."""
    fields = {name: column[index] for name, column in zip(SCALARS, values, strict=True)}
    try:
        return event_type(**fields, expert_token_counts=counts, router_prob_sums=sums)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        if sys.version_info >= (3, 11):  # exception notes are new in 3.11; on 3.10 the error goes as it is
            error.add_note(f"in event {index} of the batch given to RoutingEvent.from_lists")
        raise


def _is_column(value: Any) -> bool:
    """Whether an argument holds one value per event (a list, tuple or array) rather than one for all."""
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0)


def _column(name: str, value: Any, size: int) -> list[Any]:
    """A column (see :func:`_is_column`) as a list; :class:`InvalidInputError` naming ``name`` when its length is
    not ``size``."""
    if len(value) != size:
        raise InvalidInputError(name, value, f"has {len(value)} values, one per event of the {size} count rows")
    return list(value)


def _plain_values(
    columns: dict[str, Any], per_event: dict[str, list[Any]], sums: list[Any] | None, width: int
) -> list[bool] | bool:
    """Whether each event's values other than its counts have plain types and pass every rule of
    ``RoutingEvent`` for counts of ``width`` experts: ``[events]`` bools, or one bool for the whole batch.
    ``per_event`` holds the columns given one value per event, ``sums`` the ``router_prob_sums`` rows (if
    given); a value given once for the batch is checked once."""
    checks = (
        ("timestamp", _is_finite_float),
        ("run_id", _is_run_id),
        ("step", _is_index),
        ("mode", _is_mode),
        ("layer_id", _is_index),
        ("n_experts", lambda value: type(value) is int and value == width),
        ("top_k", lambda value: type(value) is int and 1 <= value <= width),
        ("loss", _is_optional_float),
        ("aux_loss", _is_optional_float),
    )
    flags = [[row is None for row in sums]] if sums is not None else []
    for name, check in checks:
        if name in per_event:
            flags.append(list(map(check, per_event[name])))
        elif not check(columns[name]):
            return False
    return [all(event) for event in zip(*flags, strict=True)] if flags else True


class _Counts(NamedTuple):
    """A batch's count rows as one read-only int64 ``[events, width]`` matrix, with what the events derive.

    ``ok[i]``: row ``i`` passes the counts' rules and holds integers that
    ``RoutingEvent`` takes (only then are its matrix row, ``totals`` and
    ``active`` entries meaningful). ``totals``: each row's sum
    (``token_count``). ``active``: each row's non-zero columns
    (``active_experts``).
    """

    matrix: np.ndarray
    ok: list[bool]
    totals: list[int]
    active: list[tuple[int, ...]]


def _count_matrix(counts: Any, size: int) -> _Counts:
    """:class:`_Counts` of ``size`` rows: a 2-D integer array, a list of lists, or a list of 1-D integer
    arrays of one length; anything else (ragged, tensors, ...) has no fast row, and ``RoutingEvent`` judges
    each row."""
    matrix: np.ndarray | None = None
    refused: list[int] = []
    from_lists = False
    if isinstance(counts, np.ndarray):
        if counts.ndim == 2 and counts.dtype.kind == "i" and counts.shape[1]:
            matrix = counts.astype(np.int64)  # a copy: the caller may change its array later
    elif all(type(row) is list for row in counts):
        matrix = _list_matrix(counts, size, refused)
        from_lists = True
    elif all(isinstance(row, np.ndarray) and row.ndim == 1 and row.dtype.kind == "i" for row in counts) and (
        len({row.shape[0] for row in counts}) == 1 and counts[0].shape[0]
    ):
        matrix = np.stack(counts).astype(np.int64, copy=False)
    if matrix is None:
        return _Counts(np.zeros((size, 1), np.int64), [False] * size, [0] * size, [()] * size)
    matrix.flags.writeable = False
    width = matrix.shape[1]
    totals = matrix.sum(axis=1)  # exact on the rows found ok below
    # fromlist makes ints of bools, where RoutingEvent (np.asarray) rejects a row of bools. Such a row sums to
    # at most its length: list rows that do (a token per expert at most, rare) go to RoutingEvent.
    bool_bound = width if from_lists else -1
    # Whole-matrix tests first: a batch's numpy calls cost as much as its per-event work at one step's 58
    # events, and most batches have every expert active.
    if matrix.min() > 0 and matrix.max() <= MAX_COUNT // width and totals.min() > bool_bound and not refused:
        return _Counts(matrix, [True] * size, totals.tolist(), [_every_expert(width)] * size)
    minimum = matrix.min(axis=1)
    ok = (minimum >= 0) & (matrix.max(axis=1) <= MAX_COUNT // width) & (totals > bool_bound)
    ok[refused] = False
    return _Counts(matrix, ok.tolist(), totals.tolist(), _active_experts(matrix, minimum > 0))


def _list_matrix(rows: list[list[Any]], size: int, refused: list[int]) -> np.ndarray | None:
    """The matrix of lists of one length (``None`` for lists of several lengths); a row that ``array.fromlist``
    refuses (not all integers, or beyond int64) is zeros, and its index appended to ``refused``.

    ``array.fromlist`` converts a list of ints in two thirds of ``np.array``'s
    time, and refuses what ``np.asarray`` would make a float, string or object
    array of, except objects with ``__index__`` that numpy does not know as
    integers (such as ``gmpy2.mpz``): it reads them as the integers they
    stand for, where ``RoutingEvent`` rejects the object array. Telling them
    apart (``sum`` of each row, to see that it is an ``int``) would cost a
    sixth of the batch's time. Bools are told apart in :func:`_count_matrix`.
    """
    width = len(rows[0])
    if not width or any(len(row) != width for row in rows):
        return None
    buffer = array.array("q")
    try:
        for row in rows:
            buffer.fromlist(row)
    except (TypeError, OverflowError):
        buffer = array.array("q")
        for index, row in enumerate(rows):
            try:
                buffer.fromlist(row)  # all of the row or nothing
            except (TypeError, OverflowError):
                buffer.fromlist([0] * width)
                refused.append(index)
    return np.frombuffer(buffer, np.int64).reshape(size, width)


def _active_experts(matrix: np.ndarray, dense: np.ndarray) -> list[tuple[int, ...]]:
    """Each row's non-zero columns, as ``RoutingEvent`` derives ``active_experts``: the ``dense`` rows (no
    zero) share one tuple, the others are cut from one ``np.nonzero`` of their rows."""
    active = [_every_expert(matrix.shape[1])] * matrix.shape[0]
    partial = np.flatnonzero(~dense)
    rows, columns = np.nonzero(matrix[partial])
    ends = np.cumsum(np.bincount(rows, minlength=partial.size)).tolist()
    columns_list = columns.tolist()
    start = 0
    for row, end in zip(partial.tolist(), ends, strict=True):
        active[row] = tuple(columns_list[start:end])
        start = end
    return active


@functools.cache
def _every_expert(width: int) -> tuple[int, ...]:
    """``(0, ..., width - 1)``, made once per width: the ``active_experts`` of every dense row."""
    return tuple(range(width))


def _is_index(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_run_id(value: Any) -> bool:
    return type(value) is str and value != ""


def _is_mode(value: Any) -> bool:
    return type(value) is str and value in MODES


def _is_finite_float(value: Any) -> bool:
    return type(value) is float and math.isfinite(value)


def _is_optional_float(value: Any) -> bool:
    return value is None or _is_finite_float(value)
