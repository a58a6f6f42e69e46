"""Every name of the seed's package works as the seed documents it (``/work/shared/seeds/``, issue 13).

Written from the seed README (package structure, semantic definitions, alert
table), the Phase 1 design note and the names the seed's ``chronomoe``
exported, not from this package's own API: each test is one seed promise.
The deliberate differences (README, "Differences from the seed") are pinned
where they show.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SEED_EXPORTS = [
    "RoutingEvent",
    "ExpertState",
    "SystemSnapshot",
    "LayerSnapshot",
    "ChronoLens",
    "IdentityLens",
    "LensState",
    "TelemetryWriter",
    "create_run_manifest",
    "get_git_commit",
    "load_events",
    "load_snapshots",
    "load_manifest",
    "compute_utilization_shares",
    "compute_entropy",
    "compute_n_effective",
    "compute_top2_share",
    "count_dead_experts",
    "count_nearly_dead_experts",
    "compute_layer_metrics",
    "compute_gini_coefficient",
    "check_immediate_alerts",
]
"""What ``from chronomoe import *`` gave in the seed."""


def event(step: int, counts: list[int], layer_id: int = 0, run_id: str = "my_run"):
    """A routing event as the seed's regression tests built them: every field given, active_experts a list."""
    from chronomoe import RoutingEvent

    return RoutingEvent(
        timestamp=1000.0 + step,
        run_id=run_id,
        step=step,
        mode="TRAIN",
        layer_id=layer_id,
        n_experts=len(counts),
        top_k=2,
        expert_token_counts=counts,
        active_experts=[index for index, count in enumerate(counts) if count > 0],
    )


# -- the seed's names --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SEED_EXPORTS)
def test_every_name_the_seed_exported_imports_from_chronomoe(name):
    import chronomoe

    assert name in chronomoe.__all__ and getattr(chronomoe, name) is not None


def test_the_seed_modules_hold_the_names_its_package_structure_lists():

    import chronomoe

    for name, value in locals().items():
        if name != "chronomoe":
            assert getattr(chronomoe, name) is value, name


# -- ExpertState: rolling per-(layer, expert) health -------------------------------------------
def test_expert_state_starts_healthy_with_the_seeds_threshold_and_smoothing():
    from chronomoe import ExpertState

    state = ExpertState(layer_id=2, expert_id=5)
    assert (state.layer_id, state.expert_id) == (2, 5)
    assert (state.dead_threshold, state.ema_alpha) == (50, 0.1)
    assert (state.utilization_ema, state.share_ema, state.dead_steps, state.is_dead) == (0.0, 0.0, 0, False)


@settings(max_examples=25, deadline=None)
@given(dead_threshold=st.integers(0, 60))
def test_an_expert_is_dead_after_more_than_dead_threshold_consecutive_zero_traffic_updates(dead_threshold):
    from chronomoe import ExpertState

    state = ExpertState(layer_id=0, expert_id=0, dead_threshold=dead_threshold)
    for step in range(dead_threshold):
        state.update(0, step)
    assert not state.is_dead and state.dead_steps == dead_threshold
    state.update(0, dead_threshold)
    assert state.is_dead and state.dead_steps == dead_threshold + 1


def test_traffic_revives_a_dead_expert_and_resets_its_zero_traffic_count():
    from chronomoe import ExpertState

    state = ExpertState(layer_id=0, expert_id=0)
    for step in range(60):
        state.update(0, step)
    state.update(3, 60)
    assert (state.is_dead, state.dead_steps, state.last_token_count, state.last_step) == (False, 0, 3, 60)


@settings(max_examples=50, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 1000), min_size=1, max_size=30),
    alpha=st.floats(0.01, 1.0),
)
def test_utilization_ema_is_the_exponential_average_of_the_tokens_from_the_first_update(tokens, alpha):
    from chronomoe import ExpertState

    state = ExpertState(layer_id=0, expert_id=0, ema_alpha=alpha)
    expected = float(tokens[0])
    for step, count in enumerate(tokens):
        state.update(count, step)
        if step:
            expected = alpha * count + (1 - alpha) * expected
    assert math.isclose(state.utilization_ema, expected, rel_tol=1e-12, abs_tol=1e-9)


