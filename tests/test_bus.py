"""The EventBus contract (the numbered points of ``chronomoe/bus.py``'s docstring), one test per behaviour.

Generic behaviour is pinned on a bus of two plain topics (``tick`` carries
ints, ``word`` carries strings); filters and the monitor's own guarantees on
the monitor's topics with real payloads.
"""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from chronomoe import AlertRules, AlertState, AlertTransition, EventBus, InvalidInputError, Monitor, Topic
from chronomoe.controller import ControlDecision
from chronomoe.topics import MONITOR_TOPICS, monitor_bus

TICK = Topic("tick", int)
WORD = Topic("word", str)


def plain_bus(**options) -> EventBus:
    return EventBus([TICK, WORD], **options)


def failing(payload):
    raise RuntimeError(f"handler failed on {payload!r}")


def transition(layer_id: int = 0, source: str = "nominal", dest: str = "pre_collapse", mode: str = "TRAIN"):
    return AlertTransition(
        run_id="run",
        step=1,
        mode=mode,
        layer_id=layer_id,
        source=source,
        dest=dest,
        trigger="warn",
        pre_streak=1,
        collapse_streak=0,
        healthy_streak=0,
        metrics={},
    )


def decision(layer_id: int | None = None, step: int = 1) -> ControlDecision:
    return ControlDecision(controller="test", trigger="snapshot", step=step, layer_id=layer_id)


# -- 1. order ---------------------------------------------------------------------------------------


def test_delivery_is_synchronous_on_the_publishing_thread_in_subscription_order():
    bus = plain_bus()
    calls = []
    for name in ("first", "second", "third"):
        bus.subscribe("tick", lambda payload, name=name: calls.append((name, payload, threading.get_ident())))
    delivered = bus.publish("tick", 7)
    me = threading.get_ident()
    assert calls == [("first", 7, me), ("second", 7, me), ("third", 7, me)]
    assert delivered == 3


def test_topics_are_delivered_separately():
    bus = plain_bus()
    calls = []
    bus.subscribe("tick", calls.append)
    bus.publish("word", "hello")
    assert calls == []


def test_monitor_publishes_a_snapshots_transitions_in_layer_order_before_the_snapshot(rows):
    monitor = Monitor("run", rules=AlertRules(pre_persistence=1))
    seen = []
    monitor.bus.subscribe("transition", lambda t: seen.append(("transition", t.layer_id)))
    monitor.bus.subscribe("snapshot", lambda s: seen.append(("snapshot", s.step)))
    monitor.observe([rows.concentrated, rows.balanced, rows.collapsing, rows.concentrated], step=1)
    assert seen == [("transition", 0), ("transition", 2), ("transition", 3), ("snapshot", 1)]


# -- 2. re-entrant publishing -------------------------------------------------------------------------


def test_a_publication_made_by_a_handler_is_delivered_whole_before_the_outer_delivery_goes_on():
    bus = plain_bus()
    calls = []
    bus.subscribe("tick", lambda n: (calls.append(("outer-1", n)), bus.publish("word", f"from {n}")))
    bus.subscribe("tick", lambda n: calls.append(("outer-2", n)))
    bus.subscribe("word", lambda w: calls.append(("inner-a", w)))
    bus.subscribe("word", lambda w: calls.append(("inner-b", w)))
    bus.publish("tick", 1)
    assert calls == [("outer-1", 1), ("inner-a", "from 1"), ("inner-b", "from 1"), ("outer-2", 1)]


def test_handlers_publishing_in_a_cycle_are_stopped_at_max_depth_with_a_named_error(caplog):
    bus = plain_bus(max_depth=5)
    depth = []
    bus.subscribe("tick", lambda n: (depth.append(n), bus.publish("tick", n + 1)))
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        bus.publish("tick", 1)
    assert depth == [1, 2, 3, 4, 5]
    assert "max_depth=5" in caplog.text
    assert bus.errors == 1  # the innermost handler, whose publish raised; the enclosing ones completed


def test_a_connected_controllers_decision_reaches_decision_handlers_before_the_next_snapshot_handler(rows):
    monitor = Monitor("run", controller=None, lens=None)
    order = []

    class Controller:
        def on_snapshot(self, snapshot):
            order.append("controller")
            return decision(step=snapshot.step)

        def on_transition(self, transition):
            return None

    monitor.set_controller(Controller())
    monitor.bus.subscribe("decision", lambda d: order.append("decision handler"))
    monitor.bus.subscribe("snapshot", lambda s: order.append("later snapshot handler"))
    monitor.observe([rows.balanced], step=1)
    assert order == ["controller", "decision handler", "later snapshot handler"]


# -- 3. isolation -------------------------------------------------------------------------------------


