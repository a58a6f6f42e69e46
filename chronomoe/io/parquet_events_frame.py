"""A frame of ``routing_events`` whose counts column this package encodes itself: :func:`encode_events_frame`.

pyarrow encodes a ``fixed_size_list<int32>`` column value by value, with its
repetition and definition levels: 2.2-2.4 ms for one snapshot's 580 events of
256 experts here, three times the rest of the row group, when byte-stream
splitting the same values with numpy and compressing them with zstd takes
0.6 ms. So the counts pages are written here, laid out as pyarrow lays them
out and as :mod:`chronomoe.io.parquet_pages` reads them:

* version 1 data pages of whole rows, at most :data:`PAGE_VALUE_BYTES` of
  values each; each page's levels are pyarrow's own bytes for that many rows
  (:func:`~chronomoe.io.parquet_pages.canonical_levels`), its values
  ``BYTE_STREAM_SPLIT``, the page compressed with the table's codec;
* pyarrow encodes the other columns, as a table of its own;
* the row group's footer is a template's with that table's row group in it
  and the counts chunk put back at its place. The template is what pyarrow
  writes for one row of the full schema, once per width and options: it
  gives the schema, the column orders, the Arrow schema, the counts chunk's
  metadata and its page header, whose sizes, offset, value count, page
  count and level histograms (one row's, times the rows) are set here.

A page of a row count not seen before costs one pyarrow encoding of that
many rows' levels (:func:`~chronomoe.io.parquet_pages.canonical_levels`,
cached for 64 row counts): a writer's frames mostly share one size (a
snapshot's events). ``tests/test_parquet_events_frame.py`` holds the result
to what pyarrow reads back, for any rows, widths and page sizes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .parquet_pages import COUNTS_LEAF, canonical_levels
from .parquet_parts import encode_row_group, pack_frame
from .parquet_schema import COUNTS_FIELD, EVENTS_TABLE, table_schema
from .thrift_compact import (
    I32,
    I64,
    LIST,
    STOP,
    STRUCT,
    Typed,
    field_header,
    find_field,
    list_elements,
    list_header,
    read_field_header,
    read_typed_struct,
    varint_bytes,
    write_fields,
    write_struct,
    zigzag_encode,
)

PAGE_VALUE_BYTES = 2**20
"""Bytes of values (before compression) after which a counts page ends, as pyarrow's default page size."""
PAGE_ROWS = 20_000
"""Rows after which a counts page ends whatever its bytes, as pyarrow's default ``max_rows_per_page``."""

# parquet.thrift field ids
_SCHEMA, _NUM_ROWS, _ROW_GROUPS = 2, 3, 4  # FileMetaData
_COLUMNS, _TOTAL_BYTE_SIZE, _GROUP_COMPRESSED_SIZE = 1, 2, 6  # RowGroup
_META_DATA = 3  # ColumnChunk
_NUM_VALUES, _UNCOMPRESSED_SIZE, _COMPRESSED_SIZE, _DATA_PAGE_OFFSET = 5, 6, 7, 9  # ColumnMetaData
_STATISTICS, _ENCODING_STATS, _SIZE_STATISTICS = 12, 13, 16
_PAGE_COUNT = 3  # PageEncodingStats
_REPETITION_HISTOGRAM, _DEFINITION_HISTOGRAM = 2, 3  # SizeStatistics
_PAGE_TYPE, _PAGE_UNCOMPRESSED_SIZE, _PAGE_COMPRESSED_SIZE, _PAGE_CRC, _DATA_PAGE_HEADER = 1, 2, 3, 4, 5  # PageHeader
_DATA_PAGE = 0
_PAGE_NUM_VALUES, _PAGE_STATISTICS = 1, 5  # DataPageHeader

_CODECS = {"zstd": "zstd", "snappy": "snappy", "gzip": "gzip", "brotli": "brotli", "none": None}
"""``pq.write_table``'s compression names this module writes pages with -> ``pyarrow.Codec`` names."""


