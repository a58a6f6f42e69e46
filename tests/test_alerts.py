"""Alert rules and the per-layer alert state machine.

The hypothesis tests drive machines with sequences of per-layer conditions
(pre?, collapse?, no_data?) and compare them with ``reference_alert_run``
(conftest), a plain re-statement of the rules that does not call the library.
Machines are driven two ways: ``AlertMachine.observe(pre, collapse)``
directly (a no-data snapshot is a skipped call), and through ``Monitor`` /
``SystemSnapshot`` with counts rows that make each condition true or false
(``counts_for``, under ``condition_rules``' thresholds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transitions
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chronomoe import AlertRules, AlertState, AlertTransition, Monitor, SystemSnapshot
from chronomoe.alerts import AlertBank, AlertMachine
from chronomoe.alerts.history import alert_history_of
from chronomoe.alerts.machine import STATE_TABLE

SPECS = Path(__file__).resolve().parent.parent / "specs"

SEED_TABLE = {
    "neff_ratio": 0.6,
    "pre_top2": 0.75,
    "pre_persistence": 3,
    "confirm_top2": 0.85,
    "confirm_min_dead": 1,
    "confirm_persistence": 5,
    "resolve_persistence": 1,
}

# -- strategies -----------------------------------------------------------------------------

NO_DATA = (False, False, True)
condition = st.sampled_from([(False, False, False), (True, False, False), (False, True, False), (True, True, False)])


@st.composite
def condition_sequences(draw, length: int) -> list[tuple[bool, bool, bool]]:
    """``length`` snapshots' (pre, collapse, no_data), in runs of 1..7 so persistences are reached."""
    sequence: list[tuple[bool, bool, bool]] = []
    while len(sequence) < length:
        held = draw(st.one_of(condition, st.just(NO_DATA)))
        sequence += [held] * draw(st.integers(1, 7))
    return sequence[:length]


@st.composite
def layered_runs(draw, max_layers: int = 3, max_length: int = 30) -> list[list[tuple[bool, bool, bool]]]:
    """Per snapshot, per layer (pre, collapse, no_data): ``[snapshot][layer]``."""
    n_layers = draw(st.integers(1, max_layers))
    length = draw(st.integers(1, max_length))
    per_layer = [draw(condition_sequences(length)) for _ in range(n_layers)]
    return [list(snapshot) for snapshot in zip(*per_layer, strict=True)]


persistences = st.fixed_dictionaries(
    {
        "pre_persistence": st.integers(1, 6),
        "confirm_persistence": st.integers(1, 6),
        "resolve_persistence": st.integers(1, 3),
    }
)


def expected_trigger(source: str, dest: str) -> str:
    if dest == "collapse_confirmed":
        return "confirm"
    return "warn" if source == "nominal" else "resolve"


def layer_column(run: list[list[tuple[bool, bool, bool]]], layer: int) -> list[tuple[bool, bool, bool]]:
    return [snapshot[layer] for snapshot in run]


def state_of(layer) -> dict:
    """The alert part of a LayerSnapshot, in reference_alert_run's form."""
    return {
        "state": layer.alert_state.value,
        "pre_streak": layer.pre_streak,
        "collapse_streak": layer.collapse_streak,
        "healthy_streak": layer.healthy_streak,
    }


def observe_conditions(machine: AlertMachine, conditions) -> list[dict]:
    """Feed conditions to a machine (skipping no-data snapshots); its state_dict after each."""
    states = []
    for pre, collapse, no_data in conditions:
        if not no_data:
            machine.observe(pre, collapse)
        states.append(machine.state_dict())
    return states


# -- AlertRules ------------------------------------------------------------------------------


def test_default_rules_are_the_seed_table():
    assert AlertRules().model_dump() == SEED_TABLE


def test_default_rules_come_from_the_specs_file():
    assert json.loads((SPECS / "default_rules.json").read_text()) == SEED_TABLE
    assert AlertRules.default() == AlertRules.from_file(SPECS / "default_rules.json") == AlertRules()


