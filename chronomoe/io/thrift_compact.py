"""Thrift's compact protocol, the little of it that Parquet's metadata needs: type ids, varints, reading, skipping
and writing structs.

Parquet serialises its footer (``FileMetaData``) and each page's header
(``PageHeader``) with Thrift's compact protocol. :mod:`~chronomoe.io.parquet_pages`
reads page headers with :func:`read_struct`; :mod:`~chronomoe.io.parquet_footer`
finds a footer's offsets by skipping what surrounds them; :mod:`~chronomoe.io.parquet_events_frame`
reads and writes footers and page headers as typed structs (:func:`read_typed_struct`,
:func:`write_struct`) and splices raw pieces of them.
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
    return _read_struct(data, position, typed=False)


# -- typed values, for rewriting ----------------------------------------------
Typed = tuple[int, Any]
"""A value with its compact type id: ``(I32, 5)``, ``(BINARY, b"..")``, ``(STRUCT, {field id: Typed})``,
``(LIST, (element type, [elements]))``, ``(MAP, (key type, value type, {key: element}))``, a field's bool
``(TRUE, True)`` or ``(TRUE, False)``. Elements are bare values: a struct's a ``{field id: Typed}`` dict, a
list's an ``(element type, [elements])`` pair."""


def read_typed_struct(data: bytes | memoryview, position: int, after: int = 0) -> tuple[dict[int, Typed], int]:
    """The struct at ``position`` as ``{field id: Typed}``, which :func:`write_struct` writes back (byte for byte
    when the fields came in increasing order, as Parquet's writers write them), and the position after it;
    errors as :func:`read_struct`'s. ``after``: the id of the field before ``position``, to read the rest of a
    struct from its middle (0: from its start)."""
    return _read_struct(data, position, typed=True, after=after)


def _read_struct(data: bytes | memoryview, position: int, *, typed: bool, after: int = 0) -> tuple[dict[int, Any], int]:
    fields: dict[int, Any] = {}
    field_id = after
    while True:
        field_id, kind, position = read_field_header(data, position, field_id)
        if kind == STOP:
            return fields, position
        if kind in (TRUE, FALSE):  # a field's bool lives in its header
            value: Any = kind == TRUE
            kind = TRUE
        else:
            value, position = _read(data, position, kind, typed=typed)
        fields[field_id] = (kind, value) if typed else value


def _read(data: bytes | memoryview, position: int, kind: int, *, typed: bool) -> tuple[Any, int]:
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
        return _read_struct(data, position, typed=typed)
    if kind in (LIST, SET):
        size, element, position = collection_header(data, position)
        items = []
        for _ in range(size):
            item, position = _read_element(data, position, element, typed=typed)
            items.append(item)
        return ((element, items) if typed else items), position
    if kind == MAP:
        size, position = read_varint(data, position)
        types = data[position] if size else 0
        position += 1 if size else 0
        entries = {}
        for _ in range(size):
            key, position = _read_element(data, position, types >> 4, typed=False)
            entries[key], position = _read_element(data, position, types & 0x0F, typed=typed)
        return ((types >> 4, types & 0x0F, entries) if typed else entries), position
    raise InvalidInputError("thrift type", kind, f"is not a Thrift compact type (at byte {position})")


def _read_element(data: bytes | memoryview, position: int, kind: int, *, typed: bool) -> tuple[Any, int]:
    """A collection element: booleans take one byte there, unlike in a field header."""
    if kind in (TRUE, FALSE):
        return data[position] == TRUE, position + 1
    return _read(data, position, kind, typed=typed)


def collection_header(data: bytes | memoryview, position: int) -> tuple[int, int, int]:
    """A list's or set's size and element type, and the position of its first element."""
    header = data[position]
    size = header >> 4
    if size == 15:
        size, after = read_varint(data, position + 1)
        return size, header & 0x0F, after
    return size, header & 0x0F, position + 1


def write_struct(fields: dict[int, Typed]) -> bytes:
    """The compact encoding of a struct given as :func:`read_typed_struct` returns it, fields in increasing id
    order; :class:`~chronomoe.errors.InvalidInputError` for an unknown type id."""
    out = bytearray()
    _write_struct(out, fields)
    return bytes(out)


def write_fields(fields: dict[int, Typed], after: int = 0) -> bytes:
    """Fields of a struct, in increasing id order, as they follow a field of id ``after`` (a struct's first field
    follows 0), without the struct's end: a piece of a struct assembled from pieces."""
    out = bytearray()
    _write_struct(out, fields, after, end=False)
    return bytes(out)


def read_field_header(data: bytes | memoryview, position: int, last: int) -> tuple[int, int, int]:
    """The field id and type of the field header at ``position`` (after a field of id ``last``, 0 for a struct's
    first), and the position of its value; type :data:`STOP` at a struct's end."""
    header = data[position]
    position += 1
    if header >> 4:
        return last + (header >> 4), header & 0x0F, position
    if header == STOP:
        return last, STOP, position
    raw_id, position = read_varint(data, position)
    return zigzag(raw_id), header & 0x0F, position


