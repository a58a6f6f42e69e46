"""Thrift's compact protocol (chronomoe/io/thrift_compact.py): typed structs written and read back, the untyped
and skipping readers agreeing with them, and Parquet footers rewritten byte for byte."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe.io.thrift_compact import (
    BINARY,
    BYTE,
    DOUBLE,
    FALSE,
    I16,
    I32,
    I64,
    LIST,
    MAP,
    STRUCT,
    TRUE,
    find_field,
    list_elements,
    read_struct,
    read_typed_struct,
    skip_struct,
    skip_value,
    write_fields,
    write_struct,
)

SCALARS = {
    I16: st.integers(-(2**15), 2**15 - 1),
    I32: st.integers(-(2**31), 2**31 - 1),
    I64: st.integers(-(2**63), 2**63 - 1),
    BYTE: st.integers(0, 255),
    DOUBLE: st.floats(allow_nan=False),
    BINARY: st.binary(max_size=20),
}


def elements(kind: int, depth: int) -> st.SearchStrategy[Any]:
    """Bare values of ``kind`` as a collection holds them."""
    if kind == TRUE:
        return st.booleans()
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == STRUCT:
        return structs(depth - 1)
    return st.sampled_from([*SCALARS, TRUE, STRUCT]).flatmap(
        lambda element: st.tuples(st.just(element), st.lists(elements(element, depth - 1), max_size=20))
    )


def typed_values(depth: int) -> st.SearchStrategy[tuple[int, Any]]:
    kinds = [*SCALARS, TRUE] + ([STRUCT, LIST, MAP] if depth > 0 else [])
    return st.sampled_from(kinds).flatmap(
        lambda kind: st.tuples(
            st.just(kind),
            st.tuples(
                st.just(I32),
                st.just(BINARY),
                st.dictionaries(SCALARS[I32], elements(BINARY, depth), min_size=1, max_size=3),
            )
            if kind == MAP
            else elements(kind, depth),
        )
    )


def structs(depth: int) -> st.SearchStrategy[dict[int, tuple[int, Any]]]:
    return st.dictionaries(st.integers(1, 40), typed_values(depth), max_size=6)


def untyped(kind: int, value: Any) -> Any:
    """What read_struct gives for a typed value."""
    if kind == STRUCT:
        return {field_id: untyped(*typed) for field_id, typed in value.items()}
    if kind == LIST:
        element, items = value
        return [untyped(element, item) for item in items]
    if kind == MAP:
        return value[2]
    return value


@settings(max_examples=300, deadline=None)
@given(structs(3))
def test_a_typed_struct_reads_back_as_written(fields):
    data = write_struct(fields)
    assert read_typed_struct(data, 0) == (fields, len(data))
    assert read_struct(data, 0) == (untyped(STRUCT, fields), len(data))
    assert skip_struct(data, 0) == len(data)
    for field_id, (kind, value) in fields.items():
        found, start = find_field(data, 0, field_id)
        assert found == ((TRUE if value else FALSE) if kind == TRUE else kind)
        assert (kind == TRUE) == (start == skip_value(data, start, found))  # a bool has no bytes of its own
    with pytest.raises(KeyError):
        find_field(data, 0, 41)


@settings(max_examples=100, deadline=None)
@given(structs(2), st.integers(0, 40))
def test_fields_written_in_pieces_join_into_the_struct(fields, cut):
    first = {key: value for key, value in fields.items() if key <= cut}
    rest = {key: value for key, value in fields.items() if key > cut}
    last_first = max(first, default=0)
    assert write_fields(first) + write_fields(rest, after=last_first) + b"\x00" == write_struct(fields)


@settings(max_examples=100, deadline=None)
@given(st.lists(structs(1), max_size=20))
def test_list_elements_are_the_bytes_of_each_element(items):
    data = write_struct({1: (LIST, (STRUCT, items))})
    start = find_field(data, 0, 1)[1]
    assert list_elements(data, start) == ([write_struct(item) for item in items], len(data) - 1)


def test_a_parquet_footer_is_written_back_byte_for_byte():
    table = pa.table({"a": np.arange(10), "b": [f"x{i}" for i in range(10)], "c": [[1.0, None]] * 10})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=4)
    data = sink.getvalue().to_pybytes()
    footer_length = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - footer_length : -8]
    fields, end = read_typed_struct(footer, 0)
    assert end == len(footer) and write_struct(fields) == footer
