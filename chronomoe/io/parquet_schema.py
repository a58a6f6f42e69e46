"""The Parquet tables of a run: their Arrow schemas, derived from the record models, and the rows of each record.

Each table is the JSON form of its model (``model_dump(mode="json")``, the
JSONL line), column for column, with the Arrow type derived from the model's
JSON Schema (:func:`table_schema`): integers int64, numbers float64, strings
and enumerations string, nested models structs, lists lists; a field that can
be ``null`` is nullable. A field holding a free-form mapping (the metrics of a
transition or a decision) is its JSON text, a string column (``metrics->>'top2_share'``
in DuckDB), because its values mix integers, floats and nulls that no one
column type keeps apart. So a field added to a model appears in its table
without code here, and ``tests/test_parquet_schema.py`` fails until the
committed schemas in ``specs/parquet/`` are regenerated
(``python -m chronomoe.io.parquet_schema --write``).

``routing_events`` has two deliberate departures, for size and read speed:
``expert_token_counts`` is a ``fixed_size_list<int32>[n_experts]`` (so a part
holds events of one width; an event whose count exceeds the int32 range is
refused when written) and ``router_prob_sums`` a ``fixed_size_list<float64>[n_experts]``;
``active_experts`` is not stored, since it is derived from the counts.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from pydantic import BaseModel

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot

EVENTS_TABLE = "routing_events"
SNAPSHOTS_TABLE = "snapshots"
ALERTS_TABLE = "alerts"
DECISIONS_TABLE = "decisions"

TABLE_MODELS: dict[str, type[BaseModel]] = {
    EVENTS_TABLE: RoutingEvent,
    SNAPSHOTS_TABLE: SystemSnapshot,
    ALERTS_TABLE: AlertTransition,
    DECISIONS_TABLE: ControlDecision,
}
"""Every table of a Parquet run (the folder of its parts) and the record of each row; the names are those of the
JSONL files without ``.jsonl``."""

EVENT_FIELDS_NOT_STORED = ("active_experts",)
"""RoutingEvent fields left out of ``routing_events``: derived from the counts when read."""

COUNTS_FIELD = "expert_token_counts"
COUNTS_TYPE = pa.int32()
COUNTS_LIMIT = 2**31
"""Event counts must stay below this to be stored in ``routing_events``."""

_WIDTH_PLACEHOLDER = 1_048_573
"""Width the committed schema of ``routing_events`` is rendered with, then shown as ``n_experts``."""

Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class _Column:
    """An Arrow type with how a JSON value becomes its value (``to_arrow``) and back (``from_arrow``)."""

    type: pa.DataType
    nullable: bool
    to_arrow: Convert | None = None
    from_arrow: Convert | None = None


def _identity(value: Any) -> Any:
    return value


def _json_text(value: Any) -> Any:
    return None if value is None else orjson.dumps(value).decode()


def _json_value(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


def _column(node: dict[str, Any], definitions: dict[str, Any]) -> _Column:
    """The Arrow column of a JSON Schema node (see the module docstring)."""
    if "$ref" in node:
        return _column(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    if "anyOf" in node:
        options = [option for option in node["anyOf"] if option.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        if len(options) == 1:
            inner = _column(options[0], definitions)
            return _Column(inner.type, nullable, inner.to_arrow, inner.from_arrow)
        if all(option.get("type") in ("integer", "number") for option in options):
            return _Column(pa.float64(), nullable)
        raise TypeError(f"no Arrow type for the union {node['anyOf']}")
    kind = node.get("type")
    if kind == "integer":
        return _Column(pa.int64(), False)
    if kind == "number":
        return _Column(pa.float64(), False)
    if kind == "string":
        return _Column(pa.string(), False)
    if kind == "boolean":
        return _Column(pa.bool_(), False)
    if kind == "array":
        item = _column(node["items"], definitions)
        convert = None if item.to_arrow is None else _each(item.to_arrow)
        restore = None if item.from_arrow is None else _each(item.from_arrow)
        return _Column(pa.list_(pa.field("element", item.type, item.nullable)), False, convert, restore)
    if kind == "object" and "properties" in node:
        return _struct_column(node, definitions)
    if kind == "object":
        return _Column(pa.string(), False, _json_text, _json_value)
    raise TypeError(f"no Arrow type for the JSON Schema {node}")


def _each(convert: Convert) -> Convert:
    def convert_items(values: Any) -> Any:
        return None if values is None else [convert(value) for value in values]

    return convert_items


def _struct_column(node: dict[str, Any], definitions: dict[str, Any]) -> _Column:
    columns = {name: _column(child, definitions) for name, child in node["properties"].items()}
    arrow_type = pa.struct([pa.field(name, column.type, column.nullable) for name, column in columns.items()])
    to_arrow = {name: column.to_arrow for name, column in columns.items() if column.to_arrow is not None}
    from_arrow = {name: column.from_arrow for name, column in columns.items() if column.from_arrow is not None}
    return _Column(
        arrow_type, False, _fields(to_arrow) if to_arrow else None, _fields(from_arrow) if from_arrow else None
    )


def _fields(converts: dict[str, Convert]) -> Convert:
    def convert_fields(record: Any) -> Any:
        if record is None:
            return None
        record = dict(record)
        for name, convert in converts.items():
            record[name] = convert(record[name])
        return record

    return convert_fields


@dataclass(frozen=True)
class TableLayout:
    """A table's Arrow schema and the conversions between its rows and the model's JSON form.

    ``to_row`` turns ``model_dump(mode="json")`` into a row of the schema; ``from_row`` a row read back into
    what ``model_validate`` takes.
    """

    schema: pa.Schema
    to_row: Convert
    from_row: Convert


def table_layout(table: str, width: int | None = None) -> TableLayout:
    """The layout of ``table`` (a key of :data:`TABLE_MODELS`); ``width`` is the events' ``n_experts``
    (``routing_events`` only)."""
    return _layout(TABLE_MODELS[table], table, width)


@functools.lru_cache(maxsize=256)
def _layout(model: type[BaseModel], table: str, width: int | None) -> TableLayout:
    """:func:`table_layout`, derived once per model and width: deriving it from the model's JSON schema takes
    about 4 ms, which the writer paid for every row group it wrote."""
    json_schema = model.model_json_schema(mode="serialization")
    node = {**json_schema, "properties": dict(json_schema["properties"])}
    for name in EVENT_FIELDS_NOT_STORED if table == EVENTS_TABLE else ():
        del node["properties"][name]
    column = _struct_column(node, json_schema.get("$defs", {}))
    fields = list(column.type)
    if table == EVENTS_TABLE:
        if width is None:
            raise TypeError("routing_events needs the events' width")
        fields = [_event_field(field, width) for field in fields]
    identity = _identity
    return TableLayout(pa.schema(fields), column.to_arrow or identity, column.from_arrow or identity)


def _event_field(field: pa.Field, width: int) -> pa.Field:
    if field.name == "expert_token_counts":
        return pa.field(field.name, pa.list_(pa.field("element", COUNTS_TYPE, False), width), False)
    if field.name == "router_prob_sums":
        return pa.field(field.name, pa.list_(pa.field("element", pa.float64(), False), width), True)
    return field


def table_schema(table: str, width: int | None = None) -> pa.Schema:
    """The Arrow schema of ``table`` (``width``: the events' ``n_experts``, for ``routing_events``)."""
    return table_layout(table, width).schema


# -- the committed schemas -------------------------------------------------------------------------------------
def schema_text(table: str) -> str:
    """The committed text of a table's schema (``routing_events`` with its width shown as ``n_experts``)."""
    schema = table_schema(table, _WIDTH_PLACEHOLDER if table == EVENTS_TABLE else None)
    lines = [line for field in schema for line in _field_lines(field, 0)]
    return "\n".join(lines).replace(f"[{_WIDTH_PLACEHOLDER}]", "[n_experts]") + "\n"


def _field_lines(field: pa.Field, depth: int) -> list[str]:
    """``name: type`` (``not null`` when so), then the fields of a struct or the element of a list, indented."""
    kind = field.type
    children: list[pa.Field] = []
    if pa.types.is_struct(kind):
        name, children = "struct", list(kind)
    elif pa.types.is_fixed_size_list(kind):
        name, children = f"fixed_size_list[{kind.list_size}]", [kind.value_field]
    elif pa.types.is_list(kind):
        name, children = "list", [kind.value_field]
    else:
        name = str(kind)
    lines = [f"{'  ' * depth}{field.name}: {name}{'' if field.nullable else ' not null'}"]
    for child in children:
        lines += _field_lines(child, depth + 1)
    return lines


def packaged_dir() -> Path:
    """``specs/parquet/`` of the installed package (the source tree's in an editable install)."""
    return Path(str(resources.files("chronomoe.specs"))) / "parquet"


def stale_tables(directory: Path | None = None) -> list[str]:
    """Tables whose committed schema in ``directory`` is missing or differs from the one derived now."""
    directory = packaged_dir() if directory is None else directory
    return [
        table
        for table in TABLE_MODELS
        if not (directory / f"{table}.txt").is_file() or (directory / f"{table}.txt").read_text() != schema_text(table)
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m chronomoe.io.parquet_schema --write | --check``."""
    parser = argparse.ArgumentParser(prog="python -m chronomoe.io.parquet_schema", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate specs/parquet/<table>.txt")
    action.add_argument("--check", action="store_true", help="exit 1 when a committed schema is out of date")
    args = parser.parse_args(argv)
    if args.write:
        packaged_dir().mkdir(parents=True, exist_ok=True)
        for table in TABLE_MODELS:
            (packaged_dir() / f"{table}.txt").write_text(schema_text(table))
        return 0
    stale = stale_tables()
    for table in stale:
        print(f"specs/parquet/{table}.txt is out of date: run python -m chronomoe.io.parquet_schema --write")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
