"""Events frames whose counts this package encodes (chronomoe.io.parquet_events_frame): read back by pyarrow as
the events were, with the schema and metadata pyarrow writes for them, and decoded from their pages."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chronomoe import RoutingEvent
from chronomoe.io import parquet_events_frame
from chronomoe.io.parquet_events_frame import encode_events_frame
from chronomoe.io.parquet_pages import COUNTS_LEAF, decode_counts, leaf_index
from chronomoe.io.parquet_parts import MAGIC, PARTIAL_SUFFIX, encode_frame, seal
from chronomoe.io.parquet_records import events_columns
from chronomoe.io.parquet_schema import COUNTS_FIELD, EVENTS_TABLE, table_schema
from chronomoe.io.parquet_writer import WRITE_OPTIONS, ParquetRunWriter

OPTIONS = WRITE_OPTIONS[EVENTS_TABLE]


def events_of(counts: np.ndarray, losses: list[float | None]) -> list[RoutingEvent]:
    width = counts.shape[1]
    return [
        RoutingEvent(
            run_id="run",
            step=row // 3,
            layer_id=row % 3,
            n_experts=width,
            top_k=1,
            expert_token_counts=row_counts,
            loss=losses[row % len(losses)],
            timestamp=1.8e9 + row,
        )
        for row, row_counts in enumerate(counts.astype(np.int64))
    ]


def events_table(events: list[RoutingEvent]) -> pa.Table:
    """The events as one table of the full schema, for pyarrow to encode all of it."""
    others, counts = events_columns(events)
    field = table_schema(EVENTS_TABLE, counts.shape[1]).field(COUNTS_FIELD)
    column = pa.FixedSizeListArray.from_arrays(pa.array(counts.ravel()), type=field.type)
    return others.add_column(table_schema(EVENTS_TABLE, 1).get_field_index(COUNTS_FIELD), field, column)


def sealed(tmp_path, name: str, frame: bytes) -> pq.ParquetFile:
    partial = tmp_path / (name + PARTIAL_SUFFIX)
    partial.write_bytes(MAGIC + frame)
    return pq.ParquetFile(seal(partial).sealed)


counts_arrays = st.sampled_from([1, 3, 8, 37, 256]).flatmap(
    lambda width: hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 30), st.just(width)),
        elements=st.sampled_from([255, 65_535, 2**31 - 1]).flatmap(lambda top: st.integers(0, top)),
    )
)


@settings(max_examples=60, deadline=None)
@given(counts_arrays, st.lists(st.none() | st.floats(0, 10), min_size=1, max_size=3), st.sampled_from([64, 2**20]))
def test_a_frame_reads_back_as_pyarrows_own_encoding_of_the_events(
    tmp_path_factory, monkeypatch_module, counts, losses, page_bytes
):
    monkeypatch_module.setattr(parquet_events_frame, "PAGE_VALUE_BYTES", page_bytes)  # several pages at 64
    folder = tmp_path_factory.mktemp("frames")
    events = events_of(counts, losses)
    ours = sealed(folder, "ours", encode_events_frame(*events_columns(events), **OPTIONS))
    pyarrows = sealed(folder, "pyarrows", encode_frame(events_table(events), **OPTIONS))
    assert ours.read().equals(pyarrows.read())
    assert ours.schema_arrow.equals(pyarrows.schema_arrow, check_metadata=True)
    assert ours.metadata.schema.equals(pyarrows.metadata.schema)
    ours_group, pyarrows_group = ours.metadata.row_group(0), pyarrows.metadata.row_group(0)
    assert ours_group.num_rows == pyarrows_group.num_rows == len(events)
    for index in range(ours_group.num_columns):
        mine, theirs = ours_group.column(index), pyarrows_group.column(index)
        assert (mine.path_in_schema, mine.num_values, mine.compression, mine.encodings, mine.statistics) == (
            theirs.path_in_schema,
            theirs.num_values,
            theirs.compression,
            theirs.encodings,
            theirs.statistics,
        )
    if page_bytes >= 4 * counts.size:  # one page, as pyarrow writes it: the same bytes, so the same sizes
        assert ours_group.total_byte_size == pyarrows_group.total_byte_size
        for index in range(ours_group.num_columns):
            mine, theirs = ours_group.column(index), pyarrows_group.column(index)
            sizes = (mine.total_compressed_size, mine.total_uncompressed_size)
            assert sizes == (theirs.total_compressed_size, theirs.total_uncompressed_size)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_frames_counts_decode_from_their_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_events_frame, "PAGE_VALUE_BYTES", 4 * 256 * 7)  # pages of 7 rows and a last of 6
    counts = np.random.default_rng(0).integers(0, 5000, (20, 256)).astype(np.int32)
    file = sealed(tmp_path, "part", encode_events_frame(*events_columns(events_of(counts, [None])), **OPTIONS))
    data = pa.py_buffer((tmp_path / "part.parquet").read_bytes())
    out = np.full(counts.shape, -1, np.int32)
    decode_counts(data, file.metadata, [0], out, path="part", first_row=1)  # raises NotCanonical if declined
    assert np.array_equal(out, counts)
    assert file.metadata.row_group(0).column(leaf_index(file.metadata, COUNTS_LEAF)).num_values == counts.size


def test_more_rows_than_a_page_of_pyarrow_holds_are_cut_into_pages_pyarrow_reads(tmp_path):
    counts = np.random.default_rng(1).integers(0, 300, (20_001, 8)).astype(np.int32)
    events = events_of(counts, [None])
    file = sealed(tmp_path, "part", encode_events_frame(*events_columns(events), **OPTIONS))
    assert file.read().equals(sealed(tmp_path, "theirs", encode_frame(events_table(events), **OPTIONS)).read())
    out = np.full(counts.shape, -1, np.int32)
    decode_counts(
        pa.py_buffer((tmp_path / "part.parquet").read_bytes()), file.metadata, [0], out, path="p", first_row=1
    )
    assert np.array_equal(out, counts)


def test_page_checksums_and_compression_levels_asked_for_leave_pages_pyarrow_reads(tmp_path):
    counts = np.random.default_rng(2).integers(0, 300, (50, 16)).astype(np.int32)
    events = events_of(counts, [1.5])
    for name, options in (
        ("checksums", {**OPTIONS, "write_page_checksum": True}),
        ("level", {**OPTIONS, "compression_level": 9}),
    ):
        file = sealed(tmp_path, name, encode_events_frame(*events_columns(events), **options))
        assert file.read().equals(events_table(events))


@pytest.mark.parametrize(
    "options",
    [
        {**OPTIONS, "column_encoding": None},
        {**OPTIONS, "use_dictionary": True},
        {**OPTIONS, "compression": "lz4"},
        {**OPTIONS, "data_page_version": "2.0"},
    ],
)
def test_options_it_cannot_write_the_counts_with_are_refused(options):
    counts = np.ones((2, 4), np.int32)
    with pytest.raises(ValueError, match=r"counts|compression|version"):
        encode_events_frame(*events_columns(events_of(counts, [None])), **options)


def test_a_frame_whose_pages_a_worker_encodes_is_the_same_bytes():
    counts = np.random.default_rng(3).integers(0, 5000, (40, 256)).astype(np.int32)
    others, matrix = events_columns(events_of(counts, [None, 2.0]))
    with ThreadPoolExecutor(1) as pool:
        assert encode_events_frame(others, matrix, pool=pool, **OPTIONS) == encode_events_frame(
            others, matrix, **OPTIONS
        )


def test_a_parquet_writer_ends_its_encoding_thread_when_it_closes(tmp_path, make_event):
    before = {thread for thread in threading.enumerate() if thread.name.startswith("chronomoe-encode")}
    with ParquetRunWriter("run", tmp_path) as writer:
        writer.write_events_batch([make_event([3, 1, 0, 4], step=step) for step in range(3)])
    after = {thread for thread in threading.enumerate() if thread.name.startswith("chronomoe-encode")}
    assert after <= before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_writer_forked_after_writing_still_writes_in_the_child(tmp_path, make_event, child_exit_code):
    with ParquetRunWriter("run", tmp_path) as writer:
        writer.write_events_batch([make_event([3, 1, 0, 4], step=0)])  # its encoding worker now exists
        child = os.fork()
        if child == 0:  # the child: the worker thread is not there
            try:
                writer.write_events_batch([make_event([3, 1, 0, 4], step=1)])
                os._exit(0)
            except BaseException:
                os._exit(1)
        assert child_exit_code(child) == 0
