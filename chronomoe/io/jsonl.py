"""Append-only JSONL telemetry: the writer and the loaders.

A run folder ``output_dir/run_id/`` holds

* ``routing_events.jsonl``: one :class:`~chronomoe.events.RoutingEvent` a line;
* ``snapshots.jsonl``: one :class:`~chronomoe.snapshots.SystemSnapshot` a line;
* ``alerts.jsonl``: one :class:`~chronomoe.alerts.AlertTransition` a line;
* ``run_manifest.json``: run metadata, replaced atomically.

Durability: files are opened once, unbuffered, in append mode; each batch is
serialised in memory and handed to the OS in one ``write()``, so a process
killed at any moment leaves every earlier batch intact and at most a torn
last line. With ``fsync=True`` the writer also calls ``fsync`` after every
snapshot, so a machine crash loses at most the batches since the last
snapshot. Loaders skip a torn last line with a warning; a new writer moves a
torn tail aside (to ``<file>.torn``) before appending, so it never glues onto
the next record.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from ..alerts import AlertTransition
from ..errors import CorruptRecordError, InvalidInputError
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot

logger = logging.getLogger(__name__)

EVENTS_FILE = "routing_events.jsonl"
SNAPSHOTS_FILE = "snapshots.jsonl"
ALERTS_FILE = "alerts.jsonl"
MANIFEST_FILE = "run_manifest.json"

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

Record = TypeVar("Record", bound=BaseModel)


def check_run_id(run_id: str) -> str:
    """Refuse a run_id that is not one safe path component ('', '.', '..', '/abs', 'a/b')."""
    if (
        not isinstance(run_id, str)
        or run_id in ("", ".", "..")
        or any(separator in run_id for separator in ("/", "\\", "\0"))
        or os.path.isabs(run_id)
    ):
        raise InvalidInputError("run_id", run_id, "must be a single, non-empty path component")
    return run_id


def event_line(event: RoutingEvent) -> bytes:
    """One JSONL line for an event; equal to ``event.model_dump_json()`` as JSON, several times faster."""
    return orjson.dumps(
        {
            "timestamp": event.timestamp,
            "run_id": event.run_id,
            "step": event.step,
            "mode": event.mode,
            "layer_id": event.layer_id,
            "n_experts": event.n_experts,
            "top_k": event.top_k,
            "expert_token_counts": event.expert_token_counts,
            "active_experts": event.active_experts,
            "token_count": event.token_count,
            "router_prob_sums": event.router_prob_sums,
            "loss": event.loss,
            "aux_loss": event.aux_loss,
        },
        option=_ORJSON_OPTIONS | orjson.OPT_APPEND_NEWLINE,
    )


def record_line(record: BaseModel) -> bytes:
    """One JSONL line for any record."""
    if isinstance(record, RoutingEvent):
        return event_line(record)
    return record.model_dump_json().encode() + b"\n"


class TelemetryWriter:
    """Appends records to a run folder's JSONL files (see the module docstring).

    Args:
        run_id: the run's folder name under ``output_dir``; one path component.
        output_dir: parent folder of run folders (created when missing).
        fsync: ``fsync`` the files after every snapshot (durable against
            power loss, at the cost measured in ``benchmarks/bench_io.py``).
    """

    def __init__(self, run_id: str, output_dir: str | os.PathLike = "outputs", *, fsync: bool = False) -> None:
        self.run_id = check_run_id(run_id)
        self.run_dir = Path(output_dir) / run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.run_dir / EVENTS_FILE
        self.snapshots_path = self.run_dir / SNAPSHOTS_FILE
        self.alerts_path = self.run_dir / ALERTS_FILE
        self.manifest_path = self.run_dir / MANIFEST_FILE
        self.fsync = fsync
        self._files: dict[Path, Any] = {}

    # -- seed API -----------------------------------------------------------
    def write_event(self, event: RoutingEvent) -> None:
        """Append one event."""
        self._append(self.events_path, event_line(event))

    def write_events_batch(self, events: Iterable[RoutingEvent]) -> int:
        """Append events in one ``write()``; return how many."""
        lines = [event_line(event) for event in events]
        if lines:
            self._append(self.events_path, b"".join(lines))
        return len(lines)

    def flush_events(self, events: Sequence[RoutingEvent]) -> int:
        """Write a buffer of events and return their number (the caller clears the buffer)."""
        return self.write_events_batch(events)

    def write_snapshot(self, snapshot: SystemSnapshot) -> None:
        """Append a snapshot and, in ``alerts.jsonl``, the transitions it carries."""
        if snapshot.transitions:
            self.write_transitions(snapshot.transitions)
        self._append(self.snapshots_path, record_line(snapshot))
        if self.fsync:
            self.sync()

    def write_transitions(self, transitions: Iterable[AlertTransition]) -> int:
        """Append alert transitions to ``alerts.jsonl`` in one ``write()``."""
        lines = [record_line(transition) for transition in transitions]
        if lines:
            self._append(self.alerts_path, b"".join(lines))
        return len(lines)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``run_manifest.json`` atomically (temporary file, then rename)."""
        temporary = self.manifest_path.with_suffix(".json.tmp")
        temporary.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | _ORJSON_OPTIONS))
        os.replace(temporary, self.manifest_path)

    # -- file handling ------------------------------------------------------
    def _append(self, path: Path, data: bytes) -> None:
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = _open_for_append(path)
        view = memoryview(data)
        while view:  # a regular file may accept fewer bytes than asked (disk nearly full)
            written = handle.write(view)
            view = view[written:]

    def sync(self) -> None:
        """``fsync`` every open file."""
        for handle in self._files.values():
            os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __enter__(self) -> "TelemetryWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _open_for_append(path: Path):
    """Open unbuffered for append, first moving a torn last line (no trailing newline) aside."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as existing:
            existing.seek(-1, os.SEEK_END)
            if existing.read(1) != b"\n":
                existing.seek(0)
                content = existing.read()
                keep = content.rfind(b"\n") + 1
                torn_path = path.with_name(path.name + ".torn")
                with open(torn_path, "ab") as torn:
                    torn.write(content[keep:] + b"\n")
                existing.truncate(keep)
                logger.warning(
                    "%s ended in a torn line (%d bytes, a crash mid-write); moved it to %s",
                    path, len(content) - keep, torn_path,
                )
    return open(path, "ab", buffering=0)


# -- loaders ---------------------------------------------------------------
def _file_in(path: str | os.PathLike, default_name: str) -> Path:
    path = Path(path)
    return path / default_name if path.is_dir() else path


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` of each non-blank complete line; a torn last line is skipped with a warning."""
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                logger.warning("%s:%d: skipping torn last line (%d bytes, no newline)", path, line_number, len(line))
                return
            if line.strip():
                yield line_number, line


