"""A run id used again: a Monitor refuses, resumes or starts a new folder, as ``on_existing_run`` says.

The contract (README, "Run folders"): a recorded run is never appended to
silently; a resumed run continues after its recorded steps (checked), and a
resume from an earlier checkpoint moves the records written after it aside
instead of recording those steps twice; ``"new"`` records into ``run_id-2``,
``-3``, ... The seed's ``TelemetryWriter`` keeps appending as the seed's did,
and ``validate`` and ``summary`` then report the repeated steps.
"""

from __future__ import annotations

import logging

import pytest
from crash_writer import RULES, window_events, window_step

from chronomoe import (
    AlertRules,
    InvalidInputError,
    Monitor,
    TelemetryWriter,
    load_events,
    load_manifest,
    load_snapshots,
)
from chronomoe.cli import main
from chronomoe.io.paths import ALERTS_FILE, EVENTS_FILE, SNAPSHOTS_FILE
from chronomoe.io.run_folder import SUPERSEDED_SUFFIX
from chronomoe.schemas import validate_run


def monitor(output_dir, **options) -> Monitor:
    return Monitor("run", output_dir, rules=RULES, lens=None, controller=None, **options)


def record(monitor: Monitor, windows) -> list:
    """Observe the crash writer's windows (session 0); their snapshots."""
    return [monitor.observe(window_events(0, window), window_step(0, window)) for window in windows]


def folder_bytes(run_dir) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir())}


@pytest.fixture
def recorded(tmp_path):
    """A run folder ``tmp_path/run`` holding windows 0 and 1."""
    with monitor(tmp_path) as first:
        record(first, range(2))
    return tmp_path / "run"


# -- refuse (the default) -------------------------------------------------------------------------
def test_a_recorded_run_id_is_refused_naming_the_folder_and_both_ways_out(recorded):
    before = folder_bytes(recorded)
    with pytest.raises(InvalidInputError) as raised:
        monitor(recorded.parent)
    message = str(raised.value)
    assert str(recorded) in message
    assert "on_existing_run='resume'" in message and "on_existing_run='new'" in message
    assert folder_bytes(recorded) == before