def test_share_ema_averages_the_experts_share_of_its_layers_tokens_skipping_windows_without_tokens():
    from chronomoe import ExpertState

    state = ExpertState(layer_id=1, expert_id=0, ema_alpha=0.5)
    state.update_from_event(event(1, [30, 10, 0, 0], layer_id=1))  # share 0.75, the first: taken as it is
    state.update_from_event(event(2, [0, 0, 0, 0], layer_id=1))  # no token in the layer: no data
    state.update_from_event(event(3, [10, 30, 0, 0], layer_id=1))  # share 0.25
    assert state.share_ema == pytest.approx(0.5 * 0.25 + 0.5 * 0.75)
    assert (state.updates, state.last_step) == (2, 3)


def test_an_update_whose_layer_dispatched_no_token_is_no_data_and_does_not_count_towards_death():
    from chronomoe import ExpertState

    state = ExpertState(layer_id=0, expert_id=0, dead_threshold=0)
    state.update(0, 1, layer_token_count=0)
    assert (state.is_dead, state.dead_steps, state.updates, state.last_step) == (False, 0, 0, 1)
    state.update(0, 2, layer_token_count=10)
    assert state.is_dead


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.update(-1, 0), "token_count"),
        (lambda s: s.update(2.5, 0), "token_count"),
        (lambda s: s.update(True, 0), "token_count"),
        (lambda s: s.update(1, -3), "step"),
        (lambda s: s.update(5, 0, layer_token_count=4), "token_count"),
        (lambda s: s.update_from_event(event(0, [1, 1], layer_id=3)), "event.layer_id"),
    ],
)
def test_a_bad_update_is_refused_naming_the_argument_and_changes_nothing(call, field):
    from chronomoe import ExpertState, InvalidInputError

    state = ExpertState(layer_id=0, expert_id=0)
    with pytest.raises(InvalidInputError) as raised:
        call(state)
    assert raised.value.field == field and state.updates == 0


def test_an_update_before_the_last_ones_step_is_refused():
    from chronomoe import ExpertState, InvalidInputError

    state = ExpertState(layer_id=0, expert_id=0)
    state.update(1, 10)
    with pytest.raises(InvalidInputError, match="step=9"):
        state.update(1, 9)


@pytest.mark.parametrize(("field", "value"), [("ema_alpha", 0.0), ("ema_alpha", 1.5), ("dead_threshold", -1)])
def test_expert_state_options_out_of_range_are_refused(field, value):
    from chronomoe import ExpertState, InvalidInputError

    with pytest.raises(InvalidInputError, match=field):
        ExpertState(layer_id=0, expert_id=0, **{field: value})


# -- check_immediate_alerts: the non-persistent check for dashboards ---------------------------
def snapshot_of(*layers: list[int]):
    from chronomoe import SystemSnapshot

    return SystemSnapshot.from_counts([list(counts) for counts in layers], step=1, run_id="dash")


def test_immediate_check_warns_per_concentrating_layer_and_alerts_per_layer_with_a_dead_expert(rows):
    from chronomoe import check_immediate_alerts

    snapshot = snapshot_of(rows.balanced, rows.concentrated, rows.dead_but_spread, rows.collapsing)
    messages = check_immediate_alerts(snapshot.layers)
    assert [(message.split(":")[0], message.split()[2]) for message in messages] == [
        ("WARNING", "1"),  # Top2 0.92 > 0.75, no dead expert
        ("ALERT", "2"),  # 2 dead experts, Neff 5.2 and Top2 0.6: not concentrating
        ("WARNING", "3"),
        ("ALERT", "3"),
    ]
    assert "Top2=0.920" in messages[0] and "2/8 dead" in messages[1]


def test_immediate_check_needs_no_history_and_gives_nothing_for_a_layer_without_tokens(rows):
    from chronomoe import check_immediate_alerts

    snapshot = snapshot_of(rows.collapsing, rows.no_data)
    assert snapshot.alerts == []  # the persistent alerts need 3 and 5 snapshots
    assert [message.split()[2] for message in check_immediate_alerts(snapshot.layers)] == ["0", "0"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=3, max_size=12).filter(lambda counts: sum(counts) > 0))
def test_immediate_check_applies_the_seeds_thresholds(counts):
    from chronomoe import check_immediate_alerts

    shares = np.asarray(counts) / sum(counts)
    n_effective = math.exp(-sum(s * math.log(s) for s in shares if s > 0))
    top2 = sorted(shares)[-1] + sorted(shares)[-2]
    messages = check_immediate_alerts(snapshot_of(counts).layers)
    assert any(m.startswith("WARNING") for m in messages) == (n_effective < 0.6 * len(counts) or top2 > 0.75)
    assert any(m.startswith("ALERT") for m in messages) == (min(counts) == 0)


def test_immediate_check_refuses_what_is_not_a_layer_snapshot():
    from chronomoe import InvalidInputError, check_immediate_alerts

    with pytest.raises(InvalidInputError, match=r"layers\[0\]"):
        check_immediate_alerts([{"layer_id": 0}])


