"""EventBus: synchronous publish/subscribe between the monitor and its subscribers.

Topics and payloads:

* ``"transition"``: an :class:`~chronomoe.alerts.AlertTransition` (a layer
  changed alert state);
* ``"snapshot"``: a :class:`~chronomoe.snapshots.SystemSnapshot`;
* ``"decision"``: a :class:`~chronomoe.controller.ControlDecision`.

Guarantees (each pinned by a test in ``tests/test_bus.py``):

1. Delivery is synchronous, on the publishing thread, in subscription order.
2. The monitor publishes all transitions of a snapshot, in layer order,
   before that ``"snapshot"`` event.
3. A handler that raises does not stop the other handlers nor the caller:
   the exception is logged with its traceback (logger ``chronomoe.bus``) and
   counted in :attr:`EventBus.errors`. With ``strict=True`` it propagates
   instead (the remaining handlers of that delivery are not called).
4. A handler that has raised ``disable_after`` times in a row is
   unsubscribed, with an error logged; it is never retried forever.
5. Subscribing or unsubscribing during a delivery is safe: a handler
   subscribed during a delivery first receives the next publication; a
   handler unsubscribed during a delivery is not called again, not even later
   in the same delivery.

Filters given to :meth:`EventBus.subscribe` (``layer_id``, ``dest``,
``source``, ``mode``) match the payload attribute of that name; a filter value
may be one value or a collection of accepted values.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Collection

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

TOPICS = ("transition", "snapshot", "decision")
FILTER_KEYS = ("layer_id", "dest", "source", "mode")

Handler = Callable[[Any], Any]


class Subscription:
    """A handler's registration; call :meth:`unsubscribe` (or use as a context manager) to end it."""

    def __init__(self, bus: "EventBus", topic: str, handler: Handler, filters: dict[str, Any]) -> None:
        self.bus = bus
        self.topic = topic
        self.handler = handler
        self.filters = {
            key: frozenset(value) if _is_collection(value) else frozenset((value,))
            for key, value in filters.items()
        }
        self.active = True
        self.consecutive_failures = 0

    def matches(self, payload: Any) -> bool:
        return all(getattr(payload, key, None) in accepted for key, accepted in self.filters.items())

    def unsubscribe(self) -> None:
        self.bus._remove(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r}, {self.handler!r}, filters={self.filters}, active={self.active})"


def _is_collection(value: Any) -> bool:
    return isinstance(value, Collection) and not isinstance(value, (str, bytes))


class EventBus:
    """Synchronous topic bus with per-handler error isolation (see module docstring)."""

    def __init__(self, *, strict: bool = False, disable_after: int | None = 100) -> None:
        self.strict = strict
        self.disable_after = disable_after
        self.errors = 0
        self._subscriptions: dict[str, list[Subscription]] = {topic: [] for topic in TOPICS}

    def subscribe(self, topic: str, handler: Handler, **filters: Any) -> Subscription:
        """Call ``handler(payload)`` for each publication on ``topic`` that passes ``filters``."""
        if topic not in TOPICS:
            raise InvalidInputError("topic", topic, f"must be one of {', '.join(TOPICS)}")
        if not callable(handler):
            raise InvalidInputError("handler", handler, "must be callable")
        unknown = sorted(set(filters) - set(FILTER_KEYS))
        if unknown:
            raise InvalidInputError(f"filters.{unknown[0]}", filters[unknown[0]], f"unknown filter; use {', '.join(FILTER_KEYS)}")
        subscription = Subscription(self, topic, handler, filters)
        self._subscriptions[topic].append(subscription)
        return subscription

    def on(self, topic: str, **filters: Any) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`subscribe`; returns the handler unchanged."""

        def register(handler: Handler) -> Handler:
            self.subscribe(topic, handler, **filters)
            return handler

        return register

    def subscribers(self, topic: str) -> list[Subscription]:
        """Active subscriptions of ``topic``, in delivery order."""
        return list(self._subscriptions[topic])

    def publish(self, topic: str, payload: Any) -> int:
        """Deliver ``payload`` to the matching handlers of ``topic``; return how many were called."""
        delivered = 0
        for subscription in tuple(self._subscriptions[topic]):
            if not subscription.active or not subscription.matches(payload):
                continue
            delivered += 1
            try:
                subscription.handler(payload)
            except Exception:
                if self.strict:
                    raise
                self._record_failure(subscription)
            else:
                subscription.consecutive_failures = 0
        return delivered

    def _record_failure(self, subscription: Subscription) -> None:
        self.errors += 1
        subscription.consecutive_failures += 1
        logger.exception("handler %r failed on topic %r", subscription.handler, subscription.topic)
        if self.disable_after is not None and subscription.consecutive_failures >= self.disable_after:
            logger.error(
                "handler %r raised %d times in a row on topic %r; unsubscribed",
                subscription.handler, subscription.consecutive_failures, subscription.topic,
            )
            self._remove(subscription)

    def _remove(self, subscription: Subscription) -> None:
        subscription.active = False
        subscribers = self._subscriptions[subscription.topic]
        if subscription in subscribers:
            subscribers.remove(subscription)
