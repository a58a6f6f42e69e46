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

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

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


def iter_records(path: str | os.PathLike, parse: Callable[[bytes], Record]) -> Iterator[Record]:
    """Stream records from a JSONL file, one line at a time (memory flat in file length).

    A last line without its newline (torn by a crash) is skipped with a
    warning; any other line that fails to parse raises
    :class:`~chronomoe.errors.CorruptRecordError` with the file and line number.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        line_number = 0
        for line in handle:
            line_number += 1
            if not line.endswith(b"\n"):
                logger.warning("%s:%d: skipping torn last line (%d bytes, no newline)", path, line_number, len(line))
                return
            if not line.strip():
                continue
            try:
                yield parse(line)
            except (ValidationError, orjson.JSONDecodeError, InvalidInputError, ValueError) as error:
                raise CorruptRecordError(str(path), line_number, _first_line(error)) from None


def _first_line(error: Exception) -> str:
    text = str(error)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"{location}: {first['msg']}" if location else first["msg"]
    return text.splitlines()[0] if text else type(error).__name__


def load_events(path: str | os.PathLike) -> list[RoutingEvent]:
    """Validated events from ``routing_events.jsonl`` (a file path or a run folder)."""
    return list(iter_records(_file_in(path, EVENTS_FILE), RoutingEvent.model_validate_json))


def load_snapshots(path: str | os.PathLike) -> list[SystemSnapshot]:
    """Validated snapshots from ``snapshots.jsonl`` (a file path or a run folder)."""
    return list(iter_records(_file_in(path, SNAPSHOTS_FILE), SystemSnapshot.model_validate_json))


def load_transitions(path: str | os.PathLike) -> list[AlertTransition]:
    """Validated alert transitions from ``alerts.jsonl`` (a file path or a run folder)."""
    return list(iter_records(_file_in(path, ALERTS_FILE), AlertTransition.model_validate_json))


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The run manifest (a file path or a run folder)."""
    return orjson.loads(_file_in(path, MANIFEST_FILE).read_bytes())
