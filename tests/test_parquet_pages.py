"""The counts column decoded from its pages (chronomoe.io.parquet_pages) and the array built from it.

The contract: the page decoder gives exactly what pyarrow reads, or declines (``NotCanonical``) and pyarrow
reads those row groups; the writer's own parts are always decoded from their pages.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chronomoe import CorruptRecordError, RoutingEvent
from chronomoe.io import parquet_counts
from chronomoe.io.parquet_pages import COUNTS_LEAF, NotCanonical, decode_counts
from chronomoe.io.parquet_parts import open_part
from chronomoe.io.parquet_schema import COUNTS_FIELD, EVENTS_TABLE, table_schema
from chronomoe.io.parquet_writer import WRITE_OPTIONS, ParquetRunWriter
from chronomoe.io.run_reader import open_run
from chronomoe.io.run_reader_base import Cells

WRITERS_OPTIONS = {
    **{key: value for key, value in WRITE_OPTIONS[EVENTS_TABLE].items() if key in ("compression", "column_encoding")},
    "use_dictionary": False,  # the writer's list names other columns
}
"""The writer's options for the counts column, for a table of that column alone."""


def counts_table(counts: np.ndarray) -> pa.Table:
    """A table of one column, the events' counts column of ``counts``' width (``[rows, width]``)."""
    field = table_schema(EVENTS_TABLE, counts.shape[1]).field(COUNTS_FIELD)
    values = pa.FixedSizeListArray.from_arrays(pa.array(counts.reshape(-1), pa.int32()), type=field.type)
    return pa.table([values], schema=pa.schema([field]))


def parquet_bytes(counts: np.ndarray, **options: object) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(counts_table(counts), sink, **options)
    return sink.getvalue()


def decoded(data: pa.Buffer, width: int) -> np.ndarray:
    """Every row group of ``data`` decoded from its pages (``NotCanonical`` when declined)."""
    metadata = pq.read_metadata(pa.BufferReader(data))
    out = np.full((metadata.num_rows, width), -7, np.int32)
    decode_counts(data, metadata, range(metadata.num_row_groups), out, path="p", first_row=1)
    return out


count_values = st.sampled_from([255, 65_535, 2**24, 2**31 - 1]).flatmap(lambda top: st.integers(0, top))
layouts = st.fixed_dictionaries(
    {
        "compression": st.sampled_from(["zstd", "snappy", "gzip", "brotli", "lz4", "none"]),
        "use_dictionary": st.booleans(),
        "column_encoding": st.sampled_from([None, {COUNTS_LEAF: "BYTE_STREAM_SPLIT"}, {COUNTS_LEAF: "PLAIN"}]),
        "data_page_version": st.sampled_from(["1.0", "2.0"]),
        "data_page_size": st.sampled_from([64, 1 << 20]),
        "row_group_size": st.integers(1, 40),
        "write_page_checksum": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda width: hnp.arrays(np.int32, st.tuples(st.integers(0, 60), st.just(width)), elements=count_values)
    ),
    layouts,
)
def test_pages_decode_to_exactly_what_pyarrow_reads_or_are_declined(counts, layout):
    if layout["column_encoding"] is not None:
        layout = {**layout, "use_dictionary": False}  # pyarrow refuses an encoding beside a dictionary
    data = parquet_bytes(counts, **layout)
    try:
        result = decoded(data, counts.shape[1])
    except NotCanonical:
        assert (
            layout["use_dictionary"]
            or layout["data_page_version"] == "2.0"
            or layout["compression"] == "lz4"
            or (layout["data_page_size"] == 64)
        ), "a version 1 page of whole rows, without dictionary, was declined"
        return
    assert np.array_equal(result, counts)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([1, 7, 256]).flatmap(
        lambda width: hnp.arrays(np.int32, st.tuples(st.integers(1, 60), st.just(width)), elements=count_values)
    )
)
def test_the_writers_layout_is_always_decoded_from_its_pages(counts):
    assert np.array_equal(decoded(parquet_bytes(counts, row_group_size=37, **WRITERS_OPTIONS), counts.shape[1]), counts)


