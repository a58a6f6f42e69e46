"""Parquet storage: the tables hold exactly what JSONL holds, under the committed schemas, readable by any engine."""

from __future__ import annotations

import filecmp

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import Field

from chronomoe import AlertTransition, CorruptRecordError, InvalidInputError, Monitor, RoutingEvent
from chronomoe.cli import main
from chronomoe.io.export import count_records, export_run
from chronomoe.io.parquet_footer import shift_offsets
from chronomoe.io.parquet_parts import MAGIC, PARTIAL_SUFFIX, encode_frame, read_part, scan_frames
from chronomoe.io.parquet_schema import TABLE_MODELS, schema_text, stale_tables, table_schema
from chronomoe.io.parquet_writer import ParquetRunWriter
from chronomoe.io.run_reader import open_run

JSONL_FILES = ("routing_events.jsonl", "snapshots.jsonl", "alerts.jsonl", "decisions.jsonl")
COLLAPSING = [900, 80, 20, 0, 0, 0, 0, 0]


def record_run(output_dir, storage: str, windows: list[list[RoutingEvent]], **options) -> None:
    """A run of ``windows`` (one snapshot each, at the last event's step) written with ``storage``."""
    with Monitor("run", output_dir, storage=storage, **options) as monitor:
        for events in windows:
            monitor.observe(events, step=max(event.step for event in events))


def windows_of(counts_by_window: list[list[list[int]]], first_step: int = 1) -> list[list[RoutingEvent]]:
    """Events of windows given as ``[window][layer] -> counts`` (one step per window)."""
    return [
        [
            RoutingEvent(
                run_id="run",
                step=first_step + index,
                layer_id=layer,
                n_experts=len(counts),
                top_k=1,
                expert_token_counts=counts,
                timestamp=float(index),
            )
            for layer, counts in enumerate(window)
        ]
        for index, window in enumerate(counts_by_window)
    ]


counts_rows = st.lists(st.integers(0, 2**31 - 1), min_size=8, max_size=8)
runs = st.lists(st.lists(counts_rows, min_size=1, max_size=3), min_size=1, max_size=6)


# -- the law: JSONL -> Parquet -> JSONL is the identity ---------------------------------------------------
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs)
def test_jsonl_to_parquet_to_jsonl_gives_back_every_file_byte_for_byte(tmp_path_factory, counts_by_window):
    root = tmp_path_factory.mktemp("roundtrip")
    record_run(root / "jsonl", "jsonl", windows_of(counts_by_window + [[COLLAPSING]] * 6))
    export_run(root / "jsonl" / "run", root / "parquet" / "run", "parquet")
    export_run(root / "parquet" / "run", root / "back" / "run", "jsonl")
    for name in JSONL_FILES:
        original = root / "jsonl" / "run" / name
        assert original.is_file() == (root / "back" / "run" / name).is_file()
        if original.is_file():
            assert filecmp.cmp(original, root / "back" / "run" / name, shallow=False), name


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(1, 12),
            st.sampled_from(["TRAIN", "INFER"]),
            st.none() | st.floats(-1e9, 1e9),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_events_written_as_parquet_read_back_equal_whatever_their_widths_modes_losses_and_prob_sums(
    tmp_path_factory, specs
):
    rng = np.random.default_rng(len(specs))
    events = [
        RoutingEvent(
            run_id="run",
            step=index,
            mode=mode,
            layer_id=index % 3,
            n_experts=width,
            top_k=1,
            expert_token_counts=rng.integers(0, 5, width),
            loss=loss,
            router_prob_sums=rng.random(width) if with_sums else None,
        )
        for index, (width, mode, loss, with_sums) in enumerate(specs)
    ]
    folder = tmp_path_factory.mktemp("events")
    with ParquetRunWriter("run", folder) as writer:
        writer.write_events_batch(events)
    # One row group per width: a batch's events come back grouped by width, the row groups in step order.
    by_width = sorted(events, key=lambda event: (event.n_experts, event.step))
    read = list(open_run(folder / "run").events())
    assert sorted(read, key=lambda event: (event.n_experts, event.step)) == by_width