def test_rules_load_from_a_json_file_and_missing_keys_take_defaults(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text('{"resolve_persistence": 2, "pre_top2": 0.7}')
    assert AlertRules.from_file(path) == AlertRules(**{**SEED_TABLE, "resolve_persistence": 2, "pre_top2": 0.7})


INVALID_RULES = [
    ("pre_persistence", 0),
    ("confirm_persistence", -1),
    ("resolve_persistence", 0),
    ("confirm_min_dead", 0),
    ("pre_persistence", 2.5),
    ("neff_ratio", 0),
    ("neff_ratio", 1.5),
    ("pre_top2", -0.1),
    ("confirm_top2", 1.01),
]


@pytest.mark.parametrize("field, value", INVALID_RULES)
def test_invalid_rules_file_is_refused_naming_the_file_and_field(tmp_path, assert_rejected, field, value):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({field: value}))
    error = assert_rejected(lambda: AlertRules.from_file(path), f"{path}:{field}", str(value))
    assert error.field == f"{path}:{field}"


@pytest.mark.parametrize("field, value", INVALID_RULES)
def test_invalid_rules_are_refused_at_construction(field, value):
    with pytest.raises(ValidationError, match=field):
        AlertRules(**{field: value})


def test_unknown_rule_is_refused(tmp_path, assert_rejected):
    path = tmp_path / "rules.json"
    path.write_text('{"pre_persistance": 3}')
    assert_rejected(lambda: AlertRules.from_file(path), f"{path}:pre_persistance", "3")


def test_malformed_rules_file_is_refused_naming_the_file(tmp_path, assert_rejected):
    path = tmp_path / "rules.json"
    path.write_text('{"pre_top2": ')
    assert_rejected(lambda: AlertRules.from_file(path), str(path), "JSON")


def test_missing_rules_file_is_refused_naming_the_file(tmp_path, assert_rejected):
    assert_rejected(lambda: AlertRules.from_file(tmp_path / "absent.json"), "rules_file", "absent.json")


def test_ratios_of_exactly_one_are_accepted():
    assert AlertRules(neff_ratio=1.0, pre_top2=1.0, confirm_top2=1.0).neff_ratio == 1.0


@given(
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
    st.integers(1, 100),
    st.integers(1, 100),
    st.integers(1, 100),
    st.integers(1, 100),
)
def test_rules_json_round_trip_is_lossless(neff_ratio, pre_top2, confirm_top2, pre, confirm, dead, resolve):
    rules = AlertRules(
        neff_ratio=neff_ratio,
        pre_top2=pre_top2,
        confirm_top2=confirm_top2,
        pre_persistence=pre,
        confirm_persistence=confirm,
        confirm_min_dead=dead,
        resolve_persistence=resolve,
    )
    assert AlertRules.model_validate_json(rules.model_dump_json()) == rules


UNDER_DEFAULT_RULES = {
    (False, False): (False, False),
    (True, False): (True, False),
    (False, True): (False, False),
    (True, True): (True, True),
}
"""(pre, collapse) each CONDITION_COUNTS row meets under the seed's thresholds (conftest's docstring)."""


@pytest.mark.parametrize("thresholds", ["condition", "default"])
def test_condition_counts_meet_the_conditions_they_are_named_for(
    condition_counts, condition_rules, reference_metrics, thresholds
):
    rules = condition_rules() if thresholds == "condition" else AlertRules()
    for name, counts in condition_counts.items():
        metrics = reference_metrics(counts)
        pre = metrics["n_effective"] < rules.neff_ratio * len(counts) or (
            metrics["top2_share"] > rules.pre_top2 and len(counts) > 2
        )
        collapse = metrics["dead_expert_count"] >= rules.confirm_min_dead and metrics["top2_share"] > rules.confirm_top2
        assert (pre, collapse) == (name if thresholds == "condition" else UNDER_DEFAULT_RULES[name])


# -- AlertMachine by example -------------------------------------------------------------------


