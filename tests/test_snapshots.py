"""SystemSnapshot / LayerSnapshot: building from events and counts, validation, the seed's alert semantics.

Counts rows are the ``rows`` fixture's (conftest): under the default rules
``collapsing`` meets both alert conditions, ``concentrated`` only
PRE_COLLAPSE's, ``balanced`` and ``dead_but_spread`` neither.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chronomoe import AlertRules, AlertState, LayerSnapshot, SystemSnapshot


def alert_names(snapshot: SystemSnapshot) -> list[str]:
    return [alert.split(":")[0] for alert in snapshot.alerts]


def run_counts(windows, **options) -> list[SystemSnapshot]:
    """Snapshots of consecutive windows (each a list of per-layer counts) sharing one alert_history."""
    history: dict = {}
    return [
        SystemSnapshot.from_counts(counts, step=step, alert_history=history, **options)
        for step, counts in enumerate(windows)
    ]


# -- building ------------------------------------------------------------------------------


def test_from_events_sums_each_layers_counts_over_the_window(make_event):
    events = [
        make_event([1, 0, 2], step=1, layer_id=0),
        make_event([0, 0, 3], step=2, layer_id=0),
        make_event([4, 4, 4, 4], step=1, layer_id=1),
    ]
    snapshot = SystemSnapshot.from_events(events, step=2, n_layers=2, alert_history={})
    first, second = snapshot.layers
    assert first.expert_token_counts.tolist() == [1, 0, 5]
    assert (first.n_experts, first.token_count, first.active_experts, first.dead_expert_count) == (3, 6, (0, 2), 1)
    assert second.expert_token_counts.tolist() == [4, 4, 4, 4]
    assert (second.n_experts, second.token_count) == (4, 16)


def test_from_events_keeps_the_seed_arguments(make_event):
    snapshot = SystemSnapshot.from_events(
        events=[make_event([5, 5], run_id="my_run")],
        step=100,
        train_loss=2.5,
        val_loss=2.8,
        run_id="my_run",
        model_name="MyMoE",
        n_layers=1,
        alert_history={},
    )
    assert (snapshot.step, snapshot.train_loss, snapshot.val_loss) == (100, 2.5, 2.8)
    assert (snapshot.run_id, snapshot.model_name, snapshot.mode) == ("my_run", "MyMoE", "TRAIN")
    assert [layer.layer_id for layer in snapshot.layers] == [0]


def test_from_events_takes_the_run_id_from_the_events(make_event):
    assert SystemSnapshot.from_events([make_event([1], run_id="their_run")], step=0).run_id == "their_run"


def test_from_events_of_an_empty_window_needs_a_run_id(assert_rejected):
    assert_rejected(lambda: SystemSnapshot.from_events([], step=0), "run_id", "None")


def test_layers_without_events_up_to_n_layers_are_no_data(make_event):
    snapshot = SystemSnapshot.from_events([make_event([2, 2], layer_id=1)], step=0, n_layers=3)
    assert [layer.no_data for layer in snapshot.layers] == [True, False, True]


def test_n_layers_defaults_to_the_highest_layer_id_plus_one(make_event):
    snapshot = SystemSnapshot.from_events([make_event([2, 2], layer_id=2)], step=0)
    assert [layer.layer_id for layer in snapshot.layers] == [0, 1, 2]


def test_from_events_ignores_events_of_the_other_mode(make_event):
    events = [make_event([4, 0], mode="TRAIN"), make_event([0, 9], mode="INFER")]
    assert SystemSnapshot.from_events(events, step=0).layers[0].expert_token_counts.tolist() == [4, 0]
    infer = SystemSnapshot.from_events(events, step=0, mode="INFER")
    assert (infer.mode, infer.layers[0].expert_token_counts.tolist()) == ("INFER", [0, 9])


def test_events_of_one_layer_disagreeing_on_n_experts_are_rejected(make_event, assert_rejected):
    events = [make_event([1, 2, 3, 4], layer_id=0), make_event([1, 2, 3], layer_id=0)]
    assert_rejected(lambda: SystemSnapshot.from_events(events, step=0), "n_experts", "layer 0")


def test_event_layer_outside_n_layers_is_rejected(make_event, assert_rejected):
    events = [make_event([1, 2], layer_id=0), make_event([1, 2], layer_id=4)]
    assert_rejected(lambda: SystemSnapshot.from_events(events, step=0, n_layers=2), "events[1].layer_id", "4")


def test_from_counts_accepts_list_array_and_tensor():
    matrix = [[3, 1], [0, 2]]
    for counts in (matrix, np.array(matrix, dtype=np.int32), torch.tensor(matrix)):
        snapshot = SystemSnapshot.from_counts(counts, step=5)
        assert [layer.expert_token_counts.tolist() for layer in snapshot.layers] == matrix


def test_from_counts_accepts_layers_with_different_expert_counts():
    snapshot = SystemSnapshot.from_counts([[1, 1], [1, 1, 1, 1], [7]], step=0)
    assert [layer.n_experts for layer in snapshot.layers] == [2, 4, 1]
    assert [layer.expert_token_counts.tolist() for layer in snapshot.layers] == [[1, 1], [1, 1, 1, 1], [7]]
    assert [layer.utilization_shares.size for layer in snapshot.layers] == [2, 4, 1]


def test_from_counts_with_a_padded_matrix_and_n_experts_matches_the_ragged_form():
    ragged = SystemSnapshot.from_counts([[1, 3], [2, 2, 2, 0]], step=0)
    padded = SystemSnapshot.from_counts([[1, 3, 0, 0], [2, 2, 2, 0]], step=0, n_experts=[2, 4])
    assert [layer.model_dump(exclude={"timestamp"}) for layer in padded.layers] == [
        layer.model_dump(exclude={"timestamp"}) for layer in ragged.layers
    ]


def test_from_counts_uses_the_given_layer_ids():
    snapshot = SystemSnapshot.from_counts([[1, 1], [2, 0]], step=0, layer_ids=[4, 9])
    assert [layer.layer_id for layer in snapshot.layers] == [4, 9]
    assert snapshot.layer(9).dead_expert_count == 1


def test_layer_lookup_of_an_absent_layer_raises_key_error():
    with pytest.raises(KeyError, match="layer_id=3"):
        SystemSnapshot.from_counts([[1, 1]], step=0).layer(3)


# -- validation -----------------------------------------------------------------------------


def test_negative_count_in_a_matrix_is_rejected(assert_rejected):
    assert_rejected(lambda: SystemSnapshot.from_counts([[1, 2], [3, -1]], step=0), "counts[1][1]", "-1")


def test_fractional_count_in_a_matrix_is_rejected(assert_rejected):
    assert_rejected(lambda: SystemSnapshot.from_counts([[1, 2.5], [3, 1]], step=0), "counts[0][1]", "2.5")


def test_counts_that_are_not_a_matrix_are_rejected(assert_rejected):
    assert_rejected(lambda: SystemSnapshot.from_counts([1, 2, 3], step=0), "counts", "(3,)")


def test_n_experts_wider_than_the_matrix_is_rejected(assert_rejected):
    assert_rejected(
        lambda: SystemSnapshot.from_counts([[1, 2], [3, 4]], step=0, n_experts=[2, 3]), "n_experts", "[2, 3]"
    )


def test_counts_in_padding_columns_are_rejected(assert_rejected):
    assert_rejected(
        lambda: SystemSnapshot.from_counts([[1, 2, 0], [3, 4, 5]], step=0, n_experts=[3, 2]),
        "counts[1][2]=5",
        "padding",
    )


@pytest.mark.parametrize("field", ["train_loss", "val_loss"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_snapshot_losses_are_rejected(assert_rejected, field, value):
    assert_rejected(lambda: SystemSnapshot.from_counts([[1, 1]], step=0, **{field: value}), field, repr(value))


def test_negative_snapshot_step_is_rejected(assert_rejected):
    assert_rejected(lambda: SystemSnapshot.from_counts([[1, 1]], step=-1), "step", "input_value=-1")


def test_snapshot_mode_other_than_train_or_infer_is_rejected(assert_rejected):
    assert_rejected(lambda: SystemSnapshot.from_counts([[1, 1]], step=0, mode="EVAL"), "mode", "'EVAL'")


def test_a_rejected_snapshot_leaves_the_alert_history_unchanged(rows):
    history: dict = {}
    SystemSnapshot.from_counts([rows.collapsing], step=0, alert_history=history)
    before = json.loads(json.dumps(history))
    with pytest.raises(ValueError):
        SystemSnapshot.from_counts([rows.collapsing], step=1, train_loss=float("nan"), alert_history=history)
    assert json.loads(json.dumps(history)) == before


# -- window aggregation laws ---------------------------------------------------------------

windows = st.lists(
    st.tuples(st.integers(0, 3), arrays(np.int64, 6, elements=st.integers(0, 50))), min_size=1, max_size=24
)
"""A window's events as (layer_id, counts) pairs: 4 layers of 6 experts, several events per layer."""