_PARSE_ERRORS = (ValidationError, orjson.JSONDecodeError, InvalidInputError, ValueError, TypeError)


def iter_records(path: str | os.PathLike, parse: Callable[[bytes], Record]) -> Iterator[Record]:
    """Stream records from a JSONL file, one line at a time (memory flat in file length).

    A last line without its newline (torn by a crash) is skipped with a
    warning; any other line that fails to parse raises
    :class:`~chronomoe.errors.CorruptRecordError` with the file and line number.
    """
    path = Path(path)
    for line_number, line in _iter_lines(path):
        try:
            yield parse(line)
        except _PARSE_ERRORS as error:
            raise CorruptRecordError(str(path), line_number, _first_line(error)) from None


def iter_events(path: str | os.PathLike, batch_lines: int = 4096) -> Iterator[RoutingEvent]:
    """Stream validated events from a JSONL file, ``batch_lines`` lines at a time.

    Same contract as :func:`iter_records` with ``RoutingEvent`` validation,
    about five times faster: lines in the writer's canonical form are checked
    with vectorised numpy tests; any other line goes through full pydantic
    validation, which accepts or rejects it exactly as ``RoutingEvent`` does.
    """
    path = Path(path)
    batch: list[tuple[int, bytes]] = []
    for numbered_line in _iter_lines(path):
        batch.append(numbered_line)
        if len(batch) == batch_lines:
            yield from _events_of_batch(path, batch)
            batch = []
    yield from _events_of_batch(path, batch)


_EVENT_FIELDS = tuple(RoutingEvent.model_fields)
_EVENT_KEYS = frozenset(_EVENT_FIELDS)


