"""Replaying a run's routing events: exact reproduction, other rules, other windows, streaming."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from chronomoe import AlertRules, Monitor, RoutingEvent, load_events, load_snapshots, load_transitions
from chronomoe.errors import InvalidInputError
from chronomoe.replay import changed_layers, format_transitions, replay_run

FAST_RULES = AlertRules(pre_persistence=1, confirm_persistence=2)


def _replayed(run_dir, **options):
    snapshots = []
    result = replay_run(run_dir, on_snapshot=snapshots.append, **options)
    return result, snapshots


def test_replay_with_recorded_rules_and_windows_reproduces_every_snapshot_exactly(make_run):
    run_dir = make_run(infer=True)
    result, snapshots = _replayed(run_dir)

    recorded = load_snapshots(run_dir)
    key = lambda snapshot: (snapshot.mode, snapshot.step)  # noqa: E731
    assert sorted(snapshots, key=key) == sorted(recorded, key=key)
    assert result.changed_snapshots == 0 and result.mismatched_snapshots == 0
    assert {snapshot.mode for snapshot in snapshots} == {"TRAIN", "INFER"}


def test_replay_with_recorded_rules_reproduces_the_recorded_transitions(make_run):
    run_dir = make_run(infer=True)
    result = replay_run(run_dir)

    assert result.recorded_transitions == load_transitions(run_dir)
    assert changed_layers(result.recorded_transitions, result.replayed_transitions) == []
    assert len(result.replayed_transitions) == 4  # (TRAIN, INFER) x (pre_collapse, collapse_confirmed) of layer 2


def test_replay_with_other_rules_equals_a_run_recorded_with_those_rules(make_run):
    replayed = replay_run(make_run("default"), rules=FAST_RULES)
    recorded_with_fast_rules = load_snapshots(make_run("fast", rules=FAST_RULES))

    signature = lambda transitions: [(t.step, t.layer_id, t.source, t.dest) for t in transitions]  # noqa: E731
    expected = [t for snapshot in recorded_with_fast_rules for t in snapshot.transitions]
    assert signature(replayed.replayed_transitions) == signature(expected)
    assert replayed.rules == FAST_RULES


def test_other_rules_report_the_layer_whose_transitions_moved(make_run):
    result = replay_run(make_run(), rules=FAST_RULES)

    changes = changed_layers(result.recorded_transitions, result.replayed_transitions)
    assert [(change.mode, change.layer_id) for change in changes] == [("TRAIN", 2)]
    (change,) = changes
    assert format_transitions(change.recorded) == "28 nominal->pre_collapse, 44 pre_collapse->collapse_confirmed"
    assert change.replayed[-1].step < change.recorded[-1].step
    assert result.changed_snapshots > 0 and result.mismatched_snapshots == 0


def test_recorded_rules_come_from_the_manifest(make_run):
    assert replay_run(make_run(rules=FAST_RULES)).rules == FAST_RULES


def test_window_n_snapshots_at_multiples_of_n_like_a_monitor_observing_those_windows(make_run):
    run_dir = make_run(n_snapshots=5, steps_per_snapshot=4)  # steps 1..20
    _, snapshots = _replayed(run_dir, window=6)

    events = load_events(run_dir)
    live = Monitor("live")
    expected = [
        live.observe([e for e in events if low < e.step <= high], high)
        for low, high in [(0, 6), (6, 12), (12, 18), (18, 20)]
    ]
    assert [snapshot.step for snapshot in snapshots] == [6, 12, 18, 20]
    assert [snapshot.layers for snapshot in snapshots] == [snapshot.layers for snapshot in expected]


def test_window_n_skips_windows_without_events(tmp_path, make_event):
    with Monitor("gappy", output_dir=tmp_path) as monitor:
        monitor.observe([make_event([4, 4], step=1, run_id="gappy")], 1)
        monitor.observe([make_event([4, 4], step=9, run_id="gappy")], 9)
    _, snapshots = _replayed(tmp_path / "gappy", window=2)
    assert [snapshot.step for snapshot in snapshots] == [2, 9]


def test_events_after_the_last_recorded_snapshot_are_counted_not_replayed(tmp_path, make_event):
    with Monitor("tail", output_dir=tmp_path) as monitor:
        monitor.observe([make_event([4, 4], step=1, run_id="tail")], 1)
        monitor.writer.write_events_batch([make_event([4, 4], step=2, run_id="tail")] * 3)
    result = replay_run(tmp_path / "tail")
    assert (result.events, result.snapshots, result.unreplayed_events) == (4, 1, 3)


def test_progress_reports_every_event_once(make_run):
    reported = []
    result = replay_run(make_run(), progress=reported.append)
    assert sum(reported) == result.events == 12 * 4 * 3


def test_events_out_of_step_order_are_refused_with_the_step(tmp_path, make_event):
    with Monitor("unordered", output_dir=tmp_path) as monitor:
        monitor.observe([make_event([4, 4], step=5, run_id="unordered")], 5)
        monitor.observe([make_event([4, 4], step=6, run_id="unordered")], 6)
        monitor.writer.write_events_batch([make_event([4, 4], step=3, run_id="unordered")])
    with pytest.raises(InvalidInputError, match=r"routing_events.step=3: .*step order"):
        replay_run(tmp_path / "unordered")


def test_a_missing_run_folder_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a folder"):
        replay_run(tmp_path / "absent")


def test_an_empty_event_log_is_refused(tmp_path):
    (tmp_path / "routing_events.jsonl").touch()
    with pytest.raises(InvalidInputError, match="holds no routing events"):
        replay_run(tmp_path)


def test_a_zero_window_is_refused(make_run):
    with pytest.raises(InvalidInputError, match="window=0"):
        replay_run(make_run(), window=0)


def _steady_run(output_dir, run_id: str, n_steps: int, steps_per_snapshot: int = 100):
    """One 4-expert layer routing uniformly, a snapshot every ``steps_per_snapshot`` steps."""
    rng = np.random.default_rng(0)
    counts = rng.multinomial(32, [0.25] * 4, size=n_steps)
    with Monitor(run_id, output_dir=output_dir, lens=None) as monitor:
        for end in range(steps_per_snapshot, n_steps + 1, steps_per_snapshot):
            monitor.observe(
                [
                    RoutingEvent(
                        run_id=run_id, step=step, layer_id=0, n_experts=4, top_k=1, expert_token_counts=counts[step - 1]
                    )
                    for step in range(end - steps_per_snapshot + 1, end + 1)
                ],
                end,
            )
    return output_dir / run_id


def _peak_replay_bytes(run_dir) -> int:
    tracemalloc.start()
    try:
        replay_run(run_dir)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_replay_memory_does_not_grow_with_the_log(tmp_path):
    # Both logs are longer than the 4,096 lines the event reader parses at a time.
    short = _steady_run(tmp_path, "short", n_steps=4_500)
    long = _steady_run(tmp_path, "long", n_steps=9_000)
    assert _peak_replay_bytes(long) < 1.2 * _peak_replay_bytes(short)