def metrics_and_states(snapshot: SystemSnapshot) -> list[dict]:
    return [layer.model_dump() for layer in snapshot.layers]


@settings(max_examples=60)
@given(windows, st.randoms(use_true_random=False))
def test_window_aggregation_does_not_depend_on_event_order(make_event, pairs, random):
    events = [make_event(counts, layer_id=layer, step=index) for index, (layer, counts) in enumerate(pairs)]
    shuffled = random.sample(events, len(events))
    in_order = SystemSnapshot.from_events(events, step=9, n_layers=4, alert_history={})
    reordered = SystemSnapshot.from_events(shuffled, step=9, n_layers=4, alert_history={})
    assert metrics_and_states(reordered) == metrics_and_states(in_order)
    assert reordered.alerts == in_order.alerts


@settings(max_examples=60)
@given(windows)
def test_window_metrics_equal_the_metrics_of_the_summed_counts(make_event, pairs):
    events = [make_event(counts, layer_id=layer) for layer, counts in pairs]
    summed = np.zeros((4, 6), dtype=np.int64)
    for layer, counts in pairs:
        summed[layer] += counts
    from_events = SystemSnapshot.from_events(events, step=9, n_layers=4, alert_history={})
    from_counts = SystemSnapshot.from_counts(summed, step=9, alert_history={})
    # A layer without events has an unknown expert count (reported as 1); compare the others.
    seen = sorted({layer for layer, _ in pairs})
    assert [from_events.layer(i).model_dump() for i in seen] == [from_counts.layer(i).model_dump() for i in seen]


