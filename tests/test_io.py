"""Telemetry I/O: the seed's run folder layout, append-only JSONL, torn lines, corrupt lines, the manifest."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chronomoe import (
    CorruptRecordError,
    RoutingEvent,
    SystemSnapshot,
    TelemetryWriter,
    create_run_manifest,
    get_git_commit,
    load_events,
    load_manifest,
    load_snapshots,
    load_transitions,
)
from chronomoe.io import iter_events
from chronomoe.io import writer as writer_module
from chronomoe.io.event_lines import event_batches
from chronomoe.io.lines import open_for_append
from chronomoe.io.run_reader import open_run
from chronomoe.io.serialize import event_line


@pytest.fixture
def events(make_event):
    """Six events: steps 0..2 of layers 0 and 1, with losses on layer 0."""
    return [
        make_event([step, 2, 0, 5], run_id="run", step=step, layer_id=layer, top_k=2, loss=2.5 if layer == 0 else None)
        for step in range(3)
        for layer in range(2)
    ]


@pytest.fixture
def snapshots(rows):
    """Six snapshots of a collapsing layer (they carry PRE_COLLAPSE and COLLAPSE_CONFIRMED transitions)."""
    history: dict = {}
    return [
        SystemSnapshot.from_counts([rows.collapsing, rows.balanced], step=step, run_id="run", alert_history=history)
        for step in range(6)
    ]


# -- layout ------------------------------------------------------------------------------------------


def test_run_folder_and_file_names_are_the_seeds(tmp_path):
    with TelemetryWriter(run_id="my_run", output_dir=tmp_path / "outputs") as writer:
        run_dir = tmp_path / "outputs" / "my_run"
        assert writer.run_dir == run_dir and run_dir.is_dir()
        assert writer.events_path == run_dir / "routing_events.jsonl"
        assert writer.snapshots_path == run_dir / "snapshots.jsonl"
        assert writer.alerts_path == run_dir / "alerts.jsonl"
        assert writer.manifest_path == run_dir / "run_manifest.json"


@pytest.mark.parametrize("run_id", ["../x", "/abs", "", "a/b", "..", ".", "a\\b"])
def test_an_unsafe_run_id_is_refused(tmp_path, assert_rejected, run_id):
    assert_rejected(lambda: TelemetryWriter(run_id, tmp_path), "run_id", repr(run_id))
    assert list(tmp_path.iterdir()) == []


# -- writing and loading --------------------------------------------------------------------------


def test_events_written_one_by_one_or_in_batches_load_back_equal(tmp_path, events):
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_event(events[0])
        assert writer.write_events_batch(events[1:4]) == 3
        assert writer.flush_events(events[4:]) == 2
        assert writer.write_events_batch([]) == 0
    assert load_events(tmp_path / "run") == events
    assert load_events(tmp_path / "run" / "routing_events.jsonl") == events


def test_snapshots_load_back_equal_and_their_transitions_go_to_alerts_jsonl(tmp_path, snapshots):
    with TelemetryWriter("run", tmp_path) as writer:
        for snapshot in snapshots:
            writer.write_snapshot(snapshot)
    assert load_snapshots(tmp_path / "run") == snapshots
    written = load_transitions(tmp_path / "run")
    assert written == [t for s in snapshots for t in s.transitions]
    assert [(t.step, t.dest.value) for t in written] == [(2, "pre_collapse"), (4, "collapse_confirmed")]


def test_event_line_equals_model_dump_json_as_parsed_json(events):
    for event in events:
        line = event_line(event)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == json.loads(event.model_dump_json())


@settings(max_examples=100)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 2**40), min_size=n, max_size=n),
            st.none() | st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=n, max_size=n),
        )
    ),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.floats(0, 4e9),
)
def test_event_line_equals_model_dump_json_for_any_event(make_event, counts_and_sums, loss, timestamp):
    counts, sums = counts_and_sums
    event = make_event(counts, router_prob_sums=sums, loss=loss, timestamp=timestamp)
    assert json.loads(event_line(event)) == json.loads(event.model_dump_json())


def test_manifest_is_written_and_loaded(tmp_path):
    manifest = create_run_manifest("run", "MyMoE", {"lr": 0.001, "layers": [1, 2]}, git_commit="abc1234", n_layers=4)
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_manifest(manifest)
        writer.write_manifest({**manifest, "model_name": "Renamed"})
    loaded = load_manifest(tmp_path / "run")
    assert loaded == {**manifest, "model_name": "Renamed"}
    assert (loaded["run_id"], loaded["config"], loaded["git_commit"], loaded["n_layers"]) == (
        "run",
        {"lr": 0.001, "layers": [1, 2]},
        "abc1234",
        4,
    )
    assert {"created_at", "chronomoe_version", "python_version"} <= set(loaded)
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["run_manifest.json"]


def test_get_git_commit_returns_a_string():
    commit = get_git_commit()
    assert isinstance(commit, str) and commit


# -- append-only, one write per batch ------------------------------------------------------------------


def test_a_second_writer_appends_to_the_same_files(tmp_path, events, snapshots):
    with TelemetryWriter("run", tmp_path) as first:
        first.write_events_batch(events[:3])
        first.write_snapshot(snapshots[0])
    before = (tmp_path / "run" / "routing_events.jsonl").read_bytes()
    with TelemetryWriter("run", tmp_path) as second:
        second.write_events_batch(events[3:])
        second.write_snapshot(snapshots[1])
    assert (tmp_path / "run" / "routing_events.jsonl").read_bytes().startswith(before)
    assert load_events(tmp_path / "run") == events
    assert load_snapshots(tmp_path / "run") == snapshots[:2]


class SpyFile:
    """Wraps an open file, recording each ``write`` call's size."""

    def __init__(self, handle, writes: list) -> None:
        self.handle = handle
        self.writes = writes

    def write(self, data) -> int:
        self.writes.append((self.handle.name, len(data)))
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.fixture
def spied_writes(monkeypatch):
    """Every ``write`` the writer makes, as (file name, bytes), and every file it opens."""
    writes: list = []
    opened: list = []

    def spying_open(path):
        opened.append(path.name)
        return SpyFile(open_for_append(path), writes)

    monkeypatch.setattr(writer_module, "open_for_append", spying_open)
    return writes, opened


