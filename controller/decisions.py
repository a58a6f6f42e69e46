"""ControlDecision: what a controller decided, published on the bus's ``"decision"`` topic."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from chronomoe.events import Integer, Mode, Record


class ControlDecision(Record):
    """What a controller decided after a snapshot or a transition.

    Fields:
        controller: the deciding controller's name.
        trigger: what it answered: a ``"snapshot"`` or a ``"transition"``.
        step, mode: the step and mode of that snapshot or transition.
        layer_id: the layer decided for; ``None`` for a decision about the whole model.
        action: ``"none"`` for no intervention.
        pressure, heat, forgetting: the Phase 2 control signals (dimensionless);
            ``None`` leaves the current value unchanged.
        reason: why, in words.
        timestamp: unix seconds when it was decided.
    """

    controller: str
    trigger: Literal["snapshot", "transition"]
    step: Integer = Field(ge=0)
    mode: Mode = "TRAIN"
    layer_id: Integer | None = Field(None, ge=0)
    action: str = "none"
    pressure: float | None = None
    heat: float | None = None
    forgetting: float | None = None
    reason: str = ""
    timestamp: float = Field(default_factory=time.time)
