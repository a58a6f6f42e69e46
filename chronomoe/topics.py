"""The monitor's bus topics, as data: each topic's payload type and the fields handlers may filter on.

=================  ======================================================  ========================================
topic              payload                                                 filters (accepted values)
=================  ======================================================  ========================================
``transition``     :class:`~chronomoe.alerts.AlertTransition`              ``layer_id`` (int >= 0), ``source`` and
                                                                           ``dest`` (alert states), ``mode``
``snapshot``       :class:`~chronomoe.snapshots.SystemSnapshot`            ``mode``
``decision``       :class:`~chronomoe.controller.ControlDecision`          ``layer_id``, ``mode``, ``trigger``
                                                                           (``snapshot``, ``transition``),
                                                                           ``controller`` and ``action`` (strings)
``expert_health``  :class:`~chronomoe.expert_health.ExpertHealthRecord`    none (published by an
                                                                           ``ExpertHealthTracker`` that follows
                                                                           the monitor)
=================  ======================================================  ========================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chronomoe.controller import ControlDecision

from .alerts import AlertState, AlertTransition
from .bus import EventBus, Topic
from .events import MODES
from .expert_health import ExpertHealthRecord
from .snapshots import SystemSnapshot


def _layer_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("a layer id is an integer >= 0")
    return value


def _alert_state(value: Any) -> AlertState:
    try:
        return AlertState(value)
    except ValueError:
        raise ValueError(f"alert states are {', '.join(state.value for state in AlertState)}") from None


def _one_of(*values: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return str(value)

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


_mode = _one_of(*MODES)

TRANSITION = Topic(
    "transition", AlertTransition, {"layer_id": _layer_id, "source": _alert_state, "dest": _alert_state, "mode": _mode}
)
SNAPSHOT = Topic("snapshot", SystemSnapshot, {"mode": _mode})
DECISION = Topic(
    "decision",
    ControlDecision,
    {
        "layer_id": _layer_id,
        "mode": _mode,
        "trigger": _one_of("snapshot", "transition"),
        "controller": _text,
        "action": _text,
    },
)
EXPERT_HEALTH = Topic("expert_health", ExpertHealthRecord, {})
MONITOR_TOPICS = (TRANSITION, SNAPSHOT, DECISION, EXPERT_HEALTH)
"""The topics of a :class:`~chronomoe.Monitor`'s bus, in this order."""


def monitor_bus(*, strict: bool = False, disable_after: int | None = 100) -> EventBus:
    """A bus with the monitor's topics (what ``Monitor`` creates as ``monitor.bus``)."""
    return EventBus(MONITOR_TOPICS, strict=strict, disable_after=disable_after)
