"""Moving a Parquet row group within a file: its footer's byte offsets, rewritten in Thrift's compact protocol.

A Parquet footer (``FileMetaData``, serialised with Thrift's compact
protocol) locates every column chunk by absolute byte offsets in its file.
pyarrow writes a row group only as part of a whole file whose offsets start
at 0, and can neither append to a file nor move a row group; so the part
writer (:mod:`chronomoe.io.parquet_parts`) lets pyarrow encode each row group
as a small file of its own, appends the row group's bytes to the part, and
uses :func:`shift_offsets` to make that small file's footer say where those
bytes now lie. pyarrow then combines such footers
(``FileMetaData.append_row_groups``) into the part's footer.

:func:`shift_offsets` copies the footer byte for byte and rewrites only the
offset fields: ``RowGroup.file_offset``, ``ColumnChunk.file_offset``,
``offset_index_offset``, ``column_index_offset`` and ``ColumnMetaData``'s
``data_page_offset``, ``index_page_offset``, ``dictionary_page_offset`` and
``bloom_filter_offset`` (field ids from ``parquet.thrift``). An offset of 0
means "not set" (real offsets follow the 4-byte ``PAR1`` magic) and stays 0.
"""

from __future__ import annotations

import struct

from ..errors import InvalidInputError
from .thrift_compact import (
    I64,
    LIST,
    STOP,
    STRUCT,
    collection_header,
    read_field_header,
    read_varint,
    skip_value,
    varint_bytes,
    zigzag,
    zigzag_encode,
)

_OFFSET = "offset"
"""Marks an i64 field holding a byte offset into the file."""

_STRUCTS: dict[str, dict[int, str | tuple[str, str]]] = {
    "FileMetaData": {4: ("list", "RowGroup")},
    "RowGroup": {1: ("list", "ColumnChunk"), 5: _OFFSET},
    "ColumnChunk": {2: _OFFSET, 3: ("struct", "ColumnMetaData"), 4: _OFFSET, 6: _OFFSET},
    "ColumnMetaData": {9: _OFFSET, 10: _OFFSET, 11: _OFFSET, 14: _OFFSET},
}
"""The structs on the way to the offsets, by name: field id -> an offset, or a struct (or list of structs) to enter.
Every other field is skipped unread and copied as it is."""


def shift_offsets(footer: bytes, delta: int) -> bytes:
    """A Parquet footer (the Thrift ``FileMetaData``, without the trailing length and magic) whose offsets are
    ``delta`` bytes further into the file (``delta`` may be negative; no offset may become negative).

    Raises :class:`~chronomoe.errors.InvalidInputError` for bytes that are not a Thrift compact struct.
    """
    offsets: list[tuple[int, int]] = []  # (start, end) of each offset's varint, in order
    try:
        end = _find_offsets(footer, 0, "FileMetaData", offsets)
    except (IndexError, struct.error):
        raise InvalidInputError("footer", len(footer), "ends inside a Thrift struct: not a Parquet footer") from None
    if end != len(footer):
        raise InvalidInputError("footer", len(footer), f"holds {len(footer) - end} bytes after its end")
    pieces = []
    copied = 0
    for start, stop in offsets:
        value = zigzag(read_varint(footer, start)[0])
        if value:
            value += delta
            if value < 0:
                raise InvalidInputError("delta", delta, f"would move an offset to {value}")
        pieces += [footer[copied:start], varint_bytes(zigzag_encode(value))]
        copied = stop
    pieces.append(footer[copied:])
    return b"".join(pieces)


def _find_offsets(data: bytes, position: int, name: str, offsets: list[tuple[int, int]]) -> int:
    """Append to ``offsets`` the spans of the offsets in the struct ``name`` at ``position`` (see ``_STRUCTS``),
    other fields skipped unread; return the position after the struct."""
    roles = _STRUCTS.get(name, {})
    field_id = 0
    while True:
        field_id, kind, position = read_field_header(data, position, field_id)
        if kind == STOP:
            return position
        role = roles.get(field_id)
        if role == _OFFSET and kind == I64:
            start = position
            position = skip_value(data, position, kind)
            offsets.append((start, position))
        elif isinstance(role, tuple) and role[0] == "struct" and kind == STRUCT:
            position = _find_offsets(data, position, role[1], offsets)
        elif isinstance(role, tuple) and role[0] == "list" and kind == LIST:
            size, element, position = collection_header(data, position)
            for _ in range(size):
                if element == STRUCT:
                    position = _find_offsets(data, position, role[1], offsets)
                else:
                    position = skip_value(data, position, element)
        else:
            position = skip_value(data, position, kind)
