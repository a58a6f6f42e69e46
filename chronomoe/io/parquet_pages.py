"""The events' counts column decoded from its pages into an int32 matrix: the fast path of Parquet's ``counts()``.

pyarrow reads a ``fixed_size_list<int32>`` column by walking each value's
repetition and definition levels, about 6 ns per value here: 0.6 million
events/s at 256 experts even with neither compression nor encoding (measured
with ``pq.ParquetFile.read``), which bounds ``counts()`` below its target.
:func:`decode_counts` reads the column chunk's data pages itself when they
are laid out as this package's writer lays them out, and fills the caller's
``[rows, width]`` matrix in a few numpy passes over the decompressed bytes:

* every page is a ``DATA_PAGE`` (version 1) of whole rows, its values
  ``PLAIN`` or ``BYTE_STREAM_SPLIT``, compressed by a codec ``pyarrow.decompress``
  knows; a page's CRC is checked where the writer wrote one;
* its repetition and definition levels are, byte for byte, those pyarrow
  writes for that many rows of ``width`` values (:func:`canonical_levels`,
  from a page pyarrow encodes once per row count): so every row holds exactly
  ``width`` values and none is null, without decoding a level.

Any other layout (a dictionary page, a version 2 page, a page cut inside a
row, another codec or encoding, levels another writer encodes otherwise)
raises :class:`NotCanonical`, and the caller reads those row groups with
pyarrow (over whatever rows were decoded before): the fast path changes how
fast counts are read, not what is read. Damaged bytes raise
:class:`~chronomoe.errors.CorruptRecordError` naming the part and row; a page
header that pyarrow's stricter Thrift reader refuses (a field of another
integer type) but whose values make sense is read.

Cost: :func:`canonical_levels` encodes one page with pyarrow per distinct
number of rows per page (4 ms at 1 row, 31 ms at 1,000 rows of 256 experts),
cached for 64 of them: a writer's row groups mostly share one size (a
snapshot's events), but a run whose groups all differ in size gains little.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptRecordError
from .parquet_schema import COUNTS_FIELD, EVENTS_TABLE, table_schema
from .thrift_compact import read_struct

COUNTS_LEAF = "expert_token_counts.list.element"

# parquet.thrift: PageHeader and DataPageHeader field ids, page types and encodings.
_TYPE, _UNCOMPRESSED_SIZE, _COMPRESSED_SIZE, _CRC, _DATA_PAGE_HEADER = 1, 2, 3, 4, 5
_NUM_VALUES, _ENCODING, _DEFINITION_ENCODING, _REPETITION_ENCODING = 1, 2, 3, 4
_DATA_PAGE = 0
_PLAIN, _RLE, _BYTE_STREAM_SPLIT = 0, 3, 9
_CODECS = {"UNCOMPRESSED": None, "ZSTD": "zstd", "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli"}
"""Parquet codec -> ``pyarrow.decompress`` codec (``None``: stored as is); LZ4's framings are left to pyarrow."""


class NotCanonical(Exception):
    """The row groups' counts are not laid out as :func:`decode_counts` reads them: read them with pyarrow."""


def decode_counts(
    data: pa.Buffer,
    metadata: pq.FileMetaData,
    indices: Sequence[int],
    out: np.ndarray,
    *,
    path: str,
    first_row: int,
) -> None:
    """Fill ``out`` (``[rows, width]`` int32, C-contiguous) with the counts of row groups ``indices`` of the part
    whose bytes are ``data`` (with ``metadata``), their rows one after another. Reads ``data`` only: safe to
    call from several threads on one part.

    ``first_row`` is the number (from 1) of the first group's first row in the part, for error messages.
    Raises :class:`NotCanonical` (see the module docstring; rows of the groups before the offending one may
    have been written) and :class:`~chronomoe.errors.CorruptRecordError` naming the part and the row where a
    page begins whose header is damaged, which ends past its column chunk, fails its CRC or does not
    decompress, or the row of a negative count.
    """
    width = out.shape[1]
    leaf = leaf_index(metadata, COUNTS_LEAF)
    if leaf is None:
        raise NotCanonical(f"no column {COUNTS_LEAF}")
    flat = out.reshape(-1)
    row = 0
    for index in indices:
        group = metadata.row_group(index)
        column = group.column(leaf)
        codec = _CODECS.get(column.compression, "")
        if codec == "" or column.dictionary_page_offset is not None:
            raise NotCanonical(f"row group {index}: {column.compression}, dictionary {column.dictionary_page_offset}")
        start, size = column.data_page_offset, column.total_compressed_size
        if start < 0 or size < 0 or start + size > data.size:
            raise CorruptRecordError(path, first_row + row, f"{COUNTS_FIELD}: its column chunk ends past the file")
        chunk = data.slice(start, size)
        view = memoryview(chunk)
        group_end = row + group.num_rows
        position = 0
        while position < len(chunk):
            try:
                header, body_start = read_struct(view, position)
                rows, position = _decode_page(
                    header, chunk, body_start, codec, flat[row * width : group_end * width], width
                )
            except _DamagedPage as damage:
                where = first_row + row + damage.value // width
                raise CorruptRecordError(path, where, f"{COUNTS_FIELD}: {damage}") from None
            except (IndexError, ValueError, struct.error, pa.ArrowException) as error:  # a header's bytes
                raise CorruptRecordError(
                    path, first_row + row, f"{COUNTS_FIELD}: a page header is damaged ({type(error).__name__}: {error})"
                ) from None
            row += rows
        if row != group_end:
            raise NotCanonical(f"row group {index}: its pages hold {row - group_end + group.num_rows} rows")