# -- the seed's alert semantics ------------------------------------------------------------


def test_pre_collapse_is_raised_at_the_third_consecutive_concentrated_snapshot(rows):
    snapshots = run_counts([[rows.concentrated]] * 4)
    assert [alert_names(s) for s in snapshots] == [[], [], ["PRE_COLLAPSE"], ["PRE_COLLAPSE"]]


def test_collapse_confirmed_is_raised_at_the_fifth_consecutive_collapsing_snapshot(rows):
    snapshots = run_counts([[rows.collapsing]] * 6)
    assert [alert_names(s) for s in snapshots] == [
        [],
        [],
        ["PRE_COLLAPSE"],
        ["PRE_COLLAPSE"],
        ["COLLAPSE_CONFIRMED"],
        ["COLLAPSE_CONFIRMED"],
    ]


def test_collapse_confirmed_inhibits_pre_collapse_of_the_same_layer(rows):
    last = run_counts([[rows.collapsing]] * 5)[-1]
    layer = last.layers[0]
    assert layer.pre_streak >= 3  # PRE_COLLAPSE's condition persists too ...
    assert alert_names(last) == ["COLLAPSE_CONFIRMED"]  # ... but only the confirmed alert is reported


def test_an_interrupted_streak_starts_over(rows):
    c, b = rows.concentrated, rows.balanced
    snapshots = run_counts([[c], [c], [b], [c], [c]])
    assert all(not s.alerts for s in snapshots)


