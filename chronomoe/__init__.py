"""ChronoMoE: routing-topology telemetry and governance for Mixture-of-Experts training.

The public API is ``__all__`` (pinned by ``specs/public_api.json``). ``import
chronomoe`` does not import torch; the torch parts (capture, the lens
modules, the demo) import it when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._layout import find_sibling_subpackages

find_sibling_subpackages(Path(__file__).parent)

from chronomoe.controller import ControlDecision, Controller, NoOpController  # noqa: E402
from chronomoe.lens import LensState  # noqa: E402

from ._version import __version__ as __version__  # noqa: E402
from .alerts import AlertRules, AlertState, AlertTransition  # noqa: E402
from .bus import Connection, EventBus, Subscription, Topic  # noqa: E402
from .config import DistributedConfig, MonitorConfig  # noqa: E402
from .errors import ChronoMoEError, CorruptRecordError, InvalidInputError  # noqa: E402
from .events import RoutingEvent  # noqa: E402
from .expert_state import ExpertState  # noqa: E402
from .io import (  # noqa: E402
    TelemetryWriter,
    create_run_manifest,
    get_git_commit,
    load_decisions,
    load_events,
    load_manifest,
    load_snapshots,
    load_transitions,
)
from .metrics import (  # noqa: E402
    compute_entropy,
    compute_gini_coefficient,
    compute_layer_metrics,
    compute_n_effective,
    compute_top2_share,
    compute_utilization_shares,
    count_dead_experts,
    count_nearly_dead_experts,
)
from .monitor import Monitor  # noqa: E402
from .snapshots import (  # noqa: E402
    LayerSnapshot,
    SystemSnapshot,
    check_immediate_alerts,
)

if TYPE_CHECKING:
    from chronomoe.lens import ChronoLens, IdentityLens


__all__ = [
    "AlertRules",
    "AlertState",
    "AlertTransition",
    "ChronoLens",
    "ChronoMoEError",
    "Connection",
    "ControlDecision",
    "Controller",
    "CorruptRecordError",
    "DistributedConfig",
    "EventBus",
    "ExpertState",
    "IdentityLens",
    "InvalidInputError",
    "LayerSnapshot",
    "LensState",
    "Monitor",
    "MonitorConfig",
    "NoOpController",
    "RoutingEvent",
    "Subscription",
    "SystemSnapshot",
    "TelemetryWriter",
    "Topic",
    "check_immediate_alerts",
    "compute_entropy",
    "compute_gini_coefficient",
    "compute_layer_metrics",
    "compute_n_effective",
    "compute_top2_share",
    "compute_utilization_shares",
    "count_dead_experts",
    "count_nearly_dead_experts",
    "create_run_manifest",
    "get_git_commit",
    "load_decisions",
    "load_events",
    "load_manifest",
    "load_snapshots",
    "load_transitions",
]


def __getattr__(name: str) -> Any:
    if name in ("ChronoLens", "IdentityLens"):  # torch modules: imported on first use
        import chronomoe.lens

        return getattr(chronomoe.lens, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