def test_a_negative_count_is_reported_naming_its_row_in_the_part():
    """(test_parquet.py has the same report from a layout that pyarrow reads.)"""
    counts = np.arange(24, dtype=np.int32).reshape(6, 4) * 1000
    counts[4, 2] = -1
    data = parquet_bytes(counts, row_group_size=2, **WRITERS_OPTIONS)
    with pytest.raises(CorruptRecordError, match=r"^p:5: expert_token_counts: negative count"):
        decoded(data, 4)


def test_a_page_that_does_not_decompress_is_reported_naming_the_part_and_the_row_where_it_begins():
    counts = np.ones((6, 4), np.int32)
    data = bytearray(parquet_bytes(counts, row_group_size=3, **WRITERS_OPTIONS).to_pybytes())
    metadata = pq.read_metadata(pa.BufferReader(bytes(data)))
    column = metadata.row_group(1).column(0)
    start = column.data_page_offset + column.total_compressed_size - 8  # inside the second group's zstd frame
    data[start : start + 8] = b"\xff" * 8
    with pytest.raises(CorruptRecordError, match=r"^p:4: expert_token_counts: a page does not decompress"):
        decoded(pa.py_buffer(bytes(data)), 4)


def test_a_page_that_fails_its_crc_is_reported_naming_the_part_and_the_row_where_it_begins():
    counts = np.ones((6, 4), np.int32)
    data = bytearray(parquet_bytes(counts, row_group_size=3, write_page_checksum=True, **WRITERS_OPTIONS).to_pybytes())
    column = pq.read_metadata(pa.BufferReader(bytes(data))).row_group(1).column(0)
    data[column.data_page_offset + column.total_compressed_size - 1] ^= 0x01  # the page's last byte
    with pytest.raises(CorruptRecordError, match=r"^p:4: expert_token_counts: a page fails its CRC"):
        decoded(pa.py_buffer(bytes(data)), 4)


@pytest.mark.parametrize(
    ("offset", "byte"),
    [(0, 0xFF), (19, 0x08), (6, 0xFF)],
    ids=["an unknown thrift type", "a header cut short", "a negative page size"],
)
def test_a_damaged_page_header_is_reported_naming_the_part_and_the_row_where_its_page_begins(offset, byte):
    counts = np.random.default_rng(1).integers(0, 70_000, (40, 8)).astype(np.int32)
    data = bytearray(parquet_bytes(counts, row_group_size=20, data_page_size=300, **WRITERS_OPTIONS).to_pybytes())
    data[pq.read_metadata(pa.BufferReader(bytes(data))).row_group(0).column(0).data_page_offset + offset] = byte
    with pytest.raises(CorruptRecordError, match=r"^p:1: expert_token_counts: a page"):
        decoded(pa.py_buffer(bytes(data)), 8)


def test_counts_of_parts_read_on_several_threads_equal_the_events(tmp_path, monkeypatch):
    """One session writing two widths side by side: each run of row groups is one group, and the runs of one
    part are read at once on several threads (pyarrow's ParquetFile must not be shared between them)."""
    monkeypatch.setattr(parquet_counts, "READ_THREADS", 4)
    rng = np.random.default_rng(0)
    expected = {}
    with ParquetRunWriter("run", tmp_path, row_groups_per_part=10_000) as writer:
        for step in range(120):
            batch = []
            for layer, width in ((0, 4), (1, 9)):
                counts = rng.integers(0, 100_000, width)
                batch.append(
                    RoutingEvent(
                        run_id="r", step=step, layer_id=layer, n_experts=width, top_k=1, expert_token_counts=counts
                    )
                )
                expected[(step, layer)] = counts
            writer.write_events_batch(batch)
    for _ in range(5):
        result = open_run(tmp_path / "run").counts()
        for (step, layer), counts in expected.items():
            assert result.counts[step, layer, : len(counts)].tolist() == counts.tolist()
            assert not result.counts[step, layer, len(counts) :].any()


