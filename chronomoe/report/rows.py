"""A snapshot as the report reads it: :class:`SnapshotRow`, numpy arrays of the fields the report draws.

:func:`parse_snapshot_line` turns one ``snapshots.jsonl`` line into a row
about five times faster than validating the whole :class:`~chronomoe.snapshots.SystemSnapshot`
(at 58 layers x 256 experts a line is about 270 kB, most of it the float
``utilization_shares``, which the report recomputes from the counts):

* a line in the writer's canonical form (each layer's ``expert_token_counts``,
  ``utilization_shares`` and ``active_experts`` in that order, numbers only)
  has those three arrays cut out before ``orjson`` parses the rest; the
  counts are parsed in one numpy call; every field the report draws is
  checked (types, ``len(counts) == n_experts``, ``sum(counts) == token_count``);
* any other line, or one that fails a check, is validated in full by
  ``SystemSnapshot.model_validate_json``, which accepts it or raises.

So the report reads and checks the fields it draws; ``utilization_shares``
and ``active_experts`` are not read (``chronomoe validate`` checks every
field of every record).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..alerts import AlertState, AlertTransition
from ..events import MODES
from ..snapshots import SystemSnapshot

NO_DATA = -1
"""State code of a layer without data in a window (or absent from a snapshot)."""
STATE_CODES = {AlertState.NOMINAL: 0, AlertState.PRE_COLLAPSE: 1, AlertState.COLLAPSE_CONFIRMED: 2}
"""State codes, ordered by severity: a column of several snapshots shows the largest."""
STATES_BY_CODE = {code: state for state, code in STATE_CODES.items()}
_CODE_BY_VALUE = {state.value: code for state, code in STATE_CODES.items()}


@dataclass(frozen=True)
class SnapshotRow:
    """One snapshot's fields that the report draws; arrays indexed by the snapshot's layer position.

    Shapes: ``L`` layers of the snapshot, ``W`` the widest layer's expert count.
    Float metrics are NaN where a layer has no data (and ``max_vio`` in logs
    written before it existed); ``states`` holds :data:`STATE_CODES`, or
    :data:`NO_DATA`; ``counts`` is zero-padded beyond each layer's ``n_experts``.
    Losses are NaN when not recorded.
    """

    step: int
    mode: str
    run_id: str
    model_name: str
    train_loss: float
    val_loss: float
    layer_ids: np.ndarray  # [L] int64
    n_experts: np.ndarray  # [L] int64
    n_effective: np.ndarray  # [L] float64
    top2_share: np.ndarray  # [L] float64
    max_vio: np.ndarray  # [L] float64
    dead_experts: np.ndarray  # [L] int64
    states: np.ndarray  # [L] int8
    counts: np.ndarray  # [L, W] int64
    transitions: tuple[AlertTransition, ...]
    dropped_records: int


def _loss(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _floats(values: list[Any]) -> np.ndarray:
    return np.array([math.nan if value is None else value for value in values], dtype=np.float64)


def _checked_floats(values: list[Any]) -> np.ndarray:
    """:func:`_floats` of JSON numbers or nulls; anything else raises TypeError."""
    if not all(value is None or type(value) in (float, int) for value in values):
        raise TypeError("not a number")
    return _floats(values)


def row_from_snapshot(snapshot: SystemSnapshot) -> SnapshotRow:
    """The row of a validated snapshot (the slow path, and any loader that holds snapshots)."""
    layers = snapshot.layers
    width = max((layer.n_experts for layer in layers), default=0)
    counts = np.zeros((len(layers), width), dtype=np.int64)
    for position, layer in enumerate(layers):
        counts[position, : layer.n_experts] = layer.expert_token_counts
    return SnapshotRow(
        step=snapshot.step,
        mode=snapshot.mode,
        run_id=snapshot.run_id,
        model_name=snapshot.model_name,
        train_loss=_loss(snapshot.train_loss),
        val_loss=_loss(snapshot.val_loss),
        layer_ids=np.array([layer.layer_id for layer in layers], dtype=np.int64),
        n_experts=np.array([layer.n_experts for layer in layers], dtype=np.int64),
        n_effective=_floats([None if layer.no_data else layer.n_effective for layer in layers]),
        top2_share=_floats([None if layer.no_data else layer.top2_share for layer in layers]),
        max_vio=_floats([None if layer.no_data else layer.max_vio for layer in layers]),
        dead_experts=np.array([0 if layer.no_data else layer.dead_expert_count for layer in layers], dtype=np.int64),
        states=np.array(
            [NO_DATA if layer.no_data else STATE_CODES[layer.alert_state] for layer in layers], dtype=np.int8
        ),
        counts=counts,
        transitions=tuple(snapshot.transitions),
        dropped_records=snapshot.dropped_records,
    )


def parse_snapshot_line(line: bytes) -> SnapshotRow:
    """The row of one ``snapshots.jsonl`` line (see the module docstring).

    Raises what ``SystemSnapshot.model_validate_json`` raises on a line it
    refuses (``pydantic.ValidationError``, a ``ValueError``).
    """
    fast = _fast_row(line)
    return fast if fast is not None else row_from_snapshot(SystemSnapshot.model_validate_json(line))


_COUNTS_KEY = b'"expert_token_counts":['
_SHARES_KEY = b',"utilization_shares":['
_ACTIVE_KEY = b',"active_experts":['
_CUT = b'"expert_token_counts":[],"utilization_shares":[],"active_experts":[]'
_NUMBER_BYTES = b"0123456789,"


def _cut_arrays(line: bytes) -> tuple[bytes, list[bytes]] | None:
    """The line without its layers' three arrays, and each layer's counts text; ``None`` if not canonical."""
    pieces: list[bytes] = []
    bodies: list[bytes] = []
    find = line.find
    position = 0
    while (start := find(_COUNTS_KEY, position)) >= 0:
        counts_end = find(b"]", start)
        shares_start = counts_end + 1
        if not line.startswith(_SHARES_KEY, shares_start):
            return None
        active_start = find(b"]", shares_start) + 1
        if not line.startswith(_ACTIVE_KEY, active_start):
            return None
        active_end = find(b"]", active_start)
        if counts_end < 0 or active_end < 0:
            return None
        bodies.append(line[start + len(_COUNTS_KEY) : counts_end])
        pieces.append(line[position:start])
        pieces.append(_CUT)
        position = active_end + 1
    pieces.append(line[position:])
    return b"".join(pieces), bodies


def _is_int(value: Any) -> bool:
    return type(value) is int


def _fast_row(line: bytes) -> SnapshotRow | None:
    """The row of a canonical line whose drawn fields pass their checks; ``None`` sends it to full validation."""
    cut = _cut_arrays(line)
    if cut is None:
        return None
    stripped, bodies = cut
    try:
        record = orjson.loads(stripped)
        return _row_from_record(record, bodies)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError):
        return None


def _row_from_record(record: Any, bodies: list[bytes]) -> SnapshotRow | None:
    layers = record["layers"]
    step, mode, run_id = record["step"], record.get("mode", "TRAIN"), record["run_id"]
    if (
        not _is_int(step)
        or step < 0
        or mode not in MODES
        or type(run_id) is not str
        or not run_id
        or type(layers) is not list
        or len(layers) != len(bodies)
    ):
        return None
    layer_ids = [layer["layer_id"] for layer in layers]
    n_experts = [layer["n_experts"] for layer in layers]
    token_counts = [layer["token_count"] for layer in layers]
    no_data = [layer["no_data"] for layer in layers]
    if not all(map(_is_int, [*layer_ids, *n_experts, *token_counts])) or not all(type(v) is bool for v in no_data):
        return None
    pairs = list(zip(layers, no_data, strict=True))
    states = [NO_DATA if empty else _CODE_BY_VALUE[layer["alert_state"]] for layer, empty in pairs]
    counts = _counts_matrix(bodies, n_experts, token_counts)
    if counts is None or min(layer_ids, default=0) < 0 or min(n_experts, default=1) < 1:
        return None
    metrics = {
        name: _checked_floats([None if empty else layer.get(name) for layer, empty in pairs])
        for name in ("n_effective", "top2_share", "max_vio")
    }
    dead = [0 if empty else layer["dead_expert_count"] for layer, empty in pairs]
    transitions = tuple(AlertTransition.model_validate(item) for item in record.get("transitions", ()))
    train_loss, val_loss = record.get("train_loss"), record.get("val_loss")
    for loss in (train_loss, val_loss):
        if loss is not None and (type(loss) not in (int, float) or not math.isfinite(loss)):
            return None
    model_name, dropped = record.get("model_name", ""), record.get("dropped_records", 0)
    if type(model_name) is not str or not _is_int(dropped) or not all(map(_is_int, dead)):
        return None
    return SnapshotRow(
        step=step,
        mode=mode,
        run_id=run_id,
        model_name=model_name,
        train_loss=_loss(train_loss),
        val_loss=_loss(val_loss),
        layer_ids=np.array(layer_ids, dtype=np.int64),
        n_experts=np.array(n_experts, dtype=np.int64),
        dead_experts=np.array(dead, dtype=np.int64),
        states=np.array(states, dtype=np.int8),
        counts=counts,
        transitions=transitions,
        dropped_records=dropped,
        **metrics,
    )


def _counts_matrix(bodies: list[bytes], n_experts: list[int], token_counts: list[int]) -> np.ndarray | None:
    """``[L, W]`` counts from each layer's comma-separated digits, or ``None`` if any check fails."""
    text = b",".join(bodies)
    if text.translate(None, _NUMBER_BYTES) or any(
        body.count(b",") + 1 != n for body, n in zip(bodies, n_experts, strict=True)
    ):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, instead of raising, on text it cannot read whole
        try:
            flat = np.fromstring(text.decode(), dtype=np.int64, sep=",")
        except (ValueError, Warning):
            return None
    sizes = np.array(n_experts, dtype=np.int64)
    width = int(sizes.max(initial=0))
    # numpy clips numbers beyond int64 to its maximum: any count that large, or that could wrap a layer's
    # sum, goes to full validation.
    if flat.size != sizes.sum() or int(flat.max(initial=0)) * max(width, 1) >= 2**63:
        return None
    counts = np.zeros((len(sizes), width), dtype=np.int64)
    counts[np.arange(width)[None, :] < sizes[:, None]] = flat
    if not np.array_equal(counts.sum(axis=1), np.array(token_counts, dtype=np.int64)):
        return None
    return counts