def test_a_failing_handler_does_not_stop_the_others_nor_the_caller():
    bus = plain_bus()
    calls = []
    bus.subscribe("tick", calls.append)
    bus.subscribe("tick", failing)
    bus.subscribe("tick", lambda n: calls.append(-n))
    assert bus.publish("tick", 1) == 3
    assert calls == [1, -1]
    assert bus.errors == 1


def test_a_handler_failure_is_logged_with_its_traceback_under_the_handlers_qualified_name(caplog):
    bus = plain_bus()
    bus.subscribe("word", failing)
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        bus.publish("word", "S")
    (record,) = [r for r in caplog.records if r.name == "chronomoe.bus"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert f"{__name__}.failing" in record.getMessage()
    assert "Traceback" in caplog.text and "handler failed on 'S'" in caplog.text


def test_a_failing_controller_is_logged_under_its_own_method_name(caplog, rows):
    class BrokenController:
        def on_snapshot(self, snapshot):
            raise RuntimeError("bad decision")

        def on_transition(self, transition):
            return None

    monitor = Monitor("run", controller=BrokenController(), lens=None)
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        monitor.observe([rows.balanced], step=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "chronomoe.bus"]
    assert messages == [
        f"handler {__name__}.test_a_failing_controller_is_logged_under_its_own_method_name.<locals>"
        ".BrokenController.on_snapshot failed on topic 'snapshot'"
    ]


def test_errors_count_every_failure():
    bus = plain_bus()
    bus.subscribe("tick", failing)
    bus.subscribe("word", failing)
    for step in range(3):
        bus.publish("tick", step)
    bus.publish("word", "D")
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
    bus = plain_bus(strict=True)
    calls = []
    bus.subscribe("tick", failing)
    bus.subscribe("tick", calls.append)
    with pytest.raises(RuntimeError, match="handler failed"):
        bus.publish("tick", 1)
    assert calls == []


def test_a_monitor_with_strict_handlers_propagates_handler_exceptions(rows):
    monitor = Monitor("run", strict_handlers=True)
    monitor.bus.subscribe("snapshot", failing)
    with pytest.raises(RuntimeError, match="handler failed"):
        monitor.observe([rows.balanced], step=0)


def test_a_handler_failing_disable_after_times_in_a_row_is_unsubscribed(caplog):
    bus = plain_bus(disable_after=3)
    attempts = []

    def always_failing(payload):
        attempts.append(payload)
        raise RuntimeError("broken")

    subscription = bus.subscribe("tick", always_failing)
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        for step in range(5):
            bus.publish("tick", step)
    assert attempts == [0, 1, 2]
    assert not subscription.active and bus.subscribers("tick") == []
    assert "unsubscribed" in caplog.text
    assert bus.errors == 3


def test_a_success_resets_the_consecutive_failure_count():
    bus = plain_bus(disable_after=2)
    outcomes = iter([True, False, True, False, True])
    attempts = []

    def sometimes_failing(payload):
        attempts.append(payload)
        if next(outcomes):
            raise RuntimeError("flaky")

    bus.subscribe("tick", sometimes_failing)
    for step in range(5):
        bus.publish("tick", step)
    assert attempts == [0, 1, 2, 3, 4]
    assert bus.errors == 3


def test_disable_after_none_never_unsubscribes():
    bus = plain_bus(disable_after=None)
    subscription = bus.subscribe("tick", failing)
    for step in range(200):
        bus.publish("tick", step)
    assert subscription.active and bus.errors == 200


# -- 4. changes during a delivery ------------------------------------------------------------------------


def test_a_handler_subscribed_during_a_delivery_receives_the_next_publication():
    bus = plain_bus()
    late = []

    def subscribe_late(payload):
        if payload == 1:
            bus.subscribe("tick", late.append)

    bus.subscribe("tick", subscribe_late)
    bus.publish("tick", 1)
    assert late == []
    bus.publish("tick", 2)
    assert late == [2]


def test_a_handler_unsubscribed_during_a_delivery_is_not_called_again_not_even_later_in_it():
    bus = plain_bus()
    calls = []
    later = None

    def unsubscribe_later(payload):
        calls.append(("first", payload))
        later.unsubscribe()

    bus.subscribe("tick", unsubscribe_later)
    later = bus.subscribe("tick", lambda payload: calls.append(("later", payload)))
    bus.publish("tick", 1)
    bus.publish("tick", 2)
    assert calls == [("first", 1), ("first", 2)]


def test_a_handler_may_unsubscribe_itself_during_delivery():
    bus = plain_bus()
    calls = []
    subscription = None

    def once(payload):
        calls.append(("once", payload))
        subscription.unsubscribe()

    subscription = bus.subscribe("tick", once)
    bus.subscribe("tick", lambda payload: calls.append(("other", payload)))
    bus.publish("tick", 1)
    bus.publish("tick", 2)
    assert calls == [("once", 1), ("other", 1), ("other", 2)]


# -- 5. every registration is undoable ----------------------------------------------------------------------


def test_the_subscription_handle_unsubscribes_and_a_second_unsubscribe_does_nothing():
    bus = plain_bus()
    calls = []
    subscription = bus.subscribe("tick", calls.append)
    bus.publish("tick", 1)
    subscription.unsubscribe()
    bus.publish("tick", 2)
    subscription.unsubscribe()
    assert calls == [1]
    assert not subscription.active


def test_the_subscription_is_a_context_manager_that_unsubscribes_on_exit():
    bus = plain_bus()
    calls = []
    with bus.subscribe("tick", calls.append):
        bus.publish("tick", 1)
    bus.publish("tick", 2)
    assert calls == [1]


def test_unsubscribe_by_handler_undoes_the_decorator_form():
    bus = plain_bus()
    calls = []

    @bus.on("tick")
    def handler(payload):
        calls.append(payload)

    bus.publish("tick", 1)
    assert bus.unsubscribe(handler) == 1
    bus.publish("tick", 2)
    assert calls == [1]
    assert bus.unsubscribe(handler) == 0


def test_unsubscribe_by_handler_is_limited_to_the_topic_given():
    bus = plain_bus()
    calls = []
    bus.subscribe("tick", calls.append)
    bus.subscribe("word", calls.append)
    assert bus.unsubscribe(calls.append, topic="tick") == 1
    bus.publish("tick", 1)
    bus.publish("word", "w")
    assert calls == ["w"]


def test_a_connection_disconnects_every_method_of_its_participant():
    bus = plain_bus()

    class Participant:
        def __init__(self):
            self.seen = []

        def on_tick(self, n):
            self.seen.append(n)

        def on_word(self, w):
            self.seen.append(w)

    participant = Participant()
    connection = bus.connect(participant)
    bus.publish("tick", 1)
    bus.publish("word", "a")
    connection.disconnect()
    bus.publish("tick", 2)
    bus.publish("word", "b")
    assert participant.seen == [1, "a"]
    assert not connection.active
    connection.disconnect()


def test_connect_refuses_a_participant_without_any_on_topic_method(assert_rejected):
    assert_rejected(lambda: plain_bus().connect(object()), "participant", "on_<topic>")


def test_a_connected_method_returning_a_payload_of_another_topic_publishes_it():
    bus = plain_bus()
    words = []

    class Echo:
        def on_tick(self, n):
            return [f"tick {n}", f"again {n}"]

    bus.connect(Echo())
    bus.subscribe("word", words.append)
    bus.publish("tick", 3)
    assert words == ["tick 3", "again 3"]


def test_a_connected_method_returning_something_no_topic_carries_is_a_handler_failure(caplog):
    bus = plain_bus()

    class Wrong:
        def on_tick(self, n):
            return 2.5

    bus.connect(Wrong())
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        bus.publish("tick", 1)
    assert bus.errors == 1
    assert "is not the payload of any topic" in caplog.text


def test_the_monitors_controller_and_lens_can_be_replaced_and_detached_at_run_time(rows):
    monitor = Monitor("run")
    first_controller, first_lens = monitor.controller, monitor.lens
    monitor.observe([rows.balanced], step=1)
    assert first_controller.decisions == 1 and first_lens.state.step == 1

    from chronomoe import IdentityLens, NoOpController

    second_controller, second_lens = NoOpController(), IdentityLens()
    monitor.set_controller(second_controller)
    monitor.set_lens(second_lens)
    monitor.observe([rows.balanced], step=2)
    assert (first_controller.decisions, second_controller.decisions) == (1, 1)
    assert (first_lens.state.step, second_lens.state.step) == (1, 2)

    monitor.set_controller(None)
    monitor.set_lens(None)
    monitor.observe([rows.balanced], step=3)
    assert second_controller.decisions == 1 and second_lens.state.step == 2
    assert [s.name for s in monitor.bus.subscribers("snapshot")] == []


# -- 6. one subscription per handler and topic --------------------------------------------------------------


def test_subscribing_the_same_handler_again_with_the_same_filters_is_idempotent():
    bus = plain_bus()
    calls = []
    first = bus.subscribe("tick", calls.append)
    second = bus.subscribe("tick", calls.append)
    bus.publish("tick", 1)
    assert first is second
    assert calls == [1]


def test_subscribing_the_same_handler_with_other_filters_is_refused(assert_rejected):
    bus = monitor_bus()
    handler = print
    bus.subscribe("transition", handler, layer_id=1)
    assert_rejected(lambda: bus.subscribe("transition", handler, layer_id=2), "handler", "already subscribed")


# -- 7. strong references ---------------------------------------------------------------------------------------


def test_a_lambda_with_no_other_reference_stays_subscribed():
    bus = plain_bus()
    calls = []
    bus.subscribe("tick", lambda n: calls.append(n))
    gc.collect()
    bus.publish("tick", 1)
    assert calls == [1]


# -- 8. early, named errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda bus: bus.subscribe("snapshots", print),
        lambda bus: bus.on("snapshots"),
        lambda bus: bus.publish("snapshots", 1),
        lambda bus: bus.subscribers("snapshots"),
        lambda bus: bus.unsubscribe(print, topic="snapshots"),
    ],
    ids=["subscribe", "on", "publish", "subscribers", "unsubscribe"],
)
def test_an_unknown_topic_is_refused_everywhere_listing_the_known_ones(assert_rejected, call):
    bus = monitor_bus()
    error = assert_rejected(lambda: call(bus), "topic", "'snapshots'")
    assert "transition, snapshot, decision" in str(error) and "did you mean 'snapshot'" in str(error)


