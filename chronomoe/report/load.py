"""Reading a run folder into a :class:`~chronomoe.report.rundata.RunData`, streaming, in one pass per file.

This module is the one place where the report touches storage. The run is
opened with :func:`~chronomoe.io.run_reader.open_run`, so both storages work:

* JSONL: :func:`snapshot_rows` and :func:`decision_rows` read the files
  through the loaders' record reader (:func:`chronomoe.io.reader.iter_records`:
  one bounded line at a time, a torn last line skipped with a warning) and the
  report's fast line parsers. A corrupt snapshot line is skipped and kept in
  :attr:`RunData.corrupt_lines` (the command warns and exits 2, as
  ``summary`` does); a corrupt decision line raises
  :class:`~chronomoe.errors.CorruptRecordError` naming file and line;
* Parquet: the reader's validated records, turned into the same rows
  (:func:`~chronomoe.report.rows.row_from_snapshot`, :meth:`DecisionRow.of`).

:class:`RunBuilder` and :class:`DecisionBuilder` turn rows into arrays and
know nothing of files. Steps recorded more than once (a reused run id, or a
resume that recorded them again) show their last recording, as in
``summary``: found in the first pass, they cost a second one that leaves the
earlier recordings out (:func:`superseded_positions`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..alerts import AlertRules, AlertTransition
from ..errors import CorruptRecordError, InvalidInputError
from ..io import DECISIONS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE, load_manifest
from ..io.reader import iter_records
from ..io.run_reader import open_run
from ..replay import recorded_rules, require_run_dir
from .columns import DEFAULT_MAX_COLUMNS, ColumnSums
from .decision_rows import DecisionRow, parse_decision_line
from .rows import NO_DATA, SnapshotRow, parse_snapshot_line, row_from_snapshot
from .rundata import ControllerSeries, RunData

Progress = Callable[[int], None]
Row = TypeVar("Row")
"""Called with the number of bytes just read (JSONL runs only)."""


def run_bytes(run_dir: str | os.PathLike[str]) -> int:
    """Bytes :func:`load_run` reads from a JSONL run folder (what its ``progress`` callback adds up to); 0 for a
    Parquet run, whose reading reports no progress."""
    return sum(
        (Path(run_dir) / name).stat().st_size
        for name in (SNAPSHOTS_FILE, DECISIONS_FILE)
        if (Path(run_dir) / name).is_file()
    )


def load_run(
    run_dir: str | os.PathLike[str],
    mode: str = "TRAIN",
    *,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    progress: Progress | None = None,
) -> RunData:
    """One mode of a run folder, in either storage, as :class:`RunData`: its snapshots, its decisions when it
    has any, the manifest's rules (default rules when it stored none).

    Raises :class:`~chronomoe.errors.InvalidInputError` when the folder or its
    snapshots are missing or it holds no snapshot of ``mode``, and
    :class:`~chronomoe.errors.CorruptRecordError` on a bad decision or Parquet
    record (corrupt snapshot lines are skipped and listed in
    :attr:`RunData.corrupt_lines`).
    """
    path = require_run_dir(run_dir)
    reader = open_run(path)
    reader.require("snapshots")
    parquet = reader.storage == "parquet"
    corrupt_lines: list[CorruptRecordError] = []

    def rows_of_mode() -> Iterator[SnapshotRow]:
        corrupt_lines.clear()
        rows: Iterable[SnapshotRow] = (
            map(row_from_snapshot, reader.snapshots(mode))
            if parquet
            else snapshot_rows(path, progress, on_corrupt=corrupt_lines.append)
        )
        return (row for row in rows if row.mode == mode)

    builder = RunBuilder(max_columns)
    superseded: set[int] = set()
    superseded_range: tuple[int, int] | None = None
    for row in rows_of_mode():
        if builder.steps and row.step <= builder.steps[-1]:
            steps = [again.step for again in rows_of_mode()]
            superseded = superseded_positions(steps)
            superseded_range = (min(steps[p] for p in superseded), max(steps[p] for p in superseded))
            builder = RunBuilder(max_columns)
            for position, kept in enumerate(rows_of_mode()):
                if position not in superseded:
                    builder.add(kept)
            break
        builder.add(row)
    if not builder.steps:
        raise InvalidInputError("RUN_DIR", str(path), f"holds no {mode} snapshots in {reader.describe('snapshots')}")
    manifest = load_manifest(path) if (path / MANIFEST_FILE).is_file() else {}
    run = dataclasses.replace(
        builder.finish(path, mode, recorded_rules(path) or AlertRules.default(), manifest),
        corrupt_lines=tuple(corrupt_lines),
        superseded_snapshots=len(superseded),
        superseded_steps=superseded_range,
    )
    if not reader.has("decisions"):
        return run
    decision_source: Iterable[DecisionRow] = (
        map(DecisionRow.of, reader.decisions()) if parquet else decision_rows(path, progress)
    )
    decisions = DecisionBuilder(run.steps, run.layer_ids)
    for decision in decision_source:
        if decision.mode == mode:
            decisions.add(decision)
    return dataclasses.replace(run, controller=decisions.finish())


def snapshot_rows(
    run_dir: Path,
    progress: Progress | None = None,
    on_corrupt: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[SnapshotRow]:
    """Every snapshot of ``snapshots.jsonl`` as a :class:`~chronomoe.report.rows.SnapshotRow`, in file order.

    A corrupt line raises :class:`~chronomoe.errors.CorruptRecordError`, or is handed to ``on_corrupt`` and
    skipped."""
    path = run_dir / SNAPSHOTS_FILE
    if not path.is_file():
        raise InvalidInputError("RUN_DIR", str(run_dir), f"has no {SNAPSHOTS_FILE}")
    yield from iter_records(path, _reporting(parse_snapshot_line, progress), on_corrupt=on_corrupt)


def superseded_positions(steps: list[int]) -> set[int]:
    """The positions in ``steps`` (one mode's snapshot steps, in file order) of the recordings that a later
    recording of the same steps replaces: a step at or below the last kept one starts a new recording of
    those steps, which supersedes every kept position from that step on."""
    kept: list[int] = []
    superseded: set[int] = set()
    for position, step in enumerate(steps):
        while kept and steps[kept[-1]] >= step:
            superseded.add(kept.pop())
        kept.append(position)
    return superseded


def decision_rows(run_dir: Path, progress: Progress | None = None) -> Iterator[DecisionRow]:
    """Every decision of ``decisions.jsonl`` as a :class:`~chronomoe.report.decision_rows.DecisionRow`, in order."""
    yield from iter_records(run_dir / DECISIONS_FILE, _reporting(parse_decision_line, progress))


def _reporting(parse: Callable[[bytes], Row], progress: Progress | None) -> Callable[[bytes], Row]:
    """``parse``, reporting each line's bytes to ``progress`` first (when given)."""
    if progress is None:
        return parse

    def parse_and_report(line: bytes) -> Row:
        progress(len(line))
        return parse(line)

    return parse_and_report


class RunBuilder:
    """Accumulates :class:`SnapshotRow` s of one mode, in order, into a :class:`RunData`."""

    def __init__(self, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        self.expert_tokens = ColumnSums(max_columns)
        self.steps: list[int] = []
        self.layer_rows: dict[int, int] = {}  # layer id -> row of the frame, in order of first appearance
        self._n_experts: dict[int, int] = {}
        self._losses: list[tuple[float, float]] = []
        # Per snapshot: its layers' frame rows and their metrics (not the counts, which go into columns).
        self._frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._transitions: list[AlertTransition] = []
        self._run_id = self._model_name = ""
        self._dropped = 0

    def add(self, row: SnapshotRow) -> None:
        rows = np.array([self._row_of(int(layer_id)) for layer_id in row.layer_ids], dtype=np.int64)
        for layer_id, n_experts in zip(row.layer_ids.tolist(), row.n_experts.tolist(), strict=True):
            self._n_experts[layer_id] = max(self._n_experts.get(layer_id, 0), n_experts)
        self.expert_tokens.add(rows, row.counts)
        self.steps.append(row.step)
        self._losses.append((row.train_loss, row.val_loss))
        self._frames.append((rows, row.n_effective, row.top2_share, row.max_vio, row.dead_experts, row.states))
        self._transitions.extend(row.transitions)
        self._run_id, self._model_name, self._dropped = row.run_id, row.model_name, row.dropped_records

    def _row_of(self, layer_id: int) -> int:
        return self.layer_rows.setdefault(layer_id, len(self.layer_rows))

    def finish(
        self,
        run_dir: Path,
        mode: str,
        rules: AlertRules,
        manifest: dict[str, object],
    ) -> RunData:
        """The :class:`RunData` (without controller), layers ascending by id."""
        order = np.argsort(list(self.layer_rows))  # frame rows of the layers, ascending by layer id
        layer_ids = np.array(sorted(self.layer_rows), dtype=np.int64)
        shape = (len(self.steps), len(self.layer_rows))
        metrics = {name: np.full(shape, math.nan) for name in ("n_effective", "top2_share", "max_vio")}
        dead = np.zeros(shape, dtype=np.int64)
        states = np.full(shape, NO_DATA, dtype=np.int8)
        for position, (rows, n_effective, top2_share, max_vio, dead_experts, row_states) in enumerate(self._frames):
            metrics["n_effective"][position, rows] = n_effective
            metrics["top2_share"][position, rows] = top2_share
            metrics["max_vio"][position, rows] = max_vio
            dead[position, rows] = dead_experts
            states[position, rows] = row_states
        losses = np.array(self._losses, dtype=np.float64).reshape(-1, 2)
        return RunData(
            run_dir=run_dir,
            run_id=self._run_id,
            model_name=self._model_name,
            mode=mode,
            steps=np.array(self.steps, dtype=np.int64),
            train_loss=losses[:, 0],
            val_loss=losses[:, 1],
            layer_ids=layer_ids,
            n_experts=np.array([self._n_experts[int(layer_id)] for layer_id in layer_ids], dtype=np.int64),
            n_effective=metrics["n_effective"][:, order],
            top2_share=metrics["top2_share"][:, order],
            max_vio=metrics["max_vio"][:, order],
            dead_experts=dead[:, order],
            states=states[:, order],
            column_width=self.expert_tokens.width,
            expert_tokens=self.expert_tokens.sums[:, order],
            transitions=self._transitions,
            rules=rules,
            manifest=dict(manifest),
            dropped_records=self._dropped,
        )


class DecisionBuilder:
    """Accumulates the :class:`DecisionRow` s of one mode into a :class:`ControllerSeries`.

    A decision belongs to the snapshot of its step (a decision at a step that
    is not a snapshot's goes to the next snapshot's window, or is dropped
    after the last); per-layer arrays cover the layers of ``layer_ids``.
    """

    def __init__(self, steps: np.ndarray, layer_ids: np.ndarray) -> None:
        self._steps = steps
        self._positions = {int(step): position for position, step in enumerate(steps.tolist())}
        self._layer_rows = {int(layer_id): row for row, layer_id in enumerate(layer_ids)}
        shape = (len(steps), len(layer_ids))
        self._pressure = np.full(shape, math.nan)
        self._bias = np.full(shape, math.nan)
        self._actions: dict[str, np.ndarray] = {}
        self._controllers: dict[str, None] = {}
        self._totals: Counter[str] = Counter()
        self._applied = 0
        self._dry_run = False

    def add(self, decision: DecisionRow) -> None:
        self._controllers.setdefault(decision.controller)
        self._totals[decision.action] += 1
        self._applied += decision.applied
        self._dry_run |= decision.dry_run
        position = self._positions.get(decision.step)
        if position is None:  # not a snapshot's step: the window of the next snapshot, if any
            position = int(np.searchsorted(self._steps, decision.step, side="left"))
            if position == len(self._steps):
                return
        if decision.action != "none":
            counts = self._actions.setdefault(decision.action, np.zeros(len(self._steps), dtype=np.int64))
            counts[position] += 1
        row = self._layer_rows.get(decision.layer_id) if decision.layer_id is not None else None
        if row is None:
            return
        if decision.pressure is not None:
            current = self._pressure[position, row]
            if not current >= decision.pressure:  # NaN (no pressure yet) compares False
                self._pressure[position, row] = decision.pressure
        if decision.bias_after is not None:
            self._bias[position, row] = decision.bias_after

    def finish(self) -> ControllerSeries:
        return ControllerSeries(
            controllers=tuple(self._controllers),
            decisions=sum(self._totals.values()),
            action_totals=dict(self._totals),
            applied=self._applied,
            dry_run=self._dry_run,
            pressure=self._pressure,
            bias=self._bias,
            actions=self._actions,
        )