def test_a_growing_part_sealed_after_it_was_listed_is_read_under_its_sealed_name(tmp_path, make_event):
    writer = ParquetRunWriter("run", tmp_path)
    writer.write_events_batch([make_event([1, 2], step=1)])
    reader = open_run(tmp_path / "run")
    (growing,) = reader.parts("routing_events")
    writer.close()  # seals it: renamed to .parquet
    assert not growing.exists()
    part = open_part(growing)
    assert part is not None and part.file.metadata.num_rows == 1


def test_counts_of_parts_the_page_decoder_declines_are_read_by_pyarrow(tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path) as writer:
        for step in (1, 2, 3):
            writer.write_events_batch([make_event([1, 300], step=step), make_event([70_000, 4], step=step, layer_id=1)])
    (part,) = (tmp_path / "run" / "routing_events").glob("*.parquet")
    expected = open_run(tmp_path / "run").counts().counts
    pq.write_table(pq.read_table(part), part, data_page_version="2.0", row_group_size=2)  # version 2 pages
    with pytest.raises(NotCanonical):
        metadata = pq.read_metadata(part)
        data = pa.py_buffer(part.read_bytes())
        decode_counts(data, metadata, [0], np.empty((2, 2), np.int32), path="p", first_row=1)
    assert np.array_equal(open_run(tmp_path / "run").counts().counts, expected)


def test_counts_of_a_run_in_order_are_the_decoded_buffer_itself(tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path, row_groups_per_part=2) as writer:
        for step in range(1, 6):
            writer.write_events_batch([make_event([step, 1], step=step, layer_id=layer) for layer in range(3)])
    counts = open_run(tmp_path / "run").counts()
    assert counts.counts.dtype == np.int32 and counts.counts.flags.c_contiguous
    assert counts.counts.base is not None  # a reshaped view of the buffer the pages were decoded into
    assert counts.counts[:, :, 0].tolist() == [[step] * 3 for step in range(1, 6)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), max_size=30),
        st.tuples(st.lists(st.integers(0, 9), min_size=1, max_size=5, unique=True), st.integers(1, 4)).map(
            lambda grid: [(step, layer) for step in sorted(grid[0]) for layer in range(grid[1])]
        ),
    )
)
def test_cells_are_the_sorted_distinct_steps_and_layers_and_in_order_only_for_each_cell_once_in_turn(rows):
    steps = np.array([step for step, _ in rows], np.int64)
    layers = np.array([layer for _, layer in rows], np.int64)
    cells = Cells.of(steps, layers)
    unique_steps, layer_ids = np.unique(steps), np.unique(layers)
    assert cells.steps.tolist() == unique_steps.tolist() and cells.layer_ids.tolist() == layer_ids.tolist()
    expected = [unique_steps.tolist().index(s) * len(layer_ids) + layer_ids.tolist().index(layer) for s, layer in rows]
    assert cells.cells.tolist() == expected
    assert cells.in_order == (bool(rows) and expected == list(range(len(unique_steps) * len(layer_ids))))


def test_counts_from_parquet_are_int32_and_equal_to_the_events(tmp_path):
    events = [
        RoutingEvent(run_id="r", step=step, layer_id=0, n_experts=3, top_k=1, expert_token_counts=[step, 0, 2**20])
        for step in (1, 2)
    ]
    with ParquetRunWriter("run", tmp_path) as writer:
        writer.write_events_batch(events)
    counts = open_run(tmp_path / "run").counts()
    assert counts.counts.dtype == np.int32
    assert counts.counts.tolist() == [[[1, 0, 2**20]], [[2, 0, 2**20]]]


def test_counts_of_an_events_table_without_a_complete_row_group_are_empty_int32(tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path) as writer:
        writer.write_events_batch([make_event([1, 2])])
    folder = tmp_path / "run" / "routing_events"
    for part in folder.glob("*.parquet"):
        part.unlink()
    (folder / "part-r00000-20260101T000000000000Z-p1-00000.parquet.partial").write_bytes(b"PAR1")  # torn at birth
    counts = open_run(tmp_path / "run").counts()
    assert counts.counts.shape == (0, 0, 0) and counts.counts.dtype == np.int32
    assert counts.steps.size == 0 and counts.layer_ids.size == 0
