"""Loading a run folder's files: records validated one line at a time, and the manifest.

Every loader takes a file path or a run folder (then it reads the file of
that folder named in :mod:`chronomoe.io.paths`) and reads lines through
:func:`chronomoe.io.lines.iter_lines`: one line at a time, at most
``max_line_bytes`` each, a torn last line skipped with a warning. They parse
with ``orjson`` and validate with pydantic; nothing is evaluated or
unpickled. A line that does not parse or validate raises
:class:`~chronomoe.errors.CorruptRecordError` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..errors import CorruptRecordError
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot
from .fast_events import iter_events
from .lines import MAX_LINE_BYTES, iter_lines, open_regular_file
from .parse_errors import PARSE_ERRORS, describe_parse_error
from .paths import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE, file_in

Record = TypeVar("Record")


def iter_records(
    path: str | os.PathLike[str],
    parse: Callable[[bytes], Record],
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    on_corrupt: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[Record]:
    """Stream records from a JSONL file, one line at a time (memory flat in file length).

    A last line without its newline (torn by a crash) is skipped with a
    warning; any other line that fails to parse, or is longer than
    ``max_line_bytes``, raises :class:`~chronomoe.errors.CorruptRecordError`
    with the file and line number, or, when ``on_corrupt`` is given, is
    handed to it as that error and skipped (a line over the size limit still
    raises: reading on would mean reading it).
    """
    path = Path(path)
    for line_number, line in iter_lines(path, max_line_bytes):
        try:
            record = parse(line)
        except PARSE_ERRORS as error:
            corrupt = CorruptRecordError(str(path), line_number, describe_parse_error(error))
            if on_corrupt is None:
                raise corrupt from None
            on_corrupt(corrupt)
            continue
        yield record


def load_events(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES) -> list[RoutingEvent]:
    """Validated events from ``routing_events.jsonl`` (a file path or a run folder)."""
    return list(iter_events(file_in(path, EVENTS_FILE), max_line_bytes=max_line_bytes))


def load_snapshots(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES) -> list[SystemSnapshot]:
    """Validated snapshots from ``snapshots.jsonl`` (a file path or a run folder)."""
    return list(
        iter_records(file_in(path, SNAPSHOTS_FILE), SystemSnapshot.model_validate_json, max_line_bytes=max_line_bytes)
    )


def load_transitions(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES) -> list[AlertTransition]:
    """Validated alert transitions from ``alerts.jsonl`` (a file path or a run folder)."""
    return list(
        iter_records(file_in(path, ALERTS_FILE), AlertTransition.model_validate_json, max_line_bytes=max_line_bytes)
    )


def load_decisions(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES) -> list[ControlDecision]:
    """Validated control decisions from ``decisions.jsonl`` (a file path or a run folder)."""
    return list(
        iter_records(file_in(path, DECISIONS_FILE), ControlDecision.model_validate_json, max_line_bytes=max_line_bytes)
    )


def load_manifest(path: str | os.PathLike[str], *, max_bytes: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """The run manifest (a file path or a run folder).

    Raises :class:`~chronomoe.errors.CorruptRecordError` when it is not a
    JSON object or is larger than ``max_bytes``.
    """
    path = file_in(path, MANIFEST_FILE)
    with open_regular_file(path) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CorruptRecordError(str(path), 1, f"larger than max_bytes={max_bytes}; refused without reading it")
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise CorruptRecordError(str(path), 1, describe_parse_error(error)) from None
    if not isinstance(manifest, dict):
        raise CorruptRecordError(str(path), 1, f"must be a JSON object, got {type(manifest).__name__}")
    return manifest
