"""Reading the audit trail: control decisions as a table and as a per-layer summary.

What ``chronomoe decisions RUN`` prints, and what ``chronomoe replay RUN
--controller pressure`` prints of the decisions a controller would have made.
Pure functions of the decisions (no I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chronomoe.controller import ControlDecision

REASON_WIDTH = 90
"""Characters of a decision's reason shown in the table (the whole reason is in decisions.jsonl)."""


@dataclass
class LayerAudit:
    """One layer's decisions, summarised.

    Attributes:
        layer_id: the layer (``None`` for whole-model decisions).
        decisions: how many.
        actions: how many of each action.
        applied: how many changed the model.
        first_action_step, last_action_step: steps of the first and last action other than ``"none"``.
        final_max_abs_bias: the largest absolute bias after the last decision that reported one.
        max_pressure: the largest pressure seen.
        last_reason: the reason of the last decision.
    """

    layer_id: int | None
    decisions: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    first_action_step: int | None = None
    last_action_step: int | None = None
    final_max_abs_bias: float | None = None
    max_pressure: float | None = None
    last_reason: str = ""


def audit_by_layer(decisions: Iterable[ControlDecision]) -> list[LayerAudit]:
    """Per-layer summaries of ``decisions``, by layer id (whole-model decisions first)."""
    layers: dict[int | None, LayerAudit] = {}
    for decision in decisions:
        audit = layers.setdefault(decision.layer_id, LayerAudit(decision.layer_id))
        audit.decisions += 1
        audit.actions[decision.action] = audit.actions.get(decision.action, 0) + 1
        audit.applied += decision.applied
        if decision.action != "none":
            audit.first_action_step = decision.step if audit.first_action_step is None else audit.first_action_step
            audit.last_action_step = decision.step
        if decision.change is not None:
            audit.final_max_abs_bias = decision.change.max_abs_after
        if decision.pressure is not None:
            audit.max_pressure = max(audit.max_pressure or 0.0, decision.pressure)
        audit.last_reason = decision.reason
    return [layers[key] for key in sorted(layers, key=lambda layer: -1 if layer is None else layer)]


def decision_rows(decisions: Sequence[ControlDecision]) -> list[list[str]]:
    """The decisions as text cells, header first: one row per decision, in order."""
    rows = [["step", "layer", "state", "pressure", "action", "max|bias|", "applied", "reason"]]
    for decision in decisions:
        rows.append(
            [
                str(decision.step),
                "-" if decision.layer_id is None else str(decision.layer_id),
                "-" if decision.alert_state is None else decision.alert_state.value,
                _number(decision.pressure, 3),
                decision.action,
                "-" if decision.change is None else f"{decision.change.max_abs_after:.3f}",
                "dry run" if decision.dry_run else ("yes" if decision.applied else "no"),
                _clip(decision.reason),
            ]
        )
    return rows


def layer_rows(audits: Sequence[LayerAudit]) -> list[list[str]]:
    """The per-layer summaries as text cells, header first."""
    rows = [["layer", "decisions", "actions", "applied", "first action", "last action", "max pressure", "max|bias|"]]
    for audit in audits:
        rows.append(
            [
                "-" if audit.layer_id is None else str(audit.layer_id),
                str(audit.decisions),
                ", ".join(f"{action} {count}" for action, count in sorted(audit.actions.items())),
                str(audit.applied),
                "-" if audit.first_action_step is None else str(audit.first_action_step),
                "-" if audit.last_action_step is None else str(audit.last_action_step),
                _number(audit.max_pressure, 3),
                _number(audit.final_max_abs_bias, 3),
            ]
        )
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of text cells as aligned columns (the last column left as it is)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in rows
    )


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _clip(text: str) -> str:
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 3] + "..."
