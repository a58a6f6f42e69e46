"""LensState, and keeping it current from the bus (the torch-free part of every lens)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from chronomoe.controller import ControlDecision
from chronomoe.events import Integer, Mode, Record
from chronomoe.snapshots import SystemSnapshot


class LensState(Record):
    """What a lens knows when it transforms router inputs.

    ``pressure``, ``heat`` and ``forgetting`` are the controller's latest
    signals (dimensionless, 0 = none); ``layer_pressure`` maps layer id to the
    latest pressure a decision about that layer carried; ``layer_metrics`` maps layer id to the
    latest snapshot's scalar metrics of that layer.
    """

    step: Integer = Field(0, ge=0)
    mode: Mode = "TRAIN"
    pressure: float = 0.0
    heat: float = 0.0
    forgetting: float = 0.0
    layer_pressure: dict[int, float] = Field(default_factory=dict)
    layer_metrics: dict[int, dict[str, Any]] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class LensStateKeeper:
    """Keeps ``self.state`` (a :class:`LensState`) current from ``"snapshot"`` and ``"decision"`` payloads.

    ``bus.connect(lens)`` subscribes :meth:`on_snapshot` and :meth:`on_decision`.
    """

    state: LensState

    def on_snapshot(self, snapshot: SystemSnapshot) -> None:
        self.state = self.state.model_copy(
            update={
                "step": snapshot.step,
                "mode": snapshot.mode,
                "layer_metrics": {layer.layer_id: layer.metrics() for layer in snapshot.layers},
            }
        )

    def on_decision(self, decision: ControlDecision) -> None:
        signals: dict[str, Any] = {
            name: value
            for name, value in (
                ("pressure", decision.pressure),
                ("heat", decision.heat),
                ("forgetting", decision.forgetting),
            )
            if value is not None
        }
        if decision.layer_id is not None and decision.pressure is not None:
            signals["layer_pressure"] = {**self.state.layer_pressure, decision.layer_id: decision.pressure}
        if signals:
            self.state = self.state.model_copy(update=signals)
