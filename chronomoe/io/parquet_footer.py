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
    FALSE,
    I64,
    LIST,
    STOP,
    STRUCT,
    TRUE,
    read_value,
    read_varint,
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
Every other field is copied unread."""


def shift_offsets(footer: bytes, delta: int) -> bytes:
    """A Parquet footer (the Thrift ``FileMetaData``, without the trailing length and magic) whose offsets are
    ``delta`` bytes further into the file (``delta`` may be negative; no offset may become negative).

    Raises :class:`~chronomoe.errors.InvalidInputError` for bytes that are not a Thrift compact struct.
    """
    rewriter = _Rewriter(footer, delta)
    try:
        rewriter.struct("FileMetaData")
    except (IndexError, struct.error):
        raise InvalidInputError("footer", len(footer), "ends inside a Thrift struct: not a Parquet footer") from None
    if rewriter.position != len(footer):
        raise InvalidInputError("footer", len(footer), f"holds {len(footer) - rewriter.position} bytes after its end")
    return bytes(rewriter.out)


class _Rewriter:
    """Reads a compact-protocol struct from ``data`` and writes it to ``out``, offsets shifted by ``delta``."""

    def __init__(self, data: bytes, delta: int) -> None:
        self.data = data
        self.delta = delta
        self.position = 0
        self.out = bytearray()

    def struct(self, name: str | None) -> None:
        """Copy one struct; ``name`` (a key of ``_STRUCTS``) says which of its fields to rewrite or enter."""
        fields = _STRUCTS.get(name, {}) if name is not None else {}
        field_id = 0
        while True:
            header = self._byte()
            self.out.append(header)
            kind = header & 0x0F
            if kind == STOP:
                return
            if header >> 4:
                field_id += header >> 4
            else:
                field_id = zigzag(self._varint(copy=True))
            role = fields.get(field_id)
            if role == _OFFSET and kind == I64:
                self._offset()
            elif isinstance(role, tuple) and kind == (LIST if role[0] == "list" else STRUCT):
                if kind == LIST:
                    self._list(role[1])
                else:
                    self.struct(role[1])
            else:
                self._value(kind)

    def _list(self, element: str) -> None:
        header = self._byte()
        self.out.append(header)
        size = header >> 4
        if size == 15:
            size = self._varint(copy=True)
        kind = header & 0x0F
        for _ in range(size):
            if kind == STRUCT:
                self.struct(element)
            else:
                self._value(kind)

    def _offset(self) -> None:
        value = zigzag(self._varint(copy=False))
        if value:
            value += self.delta
            if value < 0:
                raise InvalidInputError("delta", self.delta, f"would move an offset to {value}")
        self.out += varint_bytes(zigzag_encode(value))

    def _value(self, kind: int) -> None:
        """Copy one value of compact type ``kind`` unread; a field's bool lives in its header, with no bytes."""
        if kind in (TRUE, FALSE):
            return
        start = self.position
        _, self.position = read_value(self.data, start, kind)
        self.out += self.data[start : self.position]

    def _byte(self) -> int:
        value = self.data[self.position]
        self.position += 1
        return value

    def _varint(self, *, copy: bool) -> int:
        start = self.position
        value, self.position = read_varint(self.data, start)
        if copy:
            self.out += self.data[start : self.position]
        return value