def test_each_batch_is_one_write_and_each_file_is_opened_once(tmp_path, events, snapshots, spied_writes):
    writes, opened = spied_writes
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events[:4])
        writer.flush_events(events[4:])
        writer.write_snapshot(snapshots[2])  # carries one transition
        writer.write_snapshot(snapshots[3])
    files = [name.rsplit("/", 1)[-1] for name, _ in writes]
    assert files == [
        "routing_events.jsonl",
        "routing_events.jsonl",
        "alerts.jsonl",
        "snapshots.jsonl",
        "snapshots.jsonl",
    ]
    assert writes[0][1] == sum(len(event_line(e)) for e in events[:4])
    assert sorted(opened) == ["alerts.jsonl", "routing_events.jsonl", "snapshots.jsonl"]


def test_a_batch_of_events_is_written_as_their_event_lines_in_order(tmp_path, events):
    with TelemetryWriter("run", tmp_path) as writer:
        assert writer.write_events_batch(iter(events)) == len(events)
    assert (tmp_path / "run" / "routing_events.jsonl").read_bytes() == b"".join(event_line(e) for e in events)


def test_fsync_true_syncs_after_every_snapshot(tmp_path, snapshots, monkeypatch):
    synced = []
    monkeypatch.setattr(writer_module.os, "fsync", synced.append)
    with TelemetryWriter("run", tmp_path, fsync=True) as writer:
        writer.write_snapshot(snapshots[0])
        writer.write_snapshot(snapshots[2])
    assert len(synced) == 1 + 2  # snapshots.jsonl, then snapshots.jsonl and alerts.jsonl


# -- torn and corrupt lines ------------------------------------------------------------------------------


def tear(path, keep_bytes: int = 25) -> None:
    """Append the first bytes of a copy of the file's last line, as a crash mid-write leaves it."""
    content = path.read_bytes()
    last = content.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    path.write_bytes(content + last[:keep_bytes])


def test_loaders_skip_a_torn_last_line_with_a_warning_and_keep_every_complete_record(
    tmp_path, events, snapshots, caplog
):
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events)
        for snapshot in snapshots:
            writer.write_snapshot(snapshot)
    for name in ("routing_events.jsonl", "snapshots.jsonl", "alerts.jsonl"):
        tear(tmp_path / "run" / name)
    with caplog.at_level(logging.WARNING, logger="chronomoe.io.lines"):
        assert load_events(tmp_path / "run") == events
        assert load_snapshots(tmp_path / "run") == snapshots
        assert len(load_transitions(tmp_path / "run")) == 2
    torn = [r for r in caplog.records if "torn last line" in r.getMessage()]
    assert len(torn) == 3
    assert f"routing_events.jsonl:{len(events) + 1}" in torn[0].getMessage()


