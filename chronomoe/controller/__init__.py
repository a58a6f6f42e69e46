"""Controllers: subscribers that turn snapshots and transitions into decisions.

Phase 1 ships :class:`NoOpController`, which decides "no action" every time.
A controller plugs in through the bus alone: :func:`connect` subscribes its
``on_snapshot``/``on_transition`` methods and publishes every decision they
return on the ``"decision"`` topic, where the lens (and anything else) can
read it. See ``tests/test_lens_controller.py`` for a toy pressure controller.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from ..bus import EventBus, Subscription
from ..events import Integer, Record


class ControlDecision(Record):
    """What a controller decided after a snapshot or a transition.

    ``action`` is ``"none"`` for no intervention. ``pressure``, ``heat`` and
    ``forgetting`` are the Phase 2 control signals; ``None`` leaves the
    current value unchanged.
    """

    controller: str
    trigger: Literal["snapshot", "transition"]
    step: Integer = Field(ge=0)
    mode: str = "TRAIN"
    layer_id: int | None = None
    action: str = "none"
    pressure: float | None = None
    heat: float | None = None
    forgetting: float | None = None
    reason: str = ""
    timestamp: float = Field(default_factory=time.time)


@runtime_checkable
class Controller(Protocol):
    """Anything with these two methods; either may return ``None`` for "nothing to say"."""

    def on_snapshot(self, snapshot: Any) -> ControlDecision | None: ...

    def on_transition(self, transition: Any) -> ControlDecision | None: ...


def connect(bus: EventBus, controller: Controller) -> list[Subscription]:
    """Subscribe ``controller`` to snapshots and transitions; publish its decisions on ``"decision"``."""

    def relay(method):
        def handler(payload: Any) -> None:
            decision = method(payload)
            if decision is not None:
                bus.publish("decision", decision)

        return handler

    return [
        bus.subscribe("transition", relay(controller.on_transition)),
        bus.subscribe("snapshot", relay(controller.on_snapshot)),
    ]


class NoOpController:
    """Observes everything and decides "no action" (the Phase 2 extension point)."""

    name = "noop"

    def __init__(self) -> None:
        self.decisions = 0

    def _decide(self, trigger: str, payload: Any, layer_id: int | None) -> ControlDecision:
        self.decisions += 1
        return ControlDecision.trusted(
            controller=self.name, trigger=trigger, step=payload.step, mode=payload.mode,
            layer_id=layer_id, action="none", pressure=None, heat=None, forgetting=None,
            reason="", timestamp=time.time(),
        )

    def on_snapshot(self, snapshot: Any) -> ControlDecision:
        return self._decide("snapshot", snapshot, None)

    def on_transition(self, transition: Any) -> ControlDecision:
        return self._decide("transition", transition, transition.layer_id)


__all__ = ["ControlDecision", "Controller", "NoOpController", "connect"]