# -- the metric functions, with the seed's signatures ------------------------------------------
def test_compute_entropy_takes_the_seeds_eps_keyword():
    from chronomoe import compute_entropy

    assert compute_entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))
    assert compute_entropy(np.array([0.7, 0.2, 0.1]), eps=0.15) == pytest.approx(
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2))
    )


def test_utilization_shares_of_a_layer_from_events_by_keyword():
    from chronomoe import compute_utilization_shares

    window = [event(1, [30, 10, 0, 0]), event(2, [10, 30, 0, 0]), event(1, [1, 1, 1, 1], layer_id=1)]
    assert compute_utilization_shares(events=window, layer_id=0).tolist() == [0.5, 0.5, 0.0, 0.0]


def test_compute_layer_metrics_returns_the_seeds_six_tuple():
    from chronomoe import compute_layer_metrics

    shares, entropy, n_effective, top2_share, dead_count, nearly_dead_count = compute_layer_metrics(
        [event(1, [200, 200, 0, 0])], 0
    )
    assert shares.tolist() == [0.5, 0.5, 0.0, 0.0]
    assert (entropy, n_effective, top2_share, dead_count, nearly_dead_count) == pytest.approx(
        (math.log(2), 2.0, 1.0, 2, 0)
    )


# -- records as the seed's dicts ----------------------------------------------------------------
def test_layer_and_system_snapshots_serialise_to_plain_json_dicts(rows):
    snapshot = snapshot_of(rows.collapsing, rows.balanced)
    layer = snapshot.layers[0].to_dict()
    assert json.loads(json.dumps(layer)) == layer and layer["dead_expert_count"] == 5
    system = snapshot.to_dict()
    assert json.loads(json.dumps(system)) == system and system["layers"][0] == layer


def test_loaded_records_read_as_the_seeds_dicts(tmp_path):
    from chronomoe import (
        SystemSnapshot,
        TelemetryWriter,
        create_run_manifest,
        load_events,
        load_manifest,
        load_snapshots,
    )

    writer = TelemetryWriter("my_run", tmp_path)
    events = [event(100, [900, 80, 20, 0]), event(100, [1, 1, 1, 1], layer_id=1)]
    writer.flush_events(events)
    writer.write_snapshot(SystemSnapshot.from_events(events, 100, 2.5, 2.8, "my_run", "MyMoE", 2, {}))
    writer.write_manifest(create_run_manifest("my_run", "MyMoE", {"seed": 7}))

    records = load_events(str(writer.events_path))
    assert [record["layer_id"] for record in records] == [0, 1]
    assert records[0]["expert_token_counts"] == [900, 80, 20, 0] and records[0]["token_count"] == 1000
    assert records[0]["active_experts"] == [0, 1, 2] and records[0].get("loss") is None
    assert "step" in records[0] and "no_such_field" not in records[0]
    with pytest.raises(KeyError):
        records[0]["no_such_field"]
    [snapshot] = load_snapshots(str(writer.snapshots_path))
    assert snapshot["train_loss"] == 2.5 and snapshot["layers"][0]["dead_expert_count"] == 1
    assert snapshot["layers"][1]["alert_state"] == "nominal"
    assert json.loads(json.dumps(snapshot.to_dict()))["step"] == 100
    assert load_manifest(str(writer.manifest_path))["seed"] == 7


# -- create_run_manifest ------------------------------------------------------------------------
def test_run_manifest_keeps_the_seeds_keys_filled_from_the_config():
    from chronomoe import create_run_manifest

    config = {
        "dataset": "shakespeare_char",
        "seed": 1337,
        "n_layer": 8,
        "n_experts_per_layer": [8] * 8,
        "top_k": 2,
        "capacity_factor": 1.25,
        "aux_loss_weight": 0.01,
        "use_aux_loss": True,
        "router_z_loss_weight": 0.001,
        "use_router_z_loss": False,
        "learning_rate": 6e-4,
        "batch_size": 12,
        "max_iters": 5000,
        "eval_interval": 250,
    }
    manifest = create_run_manifest("run", "nanoMoE", config, git_commit="abc1234")
    assert (manifest["run_id"], manifest["model_name"], manifest["git_commit"]) == ("run", "nanoMoE", "abc1234")
    assert (manifest["dataset"], manifest["seed"]) == ("shakespeare_char", 1337)
    assert manifest["architecture"] == {
        "n_layers": 8,
        "n_experts_per_layer": [8] * 8,
        "top_k": 2,
        "capacity_factor": 1.25,
    }
    assert manifest["training"] == {
        key: config[key]
        for key in (
            "aux_loss_weight",
            "use_aux_loss",
            "router_z_loss_weight",
            "use_router_z_loss",
            "learning_rate",
            "batch_size",
            "max_iters",
            "eval_interval",
        )
    }