def test_a_new_machine_is_nominal_with_zero_streaks():
    assert AlertMachine().state_dict() == {
        "state": "nominal",
        "pre_streak": 0,
        "collapse_streak": 0,
        "healthy_streak": 0,
    }


def test_alert_states_are_strings():
    assert [state.value for state in AlertState] == ["nominal", "pre_collapse", "collapse_confirmed"]
    assert AlertState.PRE_COLLAPSE == "pre_collapse" and str(AlertState.PRE_COLLAPSE) == "pre_collapse"


def test_observe_returns_the_transition_it_made():
    machine = AlertMachine(AlertRules(pre_persistence=2))
    assert machine.observe(True, False) is None
    change = machine.observe(True, False)
    assert (change.trigger, change.source, change.dest) == ("warn", AlertState.NOMINAL, AlertState.PRE_COLLAPSE)


def test_nominal_goes_straight_to_collapse_confirmed_in_one_transition():
    machine = AlertMachine(AlertRules(pre_persistence=4, confirm_persistence=2))
    machine.observe(True, True)
    change = machine.observe(True, True)
    assert (change.trigger, change.source) == ("confirm", AlertState.NOMINAL)
    assert change.dest is AlertState.COLLAPSE_CONFIRMED


def test_collapse_confirmed_steps_down_to_pre_collapse_while_pre_persists():
    machine = AlertMachine(AlertRules())
    for _ in range(5):
        machine.observe(True, True)
    change = machine.observe(True, False)
    assert (change.source, change.dest) == (AlertState.COLLAPSE_CONFIRMED, AlertState.PRE_COLLAPSE)


def test_stepping_down_waits_for_resolve_persistence_healthy_snapshots():
    machine = AlertMachine(AlertRules(pre_persistence=1, resolve_persistence=3))
    machine.observe(True, False)
    states = [machine.observe(False, False) for _ in range(3)]
    assert states[:2] == [None, None]
    assert states[2].dest is AlertState.NOMINAL


def test_states_and_triggers_are_those_of_the_transitions_machine_built_from_the_table():
    assert isinstance(STATE_TABLE.machine, transitions.Machine)
    assert set(STATE_TABLE.machine.states) == {state.value for state in AlertState}
    assert STATE_TABLE.valid_triggers == {
        "nominal": {"confirm", "warn"},
        "pre_collapse": {"confirm", "resolve"},
        "collapse_confirmed": {"resolve"},
    }


@pytest.mark.parametrize(
    "state, trigger, pre_persisted, dest",
    [
        ("nominal", "warn", False, "pre_collapse"),
        ("nominal", "confirm", False, "collapse_confirmed"),
        ("pre_collapse", "confirm", True, "collapse_confirmed"),
        ("pre_collapse", "resolve", True, "nominal"),
        ("collapse_confirmed", "resolve", True, "pre_collapse"),
        ("collapse_confirmed", "resolve", False, "nominal"),
    ],
)
def test_the_state_table_fires_each_transition_of_the_table(state, trigger, pre_persisted, dest):
    assert STATE_TABLE.fire(state, trigger, pre_persisted) == dest
    assert STATE_TABLE.outcomes[state, trigger, pre_persisted] == dest


def test_the_outcomes_cover_every_valid_trigger_under_both_condition_values():
    expected = {
        (state, trigger, flag)
        for state, triggers in STATE_TABLE.valid_triggers.items()
        for trigger in triggers
        for flag in (False, True)
    }
    assert set(STATE_TABLE.outcomes) == expected


def test_the_state_table_refuses_a_trigger_without_a_transition_out_of_the_state():
    with pytest.raises(transitions.MachineError):
        STATE_TABLE.fire("pre_collapse", "warn", False)


def test_bank_creates_layers_on_first_use():
    bank = AlertBank()
    bank[0], bank[7]
    assert len(bank) == 2 and 7 in bank and 3 not in bank


