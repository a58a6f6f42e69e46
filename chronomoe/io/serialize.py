"""The JSONL line of each record, and the manifest's bytes: what the writer puts on disk.

:func:`event_line` is the *canonical form* of an event, the one the fast
events loader (:mod:`chronomoe.io.fast_events`) reads without pydantic.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from pydantic import BaseModel

from ..events import RoutingEvent

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def event_line(event: RoutingEvent) -> bytes:
    """One JSONL line for an event: ``event.model_dump_json()``'s bytes and a newline, several times faster.

    The record's own field dict is serialised (keys in declaration order: the canonical form's), and an event
    whose every expert got tokens, the usual case, shares one pre-serialised ``active_experts`` list per width
    (``orjson.Fragment``) instead of serialising 256 integers again.
    """
    fields = event.__dict__
    if tuple(fields) != _EVENT_FIELDS:  # a record built by ``trusted`` with its keys in another order
        fields = {name: fields[name] for name in _EVENT_FIELDS}
    active = event.active_experts  # derived by the model: never None in a record
    if active is not None and len(active) == event.n_experts:  # distinct and ascending: 0..n-1
        fields = {**fields, "active_experts": _every_expert(event.n_experts)}
    return orjson.dumps(fields, option=_ORJSON_OPTIONS | orjson.OPT_APPEND_NEWLINE)


_EVENT_FIELDS = tuple(RoutingEvent.model_fields)


@functools.lru_cache(maxsize=64)
def _every_expert(n_experts: int) -> orjson.Fragment:
    """``[0, 1, ..., n_experts - 1]`` serialised once per width."""
    return orjson.Fragment(orjson.dumps(list(range(n_experts))))


def record_line(record: BaseModel) -> bytes:
    """One JSONL line for any record."""
    if isinstance(record, RoutingEvent):
        return event_line(record)
    return record.model_dump_json().encode() + b"\n"


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """``run_manifest.json``'s content: the manifest as indented JSON (numpy values allowed)."""
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | _ORJSON_OPTIONS)