def test_a_torn_last_line_is_warned_about_once_however_often_the_file_is_read(tmp_path, events, caplog):
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events)
    tear(tmp_path / "run" / "routing_events.jsonl")
    with caplog.at_level(logging.WARNING, logger="chronomoe.io.lines"):
        for _ in range(3):
            assert load_events(tmp_path / "run") == events
    assert sum("torn last line" in record.getMessage() for record in caplog.records) == 1


def test_a_corrupt_line_before_the_last_raises_naming_file_and_line(tmp_path, events):
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events)
    path = tmp_path / "run" / "routing_events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:30] + b"\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptRecordError) as raised:
        load_events(path)
    assert (raised.value.path, raised.value.line_number) == (str(path), 3)
    assert str(raised.value).startswith(f"{path}:3:")


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"expert_token_counts": [1, -2, 0, 5]}, "expert_token_counts"),
        ({"token_count": 999}, "token_count"),
        ({"active_experts": [0]}, "active_experts"),
        ({"mode": "EVAL"}, "mode"),
        ({"top_k": 9}, "top_k"),
        ({"step": -1}, "step"),
        ({"expert_token_counts": [1, 2, 0]}, "expert_token_counts"),
        ({"expert_token_counts": [1.5, 2, 0, 5]}, "expert_token_counts"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_a_line_that_is_json_but_not_a_valid_event_raises_naming_file_and_line(tmp_path, events, change, reason):
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events)
    path = tmp_path / "run" / "routing_events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = json.dumps({**json.loads(lines[1]), **change}).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptRecordError, match=reason) as raised:
        load_events(path)
    assert raised.value.line_number == 2


def event_record(counts: list, **changes) -> dict:
    """The writer's JSON object for an event of these counts, token_count and active_experts derived from
    them as Python reads them, with ``changes`` applied."""
    width = len(counts)
    event = RoutingEvent(run_id="run", step=0, layer_id=0, n_experts=width, top_k=1, expert_token_counts=[0] * width)
    derived = {
        "expert_token_counts": counts,
        "token_count": sum(counts),
        "active_experts": [expert for expert, count in enumerate(counts) if count],
    }
    return {**json.loads(event_line(event)), **derived, **changes}


# Lines of several widths, in the writer's form or not, that the model accepts or rejects; the fast loader
# parses the counts of a batch's canonical lines of each width together, so neighbours must not sway it.
MIXED_RECORDS = [
    event_record([3, 0, 5]),
    event_record([1, 2]),
    event_record([0, 0, 0]),
    event_record([True, True]),  # only booleans: a bool array, which the model rejects, beside integer rows
    event_record([4]),
    event_record([True, 2]),  # booleans among integers count 0 or 1, as in numpy
    event_record([2**62, 2**62], token_count=-(2**63)),  # the sum wraps int64
    event_record([2**62, 2**62 - 1]),  # the sum is 2**63 as float64
    event_record([2**40, 7]),
    event_record([1.0, 0, 2], token_count=3),  # integral floats: the model accepts them
    event_record([1.5, 2]),
    {**event_record([1, 2]), "expert_token_counts": ["1", 2]},
    event_record([2**63, 0]),
    event_record([1, 2], step=2**64),  # orjson reads a float, the model an integer, which it accepts
    event_record([1, 2], router_prob_sums=[2**64, 0]),  # the model reads integers (an object array) and rejects them
    event_record([2**63, -(2**63) + 3]),
    event_record([-1, 4]),
    event_record([0, 3], active_experts=[0, 1]),
    event_record([0, 3], active_experts=["1"]),  # lax integers: the model accepts them
    event_record([0, 3], token_count=4),
    event_record([5, 0, 1], timestamp=12),
    event_record([9, 9]),
]


