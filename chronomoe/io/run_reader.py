"""One way to read a run folder, whatever its storage: :func:`open_run`.

``open_run(run_dir)`` returns a :class:`RunReader` whose methods stream the
run's records (``events()``, ``snapshots(mode)``, ``transitions()``,
``decisions()``), give its last snapshot, its manifest, and its routing
counts as one ``[steps, layers, experts]`` array (:meth:`RunReader.counts`).
Every ``chronomoe`` command reads runs through it. The storage is the one
the manifest names (``"storage"``), else the one whose files the folder
holds: JSONL (``routing_events.jsonl``, ...) or Parquet (``routing_events/``, ...).
The interface is :mod:`chronomoe.io.run_reader_base`'s; the JSONL reader
lives here, the Parquet reader in :mod:`chronomoe.io.parquet_reader` (it
needs pyarrow, ``pip install 'chronomoe[parquet]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import orjson

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..errors import CorruptRecordError, InvalidInputError
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot
from .event_lines import event_batches
from .fast_events import iter_events, validated_events
from .lines import last_line
from .paths import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE
from .reader import iter_records, load_manifest
from .run_reader_base import STORAGES, TABLES, RowStack, RunCounts, RunReader, Storage, stack_counts


class JsonlRunReader(RunReader):
    """A run folder of JSONL files (:mod:`chronomoe.io.reader`, :mod:`chronomoe.io.fast_events`)."""

    storage: Storage = "jsonl"
    FILES: ClassVar[dict[str, str]] = dict(
        zip(TABLES, (EVENTS_FILE, SNAPSHOTS_FILE, ALERTS_FILE, DECISIONS_FILE), strict=True)
    )

    def has(self, table: str) -> bool:
        return (self.run_dir / self.FILES[table]).is_file()

    def describe(self, table: str) -> str:
        return self.FILES[table]

    def _path(self, table: str) -> Path:
        self.require(table)
        return self.run_dir / self.FILES[table]

    def events(self) -> Iterator[RoutingEvent]:
        return iter_events(self._path("routing_events"))

    def counts(self, mode: str = "TRAIN") -> RunCounts:
        """Counts of the lines read on the fast path (:mod:`chronomoe.io.event_lines`) taken from its count
        matrices, those of the other lines from their validated events: no event objects on the fast path."""
        path = self._path("routing_events")
        steps: list[int] = []
        layers: list[int] = []
        order: list[np.ndarray] = []
        rows = RowStack()
        first_line = 0  # sequence number of the batch's first line
        for batch in event_batches(path):
            if not first_line:  # the file's rows, estimated from the first batch's bytes per line
                rows.reserve(int(path.stat().st_size * len(batch.lines) / sum(map(len, batch.lines)) * 1.01) + 1)
            for matrix in batch.rows:
                columns = matrix.columns
                keep = [row_mode == mode for row_mode in columns["mode"]]
                if all(keep):  # a file of one mode: no row to drop
                    steps += columns["step"]
                    layers += columns["layer_id"]
                    order.append(first_line + np.asarray(matrix.indices, np.int64))
                    rows.append(matrix.counts)
                    continue
                steps += [step for step, kept in zip(columns["step"], keep, strict=True) if kept]
                layers += [layer for layer, kept in zip(columns["layer_id"], keep, strict=True) if kept]
                order.append(first_line + np.asarray(matrix.indices, np.int64)[keep])
                rows.append(matrix.counts[keep])
            for index, event in validated_events(path, batch):
                if event.mode == mode:
                    steps.append(event.step)
                    layers.append(event.layer_id)
                    order.append(np.array([first_line + index], np.int64))
                    rows.append(event.expert_token_counts[np.newaxis])
            first_line += len(batch.lines)
        sequence = np.concatenate(order) if order else np.zeros(0, np.int64)
        return stack_counts(
            np.asarray(steps, np.int64), np.asarray(layers, np.int64), rows.matrices(), sequence, stacked=rows.stacked()
        )

    def snapshots(
        self, mode: str | None = None, on_corrupt: Callable[[CorruptRecordError], None] | None = None
    ) -> Iterator[SystemSnapshot]:
        path = self._path("snapshots")
        if mode is None:
            return iter_records(path, SystemSnapshot.model_validate_json, on_corrupt=on_corrupt)

        def parse_if_mode(line: bytes) -> SystemSnapshot | None:
            record = orjson.loads(line)
            if isinstance(record, dict) and record.get("mode", "TRAIN") != mode:
                return None  # another mode's line: parsed as JSON, not validated
            return SystemSnapshot.model_validate(record)

        records = iter_records(path, parse_if_mode, on_corrupt=on_corrupt)
        return (snapshot for snapshot in records if snapshot is not None)

    def transitions(self) -> Iterator[AlertTransition]:
        return iter_records(self._path("alerts"), AlertTransition.model_validate_json)

    def decisions(self) -> Iterator[ControlDecision]:
        return iter_records(self._path("decisions"), ControlDecision.model_validate_json)

    def last_snapshot(self) -> SystemSnapshot | None:
        line = last_line(self._path("snapshots"))
        return None if line is None else SystemSnapshot.model_validate_json(line)


def detect_storage(run_dir: Path) -> Storage:
    """The storage of a run folder: the manifest's ``"storage"``, else Parquet when it holds a table folder and
    no JSONL file, else JSONL."""
    manifest = run_dir / MANIFEST_FILE
    if manifest.is_file():
        storage = load_manifest(manifest).get("storage")
        if storage is not None:
            if storage not in STORAGES:
                raise InvalidInputError(f"{manifest}:storage", storage, f"must be one of {', '.join(STORAGES)}")
            return storage  # type: ignore[no-any-return]
    has_jsonl = any((run_dir / name).is_file() for name in JsonlRunReader.FILES.values())
    has_parquet = any((run_dir / table).is_dir() for table in TABLES)
    return "parquet" if has_parquet and not has_jsonl else "jsonl"


def open_run(run_dir: str | os.PathLike[str], storage: Storage | None = None) -> RunReader:
    """A reader of the run folder ``run_dir`` (``storage``: force one; default: :func:`detect_storage`).

    Raises :class:`~chronomoe.errors.InvalidInputError` when ``run_dir`` is not a folder or ``storage`` is unknown.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise InvalidInputError("RUN_DIR", str(path), "is not a folder")
    if storage is None:
        storage = detect_storage(path)
    if storage == "jsonl":
        return JsonlRunReader(path)
    if storage == "parquet":
        from .parquet_reader import ParquetRunReader

        return ParquetRunReader(path)
    raise InvalidInputError("storage", storage, f"must be one of {', '.join(STORAGES)}")