def test_a_no_data_window_neither_advances_nor_resets_persistence(rows):
    windows = [[rows.concentrated], [rows.concentrated], [rows.no_data], [rows.concentrated]]
    snapshots = run_counts(windows)
    assert [s.layers[0].pre_streak for s in snapshots] == [1, 2, 2, 3]
    assert [alert_names(s) for s in snapshots] == [[], [], [], ["PRE_COLLAPSE"]]


def test_a_no_data_window_raises_no_alert_and_keeps_the_alert_state(rows):
    snapshots = run_counts([[rows.concentrated]] * 3 + [[rows.no_data]])
    gap = snapshots[-1].layers[0]
    assert gap.no_data and gap.token_count == 0
    assert gap.alert_state is AlertState.PRE_COLLAPSE
    assert snapshots[-1].alerts == []
    assert gap.alert() is None


def test_no_data_layers_have_no_metrics(rows):
    layer = SystemSnapshot.from_counts([rows.no_data], step=0).layers[0]
    assert (layer.entropy, layer.n_effective, layer.top2_share, layer.gini) == (None, None, None, None)
    assert (layer.dead_expert_count, layer.nearly_dead_count, layer.active_experts) == (0, 0, ())


def test_alerts_start_with_the_alert_name_and_name_the_layer(rows):
    snapshot = run_counts([[rows.balanced, rows.concentrated, rows.balanced, rows.collapsing]] * 5)[-1]
    assert alert_names(snapshot) == ["PRE_COLLAPSE", "COLLAPSE_CONFIRMED"]
    pre, confirmed = snapshot.alerts
    assert re.search(r"\blayer 1\b", pre) and re.search(r"\blayer 3\b", confirmed)


def test_alert_strings_carry_the_layers_metrics(rows):
    snapshot = run_counts([[rows.collapsing]] * 5)[-1]
    layer = snapshot.layers[0]
    assert f"Top2={layer.top2_share:.3f}" in snapshot.alerts[0]
    assert f"Neff={layer.n_effective:.2f}" in snapshot.alerts[0]


def test_dead_experts_alone_do_not_confirm_collapse(rows):
    # Two dead experts, Top2 0.60 <= 0.85: the COLLAPSE_CONFIRMED condition needs both.
    snapshots = run_counts([[rows.dead_but_spread]] * 6)
    assert snapshots[-1].layers[0].dead_expert_count == 2
    assert all(not s.alerts for s in snapshots)


def test_alert_state_clears_at_the_first_snapshot_whose_condition_fails(rows):
    snapshots = run_counts([[rows.collapsing]] * 5 + [[rows.balanced]])
    assert [s.layers[0].alert_state.value for s in snapshots[-2:]] == ["collapse_confirmed", "nominal"]
    assert snapshots[-1].alerts == []


def test_the_alert_history_dict_carries_persistence_across_calls(rows):
    history: dict = {}
    for step in range(3):
        snapshot = SystemSnapshot.from_counts([rows.collapsing], step=step, alert_history=history)
    assert history[0]["state"] == "pre_collapse" and history[0]["pre_streak"] == 3
    assert alert_names(snapshot) == ["PRE_COLLAPSE"]


def test_the_alert_history_survives_a_json_round_trip(rows):
    history: dict = {}
    for step in range(4):
        SystemSnapshot.from_counts([rows.collapsing], step=step, alert_history=history)
    restored = json.loads(json.dumps(history))  # layer ids become strings
    fifth = SystemSnapshot.from_counts([rows.collapsing], step=4, alert_history=restored)
    assert alert_names(fifth) == ["COLLAPSE_CONFIRMED"]


def test_without_alert_history_every_snapshot_starts_fresh(rows):
    snapshots = [SystemSnapshot.from_counts([rows.collapsing], step=step) for step in range(5)]
    assert all(s.layers[0].pre_streak == 1 and not s.alerts for s in snapshots)


def test_custom_rules_change_the_persistence(rows):
    snapshots = run_counts([[rows.concentrated]] * 2, rules=AlertRules(pre_persistence=2))
    assert [alert_names(s) for s in snapshots] == [[], ["PRE_COLLAPSE"]]