def _is_canonical_event(record: Any) -> bool:
    """Whether a parsed line has the exact shape and scalar types the writer produces."""
    if type(record) is not dict or record.keys() != _EVENT_KEYS:
        return False
    step, layer_id, n_experts, top_k = record["step"], record["layer_id"], record["n_experts"], record["top_k"]
    counts, active = record["expert_token_counts"], record["active_experts"]
    return (
        type(step) is int and step >= 0
        and type(layer_id) is int and layer_id >= 0
        and type(n_experts) is int and n_experts >= 1
        and type(top_k) is int and 1 <= top_k <= n_experts
        and type(record["run_id"]) is str and record["run_id"] != ""
        and record["mode"] in ("TRAIN", "INFER")
        and type(record["timestamp"]) is float and math.isfinite(record["timestamp"])
        and type(record["token_count"]) is int
        and type(counts) is list and len(counts) == n_experts
        and type(active) is list
        and record["router_prob_sums"] is None
        and all(value is None or (type(value) is float and math.isfinite(value))
                for value in (record["loss"], record["aux_loss"]))
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing allocates thousands of acyclic
    containers per batch, and the collections they trigger cost about a third
    of the load time (measured in benchmarks/bench_io.py)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _events_of_batch(path: Path, batch: list[tuple[int, bytes]]) -> list[RoutingEvent]:
    with _gc_paused():
        return _parse_event_batch(path, batch)


def _parse_event_batch(path: Path, batch: list[tuple[int, bytes]]) -> list[RoutingEvent]:
    parsed: list[Any] = []
    for line_number, line in batch:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError as error:
            raise CorruptRecordError(str(path), line_number, _first_line(error)) from None
    canonical = [_is_canonical_event(record) for record in parsed]
    by_width: dict[int, list[int]] = {}
    for index, record in enumerate(parsed):
        if canonical[index]:
            by_width.setdefault(record["n_experts"], []).append(index)
    events: list[RoutingEvent | None] = [None] * len(parsed)
    for indices in by_width.values():
        counts = np.array([parsed[i]["expert_token_counts"] for i in indices])
        if counts.dtype != np.int64:
            continue  # floats, bools or huge integers: full validation decides
        counts.flags.writeable = False
        totals = counts.sum(axis=1).tolist()
        rows, columns = np.nonzero(counts)
        starts = np.searchsorted(rows, np.arange(len(indices) + 1)).tolist()
        columns = columns.tolist()
        non_negative = (counts >= 0).all(axis=1).tolist()
        for position, index in enumerate(indices):
            record = parsed[index]
            active = columns[starts[position] : starts[position + 1]]
            if non_negative[position] and record["token_count"] == totals[position] and record["active_experts"] == active:
                record["expert_token_counts"] = counts[position]
                record["active_experts"] = tuple(active)
                events[index] = RoutingEvent.trusted(**record)
    for index, event in enumerate(events):
        if event is None:
            try:
                events[index] = RoutingEvent.model_validate(parsed[index])
            except _PARSE_ERRORS as error:
                raise CorruptRecordError(str(path), batch[index][0], _first_line(error)) from None
    return events  # type: ignore[return-value]


def _first_line(error: Exception) -> str:
    text = str(error)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"{location}: {first['msg']}" if location else first["msg"]
    return text.splitlines()[0] if text else type(error).__name__


def load_events(path: str | os.PathLike) -> list[RoutingEvent]:
    """Validated events from ``routing_events.jsonl`` (a file path or a run folder)."""
    return list(iter_events(_file_in(path, EVENTS_FILE)))


def load_snapshots(path: str | os.PathLike) -> list[SystemSnapshot]:
    """Validated snapshots from ``snapshots.jsonl`` (a file path or a run folder)."""
    return list(iter_records(_file_in(path, SNAPSHOTS_FILE), SystemSnapshot.model_validate_json))


def load_transitions(path: str | os.PathLike) -> list[AlertTransition]:
    """Validated alert transitions from ``alerts.jsonl`` (a file path or a run folder)."""
    return list(iter_records(_file_in(path, ALERTS_FILE), AlertTransition.model_validate_json))


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The run manifest (a file path or a run folder)."""
    return orjson.loads(_file_in(path, MANIFEST_FILE).read_bytes())