def test_bank_steps_layers_and_reports_changes_in_layer_order():
    bank = AlertBank(AlertRules(pre_persistence=1))
    changes = bank.step([0, 1, 2], [True, False, True], [False, False, False], [False, False, False])
    assert [(layer, change.dest.value) for layer, change in changes] == [(0, "pre_collapse"), (2, "pre_collapse")]


def test_load_state_dict_refuses_an_unknown_state():
    with pytest.raises(ValueError, match="collapsed"):
        AlertMachine().load_state_dict(
            {"state": "collapsed", "pre_streak": 0, "collapse_streak": 0, "healthy_streak": 0}
        )


# -- AlertMachine against the reference ---------------------------------------------------------


@settings(max_examples=200)
@given(st.integers(0, 60).flatmap(condition_sequences), persistences)
def test_machine_follows_the_reference_after_every_snapshot(reference_alert_run, conditions, persistence):
    rules = AlertRules(**persistence)
    assert observe_conditions(AlertMachine(rules), conditions) == reference_alert_run(conditions, rules)


@settings(max_examples=150)
@given(st.integers(1, 50).flatmap(condition_sequences), persistences, st.data())
def test_machine_resumed_from_its_state_dict_has_the_same_future(conditions, persistence, data):
    rules = AlertRules(**persistence)
    cut = data.draw(st.integers(0, len(conditions)), label="cut")
    uninterrupted = observe_conditions(AlertMachine(rules), conditions)

    before = AlertMachine(rules)
    observe_conditions(before, conditions[:cut])
    checkpoint = json.loads(json.dumps(before.state_dict()))
    resumed = AlertMachine(rules)
    resumed.load_state_dict(checkpoint)
    assert resumed.state_dict() == before.state_dict()
    assert observe_conditions(resumed, conditions[cut:]) == uninterrupted[cut:]


@settings(max_examples=60, deadline=None)
@given(layered_runs(), persistences)
def test_monitor_follows_the_reference_and_publishes_exactly_the_state_changes(
    reference_alert_run, counts_for, condition_rules, run, persistence
):
    rules = condition_rules(**persistence)
    expected = [reference_alert_run(layer_column(run, layer), rules) for layer in range(len(run[0]))]
    monitor = Monitor("run", rules=rules)
    published = []
    monitor.bus.subscribe("transition", published.append)

    previous = ["nominal"] * len(expected)
    for step, conditions in enumerate(run):
        published.clear()
        snapshot = monitor.observe(counts_for(conditions), step=step)
        now = [expected[layer][step] for layer in range(len(expected))]
        assert [state_of(layer) for layer in snapshot.layers] == now
        changes = [
            (layer, previous[layer], state["state"])
            for layer, state in enumerate(now)
            if state["state"] != previous[layer]
        ]
        assert [(t.layer_id, t.source.value, t.dest.value) for t in published] == changes
        assert [t.trigger for t in published] == [expected_trigger(source, dest) for _, source, dest in changes]
        assert all(t.step == step for t in published)
        assert published == snapshot.transitions
        assert [monitor.state(layer).value for layer in range(len(now))] == [state["state"] for state in now]
        previous = [state["state"] for state in now]


def observe_all(monitor: Monitor, windows, first_step: int = 0) -> list[tuple[list[dict], list, list[str]]]:
    """Observe counts windows; per snapshot: layer dumps, published transitions (no timestamps), alerts."""
    published = []
    monitor.bus.subscribe("transition", published.append)
    outcomes = []
    for offset, counts in enumerate(windows):
        published.clear()
        snapshot = monitor.observe(counts, step=first_step + offset)
        transitions_seen = [t.model_dump(exclude={"timestamp"}) for t in published]
        outcomes.append(([layer.model_dump() for layer in snapshot.layers], transitions_seen, snapshot.alerts))
    return outcomes