def field_header(field_id: int, last: int, kind: int) -> bytes:
    """The header of a field of id ``field_id`` and type ``kind`` after a field of id ``last`` (a bool's type
    :data:`TRUE` or :data:`FALSE`, its value)."""
    if 0 < field_id - last <= 15:
        return bytes(((field_id - last) << 4 | kind,))
    return bytes((kind,)) + varint_bytes(zigzag_encode(field_id))


def list_header(size: int, element: int) -> bytes:
    """The header of a list of ``size`` elements of type ``element``."""
    if size < 15:
        return bytes((size << 4 | element,))
    return bytes((0xF0 | element,)) + varint_bytes(size)


def skip_struct(data: bytes | memoryview, position: int) -> int:
    """The position after the struct at ``position``, read without building its values (errors as
    :func:`read_struct`'s)."""
    return _walk(data, position, None)[1]


def list_elements(data: bytes, position: int) -> tuple[list[bytes], int]:
    """The encoded bytes of each element of the list or set at ``position`` (not bools), and the position after
    it."""
    size, element, position = collection_header(data, position)
    elements = []
    for _ in range(size):
        start, position = position, skip_value(data, position, element)
        elements.append(data[start:position])
    return elements, position


def find_field(data: bytes | memoryview, position: int, field_id: int) -> tuple[int, int]:
    """The type of field ``field_id`` of the struct at ``position`` and where its value starts, the fields before
    it skipped unread; ``KeyError`` when the struct has no such field (errors as :func:`read_struct`'s)."""
    kind, position = _walk(data, position, field_id)
    if kind == STOP:
        raise KeyError(field_id)
    return kind, position


def _walk(data: bytes | memoryview, position: int, field_id: int | None) -> tuple[int, int]:
    """Skip the fields of the struct at ``position`` up to field ``field_id``: its type and value's start, or
    :data:`STOP` and the position after the struct when it has no such field."""
    current = 0
    while True:
        current, kind, position = read_field_header(data, position, current)
        if kind == STOP or current == field_id:
            return kind, position
        position = skip_value(data, position, kind)


def skip_value(data: bytes | memoryview, position: int, kind: int) -> int:
    """The position after the value of type ``kind`` at ``position``, read without building it (a field's bool:
    ``position``, it lives in the header)."""
    if kind in (I16, I32, I64):
        while data[position] & 0x80:
            position += 1
        return position + 1
    if kind in (TRUE, FALSE):
        return position
    if kind == STRUCT:
        return skip_struct(data, position)
    if kind == BINARY:
        length, position = read_varint(data, position)
        return position + length
    if kind in (LIST, SET):
        size, element, position = collection_header(data, position)
        if element in (TRUE, FALSE, BYTE, DOUBLE):  # fixed sizes (a bool element takes a byte)
            return position + size * (8 if element == DOUBLE else 1)
        for _ in range(size):
            position = skip_value(data, position, element)
        return position
    if kind in (BYTE, DOUBLE):
        return position + (1 if kind == BYTE else 8)
    _, end = _read(data, position, kind, typed=False)  # a map
    return end


def _write_struct(out: bytearray, fields: dict[int, Typed], last: int = 0, *, end: bool = True) -> None:
    for field_id in sorted(fields):
        kind, value = fields[field_id]
        out += field_header(field_id, last, (TRUE if value else FALSE) if kind in (TRUE, FALSE) else kind)
        last = field_id
        if kind not in (TRUE, FALSE):
            _write_element(out, kind, value)
    if end:
        out.append(STOP)


def _write_element(out: bytearray, kind: int, value: Any) -> None:
    if kind in (TRUE, FALSE):  # in a collection: one byte
        out.append(TRUE if value else FALSE)
    elif kind in (I16, I32, I64):
        out += varint_bytes(zigzag_encode(value))
    elif kind == BYTE:
        out.append(value & 0xFF)
    elif kind == DOUBLE:
        out += struct.pack("<d", value)
    elif kind == BINARY:
        out += varint_bytes(len(value))
        out += value
    elif kind == STRUCT:
        _write_struct(out, value)
    elif kind in (LIST, SET):
        element, items = value
        out += list_header(len(items), element)
        for item in items:
            _write_element(out, element, item)
    elif kind == MAP:
        key_kind, value_kind, entries = value
        out += varint_bytes(len(entries))
        if entries:
            out.append(key_kind << 4 | value_kind)
        for key, item in entries.items():
            _write_element(out, key_kind, key)
            _write_element(out, value_kind, item)
    else:
        raise InvalidInputError("thrift type", kind, "is not a Thrift compact type")


def zigzag_encode(value: int) -> int:
    """The zigzag encoding of a signed 64-bit integer (the inverse of :func:`zigzag`)."""
    return ((value << 1) ^ (value >> 63)) & ((1 << 64) - 1)


def varint_bytes(value: int) -> bytes:
    """Unsigned LEB128 of ``value`` (an unsigned 64-bit integer)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
