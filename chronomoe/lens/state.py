"""LensState and the torch-free part of every lens: following the bus."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..bus import EventBus, Subscription
from ..events import Integer, Record


class LensState(Record):
    """What a lens knows when it transforms router inputs.

    ``pressure``, ``heat`` and ``forgetting`` are the controller's latest
    signals (dimensionless, 0 = none); ``layer_metrics`` maps layer id to the
    latest snapshot's scalar metrics of that layer.
    """

    step: Integer = Field(0, ge=0)
    mode: str = "TRAIN"
    pressure: float = 0.0
    heat: float = 0.0
    forgetting: float = 0.0
    layer_metrics: dict[int, dict[str, Any]] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class FollowsBus:
    """Keeps ``self.state`` (a :class:`LensState`) current from ``"snapshot"`` and ``"decision"`` events."""

    state: LensState

    def follow(self, bus: EventBus) -> list[Subscription]:
        """Subscribe to the bus; the latest snapshot and decision signals land in :attr:`state`."""
        return [bus.subscribe("snapshot", self.on_snapshot), bus.subscribe("decision", self.on_decision)]

    def on_snapshot(self, snapshot: Any) -> None:
        self.state = self.state.model_copy(
            update={
                "step": snapshot.step,
                "mode": snapshot.mode,
                "layer_metrics": {layer.layer_id: layer.metrics() for layer in snapshot.layers},
            }
        )

    def on_decision(self, decision: Any) -> None:
        signals = {
            name: getattr(decision, name)
            for name in ("pressure", "heat", "forgetting")
            if getattr(decision, name) is not None
        }
        if signals:
            self.state = self.state.model_copy(update=signals)
