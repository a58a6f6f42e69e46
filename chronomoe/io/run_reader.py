"""One way to read a run folder, whatever its storage: :func:`open_run`.

``open_run(run_dir)`` returns a :class:`RunReader` whose methods stream the
run's records (``events()``, ``snapshots(mode)``, ``transitions()``,
``decisions()``), give its last snapshot, its manifest, and its routing
counts as one ``[steps, layers, experts]`` array (:meth:`RunReader.counts`).
Every ``chronomoe`` command reads runs through it. The storage is the one
the manifest names (``"storage"``), else the one whose files the folder
holds: JSONL (``routing_events.jsonl``, ...) or Parquet (``routing_events/``, ...).
The Parquet reader lives in :mod:`chronomoe.io.parquet_reader` (it needs
pyarrow, ``pip install 'chronomoe[parquet]'``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

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

Storage = Literal["jsonl", "parquet"]
STORAGES: tuple[Storage, ...] = ("jsonl", "parquet")
TABLES = ("routing_events", "snapshots", "alerts", "decisions")
"""The record kinds of a run, by the name of their JSONL file (without ``.jsonl``) or Parquet folder."""


@dataclass(frozen=True)
class RunCounts:
    """A run's routing counts of one mode as arrays.

    ``counts[i, j]`` holds the tokens per expert of layer ``layer_ids[j]`` at step ``steps[i]`` (zeros where the
    layer recorded nothing at that step, and beyond a layer's ``n_experts``); ``steps`` and ``layer_ids`` are
    sorted. A step recorded twice (a run resumed from a checkpoint) holds its later record.

    Shapes: ``steps [S]``, ``layer_ids [L]``, ``counts [S, L, E]`` with ``E`` the widest layer's ``n_experts``.
    """

    steps: np.ndarray
    layer_ids: np.ndarray
    counts: np.ndarray


class RunReader(ABC):
    """The records of one run folder (see the module docstring); each method reads anew from the files.

    Methods raise :class:`~chronomoe.errors.CorruptRecordError` for a record its model rejects (naming the file
    and the line, or the row of a Parquet part) and :class:`~chronomoe.errors.InvalidInputError` for a missing table.
    """

    storage: Storage

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @abstractmethod
    def has(self, table: str) -> bool:
        """Whether the run holds ``table`` (one of :data:`TABLES`)."""

    @abstractmethod
    def events(self) -> Iterator[RoutingEvent]:
        """Every routing event, in the order written (per rank, then per writing session)."""

    @abstractmethod
    def snapshots(
        self, mode: str | None = None, on_corrupt: Callable[[CorruptRecordError], None] | None = None
    ) -> Iterator[SystemSnapshot]:
        """The snapshots (of ``mode`` only, when given), in the order written.

        ``on_corrupt`` (JSONL): a line the model rejects is handed to it and skipped instead of raising (a
        summary counts them). Parquet rows were validated when written; a rejected row always raises.
        """

    @abstractmethod
    def transitions(self) -> Iterator[AlertTransition]:
        """The alert transitions, in the order written."""

    @abstractmethod
    def decisions(self) -> Iterator[ControlDecision]:
        """The control decisions, in the order written."""

    @abstractmethod
    def last_snapshot(self) -> SystemSnapshot | None:
        """The last snapshot written (``None`` when there is none), read without reading the others."""

    @abstractmethod
    def counts(self, mode: str = "TRAIN") -> RunCounts:
        """The ``mode`` events' counts as one array (see :class:`RunCounts`), read without making event objects
        where the storage allows."""

    def manifest(self) -> dict[str, Any]:
        """``run_manifest.json`` (``{}`` when the run has none)."""
        path = self.run_dir / MANIFEST_FILE
        return load_manifest(path) if path.is_file() else {}

    def require(self, table: str, why: str = "") -> None:
        """Raise :class:`~chronomoe.errors.InvalidInputError` naming the folder when ``table`` is missing."""
        if not self.has(table):
            raise InvalidInputError("RUN_DIR", str(self.run_dir), f"has no {self.describe(table)}{why}")

    @abstractmethod
    def describe(self, table: str) -> str:
        """The name of ``table``'s file or folder in this storage."""


def stack_counts(
    steps: np.ndarray, layers: np.ndarray, rows: list[np.ndarray], order: np.ndarray | None = None
) -> RunCounts:
    """:class:`RunCounts` of count rows given as matrices (one width each, ``rows[k]`` ``[R_k, W_k]``), with their
    steps and layer ids (``[sum R_k]`` each, in the rows' order), scattered with one numpy assignment per matrix.

    Where a (step, layer) pair is given twice the later row wins: later in ``order`` (``[sum R_k]`` distinct
    sequence numbers, such as line numbers) when given, else in the order given.
    """
    unique_steps, step_index = np.unique(steps, return_inverse=True)
    layer_ids, layer_index = np.unique(layers, return_inverse=True)
    width = max((matrix.shape[1] for matrix in rows if len(matrix)), default=0)  # of the rows given
    counts = np.zeros((len(unique_steps), len(layer_ids), width), np.int64)
    cells = step_index * len(layer_ids) + layer_index
    sequence = np.arange(len(cells)) if order is None else np.asarray(order)
    # the last row (by sequence) of each cell, so that the assignments below never write a cell twice
    by_cell = np.lexsort((sequence, cells))
    last = by_cell[np.append(cells[by_cell][1:] != cells[by_cell][:-1], True)] if len(cells) else by_cell
    wins = np.zeros(len(cells), bool)
    wins[last] = True
    flat = counts.reshape(len(unique_steps) * len(layer_ids), width)
    start = 0
    for matrix in rows:
        end = start + len(matrix)
        if end > start:
            keep = wins[start:end]
            flat[cells[start:end][keep], : matrix.shape[1]] = matrix[keep]
        start = end
    return RunCounts(unique_steps, layer_ids, counts)


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
        rows: list[np.ndarray] = []
        first_line = 0  # sequence number of the batch's first line
        for batch in event_batches(path):
            for matrix in batch.rows:
                keep = [fields["mode"] == mode for fields in matrix.fields]
                kept = [fields for fields, kept in zip(matrix.fields, keep, strict=True) if kept]
                steps += [fields["step"] for fields in kept]
                layers += [fields["layer_id"] for fields in kept]
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
        return stack_counts(np.asarray(steps, np.int64), np.asarray(layers, np.int64), rows, sequence)

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

        records = iter_records(path, parse_if_mode, on_corrupt=on_corrupt)  # type: ignore[type-var]
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