def test_run_manifest_records_a_value_the_config_lacks_as_null_not_a_guess():
    from chronomoe import create_run_manifest

    manifest = create_run_manifest("run", "MyMoE", {}, git_commit="abc1234")
    assert manifest["seed"] is None and manifest["dataset"] is None
    assert set(manifest["architecture"].values()) == {None} and set(manifest["training"].values()) == {None}


# -- alert_history in the seed's form ------------------------------------------------------------
def test_an_alert_history_in_the_seeds_form_carries_its_counts_on():
    from chronomoe import SystemSnapshot

    alert_history = {0: {"pre_collapse_count": 2, "collapse_count": 4}}
    snapshot = SystemSnapshot.from_events(
        [event(500, [200, 200, 0, 0])], 500, 3.5, 4.0, "run", "TestModel", 1, alert_history
    )
    assert [alert.split(":")[0] for alert in snapshot.alerts] == ["COLLAPSE_CONFIRMED"]  # the 5th collapsed snapshot
    assert (alert_history[0]["pre_collapse_count"], alert_history[0]["collapse_count"]) == (3, 5)


def test_an_alert_history_in_the_seeds_form_implies_the_state_its_counts_reached():
    from chronomoe import SystemSnapshot

    alert_history = {0: {"pre_collapse_count": 3, "collapse_count": 0}}  # PRE_COLLAPSE was being reported
    healthy = event(500, [100, 101, 102, 103])
    SystemSnapshot.from_events([healthy], 500, 3.5, None, "run", "TestModel", 1, alert_history)
    assert alert_history[0]["state"] == "nominal" and alert_history[0]["pre_collapse_count"] == 0


def test_a_reset_of_the_seeds_counters_in_a_written_back_history_is_honoured():
    from chronomoe import SystemSnapshot

    alert_history: dict = {}
    for step in range(4):
        SystemSnapshot.from_events([event(step, [200, 200, 0, 0])], step, 3.5, None, "run", "M", 1, alert_history)
    alert_history[0]["collapse_count"] = 0  # what code written for the seed did to forget a streak
    snapshot = SystemSnapshot.from_events([event(4, [200, 200, 0, 0])], 4, 3.5, None, "run", "M", 1, alert_history)
    assert not any(alert.startswith("COLLAPSE_CONFIRMED") for alert in snapshot.alerts)
    assert alert_history[0]["collapse_count"] == 1


def test_an_alert_history_entry_of_neither_form_is_refused_naming_it_and_the_forms():
    from chronomoe import InvalidInputError, SystemSnapshot

    with pytest.raises(InvalidInputError) as raised:
        SystemSnapshot.from_events([event(1, [1, 1])], 1, 2.0, None, "run", "M", 1, {0: {"pre_collapse": 1}})
    message = str(raised.value)
    assert "alert_history[0]" in message and "pre_collapse_count" in message and "'state'" in message


# -- the seed's Phase 1 regression flow ---------------------------------------------------------
def test_the_seeds_phase_1_flow_from_healthy_to_confirmed_collapse(tmp_path):
    from chronomoe import SystemSnapshot, TelemetryWriter, create_run_manifest, load_snapshots

    writer = TelemetryWriter("test_flow", str(tmp_path))
    writer.write_manifest(create_run_manifest("test_flow", "TestModel", {}))
    alert_history: dict = {}
    final = None
    for index in range(10):
        counts = [100 + layer % 5 for layer in range(4)] if index < 2 else [200, 200, 0, 0]
        events = [event(index * 100, counts, layer_id=layer, run_id="test_flow") for layer in range(2)]
        final = SystemSnapshot.from_events(
            events=events,
            step=index * 100,
            train_loss=2.0,
            val_loss=2.2,
            run_id="test_flow",
            model_name="TestModel",
            n_layers=2,
            alert_history=alert_history,
        )
        writer.write_snapshot(final)
        if index < 2:
            assert final.alerts == []
    assert len(load_snapshots(str(writer.snapshots_path))) == 10
    assert final is not None and any("COLLAPSE_CONFIRMED" in alert for alert in final.alerts)
    assert all(layer.n_effective < 2.5 and layer.dead_expert_count >= 1 for layer in final.layers)
