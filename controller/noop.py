"""NoOpController: the default controller, which observes everything and decides "no action"."""

from __future__ import annotations

import time

from chronomoe.alerts import AlertTransition
from chronomoe.snapshots import SystemSnapshot

from .decisions import ControlDecision


class NoOpController:
    """Answers every snapshot and every transition with a ``"none"`` decision.

    Attributes:
        decisions: how many decisions it has made.
    """

    name = "noop"

    def __init__(self) -> None:
        self.decisions = 0

    def on_snapshot(self, snapshot: SystemSnapshot) -> ControlDecision:
        return self._decide("snapshot", snapshot.step, snapshot.mode, None)

    def on_transition(self, transition: AlertTransition) -> ControlDecision:
        return self._decide("transition", transition.step, transition.mode, transition.layer_id)

    def _decide(self, trigger: str, step: int, mode: str, layer_id: int | None) -> ControlDecision:
        self.decisions += 1
        return ControlDecision.trusted(
            controller=self.name,
            trigger=trigger,
            step=step,
            mode=mode,
            layer_id=layer_id,
            action="none",
            pressure=None,
            heat=None,
            forgetting=None,
            reason="",
            timestamp=time.time(),
        )
