"""EventBus: synchronous publish/subscribe between the monitor and its subscribers.

A bus is made for a fixed set of :class:`Topic` s (the monitor's are in
:mod:`chronomoe.topics`: ``"transition"``, ``"snapshot"``, ``"decision"``).
Each topic names its payload type and the payload fields a subscription may
filter on, with a check of the values each filter accepts.

The contract (each point pinned by a test in ``tests/test_bus.py``):

1. **Order.** Delivery is synchronous, on the publishing thread, in
   subscription order. The monitor publishes a snapshot's transitions, in
   layer order, before the snapshot itself.
2. **Re-entrant publishing is depth first.** A handler that publishes (on any
   topic) has that publication delivered to every matching handler before
   its own call returns and the outer delivery goes on. Nesting deeper than
   ``max_depth`` raises :class:`~chronomoe.errors.InvalidInputError` from the
   innermost ``publish`` (a handler publishing in a cycle is a bug, not a
   loop to run forever).
3. **Isolation.** A handler that raises does not stop the other handlers nor
   the publisher: the exception is logged with its traceback (logger
   ``chronomoe.bus``, under the handler's qualified name) and counted in
   :attr:`EventBus.errors`. With ``strict=True`` it propagates instead and
   the remaining handlers of that delivery are not called. A handler that has
   raised ``disable_after`` times in a row is unsubscribed, with an error
   logged; it is never retried forever.
4. **Changes during a delivery are safe.** A handler subscribed during a
   delivery first receives the next publication; one unsubscribed during a
   delivery is not called again, not even later in the same delivery.
5. **Every registration is undoable.** :meth:`EventBus.subscribe` returns a
   :class:`Subscription` whose :meth:`~Subscription.unsubscribe` ends it (also
   as a context manager); :meth:`EventBus.unsubscribe` ends a handler's
   subscriptions by the handler itself (for the decorator form);
   :meth:`EventBus.connect` returns a :class:`Connection` that ends all of a
   participant's subscriptions at once. Undoing twice does nothing.
6. **One subscription per handler and topic.** Subscribing the same handler
   to the same topic again with the same filters returns the existing
   subscription (idempotent; it is still called once per publication); with
   other filters it is refused.
7. **Strong references.** The bus holds its handlers (a lambda or a bound
   method needs no other reference to stay subscribed) until they are
   unsubscribed.
8. **Early, named errors.** An unknown topic (in ``subscribe``, ``on``,
   ``publish``, ``subscribers``, ``unsubscribe``), a filter the topic's
   payload has no field for, a filter value the field can never hold, a
   handler that is not callable, and a payload of the wrong type are refused
   with :class:`~chronomoe.errors.InvalidInputError`, naming the culprit and
   what is valid.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Any]
H = TypeVar("H", bound=Handler)

FilterCheck = Callable[[Any], Any]
"""Checks one accepted value of a filter and returns it normalised (e.g. a string to its enum member); raises
``ValueError`` with the reason for a value the field can never hold."""


@dataclass(frozen=True)
class Topic:
    """A topic: its name, the type of its payloads, and the payload fields a subscription may filter on.

    Attributes:
        name: the topic's name, as given to ``subscribe`` and ``publish``.
        payload_type: every payload published on the topic is an instance of it.
        filters: payload attribute name -> check of one accepted filter value.
    """

    name: str
    payload_type: type
    filters: Mapping[str, FilterCheck] = field(default_factory=dict)


class Subscription:
    """One handler's registration on one topic; :meth:`unsubscribe` (or leaving a ``with`` block) ends it.

    Attributes:
        topic: the topic's name.
        handler: the callable, called with each matching payload.
        filters: attribute name -> the accepted values (a payload matches when
            each named attribute holds one of them).
        relay: return values of the handler that are payloads of a topic of the
            bus are published on that topic (set by :meth:`EventBus.connect`).
        active: False once unsubscribed.
    """

    def __init__(
        self, bus: EventBus, topic: str, handler: Handler, filters: dict[str, frozenset[Any]], relay: bool
    ) -> None:
        self.bus = bus
        self.topic = topic
        self.handler = handler
        self.filters = filters
        self.relay = relay
        self.active = True
        self.consecutive_failures = 0

    @property
    def name(self) -> str:
        """The handler's qualified name, as logs show it (``module.Class.method``)."""
        return handler_name(self.handler)

    def matches(self, payload: Any) -> bool:
        """Whether ``payload`` passes every filter."""
        return all(getattr(payload, key, None) in accepted for key, accepted in self.filters.items())

    def unsubscribe(self) -> None:
        """End this subscription (idempotent). Safe during a delivery (contract point 4)."""
        self.bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r}, {self.name}, filters={self.filters}, active={self.active})"


