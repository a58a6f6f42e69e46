"""ControlDecision: the audit record of one decision, published on ``"decision"`` and kept in ``decisions.jsonl``.

A decision says what happened, when, why and by whom: the step and layer,
the controller and a hash of its configuration, what it observed (the alert
state and the layer's metrics), the pressure it computed, what it did to
which actuator (the change and the bias before and after, the bounds it
hit), whether the model was changed or the decision was a dry run, and the
reason in words. "No action" and abstentions are decisions too.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from chronomoe.alerts import AlertState
from chronomoe.events import Integer, Mode, Record

ACTIONS = ("none", "adjust", "relax", "abstain")
"""The actions of the built-in controllers: ``none`` (nothing changed), ``adjust`` (the actuator moved towards
balance), ``relax`` (moved back towards zero), ``abstain`` (the controller stopped acting on the layer).
User controllers may use other words."""


class ActuatorChange(Record):
    """What a decision did to one layer of an actuator, in the actuator's units (bias: score units).

    Fields:
        max_abs_change: largest change of any expert (the per-decision rate bound applies to it).
        l1_change: sum of the experts' absolute changes.
        max_abs_before, max_abs_after: largest absolute value of any expert before and after.
        mean_after: mean over the layer's experts after (0 for a mean-centred bias).
        clamped: experts at the actuator's bound after the change.
    """

    max_abs_change: float = Field(ge=0)
    l1_change: float = Field(ge=0)
    max_abs_before: float = Field(ge=0)
    max_abs_after: float = Field(ge=0)
    mean_after: float
    clamped: Integer = Field(ge=0)


class ControlDecision(Record):
    """A controller's decision after a snapshot or a transition (see the module docstring).

    Fields:
        controller: the deciding controller's name.
        config_hash: a hash of its configuration (``None`` when it has none), so that a decision names the policy
            that made it.
        trigger: what it answered: a ``"snapshot"`` or a ``"transition"``.
        step, mode: the step and mode of that snapshot or transition.
        layer_id: the layer decided for; ``None`` for a decision about the whole model.
        run_id: the run (``None`` when the controller does not know it).
        alert_state: the layer's alert state when deciding.
        metrics: what the controller observed of the layer (Neff, Top2, MaxVio, dead experts, ...).
        pressure: how far the layer is from balance, as the controller computed it (dimensionless; 0 = none);
            read by lenses as a Phase 2 control signal.
        heat, forgetting: the other Phase 2 lens signals; ``None`` leaves the current value unchanged.
        action: one of :data:`ACTIONS` for the built-in controllers.
        actuator: the actuator acted on (``None`` when nothing was acted on).
        change: what the action did to the actuator's layer (``None`` without an actuator).
        applied: whether the model was changed (``False`` for dry runs, frozen controllers and "none").
        dry_run: whether the controller runs in dry-run (recommend-only) mode.
        reason: why, in words.
        timestamp: unix seconds when it was decided.
    """

    controller: str
    config_hash: str | None = None
    trigger: Literal["snapshot", "transition"]
    step: Integer = Field(ge=0)
    mode: Mode = "TRAIN"
    layer_id: Integer | None = Field(None, ge=0)
    run_id: str | None = None
    alert_state: AlertState | None = None
    metrics: dict[str, float | int | None] = Field(default_factory=dict)
    pressure: float | None = None
    heat: float | None = None
    forgetting: float | None = None
    action: str = "none"
    actuator: str | None = None
    change: ActuatorChange | None = None
    applied: bool = False
    dry_run: bool = False
    reason: str = ""
    timestamp: float = Field(default_factory=time.time)
