"""The Controller protocol: what the monitor calls, and how a controller joins a bus."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from chronomoe.alerts import AlertTransition
from chronomoe.snapshots import SystemSnapshot

from .decisions import ControlDecision


@runtime_checkable
class Controller(Protocol):
    """Anything with these two methods is a controller.

    ``monitor.bus.connect(controller)`` (what ``Monitor(controller=...)`` and
    ``monitor.set_controller`` do) subscribes them to the ``"snapshot"`` and
    ``"transition"`` topics; each decision they return (one, a list, or
    ``None`` for "nothing to say") is published on ``"decision"`` before the
    next handler of the triggering topic runs.
    """

    def on_snapshot(self, snapshot: SystemSnapshot) -> ControlDecision | list[ControlDecision] | None: ...

    def on_transition(self, transition: AlertTransition) -> ControlDecision | list[ControlDecision] | None: ...
