"""The Controller protocol: what the monitor calls, and how a controller joins a bus."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from chronomoe.alerts import AlertTransition
from chronomoe.snapshots import SystemSnapshot

from .actuators import Actuator
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


@runtime_checkable
class ActuatedController(Protocol):
    """A controller that acts on the model: the Monitor binds it an actuator found on the attached model.

    ``wants_actuator`` is read when the controller is set or the model attached;
    a controller that only recommends (dry run) says ``False`` and is bound none.
    """

    @property
    def wants_actuator(self) -> bool: ...

    def bind(self, actuator: Actuator) -> None: ...