def test_snapshot_carries_the_transitions_it_caused(rows):
    snapshots = run_counts([[rows.collapsing, rows.balanced]] * 5)
    assert [(t.layer_id, t.source.value, t.dest.value, t.trigger) for t in snapshots[2].transitions] == [
        (0, "nominal", "pre_collapse", "warn")
    ]
    assert [(t.source.value, t.dest.value, t.trigger) for t in snapshots[4].transitions] == [
        ("pre_collapse", "collapse_confirmed", "confirm")
    ]
    assert all(not s.transitions for s in (snapshots[0], snapshots[1], snapshots[3]))
    transition = snapshots[4].transitions[0]
    assert transition.metrics == snapshots[4].layers[0].metrics()
    assert (transition.step, transition.collapse_streak) == (4, 5)


# -- records and JSON ----------------------------------------------------------------------

count_windows = st.integers(1, 4).flatmap(
    lambda n_layers: st.lists(
        arrays(np.int64, (n_layers, 8), elements=st.sampled_from([0, 0, 1, 3, 10, 50, 1000])),
        min_size=1,
        max_size=8,
    )
)
"""Consecutive windows [n_layers, 8] of one run; many zeros so alerts and no-data layers occur."""


@settings(max_examples=40)
@given(count_windows, st.none() | st.floats(0, 10), st.none() | st.floats(0, 10))
def test_snapshot_json_round_trip_is_lossless(windows, train_loss, val_loss):
    history: dict = {}
    for step, counts in enumerate(windows):
        snapshot = SystemSnapshot.from_counts(
            counts,
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            run_id="r",
            model_name="m",
            alert_history=history,
        )
        restored = SystemSnapshot.model_validate_json(snapshot.model_dump_json())
        assert restored == snapshot
        assert restored.model_dump_json() == snapshot.model_dump_json()
        for layer in snapshot.layers:
            assert LayerSnapshot.model_validate_json(layer.model_dump_json()) == layer


def test_snapshot_to_dict_equals_the_parsed_json(rows):
    snapshot = run_counts([[rows.collapsing, rows.no_data]] * 3)[-1]
    assert snapshot.to_dict() == json.loads(snapshot.model_dump_json())


def test_layer_snapshot_metrics_are_the_scalar_fields():
    layer = SystemSnapshot.from_counts([[50, 50, 0, 0]], step=0).layers[0]
    metrics = layer.metrics()
    assert metrics["n_experts"] == 4 and metrics["token_count"] == 100 and metrics["dead_expert_count"] == 2
    assert math.isclose(metrics["n_effective"], 2.0, rel_tol=1e-12)  # exp(log 2) rounds
    assert metrics["top2_share"] == 1.0


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 2), count_windows.map(lambda windows: windows[0])), min_size=1, max_size=24))
def test_alert_histories_interleaved_in_one_thread_evolve_as_if_each_were_alone(calls):
    """Three runs' ``alert_history`` dicts used in turn give each run the snapshots it gets alone."""
    interleaved: list[dict] = [{}, {}, {}]
    alone: dict[int, list] = {0: [], 1: [], 2: []}
    snapshots: dict[int, list] = {0: [], 1: [], 2: []}
    for step, (run, counts) in enumerate(calls):
        snapshot = SystemSnapshot.from_counts(counts, step=step, alert_history=interleaved[run], run_id="r")
        snapshots[run].append(snapshot.model_dump(exclude={"timestamp"}))
        alone[run].append((step, counts))
    for run, run_calls in alone.items():
        history: dict = {}
        expected = [
            SystemSnapshot.from_counts(counts, step=step, alert_history=history, run_id="r").model_dump(
                exclude={"timestamp"}
            )
            for step, counts in run_calls
        ]
        assert _without_timestamps(snapshots[run]) == _without_timestamps(expected)
        assert json.loads(json.dumps(interleaved[run])) == json.loads(json.dumps(history))


def _without_timestamps(dumps: list[dict]) -> list[dict]:
    for dump in dumps:
        for transition in dump["transitions"]:
            transition.pop("timestamp")
    return dumps
