"""A control decision as the report reads it: :class:`DecisionRow`, the fields the controller panel draws.

:func:`parse_decision_line` reads one ``decisions.jsonl`` line about four
times faster than validating the whole :class:`~chronomoe.controller.ControlDecision`
(a PressureController writes one decision per layer and snapshot: 580,000
lines for 10,000 snapshots of 58 layers): ``orjson`` parses the line and the
drawn fields are type-checked; a line whose drawn fields fail a check is
validated in full, which accepts it or raises.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson

from ..controller import ControlDecision
from ..events import MODES


class DecisionRow(NamedTuple):
    """The drawn fields of a decision: ``bias_after`` is ``change.max_abs_after`` (``None`` without a change)."""

    controller: str
    step: int
    mode: str
    layer_id: int | None
    action: str
    applied: bool
    dry_run: bool
    pressure: float | None
    bias_after: float | None

    @classmethod
    def of(cls, decision: ControlDecision) -> DecisionRow:
        return cls(
            controller=decision.controller,
            step=decision.step,
            mode=decision.mode,
            layer_id=decision.layer_id,
            action=decision.action,
            applied=decision.applied,
            dry_run=decision.dry_run,
            pressure=decision.pressure,
            bias_after=None if decision.change is None else decision.change.max_abs_after,
        )


def parse_decision_line(line: bytes) -> DecisionRow:
    """The :class:`DecisionRow` of one line; raises what ``ControlDecision`` validation raises on a bad one."""
    record = orjson.loads(line)
    fast = _fast_row(record) if type(record) is dict else None
    return fast if fast is not None else DecisionRow.of(ControlDecision.model_validate(record))


def _finite_or_none(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and math.isfinite(value))


def _fast_row(record: dict[str, Any]) -> DecisionRow | None:
    controller, step, mode = record.get("controller"), record.get("step"), record.get("mode", "TRAIN")
    layer_id, action = record.get("layer_id"), record.get("action", "none")
    applied, dry_run, pressure = record.get("applied", False), record.get("dry_run", False), record.get("pressure")
    change = record.get("change")
    bias_after = change.get("max_abs_after") if type(change) is dict else None
    if not (
        isinstance(controller, str)
        and isinstance(step, int)
        and not isinstance(step, bool)
        and step >= 0
        and mode in MODES
        and (layer_id is None or (type(layer_id) is int and layer_id >= 0))
        and type(action) is str
        and type(applied) is bool
        and type(dry_run) is bool
        and _finite_or_none(pressure)
        and (change is None or _non_negative_number(bias_after))
    ):
        return None
    return DecisionRow(controller, step, mode, layer_id, action, applied, dry_run, pressure, bias_after)


def _non_negative_number(value: Any) -> bool:
    return type(value) in (int, float) and value >= 0