# -- the schema contract -----------------------------------------------------------------------------------
def test_the_committed_parquet_schemas_are_the_ones_derived_from_the_models():
    assert stale_tables() == [], "run python -m chronomoe.io.parquet_schema --write and commit specs/parquet/"


def test_a_field_added_to_a_model_changes_its_table_so_the_schema_test_catches_the_drift(monkeypatch):
    class TransitionWithCause(AlertTransition):
        cause: str = Field("", description="a field another branch might add")

    before = schema_text("alerts")
    monkeypatch.setitem(TABLE_MODELS, "alerts", TransitionWithCause)
    assert schema_text("alerts") == before + "cause: string not null\n"
    assert stale_tables() == ["alerts"]


def test_every_model_field_is_a_column_but_the_event_fields_derived_from_the_counts():
    for table, model in TABLE_MODELS.items():
        columns = set(table_schema(table, 8).names if table == "routing_events" else table_schema(table).names)
        assert set(model.model_fields) - columns == ({"active_experts"} if table == "routing_events" else set())


def test_event_counts_are_a_fixed_size_list_of_int32_as_wide_as_the_layer():
    assert table_schema("routing_events", 256).field("expert_token_counts").type == pa.list_(
        pa.field("element", pa.int32(), False), 256
    )


def test_a_count_beyond_int32_is_refused_naming_the_event_and_nothing_is_written(tmp_path, make_event):
    with (
        ParquetRunWriter("run", tmp_path) as writer,
        pytest.raises(InvalidInputError, match=r"events\[1\].expert_token_counts=2147483648"),
    ):
        writer.write_events_batch([make_event([1, 2]), make_event([2**31, 0])])
    assert not open_run(tmp_path / "run").has("routing_events")


# -- parts: growing, torn, sealed, several ranks -----------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**40))
def test_a_row_group_moved_anywhere_in_a_file_reads_the_same_rows_through_its_shifted_footer(padding):
    table = pa.table({"step": list(range(5)), "name": ["a", "b", None, "d", "e"]})
    frame = encode_frame(table, compression="zstd")
    (footer,) = scan_frames(MAGIC + frame).footers
    assert shift_offsets(shift_offsets(footer, padding), -padding) == footer
    assert pq.ParquetFile(pa.BufferReader(MAGIC + frame), metadata=_metadata(footer)).read().equals(table)


def _metadata(footer: bytes) -> pq.FileMetaData:
    from chronomoe.io.parquet_parts import combine

    return combine([footer])


def test_a_growing_part_is_read_through_its_frames_and_everything_before_a_tear_is_recovered(tmp_path, make_event):
    writer = ParquetRunWriter("run", tmp_path)
    writer.write_events_batch([make_event([1, 2], step=1)])
    writer.write_events_batch([make_event([3, 4], step=2)])
    (part,) = (tmp_path / "run" / "routing_events").glob(f"*{PARTIAL_SUFFIX}")
    with open(part, "ab") as handle:
        handle.write(b"CMRG and a crash")  # the start of a frame that never finished
    assert [event.step for event in open_run(tmp_path / "run").events()] == [1, 2]
    assert read_part(part).metadata.num_row_groups == 2
    assert scan_frames(part.read_bytes()).torn_bytes == len(b"CMRG and a crash")


def test_validate_notes_a_torn_part_and_the_next_writer_seals_it_with_the_tear_moved_aside(
    tmp_path, capsys, make_event
):
    ParquetRunWriter("run", tmp_path).write_events_batch([make_event([1, 2], step=1)])  # never closed: a crash
    (part,) = (tmp_path / "run" / "routing_events").glob(f"*{PARTIAL_SUFFIX}")
    with open(part, "ab") as handle:
        handle.write(b"torn")
    assert main(["validate", str(tmp_path / "run")]) == 0
    assert "1 complete row groups, then 4 torn bytes" in capsys.readouterr().out
    with ParquetRunWriter("run", tmp_path) as writer:
        writer.write_events_batch([make_event([3, 4], step=2)])
    folder = tmp_path / "run" / "routing_events"
    assert not list(folder.glob(f"*{PARTIAL_SUFFIX}"))
    assert [path.read_bytes() for path in folder.glob("*.parquet.torn")] == [b"torn"]
    assert duckdb.sql(f"SELECT list(step ORDER BY step) FROM '{folder}/*.parquet'").fetchall() == [([1, 2],)]