def test_a_filter_that_is_not_a_field_of_the_topics_payload_is_refused(assert_rejected):
    error = assert_rejected(
        lambda: monitor_bus().subscribe("snapshot", print, dest="collapse_confirmed"),
        "filters.dest",
        "collapse_confirmed",
    )
    assert "SystemSnapshot" in str(error) and "mode" in str(error)


def test_a_filter_with_a_close_name_suggests_it(assert_rejected):
    error = assert_rejected(lambda: monitor_bus().subscribe("transition", print, layer=3), "filters.layer", "3")
    assert "did you mean 'layer_id'" in str(error)


@pytest.mark.parametrize(
    "filters, field",
    [
        ({"dest": "colapse_confirmed"}, "filters.dest"),
        ({"source": ["nominal", "collapsed"]}, "filters.source"),
        ({"mode": "train"}, "filters.mode"),
        ({"layer_id": -1}, "filters.layer_id"),
        ({"layer_id": "3"}, "filters.layer_id"),
    ],
)
def test_a_filter_value_the_field_can_never_hold_is_refused(assert_rejected, filters, field):
    assert_rejected(lambda: monitor_bus().subscribe("transition", print, **filters), field)


def test_a_handler_that_is_not_callable_is_refused():
    with pytest.raises(InvalidInputError, match="handler"):
        plain_bus().subscribe("tick", "print")


