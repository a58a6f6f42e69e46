"""EventBus guarantees (the numbered list in ``chronomoe/bus.py``'s docstring), one test each, and its API."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from chronomoe import AlertRules, AlertState, EventBus, InvalidInputError, Monitor


def transition(layer_id: int = 0, source: str = "nominal", dest: str = "pre_collapse", mode: str = "TRAIN"):
    """A stand-in payload: filters match attributes by name."""
    return SimpleNamespace(layer_id=layer_id, source=AlertState(source), dest=AlertState(dest), mode=mode)


def failing(payload):
    raise RuntimeError(f"handler failed on {payload!r}")


# -- 1. synchronous, in subscription order -----------------------------------------------------


def test_delivery_is_synchronous_on_the_publishing_thread_in_subscription_order():
    bus = EventBus()
    calls = []
    for name in ("first", "second", "third"):
        bus.subscribe("snapshot", lambda payload, name=name: calls.append((name, payload, threading.get_ident())))
    delivered = bus.publish("snapshot", "S")
    me = threading.get_ident()
    assert calls == [("first", "S", me), ("second", "S", me), ("third", "S", me)]
    assert delivered == 3


def test_topics_are_delivered_separately():
    bus = EventBus()
    calls = []
    bus.subscribe("snapshot", calls.append)
    bus.publish("decision", "D")
    assert calls == []


# -- 2. a snapshot's transitions, in layer order, before the snapshot ----------------------------


def test_monitor_publishes_a_snapshots_transitions_in_layer_order_before_the_snapshot(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1))
    seen = []
    monitor.bus.subscribe("transition", lambda t: seen.append(("transition", t.layer_id)))
    monitor.bus.subscribe("snapshot", lambda s: seen.append(("snapshot", s.step)))
    monitor.observe([rows.concentrated, rows.balanced, rows.collapsing, rows.concentrated], step=1)
    assert seen == [("transition", 0), ("transition", 2), ("transition", 3), ("snapshot", 1)]


# -- 3. error isolation ---------------------------------------------------------------------------


def test_a_failing_handler_does_not_stop_the_others_nor_the_caller():
    bus = EventBus()
    calls = []
    bus.subscribe("snapshot", calls.append)
    bus.subscribe("snapshot", failing)
    bus.subscribe("snapshot", calls.append)
    assert bus.publish("snapshot", "S") == 3
    assert calls == ["S", "S"]
    assert bus.errors == 1


def test_a_handler_failure_is_logged_with_its_traceback(caplog):
    bus = EventBus()
    bus.subscribe("snapshot", failing)
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        bus.publish("snapshot", "S")
    (record,) = [r for r in caplog.records if r.name == "chronomoe.bus"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text and "handler failed on 'S'" in caplog.text


def test_errors_count_every_failure():
    bus = EventBus()
    bus.subscribe("snapshot", failing)
    bus.subscribe("decision", failing)
    for _ in range(3):
        bus.publish("snapshot", "S")
    bus.publish("decision", "D")
    assert bus.errors == 4


def test_a_failing_user_handler_does_not_stop_the_training_loop(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1))
    monitor.bus.subscribe("transition", failing)
    monitor.bus.subscribe("snapshot", failing)
    received = []
    monitor.bus.subscribe("snapshot", received.append)
    snapshot = monitor.observe([rows.collapsing], step=0)
    assert received == [snapshot]
    assert monitor.bus.errors == 2
    assert monitor.lens.state.step == 0  # the built-in subscribers still ran


def test_a_strict_bus_propagates_the_exception_and_skips_the_remaining_handlers():
    bus = EventBus(strict=True)
    calls = []
    bus.subscribe("snapshot", failing)
    bus.subscribe("snapshot", calls.append)
    with pytest.raises(RuntimeError, match="handler failed"):
        bus.publish("snapshot", "S")
    assert calls == []


def test_a_monitor_with_strict_handlers_propagates_handler_exceptions(rows):
    monitor = Monitor("run", strict_handlers=True)
    monitor.bus.subscribe("snapshot", failing)
    with pytest.raises(RuntimeError, match="handler failed"):
        monitor.observe([rows.balanced], step=0)


# -- 4. disable_after -------------------------------------------------------------------------------


def test_a_handler_failing_disable_after_times_in_a_row_is_unsubscribed(caplog):
    bus = EventBus(disable_after=3)
    attempts = []

    def always_failing(payload):
        attempts.append(payload)
        raise RuntimeError("broken")

    subscription = bus.subscribe("snapshot", always_failing)
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        for step in range(5):
            bus.publish("snapshot", step)
    assert attempts == [0, 1, 2]
    assert not subscription.active and bus.subscribers("snapshot") == []
    assert "unsubscribed" in caplog.text
    assert bus.errors == 3


def test_a_success_resets_the_consecutive_failure_count():
    bus = EventBus(disable_after=2)
    outcomes = iter([True, False, True, False, True])
    attempts = []

    def sometimes_failing(payload):
        attempts.append(payload)
        if next(outcomes):
            raise RuntimeError("flaky")

    bus.subscribe("snapshot", sometimes_failing)
    for step in range(5):
        bus.publish("snapshot", step)
    assert attempts == [0, 1, 2, 3, 4]
    assert bus.errors == 3


def test_disable_after_none_never_unsubscribes():
    bus = EventBus(disable_after=None)
    subscription = bus.subscribe("snapshot", failing)
    for step in range(200):
        bus.publish("snapshot", step)
    assert subscription.active and bus.errors == 200


# -- 5. subscribing and unsubscribing during a delivery --------------------------------------------


def test_a_handler_subscribed_during_a_delivery_receives_the_next_publication():
    bus = EventBus()
    late = []

    def subscribe_late(payload):
        if payload == 1:
            bus.subscribe("snapshot", late.append)

    bus.subscribe("snapshot", subscribe_late)
    bus.publish("snapshot", 1)
    assert late == []
    bus.publish("snapshot", 2)
    assert late == [2]


def test_a_handler_unsubscribed_during_a_delivery_is_not_called_again_not_even_later_in_it():
    bus = EventBus()
    calls = []
    later = None

    def unsubscribe_later(payload):
        calls.append(("first", payload))
        later.unsubscribe()

    bus.subscribe("snapshot", unsubscribe_later)
    later = bus.subscribe("snapshot", lambda payload: calls.append(("later", payload)))
    bus.publish("snapshot", 1)
    bus.publish("snapshot", 2)
    assert calls == [("first", 1), ("first", 2)]


def test_a_handler_may_unsubscribe_itself_during_delivery():
    bus = EventBus()
    calls = []
    subscription = None

    def once(payload):
        calls.append(("once", payload))
        subscription.unsubscribe()

    subscription = bus.subscribe("snapshot", once)
    bus.subscribe("snapshot", lambda payload: calls.append(("other", payload)))
    bus.publish("snapshot", 1)
    bus.publish("snapshot", 2)
    assert calls == [("once", 1), ("other", 1), ("other", 2)]


# -- filters --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters, expected_layers",
    [
        ({"layer_id": 1}, [1]),
        ({"layer_id": {0, 2}}, [0, 2]),
        ({"layer_id": [2, 3]}, [2]),
        ({"dest": "collapse_confirmed"}, [2]),
        ({"dest": AlertState.COLLAPSE_CONFIRMED}, [2]),
        ({"source": "pre_collapse"}, [1, 2]),
        ({"source": ("pre_collapse",), "dest": "nominal"}, [1]),
        ({"mode": "INFER"}, [0]),
    ],
)
def test_filters_select_payloads_by_attribute(filters, expected_layers):
    bus = EventBus()
    seen = []
    bus.subscribe("transition", lambda t: seen.append(t.layer_id), **filters)
    for payload in (
        transition(0, "nominal", "pre_collapse", mode="INFER"),
        transition(1, "pre_collapse", "nominal"),
        transition(2, "pre_collapse", "collapse_confirmed"),
    ):
        bus.publish("transition", payload)
    assert seen == expected_layers


def test_a_filtered_handler_is_not_counted_as_delivered():
    bus = EventBus()
    bus.subscribe("transition", lambda t: None, layer_id=5)
    assert bus.publish("transition", transition(0)) == 0


def test_decorator_subscribes_and_returns_the_handler_unchanged(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1, confirm_persistence=2))
    confirmed = []

    @monitor.bus.on("transition", dest="collapse_confirmed")
    def page_someone(transition):
        confirmed.append((transition.layer_id, transition.step))

    assert callable(page_someone) and page_someone.__name__ == "page_someone"
    for step in range(3):
        monitor.observe([rows.balanced, rows.collapsing], step=step)
    assert confirmed == [(1, 1)]


# -- unsubscribe handle ---------------------------------------------------------------------------


def test_the_subscription_handle_unsubscribes():
    bus = EventBus()
    calls = []
    subscription = bus.subscribe("snapshot", calls.append)
    bus.publish("snapshot", 1)
    subscription.unsubscribe()
    bus.publish("snapshot", 2)
    assert calls == [1]
    assert not subscription.active
    subscription.unsubscribe()  # a second unsubscribe is harmless


def test_the_subscription_is_a_context_manager_that_unsubscribes_on_exit():
    bus = EventBus()
    calls = []
    with bus.subscribe("snapshot", calls.append):
        bus.publish("snapshot", 1)
    bus.publish("snapshot", 2)
    assert calls == [1]


def test_subscribers_lists_active_subscriptions_in_delivery_order():
    bus = EventBus()
    first = bus.subscribe("decision", print)
    second = bus.subscribe("decision", repr)
    assert bus.subscribers("decision") == [first, second]
    first.unsubscribe()
    assert bus.subscribers("decision") == [second]


# -- bad subscriptions ----------------------------------------------------------------------------


def test_an_unknown_topic_is_refused(assert_rejected):
    assert_rejected(lambda: EventBus().subscribe("alert", print), "topic", "'alert'")


def test_an_unknown_filter_is_refused(assert_rejected):
    assert_rejected(lambda: EventBus().subscribe("transition", print, layer=3), "filters.layer", "3")


def test_a_handler_that_is_not_callable_is_refused():
    with pytest.raises(InvalidInputError, match="handler"):
        EventBus().subscribe("snapshot", "print")


def test_the_decorator_refuses_an_unknown_topic_when_applied():
    with pytest.raises(InvalidInputError, match="topic"):
        EventBus().on("snapshots")(print)


# -- stopping the run ------------------------------------------------------------------------------


def test_a_handler_can_ask_the_run_to_stop(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1, confirm_persistence=2))
    monitor.bus.subscribe(
        "transition", lambda t: monitor.request_stop(f"layer {t.layer_id} collapsed"), dest="collapse_confirmed"
    )
    monitor.observe([rows.collapsing], step=0)
    assert not monitor.should_stop
    monitor.observe([rows.collapsing], step=1)
    assert monitor.should_stop
    assert monitor.stop_reason == "layer 0 collapsed"


def test_the_first_stop_reason_is_kept():
    monitor = Monitor("run")
    monitor.request_stop("first")
    monitor.request_stop("second")
    assert monitor.stop_reason == "first"