@pytest.mark.parametrize("batch_lines", [1, 3, 4096], ids=["one-line", "few-lines", "default"])
def test_the_fast_event_loader_agrees_with_the_model_on_every_line_of_a_mixed_file(tmp_path, batch_lines):
    lines = [json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in MIXED_RECORDS]

    def load_events(path):
        return list(iter_events(path, batch_lines))

    expected = []
    for line in lines:
        try:
            expected.append(RoutingEvent.model_validate_json(line))
        except ValidationError:
            expected.append(None)
    valid = [line for line, event in zip(lines, expected, strict=True) if event is not None]
    assert 0 < len(valid) < len(lines)
    path = tmp_path / "routing_events.jsonl"
    path.write_bytes(b"".join(valid))
    loaded = load_events(path)
    assert loaded == [event for event in expected if event is not None]
    assert all(type(e.active_experts) is tuple and not e.expert_token_counts.flags.writeable for e in loaded)
    for line, event in zip(lines, expected, strict=True):
        if event is None:  # after three valid lines, one of them of width 2 in plain integers
            path.write_bytes(b"".join(valid[:3]) + line + b"".join(valid[3:]))
            with pytest.raises(CorruptRecordError) as raised:
                load_events(path)
            assert raised.value.line_number == 4, line


def test_a_corrupt_snapshot_line_raises_naming_file_and_line(tmp_path, snapshots):
    with TelemetryWriter("run", tmp_path) as writer:
        for snapshot in snapshots:
            writer.write_snapshot(snapshot)
    path = tmp_path / "run" / "snapshots.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = b"{not json}\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptRecordError, match=r"snapshots\.jsonl:1:"):
        load_snapshots(path)


def test_a_new_writer_moves_a_torn_tail_aside_and_appends_cleanly(tmp_path, events, caplog):
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events[:3])
    path = tmp_path / "run" / "routing_events.jsonl"
    complete = path.read_bytes()
    tear(path, keep_bytes=40)
    tail = path.read_bytes()[len(complete) :]
    with caplog.at_level(logging.WARNING, logger="chronomoe.io.lines"), TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events[3:])
    assert "torn line" in caplog.text
    assert (tmp_path / "run" / "routing_events.jsonl.torn").read_bytes() == tail + b"\n"
    assert path.read_bytes().startswith(complete)
    assert load_events(path) == events


def test_the_writers_lines_take_the_fast_path_and_their_counts_array_is_that_of_load_events(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.multinomial(4096, rng.dirichlet(np.full(16, 0.3), size=3), size=(5, 3))  # [steps, layers, experts]
    counts[1, 2] = 0  # a layer that routed nothing
    events = [
        RoutingEvent(
            run_id="run",
            step=10 * step,
            mode=mode,
            layer_id=layer,
            n_experts=16,
            top_k=2,
            expert_token_counts=counts[step, layer] + (mode == "INFER"),
        )
        for step in range(5)
        for layer in range(3)
        for mode in ("TRAIN", "INFER")
    ]
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events)
    path = tmp_path / "run" / "routing_events.jsonl"
    assert [batch.unaccepted for batch in event_batches(path, 7)] == [[]] * 5  # no line left to full validation
    loaded = load_events(path)
    assert loaded == events
    for mode in ("TRAIN", "INFER"):
        run_counts = open_run(tmp_path / "run").counts(mode)
        assert run_counts.steps.tolist() == [0, 10, 20, 30, 40] and run_counts.layer_ids.tolist() == [0, 1, 2]
        expected = np.zeros((5, 3, 16), np.int64)
        for event in loaded:
            if event.mode == mode:
                expected[event.step // 10, event.layer_id] = event.expert_token_counts
        assert np.array_equal(run_counts.counts, expected)


def test_counts_keep_the_later_line_of_a_step_recorded_twice_whichever_path_read_it(tmp_path):
    first = RoutingEvent(run_id="run", step=1, layer_id=0, n_experts=2, top_k=1, expert_token_counts=[1, 2])
    again = first.model_copy(update={"expert_token_counts": np.array([5, 0]), "token_count": 5, "active_experts": (0,)})
    folder = tmp_path / "run"
    folder.mkdir()
    spaced = json.dumps(json.loads(event_line(again))).encode() + b"\n"  # not the writer's form: full validation
    for lines in ([event_line(first), event_line(again)], [event_line(first), spaced], [spaced, event_line(first)]):
        (folder / "routing_events.jsonl").write_bytes(b"".join(lines))
        last = load_events(folder)[-1]
        assert open_run(folder).counts().counts.tolist() == [[last.expert_token_counts.tolist()]]
