"""NoOpController: the default controller, which observes everything and decides "no action"."""

from __future__ import annotations

from chronomoe.alerts import AlertTransition
from chronomoe.snapshots import SystemSnapshot

from .decisions import ControlDecision


class NoOpController:
    """Answers every snapshot and every transition with a ``"none"`` decision (the Phase 2 extension point).

    Attributes:
        decisions: how many decisions it has made.
    """

    name = "noop"

    def __init__(self) -> None:
        self.decisions = 0

    def on_snapshot(self, snapshot: SystemSnapshot) -> ControlDecision:
        return self._decide("snapshot", snapshot.step, snapshot.mode, None, snapshot.run_id, snapshot.timestamp)

    def on_transition(self, transition: AlertTransition) -> ControlDecision:
        return self._decide(
            "transition", transition.step, transition.mode, transition.layer_id, transition.run_id, transition.timestamp
        )

    def _decide(
        self, trigger: str, step: int, mode: str, layer_id: int | None, run_id: str, timestamp: float
    ) -> ControlDecision:
        self.decisions += 1
        return ControlDecision.trusted(
            controller=self.name,
            config_hash=None,
            trigger=trigger,
            step=step,
            mode=mode,
            layer_id=layer_id,
            run_id=run_id,
            alert_state=None,
            metrics={},
            pressure=None,
            heat=None,
            forgetting=None,
            action="none",
            actuator=None,
            change=None,
            applied=False,
            dry_run=False,
            reason="the no-op controller never acts",
            timestamp=timestamp,
        )