def test_parts_of_several_ranks_are_one_table_for_duckdb_and_for_the_reader(tmp_path, make_event):
    for rank in (0, 1):
        with ParquetRunWriter("run", tmp_path, rank=rank) as writer:
            writer.write_events_batch([make_event([rank, 1], step=1, layer_id=rank)])
    folder = tmp_path / "run" / "routing_events"
    assert duckdb.sql(f"SELECT count(*) FROM '{folder}/*.parquet'").fetchall() == [(2,)]
    assert [event.layer_id for event in open_run(tmp_path / "run").events()] == [0, 1]


def test_a_part_is_sealed_after_its_row_groups_and_the_next_batch_starts_a_new_one(tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path, row_groups_per_part=2) as writer:
        for step in range(5):
            writer.write_events_batch([make_event([1, step], step=step)])
        folder = tmp_path / "run" / "routing_events"
        assert len(list(folder.glob("*.parquet"))) == 2
        assert len(list(folder.glob(f"*{PARTIAL_SUFFIX}"))) == 1
    assert [pq.ParquetFile(path).metadata.num_row_groups for path in sorted(folder.glob("*.parquet"))] == [2, 2, 1]


def test_a_row_its_model_rejects_is_reported_naming_the_part_and_the_row(tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path) as writer:
        writer.write_events_batch([make_event([1, 2], step=1), make_event([3, 4], step=2)])
    (part,) = (tmp_path / "run" / "routing_events").glob("*.parquet")
    table = pq.read_table(part)
    pq.write_table(table.set_column(table.schema.get_field_index("token_count"), "token_count", pa.array([3, 8])), part)
    with pytest.raises(CorruptRecordError, match=r"\.parquet:2: .*token_count=8 disagrees"):
        list(open_run(tmp_path / "run").events())


# -- counts(): the run as one array ------------------------------------------------------------------------
COUNTS_DTYPES = {"jsonl": np.int64, "parquet": np.int32}
"""``RunCounts.counts``' dtype by storage: Parquet's is its column's."""
recorded_events = st.lists(
    st.tuples(st.integers(1, 6), st.integers(0, 3), st.sampled_from(["TRAIN", "INFER"]), counts_rows),
    min_size=1,
    max_size=30,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recorded_events, st.integers(1, 7), st.integers(1, 3))
@example(  # a step written again after earlier steps, in a later part of one width: write order, not step order
    recorded=[
        (2, 0, "TRAIN", [0] * 8),
        (2, 0, "TRAIN", [0] * 7 + [1]),
        (1, 0, "TRAIN", [0] * 8),
        (2, 0, "TRAIN", [0] * 8),
    ],
    batch_size=2,
    row_groups_per_part=1,
)
def test_counts_hold_the_last_record_of_each_step_and_layer_of_the_mode_in_either_storage(
    tmp_path_factory, recorded, batch_size, row_groups_per_part
):
    """Whatever the order, repeats, modes, row groups and parts: the array holds the last record of each cell."""
    folder = tmp_path_factory.mktemp("counts")
    events = [
        RoutingEvent(
            run_id="run", step=step, mode=mode, layer_id=layer, n_experts=8, top_k=1, expert_token_counts=counts
        )
        for step, layer, mode, counts in recorded
    ]
    batches = [events[start : start + batch_size] for start in range(0, len(events), batch_size)]
    with ParquetRunWriter("parquet", folder, row_groups_per_part=row_groups_per_part) as writer:
        for batch in batches:
            writer.write_events_batch(batch)
    with Monitor("jsonl", folder, storage="jsonl") as monitor:
        for batch in batches:
            monitor.writer.write_events_batch(batch)
    for mode in ("TRAIN", "INFER"):
        last = {(event.step, event.layer_id): event.expert_token_counts for event in events if event.mode == mode}
        steps, layers = sorted({step for step, _ in last}), sorted({layer for _, layer in last})
        expected = np.zeros((len(steps), len(layers), 8 if last else 0), np.int64)  # no rows: no width
        for (step, layer), counts in last.items():
            expected[steps.index(step), layers.index(layer)] = counts
        for storage in ("parquet", "jsonl"):
            run_counts = open_run(folder / storage).counts(mode)
            assert run_counts.steps.tolist() == steps and run_counts.layer_ids.tolist() == layers
            assert run_counts.counts.dtype == COUNTS_DTYPES[storage]
            assert np.array_equal(run_counts.counts, expected)