def test_a_payload_of_the_wrong_type_is_refused_naming_the_topics_type(assert_rejected):
    error = assert_rejected(lambda: monitor_bus().publish("snapshot", "S"), "payload", "str")
    assert "SystemSnapshot" in str(error)


def test_topics_must_be_distinct_topic_objects(assert_rejected):
    assert_rejected(lambda: EventBus([TICK, TICK]), "topics", "tick")
    assert_rejected(lambda: EventBus(["tick"]), "topics", "tick")


# -- filters -----------------------------------------------------------------------------------------------------


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
def test_filters_select_payloads_by_field(filters, expected_layers):
    bus = monitor_bus()
    seen = []
    bus.subscribe("transition", lambda t: seen.append(t.layer_id), **filters)
    for payload in (
        transition(0, "nominal", "pre_collapse", mode="INFER"),
        transition(1, "pre_collapse", "nominal"),
        transition(2, "pre_collapse", "collapse_confirmed"),
    ):
        bus.publish("transition", payload)
    assert seen == expected_layers


def test_decision_filters_select_by_layer():
    bus = monitor_bus()
    seen = []
    bus.subscribe("decision", lambda d: seen.append(d.layer_id), layer_id=3)
    for layer in (None, 3, 4):
        bus.publish("decision", decision(layer))
    assert seen == [3]


def test_a_filtered_handler_is_not_counted_as_delivered():
    bus = monitor_bus()
    bus.subscribe("transition", lambda t: None, layer_id=5)
    assert bus.publish("transition", transition(0)) == 0


def test_the_monitor_bus_has_the_documented_topics_in_order():
    assert (
        monitor_bus().topics
        == ("transition", "snapshot", "decision", "expert_health")
        == tuple(t.name for t in MONITOR_TOPICS)
    )


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


def test_subscribers_lists_active_subscriptions_in_delivery_order():
    bus = plain_bus()
    first = bus.subscribe("word", print)
    second = bus.subscribe("word", repr)
    assert bus.subscribers("word") == [first, second]
    first.unsubscribe()
    assert bus.subscribers("word") == [second]


# -- stopping the run ------------------------------------------------------------------------------------------------


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