@settings(max_examples=40, deadline=None)
@given(layered_runs(), persistences, st.data())
def test_monitor_resumed_from_its_state_dict_has_the_same_future(counts_for, condition_rules, run, persistence, data):
    rules = condition_rules(**persistence)
    windows = [counts_for(conditions) for conditions in run]
    cut = data.draw(st.integers(0, len(windows)), label="cut")
    uninterrupted = observe_all(Monitor("run", rules=rules), windows)

    before = Monitor("run", rules=rules)
    observe_all(before, windows[:cut])
    checkpoint = json.loads(json.dumps(before.state_dict()))  # as a JSON checkpoint would hold it
    resumed = Monitor("run", rules=rules)
    resumed.load_state_dict(checkpoint)
    assert observe_all(resumed, windows[cut:], first_step=cut) == uninterrupted[cut:]


def events_for(make_event, counts_for, conditions, step: int, empty_layer_has_event: bool):
    """A window's events: each data layer's counts split over two events; a no-data layer has a
    zero-count event or none."""
    events = []
    for layer, counts in enumerate(counts_for(conditions)):
        if not any(counts):
            if empty_layer_has_event:
                events.append(make_event(counts, step=step, layer_id=layer))
            continue
        first = [count // 2 for count in counts]
        events.append(make_event(first, step=step, layer_id=layer))
        events.append(make_event([a - b for a, b in zip(counts, first, strict=True)], step=step, layer_id=layer))
    return events


@settings(max_examples=40, deadline=None)
@given(layered_runs(), persistences, st.booleans())
def test_monitor_observe_and_from_events_with_alert_history_agree(
    make_event, counts_for, condition_rules, run, persistence, empty_layer_has_event
):
    rules = condition_rules(**persistence)
    n_layers = len(run[0])
    monitor = Monitor("run", rules=rules)
    alert_history: dict = {}
    for step, conditions in enumerate(run):
        events = events_for(make_event, counts_for, conditions, step, empty_layer_has_event)
        observed = monitor.observe(events, step=step, n_layers=n_layers)
        seed_style = SystemSnapshot.from_events(
            events=events, step=step, run_id="run", n_layers=n_layers, alert_history=alert_history, rules=rules
        )
        assert [layer.model_dump() for layer in observed.layers] == [layer.model_dump() for layer in seed_style.layers]
        assert observed.alerts == seed_style.alerts
        assert [t.model_dump(exclude={"timestamp"}) for t in observed.transitions] == [
            t.model_dump(exclude={"timestamp"}) for t in seed_style.transitions
        ]
    assert alert_history == alert_history_of(monitor.snapshotter.banks["TRAIN"])


# -- AlertTransition ------------------------------------------------------------------------------


metric_values = st.one_of(st.integers(0, 2**62), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=100)
@given(
    st.text(min_size=1, max_size=12),
    st.integers(0, 2**62),
    st.sampled_from(["TRAIN", "INFER"]),
    st.integers(0, 10**4),
    st.sampled_from(list(AlertState)),
    st.sampled_from(list(AlertState)),
    st.sampled_from(["warn", "confirm", "resolve"]),
    st.lists(st.integers(0, 10**6), min_size=3, max_size=3),
    st.dictionaries(st.text(max_size=20), metric_values, max_size=8),
    st.floats(0, 4e9),
)
def test_transition_json_round_trip_is_lossless(
    run_id, step, mode, layer_id, source, dest, trigger, streaks, metrics, timestamp
):
    transition = AlertTransition(
        run_id=run_id,
        step=step,
        mode=mode,
        layer_id=layer_id,
        source=source,
        dest=dest,
        trigger=trigger,
        pre_streak=streaks[0],
        collapse_streak=streaks[1],
        healthy_streak=streaks[2],
        metrics=metrics,
        timestamp=timestamp,
    )
    restored = AlertTransition.model_validate_json(transition.model_dump_json())
    assert restored == transition
    assert [type(value) for value in restored.metrics.values()] == [type(value) for value in metrics.values()]


def test_a_published_transition_survives_json(rows):
    history: dict = {}
    for step in range(5):
        snapshot = SystemSnapshot.from_counts([rows.collapsing], step=step, alert_history=history)
    (transition,) = snapshot.transitions
    assert AlertTransition.model_validate_json(transition.model_dump_json()) == transition