def test_a_folder_of_that_name_without_run_files_is_recorded_into(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("made before the run")
    with monitor(tmp_path) as fresh:
        record(fresh, range(1))
    assert len(load_snapshots(tmp_path / "run")) == 1


def test_an_unknown_policy_is_refused_naming_the_option(tmp_path, assert_rejected):
    assert_rejected(lambda: monitor(tmp_path, on_existing_run="append"), "on_existing_run", "'append'")
    assert not (tmp_path / "run").exists()


# -- resume -------------------------------------------------------------------------------------
def test_resume_appends_after_the_recorded_steps_and_the_folder_stays_valid(recorded):
    with monitor(recorded.parent, on_existing_run="resume") as resumed:
        record(resumed, range(2, 4))
    assert [s.step for s in load_snapshots(recorded)] == [window_step(0, w) for w in range(4)]
    assert validate_run(recorded).ok


def test_resume_refuses_a_step_at_or_before_the_recorded_ones_and_writes_nothing(recorded):
    before = folder_bytes(recorded)
    with monitor(recorded.parent, on_existing_run="resume") as resumed:
        with pytest.raises(InvalidInputError) as raised:
            record(resumed, range(1, 2))
        manifest = (recorded / "run_manifest.json").read_bytes()
    assert raised.value.field == "step" and str(recorded) in str(raised.value)
    assert f"up to step {window_step(0, 1)}" in str(raised.value)
    assert folder_bytes(recorded) == {**before, "run_manifest.json": manifest}


def test_resume_keeps_the_runs_manifest_and_lists_the_resume_in_it(recorded):
    created = load_manifest(recorded)["created_at"]
    with monitor(recorded.parent, on_existing_run="resume", training_config={"lr": 0.5}):
        pass
    manifest = load_manifest(recorded)
    assert manifest["created_at"] == created and manifest["config"] == {}
    [resume] = manifest["resumes"]
    assert resume["config"] == {"lr": 0.5} and resume["created_at"] > created


def test_resume_with_other_alert_rules_is_refused_naming_the_changed_rule(recorded):
    other = AlertRules(**{**RULES.model_dump(), "confirm_persistence": RULES.confirm_persistence + 1})
    with pytest.raises(InvalidInputError, match="confirm_persistence") as raised:
        Monitor("run", recorded.parent, rules=other, lens=None, on_existing_run="resume")
    assert raised.value.field == "rules"


def test_resuming_from_an_earlier_checkpoint_moves_the_later_records_aside_and_records_those_steps_once(tmp_path):
    with monitor(tmp_path) as first:
        record(first, range(2))
        checkpoint = first.state_dict()
        killed_later = record(first, range(2, 4))  # then the process dies; the checkpoint is older
    run_dir = tmp_path / "run"
    with monitor(tmp_path, on_existing_run="resume") as resumed:
        resumed.load_state_dict(checkpoint)
        again = record(resumed, range(2, 5))
    assert [s.step for s in load_snapshots(run_dir)] == [window_step(0, w) for w in range(5)]
    assert [s.model_dump(exclude={"timestamp"}) for s in again[:2]] == [
        s.model_dump(exclude={"timestamp"}) for s in killed_later
    ]
    superseded = (run_dir / (SNAPSHOTS_FILE + SUPERSEDED_SUFFIX)).read_bytes().splitlines()
    assert len(superseded) == 2
    events_aside = (run_dir / (EVENTS_FILE + SUPERSEDED_SUFFIX)).read_bytes().splitlines()
    assert len(events_aside) == sum(len(window_events(0, w)) for w in range(2, 4))
    assert validate_run(run_dir).ok


def test_the_records_moved_aside_are_announced_per_file(tmp_path, caplog):
    with monitor(tmp_path) as first:
        record(first, range(1))
        checkpoint = first.state_dict()
        record(first, range(1, 2))
    with caplog.at_level(logging.WARNING), monitor(tmp_path, on_existing_run="resume") as resumed:
        resumed.load_state_dict(checkpoint)
    moved = [r.getMessage() for r in caplog.records if SUPERSEDED_SUFFIX in r.getMessage()]
    assert any(EVENTS_FILE in m for m in moved) and any(SNAPSHOTS_FILE in m and "last 1 records" in m for m in moved)


def test_a_checkpoint_of_another_run_is_refused_and_moves_nothing(recorded, tmp_path):
    with Monitor("other", tmp_path, rules=RULES, lens=None) as other:
        record(other, range(1))
        foreign = other.state_dict()
    before = folder_bytes(recorded)
    with monitor(recorded.parent, on_existing_run="resume") as resumed, pytest.raises(InvalidInputError) as raised:
        resumed.load_state_dict(foreign)
    assert raised.value.field == "state.run_id"
    assert folder_bytes(recorded).keys() == before.keys()
    assert (recorded / SNAPSHOTS_FILE).read_bytes() == before[SNAPSHOTS_FILE]


# -- new ----------------------------------------------------------------------------------------
def test_new_records_into_the_next_free_name_and_says_where(recorded, caplog):
    with caplog.at_level(logging.WARNING), monitor(recorded.parent, on_existing_run="new") as second:
        [snapshot] = record(second, range(1))
    assert (second.run_id, second.run_dir) == ("run-2", recorded.parent / "run-2")
    assert snapshot.run_id == "run-2" and [s.run_id for s in load_snapshots(second.run_dir)] == ["run-2"]
    assert str(second.run_dir) in caplog.text
    with monitor(recorded.parent, on_existing_run="new") as third:
        assert third.run_id == "run-3"
    assert len(load_snapshots(recorded)) == 2


def test_new_uses_the_run_id_itself_when_it_is_free(tmp_path):
    with monitor(tmp_path, on_existing_run="new") as only:
        assert (only.run_id, only.run_dir) == ("run", tmp_path / "run")


# -- the seed's writer keeps appending; readers say so ------------------------------------------
@pytest.fixture
def recorded_twice(tmp_path):
    """A run folder into which two seed-style writers wrote the same steps (windows 0 to 2, twice)."""
    model = Monitor("model", rules=RULES, lens=None)  # computes the snapshots; writes nothing
    windows = [(window_events(0, w), model.observe(window_events(0, w), window_step(0, w))) for w in range(3)]
    for _ in range(2):
        with TelemetryWriter("run", tmp_path) as writer:
            for events, snapshot in windows:
                writer.flush_events(events)
                writer.write_snapshot(snapshot)
    return tmp_path / "run"


def test_validate_reports_steps_a_reused_writer_recorded_again(recorded_twice, capsys):
    assert main(["validate", str(recorded_twice)]) == 1
    out = capsys.readouterr().out
    last = window_step(0, 2)
    assert f"{SNAPSHOTS_FILE}:4: step {window_step(0, 0)} (mode=TRAIN) is not after step {last} (line 3)" in out
    assert "more than one recording" in out and "repeat or precede an earlier step" in out.splitlines()[-1]


def test_summary_reports_the_repeated_steps_and_counts_each_step_once(recorded_twice, capsys):
    main(["summary", str(recorded_twice)])
    captured = capsys.readouterr()
    assert f"3 TRAIN snapshots, steps {window_step(0, 0)}..{window_step(0, 2)}" in captured.out
    assert f"steps {window_step(0, 0)}..{window_step(0, 2)} are recorded more than once" in captured.err
    assert "3 earlier TRAIN snapshot(s) left out" in captured.err
    transitions = [line for line in captured.out.splitlines() if "->" in line]
    assert all(line.count("nominal->pre_collapse") <= 1 for line in transitions)


def test_an_alerts_log_of_a_reused_writer_is_reported_too(recorded_twice):
    check = validate_run(recorded_twice)
    by_name = {file_check.path.name: file_check for file_check in check.files}
    assert by_name[EVENTS_FILE].out_of_order == len(load_events(recorded_twice)) // 2
    assert ALERTS_FILE not in by_name or by_name[ALERTS_FILE].out_of_order == by_name[ALERTS_FILE].records // 2