def test_a_negative_count_in_a_later_row_group_is_reported_naming_its_row_in_the_part(tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path) as writer:
        for step in (1, 2, 3):
            writer.write_events_batch([make_event([1, 2], step=step), make_event([3, 4], step=step, layer_id=1)])
    (part,) = (tmp_path / "run" / "routing_events").glob("*.parquet")
    table = pq.read_table(part)
    rows = table.column("expert_token_counts").to_pylist()
    rows[4] = [5, -1]  # step 3, layer 0: the part's fifth row, in its third row group
    index = table.schema.get_field_index("expert_token_counts")
    field = table.schema.field(index)
    counts = pa.FixedSizeListArray.from_arrays(
        pa.array([value for row in rows for value in row], pa.int32()), type=field.type
    )
    pq.write_table(table.set_column(index, field, counts), part, row_group_size=2)
    with pytest.raises(CorruptRecordError, match=r"\.parquet:5: expert_token_counts: negative count"):
        open_run(tmp_path / "run").counts()


# -- the Monitor and the commands --------------------------------------------------------------------------
def test_a_monitor_with_storage_parquet_writes_tables_that_every_command_reads_like_the_jsonl_twin(tmp_path, capsys):
    windows = windows_of([[COLLAPSING, [125] * 8]] * 8)
    record_run(tmp_path / "jsonl", "jsonl", windows)
    record_run(tmp_path / "parquet", "parquet", windows)
    assert not (tmp_path / "parquet" / "run" / "routing_events.jsonl").exists()
    outputs = {}
    for storage in ("jsonl", "parquet"):
        run = str(tmp_path / storage / "run")
        codes = [main(["summary", run]), main(["replay", run])]
        outputs[storage] = (codes, capsys.readouterr().out)
        assert main(["validate", run]) == 0
        capsys.readouterr()
    assert outputs["jsonl"] == outputs["parquet"]
    assert outputs["parquet"][0] == [1, 0]  # summary: layer 0 collapsed


def test_export_refuses_an_existing_folder_and_a_run_already_in_that_storage(tmp_path, capsys):
    record_run(tmp_path, "jsonl", windows_of([[[1, 2]]]))
    assert main(["export", str(tmp_path / "run"), "--to", "jsonl"]) == 2
    assert "already stored as jsonl" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").touch()
    assert main(["export", str(tmp_path / "run"), "--to", "parquet", "--out", str(tmp_path / "taken")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--to", "parquet"]) == 0
    assert open_run(tmp_path / "run-parquet").storage == "parquet"


def test_count_records_gives_the_total_of_what_export_writes_in_both_directions(tmp_path):
    record_run(tmp_path / "jsonl", "jsonl", windows_of([[COLLAPSING]] * 6))
    to_parquet = export_run(tmp_path / "jsonl" / "run", tmp_path / "parquet" / "run", "parquet")
    to_jsonl = export_run(tmp_path / "parquet" / "run", tmp_path / "back" / "run", "jsonl")
    assert count_records(tmp_path / "jsonl" / "run") == sum(to_parquet.records.values()) > 0
    assert count_records(tmp_path / "parquet" / "run") == sum(to_jsonl.records.values())