class _DamagedPage(Exception):
    """A page's bytes are damaged, or a value is invalid; ``value``: the value's index in the page (0: all)."""

    def __init__(self, message: str, value: int = 0) -> None:
        super().__init__(message)
        self.value = value


def _decode_page(
    header: dict[int, Any], chunk: pa.Buffer, body_start: int, codec: str | None, target: np.ndarray, width: int
) -> tuple[int, int]:
    """Decode the data page of ``header`` (its body at ``body_start`` in ``chunk``) into the start of ``target``
    (flat int32); return its rows and where the next page begins. :class:`NotCanonical` for another layout,
    :class:`_DamagedPage` for damaged bytes."""
    size, uncompressed_size = header.get(_COMPRESSED_SIZE), header.get(_UNCOMPRESSED_SIZE)
    if not isinstance(size, int) or not isinstance(uncompressed_size, int) or min(size, uncompressed_size) < 0:
        raise _DamagedPage(f"a page header is damaged (sizes {size!r}, {uncompressed_size!r})")
    if body_start + size > len(chunk):
        raise _DamagedPage(f"a page of {size} bytes ends past its column chunk")
    page = header.get(_DATA_PAGE_HEADER)
    if header.get(_TYPE) != _DATA_PAGE or not isinstance(page, dict):
        raise NotCanonical(f"page type {header.get(_TYPE)}")
    if page.get(_DEFINITION_ENCODING) != _RLE or page.get(_REPETITION_ENCODING) != _RLE:
        raise NotCanonical("levels not RLE")
    encoding, num_values = page.get(_ENCODING), page.get(_NUM_VALUES)
    if encoding not in (_PLAIN, _BYTE_STREAM_SPLIT) or not isinstance(num_values, int) or num_values <= 0:
        raise NotCanonical(f"encoding {encoding}, {num_values!r} values")
    rows, remainder = divmod(num_values, width)
    if remainder or num_values > len(target):
        raise NotCanonical(f"{num_values} values in a page of rows of {width}")
    body = chunk.slice(body_start, size)
    if isinstance(header.get(_CRC), int) and zlib.crc32(body) != header[_CRC] & 0xFFFFFFFF:
        raise _DamagedPage("a page fails its CRC")
    try:
        data = body if codec is None else pa.decompress(body, decompressed_size=uncompressed_size, codec=codec)
    except (OSError, pa.ArrowException) as error:
        raise _DamagedPage(f"a page does not decompress: {error}") from None
    levels = canonical_levels(rows, width)
    raw = np.frombuffer(data, np.uint8)
    if len(raw) != len(levels) + 4 * num_values or raw[: len(levels)].tobytes() != levels:
        raise NotCanonical("levels or size differ from those of a page of whole rows")
    values = raw[len(levels) :]
    destination = target[:num_values]
    low_bytes, second_bytes = values[:num_values], values[num_values : 2 * num_values]
    # max(): a vectorised pass over bytes, faster than any()
    if encoding == _PLAIN or values[2 * num_values :].max(initial=0):  # counts from 65,536 up, or negative
        split = values.reshape(4, num_values).T if encoding == _BYTE_STREAM_SPLIT else values
        np.copyto(destination, np.ascontiguousarray(split).view("<i4").reshape(-1))
        if num_values and destination.min() < 0:
            raise _DamagedPage("negative count", int(np.argmax(destination < 0)))
    elif second_bytes.max(initial=0):  # byte-stream split, counts below 65,536: two byte streams
        combined = np.left_shift(second_bytes, 8, dtype=np.uint16)
        np.copyto(destination, np.bitwise_or(combined, low_bytes, out=combined))
    else:  # every count below 256: the low bytes
        np.copyto(destination, low_bytes)
    return rows, body_start + size


@functools.lru_cache(maxsize=64)
def canonical_levels(rows: int, width: int) -> bytes:
    """The bytes that open a version 1 data page of ``rows`` rows of the counts column of ``width`` experts, as
    this pyarrow writes it: the repetition levels, then the definition levels, each after its 4-byte length."""
    counts_type = table_schema(EVENTS_TABLE, width).field(COUNTS_FIELD).type
    values = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(rows * width, np.int32)), type=counts_type)
    sink = pa.BufferOutputStream()
    table = pa.table([values], schema=pa.schema([table_schema(EVENTS_TABLE, width).field(COUNTS_FIELD)]))
    pq.write_table(
        table,
        sink,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
        data_page_size=1 << 40,
        max_rows_per_page=max(1, rows),
    )
    data = sink.getvalue()
    column = pq.read_metadata(pa.BufferReader(data)).row_group(0).column(0)
    header, start = read_struct(memoryview(data), column.data_page_offset)
    if header[_DATA_PAGE_HEADER][_NUM_VALUES] != rows * width:  # one page of every row, or these are not its levels
        raise RuntimeError(f"pyarrow wrote {rows} rows of {width} values in more than one page")
    page = memoryview(data)[start : start + header[_COMPRESSED_SIZE]]
    repetition_length = int.from_bytes(page[:4], "little")
    definition_length = int.from_bytes(page[4 + repetition_length : 8 + repetition_length], "little")
    return bytes(page[: 8 + repetition_length + definition_length])


def counts_width(file: pq.ParquetFile) -> int:
    """The experts per event of an events part (its counts column's list size)."""
    width: int = file.schema_arrow.field(COUNTS_FIELD).type.list_size
    return width


def leaf_index(metadata: pq.FileMetaData, path: str) -> int | None:
    """The index of the Parquet leaf column ``path`` (``"step"``, ``"expert_token_counts.list.element"``) among a
    file's columns, as ``metadata.row_group(i).column(...)`` takes it (not the Arrow field's), or ``None``."""
    schema = metadata.schema
    for index in range(len(schema)):
        if schema.column(index).path == path:
            return index
    return None