def encode_events_frame(
    others: pa.Table, counts: np.ndarray, *, pool: Executor | None = None, **write_options: Any
) -> bytes:
    """One frame (:mod:`chronomoe.io.parquet_parts`) holding the events whose other columns are ``others`` (the
    ``routing_events`` schema without ``expert_token_counts``) and whose counts are ``counts`` (``[rows, width]``
    int32, non-negative) as one row group; ``write_options`` as for ``pq.write_table`` (the counts are always
    byte-stream split: the options must say so for their column, and name a codec of :data:`_CODECS`).

    With a ``pool``, its worker encodes the counts pages while this thread has pyarrow encode the other columns:
    both release the GIL for most of their work (a numpy copy and a compression; pyarrow's encoding).
    """
    rows, width = counts.shape
    template = _template(width, json.dumps(write_options, sort_keys=True))
    counts_pages = None if pool is None else pool.submit(_counts_pages, counts, template)
    footer, body = encode_row_group(others, **template.other_options)
    chunks, group = _row_group(footer)
    pages, uncompressed, compressed = _counts_pages(counts, template) if counts_pages is None else counts_pages.result()
    counts_chunk = write_struct(_counts_chunk(template, rows, len(pages) // 2, uncompressed, compressed, len(body)))
    group[_TOTAL_BYTE_SIZE] = (I64, group[_TOTAL_BYTE_SIZE][1] + uncompressed)
    group[_GROUP_COMPRESSED_SIZE] = (I64, group[_GROUP_COMPRESSED_SIZE][1] + compressed)
    # FileMetaData: the template's fields before num_rows, num_rows, the row group, the template's fields after it.
    full = b"".join(
        (
            template.head,
            field_header(_NUM_ROWS, _SCHEMA, I64),
            varint_bytes(zigzag_encode(rows)),
            field_header(_ROW_GROUPS, _NUM_ROWS, LIST),
            list_header(1, STRUCT),
            field_header(_COLUMNS, 0, LIST),
            list_header(len(chunks) + 1, STRUCT),
            *chunks[: template.leaf],
            counts_chunk,
            *chunks[template.leaf :],
            write_fields(group, after=_COLUMNS),
            bytes((STOP,)),
            template.tail,
        )
    )
    return pack_frame(full, [body, *pages])


def _row_group(footer: bytes) -> tuple[list[bytes], dict[int, Typed]]:
    """The footer's one row group: its column chunks' bytes, and its other fields (one pass over its chunks,
    the footer's fields after them unread)."""
    kind, position = find_field(footer, 0, _ROW_GROUPS)
    if kind != LIST or footer[position] != list_header(1, STRUCT)[0]:
        raise ValueError("a footer without exactly one row group")
    field_id, kind, position = read_field_header(footer, position + 1, 0)
    if (field_id, kind) != (_COLUMNS, LIST):  # a RowGroup's first field: pyarrow writes its fields in order
        raise ValueError(f"a row group whose first field is {field_id}, not its columns")
    chunks, position = list_elements(footer, position)
    return chunks, read_typed_struct(footer, position, after=_COLUMNS)[0]


@dataclass(frozen=True)
class _Template:
    """What pyarrow writes for one row of the full schema, and the options for the other columns."""

    head: bytes  # FileMetaData's fields before num_rows (version, schema)
    tail: bytes  # its fields after the row groups (key-value metadata with the Arrow schema, ...) and its end
    leaf: int  # the counts chunk's index among a row group's columns
    chunk: dict[int, Typed]  # the counts ColumnChunk
    page_header: dict[int, Typed]  # its data page's PageHeader
    codec: pa.Codec | None
    other_options: dict[str, Any]


@functools.lru_cache(maxsize=16)
def _template(width: int, options_json: str) -> _Template:
    options = json.loads(options_json)
    encodings = options.get("column_encoding") or {}
    if encodings.get(COUNTS_LEAF) != "BYTE_STREAM_SPLIT" or options.get("use_dictionary") is True:
        raise ValueError(f"the counts are written byte-stream split, without a dictionary, not as {options}")
    compression = options.get("compression", "snappy")
    if not isinstance(compression, str) or compression.lower() not in _CODECS:
        raise ValueError(f"compression {compression!r} is not one of {sorted(_CODECS)}")
    codec_name = _CODECS[compression.lower()]
    schema = table_schema(EVENTS_TABLE, width)
    one_row = pa.Table.from_pylist([{field.name: _one_value(field, width) for field in schema}], schema=schema)
    footer, body = encode_row_group(one_row, **options)
    metadata, _ = read_typed_struct(footer, 0)
    columns = metadata[_ROW_GROUPS][1][1][0][_COLUMNS][1][1]
    paths = [b".".join(column[_META_DATA][1][3][1][1]).decode() for column in columns]
    leaf = paths.index(COUNTS_LEAF)
    chunk = columns[leaf]
    if {10, 11} & set(chunk[_META_DATA][1]):  # an index or dictionary page: not the pages written here
        raise ValueError(f"the counts are written in data pages only, not as {options}")
    page_header, _ = read_typed_struct(memoryview(body), chunk[_META_DATA][1][_DATA_PAGE_OFFSET][1] - 4)
    if page_header.get(_PAGE_TYPE) != (I32, _DATA_PAGE) or _DATA_PAGE_HEADER not in page_header:
        raise ValueError(f"the counts are written in version 1 data pages, not as {options}")
    page_header.pop(_PAGE_CRC, None)  # the template page's; pages written here carry none
    data_page = dict(page_header[_DATA_PAGE_HEADER][1])
    data_page[_PAGE_STATISTICS] = (STRUCT, {})  # none, as pyarrow writes them without statistics
    page_header[_DATA_PAGE_HEADER] = (STRUCT, data_page)
    other_encodings = {name: encoding for name, encoding in encodings.items() if name != COUNTS_LEAF}
    return _Template(
        head=write_fields({key: value for key, value in metadata.items() if key < _NUM_ROWS}),
        tail=write_fields({key: value for key, value in metadata.items() if key > _ROW_GROUPS}, after=_ROW_GROUPS)
        + bytes((STOP,)),
        leaf=leaf,
        chunk=chunk,
        page_header=page_header,
        codec=None if codec_name is None else pa.Codec(codec_name, options.get("compression_level")),
        other_options={**options, "column_encoding": other_encodings or None},
    )


def _one_value(field: pa.Field, width: int) -> Any:
    """A valid value of ``field`` for the template's row (its bytes never reach a frame)."""
    if field.name == COUNTS_FIELD:
        return [0] * width
    if field.nullable:
        return None
    return {"string": "x", "double": 0.0}.get(str(field.type), 0)


def _counts_pages(counts: np.ndarray, template: _Template) -> tuple[list[bytes], int, int]:
    """The counts' pages, each as header and body, and their bytes before and after compression."""
    rows, width = counts.shape
    page_rows = max(1, min(PAGE_ROWS, PAGE_VALUE_BYTES // (4 * width)))
    pieces: list[bytes] = []
    uncompressed = compressed = 0
    for start in range(0, rows, page_rows):
        values = counts[start : start + page_rows]
        levels = canonical_levels(len(values), width)
        page = np.empty(len(levels) + 4 * values.size, np.uint8)
        page[: len(levels)] = np.frombuffer(levels, np.uint8)
        # Byte-stream split: the values' first bytes, then their second bytes, ...: a transposed copy, in place.
        value_bytes = np.ascontiguousarray(values, "<i4").reshape(-1).view(np.uint8).reshape(-1, 4)
        np.copyto(page[len(levels) :].reshape(4, -1), value_bytes.T)
        body = page.tobytes() if template.codec is None else template.codec.compress(page, asbytes=True)
        header = _page_header(template.page_header, values.size, len(page), len(body))
        pieces += [header, body]
        uncompressed += len(header) + len(page)
        compressed += len(header) + len(body)
    return pieces, uncompressed, compressed


def _page_header(template: Mapping[int, Typed], values: int, uncompressed: int, compressed: int) -> bytes:
    header = dict(template)
    header[_PAGE_UNCOMPRESSED_SIZE] = (I32, uncompressed)
    header[_PAGE_COMPRESSED_SIZE] = (I32, compressed)
    data_page = dict(header[_DATA_PAGE_HEADER][1])
    data_page[_PAGE_NUM_VALUES] = (I32, values)
    header[_DATA_PAGE_HEADER] = (STRUCT, data_page)
    return write_struct(header)


def _counts_chunk(
    template: _Template, rows: int, pages: int, uncompressed: int, compressed: int, others_bytes: int
) -> dict[int, Typed]:
    """The counts ColumnChunk: the template's, for ``rows`` rows in ``pages`` pages after ``others_bytes``."""
    meta = dict(template.chunk[_META_DATA][1])  # (the template's own values are never changed: new ones replace them)
    meta[_NUM_VALUES] = (I64, rows * meta[_NUM_VALUES][1])  # the template's: one row's
    meta[_UNCOMPRESSED_SIZE] = (I64, uncompressed)
    meta[_COMPRESSED_SIZE] = (I64, compressed)
    meta[_DATA_PAGE_OFFSET] = (I64, 4 + others_bytes)
    meta.pop(_STATISTICS, None)  # none for the counts (the writer's options), and one row's would be wrong
    if _ENCODING_STATS in meta:
        kind, stats = meta[_ENCODING_STATS][1]
        meta[_ENCODING_STATS] = (LIST, (kind, [{**page_stats, _PAGE_COUNT: (I32, pages)} for page_stats in stats]))
    if _SIZE_STATISTICS in meta:
        sizes = dict(meta[_SIZE_STATISTICS][1])
        for key in (_REPETITION_HISTOGRAM, _DEFINITION_HISTOGRAM):
            if key in sizes:
                kind, histogram = sizes[key][1]
                sizes[key] = (LIST, (kind, [count * rows for count in histogram]))  # every row alike
        meta[_SIZE_STATISTICS] = (STRUCT, sizes)
    return {**template.chunk, _META_DATA: (STRUCT, meta)}
