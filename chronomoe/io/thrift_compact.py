"""Thrift's compact protocol, the little of it that Parquet's metadata needs: type ids, varints, and reading a struct.

Parquet serialises its footer (``FileMetaData``) and each page's header
(``PageHeader``) with Thrift's compact protocol. :mod:`~chronomoe.io.parquet_footer`
rewrites offsets in a footer; :mod:`~chronomoe.io.parquet_counts` reads page
headers with :func:`read_struct`.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import InvalidInputError

# Thrift compact protocol type ids.
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)


def zigzag(value: int) -> int:
    """The signed integer of a zigzag-encoded one."""
    return (value >> 1) ^ -(value & 1)


def read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """The unsigned LEB128 integer at ``position`` and the position after it (``IndexError`` past the end)."""
    result, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, position


def read_struct(data: bytes | memoryview, position: int) -> tuple[dict[int, Any], int]:
    """The struct at ``position`` as ``{field id: value}`` (integers signed, binaries ``bytes``, structs dicts,
    lists and sets lists, maps dicts), and the position after it.

    Raises ``IndexError`` (``struct.error`` inside a double) when the bytes end inside the struct, and
    :class:`~chronomoe.errors.InvalidInputError` for an unknown type id.
    """
    fields: dict[int, Any] = {}
    field_id = 0
    while True:
        header = data[position]
        position += 1
        kind = header & 0x0F
        if kind == STOP:
            return fields, position
        if header >> 4:
            field_id += header >> 4
        else:
            raw_id, position = read_varint(data, position)
            field_id = zigzag(raw_id)
        if kind in (TRUE, FALSE):  # a field's bool lives in its header
            fields[field_id] = kind == TRUE
        else:
            fields[field_id], position = read_value(data, position, kind)


def read_value(data: bytes | memoryview, position: int, kind: int) -> tuple[Any, int]:
    """The value of compact type ``kind`` (not a field's bool, which lives in its header) at ``position``, and the
    position after it; errors as :func:`read_struct`'s."""
    if kind in (I16, I32, I64):
        raw, position = read_varint(data, position)
        return zigzag(raw), position
    if kind == BYTE:
        return data[position], position + 1
    if kind == DOUBLE:
        return struct.unpack_from("<d", data, position)[0], position + 8
    if kind == BINARY:
        length, position = read_varint(data, position)
        if position + length > len(data):
            raise IndexError(position + length)
        return bytes(data[position : position + length]), position + length
    if kind == STRUCT:
        return read_struct(data, position)
    if kind in (LIST, SET):
        header = data[position]
        position += 1
        size = header >> 4
        if size == 15:
            size, position = read_varint(data, position)
        items = []
        for _ in range(size):
            item, position = _read_element(data, position, header & 0x0F)
            items.append(item)
        return items, position
    if kind == MAP:
        size, position = read_varint(data, position)
        types = data[position] if size else 0
        position += 1 if size else 0
        entries = {}
        for _ in range(size):
            key, position = _read_element(data, position, types >> 4)
            entries[key], position = _read_element(data, position, types & 0x0F)
        return entries, position
    raise InvalidInputError("thrift type", kind, f"is not a Thrift compact type (at byte {position})")


def _read_element(data: bytes | memoryview, position: int, kind: int) -> tuple[Any, int]:
    """A collection element: booleans take one byte there, unlike in a field header."""
    if kind in (TRUE, FALSE):
        return data[position] == TRUE, position + 1
    return read_value(data, position, kind)