class Connection:
    """The subscriptions that connect one participant (a lens, a controller, a sink) to a bus.

    :meth:`disconnect` (or leaving a ``with`` block) ends them all; it is idempotent.
    """

    def __init__(self, participant: object, subscriptions: Iterable[Subscription]) -> None:
        self.participant = participant
        self.subscriptions = tuple(subscriptions)

    @property
    def active(self) -> bool:
        """True while any of the participant's subscriptions is active."""
        return any(subscription.active for subscription in self.subscriptions)

    def disconnect(self) -> None:
        for subscription in self.subscriptions:
            subscription.unsubscribe()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        topics = ", ".join(subscription.topic for subscription in self.subscriptions)
        return f"Connection({type(self.participant).__name__} on {topics}, active={self.active})"


def handler_name(handler: Handler) -> str:
    """``module.qualname`` of a function or bound method; the type's name for other callables."""
    function = getattr(handler, "__func__", handler)
    qualname = getattr(function, "__qualname__", None) or type(handler).__qualname__
    module = getattr(function, "__module__", None) or type(handler).__module__
    return f"{module}.{qualname}"


class EventBus:
    """Synchronous topic bus with per-handler error isolation (the contract is the module docstring).

    Args:
        topics: the topics this bus carries (names must be distinct).
        strict: let a handler's exception propagate out of ``publish``.
        disable_after: consecutive failures after which a handler is
            unsubscribed (``None``: never).
        max_depth: deepest nesting of publications made by handlers.
    """

    def __init__(
        self,
        topics: Iterable[Topic],
        *,
        strict: bool = False,
        disable_after: int | None = 100,
        max_depth: int = 16,
    ) -> None:
        self._topics: dict[str, Topic] = {}
        for topic in topics:
            if not isinstance(topic, Topic):
                raise InvalidInputError("topics", topic, "must hold chronomoe.bus.Topic instances")
            if topic.name in self._topics:
                raise InvalidInputError("topics", topic.name, "is given twice")
            self._topics[topic.name] = topic
        if disable_after is not None and disable_after < 1:
            raise InvalidInputError("disable_after", disable_after, "must be >= 1 or None")
        if max_depth < 1:
            raise InvalidInputError("max_depth", max_depth, "must be >= 1")
        self.strict = strict
        self.disable_after = disable_after
        self.max_depth = max_depth
        self.errors = 0
        self._depth = 0
        self._subscriptions: dict[str, list[Subscription]] = {name: [] for name in self._topics}

    @property
    def topics(self) -> tuple[str, ...]:
        """The names of the topics, in the order given."""
        return tuple(self._topics)

    def topic(self, name: str) -> Topic:
        """The :class:`Topic` called ``name``; an unknown name is refused, listing the known ones."""
        topic = self._topics.get(name)
        if topic is None:
            raise InvalidInputError("topic", name, _choices("must be one of", name, self._topics))
        return topic

    # -- registration -------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, **filters: Any) -> Subscription:
        """Call ``handler(payload)`` for each publication on ``topic`` that passes ``filters``.

        A filter value is one accepted value or a collection of them. Returns
        the subscription (contract points 5 and 6).
        """
        return self._subscribe(topic, handler, filters, relay=False)

    def on(self, topic: str, **filters: Any) -> Callable[[H], H]:
        """Decorator form of :meth:`subscribe`: returns the handler unchanged (undo with :meth:`unsubscribe`).

        ``topic`` and ``filters`` are checked here, before the decorator is applied.
        """
        spec = self.topic(topic)
        for key, value in filters.items():
            self._accepted_values(spec, key, value)

        def register(handler: H) -> H:
            self.subscribe(topic, handler, **filters)
            return handler

        return register

    def unsubscribe(self, handler: Handler, topic: str | None = None) -> int:
        """End ``handler``'s subscription on ``topic`` (default: on every topic); return how many ended."""
        names = self.topics if topic is None else (self.topic(topic).name,)
        ended = [s for name in names for s in self._subscriptions[name] if s.handler == handler]
        for subscription in ended:
            self._remove(subscription)
        return len(ended)

    def connect(self, participant: object) -> Connection:
        """Subscribe each ``on_<topic>`` method of ``participant`` to that topic; return the :class:`Connection`.

        The one verb that joins a lens, a controller or a sink to a bus. What a
        connected method returns is published on the topic whose payload type
        it is (a controller's ``on_snapshot`` returning a ``ControlDecision``
        publishes it on ``"decision"``), a list of such payloads each in turn;
        ``None`` publishes nothing. Refuses a participant with no such method.
        """
        methods = {name: getattr(participant, f"on_{name}", None) for name in self._topics}
        handlers = {name: method for name, method in methods.items() if callable(method)}
        if not handlers:
            raise InvalidInputError(
                "participant", participant, f"has no method on_<topic> for the topics {', '.join(self._topics)}"
            )
        return Connection(participant, [self._subscribe(name, h, {}, relay=True) for name, h in handlers.items()])

    def subscribers(self, topic: str) -> list[Subscription]:
        """Active subscriptions of ``topic``, in delivery order."""
        return list(self._subscriptions[self.topic(topic).name])

    def _subscribe(self, topic: str, handler: Handler, filters: dict[str, Any], relay: bool) -> Subscription:
        spec = self.topic(topic)
        if not callable(handler):
            raise InvalidInputError("handler", handler, "must be callable")
        accepted = {key: self._accepted_values(spec, key, value) for key, value in filters.items()}
        for existing in self._subscriptions[topic]:
            if existing.handler == handler:
                if existing.filters == accepted and existing.relay == relay:
                    return existing
                raise InvalidInputError(
                    "handler",
                    existing.name,
                    f"is already subscribed to {topic!r} with filters {existing.filters}: unsubscribe it first",
                )
        subscription = Subscription(self, topic, handler, accepted, relay)
        self._subscriptions[topic].append(subscription)
        return subscription

    @staticmethod
    def _accepted_values(topic: Topic, key: str, value: Any) -> frozenset[Any]:
        check = topic.filters.get(key)
        if check is None:
            raise InvalidInputError(
                f"filters.{key}",
                value,
                _choices(
                    f"is not a field of {topic.payload_type.__name__} that {topic.name!r} filters on; use",
                    key,
                    topic.filters,
                ),
            )
        values = value if isinstance(value, Collection) and not isinstance(value, (str, bytes)) else (value,)
        accepted = []
        for one in values:
            try:
                accepted.append(check(one))
            except (ValueError, TypeError) as error:
                raise InvalidInputError(f"filters.{key}", one, str(error)) from None
        return frozenset(accepted)

    def _remove(self, subscription: Subscription) -> None:
        subscription.active = False
        subscribers = self._subscriptions[subscription.topic]
        if subscription in subscribers:
            subscribers.remove(subscription)

    # -- delivery -------------------------------------------------------------------
    def publish(self, topic: str, payload: Any) -> int:
        """Deliver ``payload`` to the matching handlers of ``topic``; return how many were called."""
        spec = self.topic(topic)
        if not isinstance(payload, spec.payload_type):
            raise InvalidInputError(
                "payload", type(payload).__name__, f"topic {topic!r} carries {spec.payload_type.__name__} payloads"
            )
        if self._depth >= self.max_depth:
            raise InvalidInputError(
                "publish",
                topic,
                f"nested {self._depth} deep inside handlers (max_depth={self.max_depth}): handlers publish in a cycle",
            )
        self._depth += 1
        try:
            return self._deliver(topic, payload)
        finally:
            self._depth -= 1

    def _deliver(self, topic: str, payload: Any) -> int:
        delivered = 0
        for subscription in tuple(self._subscriptions[topic]):
            if not subscription.active or not subscription.matches(payload):
                continue
            delivered += 1
            try:
                result = subscription.handler(payload)
                if subscription.relay and result is not None:
                    self._relay(subscription, result)
            except Exception:
                if self.strict:
                    raise
                self._record_failure(subscription)
            else:
                subscription.consecutive_failures = 0
        return delivered

    def _relay(self, subscription: Subscription, result: Any) -> None:
        """Publish what a connected method returned on the topic of its payload type."""
        for item in result if isinstance(result, (list, tuple)) else (result,):
            topic = next((t.name for t in self._topics.values() if isinstance(item, t.payload_type)), None)
            if topic is None:
                raise InvalidInputError(
                    f"{subscription.name} return value",
                    type(item).__name__,
                    "is not the payload of any topic of this bus (return None to publish nothing)",
                )
            self.publish(topic, item)

    def _record_failure(self, subscription: Subscription) -> None:
        self.errors += 1
        subscription.consecutive_failures += 1
        logger.exception("handler %s failed on topic %r", subscription.name, subscription.topic)
        if self.disable_after is not None and subscription.consecutive_failures >= self.disable_after:
            logger.error(
                "handler %s raised %d times in a row on topic %r; unsubscribed",
                subscription.name,
                subscription.consecutive_failures,
                subscription.topic,
            )
            self._remove(subscription)


def _choices(prefix: str, given: str, valid: Iterable[str]) -> str:
    """``prefix`` and the valid names, with the closest one to ``given`` first when there is one."""
    valid = list(valid)
    close = difflib.get_close_matches(str(given), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{prefix} {', '.join(valid)}{hint}"
