"""Monitor, the facade a training loop uses: observe, write, publish, modes, checkpoints."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from chronomoe import (
    AlertRules,
    AlertState,
    IdentityLens,
    Monitor,
    NoOpController,
    SystemSnapshot,
    load_events,
    load_manifest,
    load_snapshots,
    load_transitions,
)


def layer_dumps(snapshot: SystemSnapshot) -> list[dict]:
    return [layer.model_dump() for layer in snapshot.layers]


def test_observe_counts_and_observe_events_give_the_same_snapshot(rows, make_event):
    counts = [rows.collapsing, rows.concentrated]
    events = [make_event(row, layer_id=layer, step=3) for layer, row in enumerate(counts)]
    from_counts = Monitor("run").observe(counts, step=3, train_loss=1.5, val_loss=1.75)
    from_events = Monitor("run").observe(events, step=3, train_loss=1.5, val_loss=1.75)
    assert layer_dumps(from_counts) == layer_dumps(from_events)
    assert (from_events.step, from_events.train_loss, from_events.val_loss) == (3, 1.5, 1.75)


def test_observe_accepts_a_numpy_matrix_and_ragged_layers():
    assert [layer.n_experts for layer in Monitor("run").observe(np.ones((2, 4), dtype=np.int64), step=0).layers] == [
        4,
        4,
    ]
    assert [layer.n_experts for layer in Monitor("run").observe([[1, 1], [1, 1, 1]], step=0).layers] == [2, 3]


def test_observe_of_an_empty_event_window_marks_every_layer_no_data():
    snapshot = Monitor("run").observe([], step=0, n_layers=2)
    assert [layer.no_data for layer in snapshot.layers] == [True, True]


def test_snapshot_carries_run_and_model_names():
    snapshot = Monitor("my_run", model_name="MyMoE").observe([[1, 1]], step=0)
    assert (snapshot.run_id, snapshot.model_name) == ("my_run", "MyMoE")


def test_state_is_nominal_for_a_layer_never_seen():
    assert Monitor("run").state(5) is AlertState.NOMINAL


def test_state_follows_the_layers_alert_state(rows):
    monitor = Monitor("run")
    for step in range(3):
        monitor.observe([rows.balanced, rows.concentrated], step=step)
    assert (monitor.state(0), monitor.state(1)) == (AlertState.NOMINAL, AlertState.PRE_COLLAPSE)


def test_last_snapshot_is_the_latest_train_snapshot(rows):
    monitor = Monitor("run")
    train = monitor.observe([rows.balanced], step=1)
    monitor.observe([rows.balanced], step=2, mode="INFER")
    assert monitor.last_snapshot is train


def test_train_and_infer_keep_separate_alert_states(rows):
    monitor = Monitor("run")
    for step in range(3):
        monitor.observe([rows.concentrated], step=step, mode="INFER")
    monitor.observe([rows.balanced], step=3)
    assert monitor.state(0, mode="INFER") is AlertState.PRE_COLLAPSE
    assert monitor.state(0) is AlertState.NOMINAL


def test_an_unknown_mode_is_refused_naming_it(assert_rejected):
    assert_rejected(lambda: Monitor("run").observe([[1, 1]], step=0, mode="EVAL"), "mode", "EVAL")


def test_a_rejected_snapshot_does_not_advance_the_alert_machines(rows):
    monitor = Monitor("run")
    monitor.observe([rows.collapsing], step=0)
    before = monitor.state_dict()["banks"]
    with pytest.raises(ValueError, match="train_loss"):
        monitor.observe([rows.collapsing], step=1, train_loss=float("nan"))
    with pytest.raises(ValueError, match="step"):
        monitor.observe([rows.collapsing], step=-1)
    assert monitor.state_dict()["banks"] == before


def test_default_subscribers_are_the_noop_controller_and_the_identity_lens():
    monitor = Monitor("run")
    assert isinstance(monitor.controller, NoOpController)
    assert isinstance(monitor.lens, IdentityLens)


# -- writing -------------------------------------------------------------------------------------


def test_a_monitor_without_output_dir_writes_nothing(tmp_path, monkeypatch, rows):
    monkeypatch.chdir(tmp_path)
    Monitor("run").observe([rows.balanced], step=0)
    assert list(tmp_path.iterdir()) == []


def test_observe_writes_manifest_events_snapshots_and_transitions(tmp_path, rows, make_event):
    rules = AlertRules(pre_persistence=1)
    with Monitor("run", output_dir=tmp_path, model_name="MyMoE", rules=rules, training_config={"lr": 0.001}) as monitor:
        events = [
            make_event(rows.concentrated, run_id="run", step=1),
            make_event(rows.balanced, run_id="run", step=1, layer_id=1),
        ]
        snapshot = monitor.observe(events, step=1, train_loss=2.0)
    run_dir = tmp_path / "run"
    manifest = load_manifest(run_dir)
    assert (manifest["run_id"], manifest["model_name"], manifest["config"]) == ("run", "MyMoE", {"lr": 0.001})
    assert manifest["rules"] == rules.model_dump()
    assert manifest["monitor_config"] == monitor.config.resolved()
    assert load_events(run_dir) == events
    assert load_snapshots(run_dir) == [snapshot]
    assert load_transitions(run_dir) == snapshot.transitions
    assert [(t.layer_id, t.dest.value) for t in snapshot.transitions] == [(0, "pre_collapse")]


def test_write_events_false_writes_no_events_file(tmp_path, make_event):
    with Monitor("run", output_dir=tmp_path, write_events=False) as monitor:
        monitor.observe([make_event([1, 2])], step=0)
    assert not (tmp_path / "run" / "routing_events.jsonl").exists()
    assert len(load_snapshots(tmp_path / "run")) == 1


def test_a_snapshot_is_on_disk_before_user_handlers_run(tmp_path, rows):
    on_disk = []
    with Monitor("run", output_dir=tmp_path) as monitor:
        monitor.bus.subscribe("snapshot", lambda s: on_disk.append([x.step for x in load_snapshots(tmp_path / "run")]))
        monitor.observe([rows.balanced], step=1)
        monitor.observe([rows.balanced], step=2)
    assert on_disk == [[1], [1, 2]]


# -- checkpoints ------------------------------------------------------------------------------------


def test_state_dict_round_trips_alert_states_streaks_and_stop_reason(rows):
    monitor = Monitor("run")
    for step in range(4):
        monitor.observe([rows.collapsing, rows.balanced], step=step)
    monitor.request_stop("test")
    state = json.loads(json.dumps(monitor.state_dict()))
    resumed = Monitor("run")
    resumed.load_state_dict(state)
    assert resumed.state_dict()["banks"] == monitor.state_dict()["banks"]
    assert resumed.should_stop and resumed.stop_reason == "test"
    assert resumed.state(0) is AlertState.PRE_COLLAPSE


def test_load_state_dict_refuses_another_version(assert_rejected):
    state = Monitor("run").state_dict()
    assert_rejected(lambda: Monitor("run").load_state_dict({**state, "version": 99}), "state.version", "99")


def test_resuming_with_different_rules_logs_a_warning(caplog):
    state = Monitor("run").state_dict()
    with caplog.at_level(logging.WARNING, logger="chronomoe.monitor"):
        Monitor("run", rules=AlertRules(pre_persistence=4)).load_state_dict(state)
    assert "different alert rules" in caplog.text


# -- refused snapshot calls lose nothing ----------------------------------------------------


@pytest.mark.parametrize(
    "field, value", [("train_loss", float("nan")), ("val_loss", float("inf")), ("train_loss", "1.0")]
)
def test_a_loss_that_is_not_a_finite_number_is_refused_naming_the_field(assert_rejected, field, value):
    error = assert_rejected(lambda: Monitor("run").observe([[1, 1]], step=0, **{field: value}), field, repr(value))
    assert (error.field, error.value) == (field, value)


def test_a_snapshot_refused_for_its_loss_keeps_the_window_for_the_corrected_retry(tmp_path):
    torch = pytest.importorskip("torch")
    monitor = Monitor("run", output_dir=tmp_path, n_experts=[4])
    monitor.record(0, indices=torch.tensor([0, 1, 1, 3]))
    monitor.step(1)
    with pytest.raises(ValueError, match="train_loss"):
        monitor.snapshot(1, train_loss=float("nan"))
    snapshot = monitor.snapshot(1, train_loss=2.0)
    monitor.close()
    assert snapshot.layers[0].expert_token_counts.tolist() == [1, 2, 0, 1]
    assert len(load_events(tmp_path / "run" / "routing_events.jsonl")) == 1
    assert [s.step for s in load_snapshots(tmp_path / "run" / "snapshots.jsonl")] == [1]


def test_observe_refused_for_its_loss_writes_nothing(tmp_path, rows, make_event):
    monitor = Monitor("run", output_dir=tmp_path)
    event = make_event(rows.collapsing, step=1)
    with pytest.raises(ValueError, match="train_loss"):
        monitor.observe([event], step=1, train_loss=float("nan"))
    monitor.observe([event], step=1, train_loss=1.0)
    monitor.close()
    assert len(load_events(tmp_path / "run" / "routing_events.jsonl")) == 1


@pytest.mark.parametrize("step", [3, 2])
def test_a_snapshot_step_not_above_the_previous_one_of_its_mode_is_refused(assert_rejected, step):
    monitor = Monitor("run")
    monitor.observe([[1, 1]], step=3)
    monitor.observe([[1, 1]], step=3, mode="INFER")  # the other mode keeps its own steps
    assert_rejected(lambda: monitor.observe([[1, 1]], step=step), "step", str(step), "previous TRAIN snapshot's step 3")


def test_the_last_snapshot_step_is_carried_by_the_state_dict(assert_rejected):
    monitor = Monitor("run")
    monitor.observe([[1, 1]], step=5)
    resumed = Monitor("run")
    resumed.load_state_dict(monitor.state_dict())
    assert_rejected(lambda: resumed.observe([[1, 1]], step=5), "step", "previous TRAIN snapshot's step 5")
    assert resumed.observe([[1, 1]], step=6).step == 6


def test_observed_counts_contradicting_the_declared_layers_are_refused(assert_rejected):
    monitor = Monitor("run", n_experts=[8])
    assert_rejected(lambda: monitor.observe([[10] * 7], step=0), "n_experts of layer 0", "7", "8 experts")
    assert_rejected(lambda: monitor.observe([[10] * 8, [1] * 8], step=0), "layer_id", "1", "declared")


def test_a_layer_changing_its_expert_count_between_observations_is_refused(assert_rejected):
    monitor = Monitor("run")
    monitor.observe([[1, 1, 1, 1]], step=0)
    assert_rejected(lambda: monitor.observe([[1, 1]], step=1), "n_experts of layer 0", "2", "4 experts")
    assert monitor.observe([[1, 1, 1, 1], [1, 1]], step=1).layers[1].n_experts == 2  # a new layer may appear


def test_negative_recorded_counts_are_clipped_at_the_snapshot_and_logged_with_layer_and_step(caplog):
    torch = pytest.importorskip("torch")
    monitor = Monitor("run", n_experts=[4, 4])
    monitor.record(1, counts=torch.tensor([5, -3, 0, 2]))  # sync-free: checked when the window is copied
    monitor.step(7)
    with caplog.at_level(logging.ERROR, logger="chronomoe"):
        snapshot = monitor.snapshot(7)
    assert snapshot.layers[1].expert_token_counts.tolist() == [5, 0, 0, 2]
    assert "1 entries in layers [1] at steps [7], clipped to 0" in caplog.text
