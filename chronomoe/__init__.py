"""ChronoMoE: routing-topology telemetry for Mixture-of-Experts training.

``import chronomoe`` does not import torch; the torch-only parts (capture,
lens modules, the demo) import it when used.
"""

__version__ = "0.1.0"

from . import metrics
from .alerts import AlertBank, AlertMachine, AlertRules, AlertState, AlertTransition
from .bus import EventBus, Subscription
from .controller import ControlDecision, Controller, NoOpController
from .errors import ChronoMoEError, CorruptRecordError, InvalidInputError
from .events import RoutingEvent
from .io import (
    TelemetryWriter,
    create_run_manifest,
    get_git_commit,
    load_events,
    load_manifest,
    load_snapshots,
    load_transitions,
)
from .lens import LensState
from .monitor import Monitor
from .snapshots import LayerSnapshot, SystemSnapshot

__all__ = [
    "AlertBank", "AlertMachine", "AlertRules", "AlertState", "AlertTransition", "ChronoLens",
    "ChronoMoEError", "ControlDecision", "Controller", "CorruptRecordError", "EventBus",
    "IdentityLens", "InvalidInputError", "LayerSnapshot", "LensState", "Monitor", "NoOpController",
    "RoutingEvent", "Subscription", "SystemSnapshot", "TelemetryWriter", "create_run_manifest",
    "get_git_commit", "load_events", "load_manifest", "load_snapshots", "load_transitions", "metrics",
]


def __getattr__(name: str):
    if name in ("ChronoLens", "IdentityLens"):
        from . import lens

        return getattr(lens, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
