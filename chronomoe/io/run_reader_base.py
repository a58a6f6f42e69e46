"""What every run reader is (:class:`RunReader`), the run's counts as one array (:class:`RunCounts`,
:func:`stack_counts`), and the names of storages and tables. The readers: JSONL in
:mod:`chronomoe.io.run_reader`, Parquet in :mod:`chronomoe.io.parquet_reader`; :func:`~chronomoe.io.run_reader.open_run`
picks one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..errors import CorruptRecordError, InvalidInputError
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot
from .paths import MANIFEST_FILE
from .reader import load_manifest

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
    Dtypes: ``steps`` and ``layer_ids`` int64; ``counts`` int64 from JSONL, int32 from Parquet (its column's
    type, so a large run's array takes half the memory). Sums over an int32 axis are int64 in numpy.
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


@dataclass(frozen=True)
class Cells:
    """Where count rows go in a :class:`RunCounts` array: its sorted distinct ``steps [S]`` and ``layer_ids [L]``,
    and each row's cell ``cells [N]`` (step index * L + layer index); ``in_order`` when the rows are the cells
    0, 1, 2, ... in turn (every layer once per step, in step and layer order, as a run of one writer is; never
    for no rows)."""

    steps: np.ndarray
    layer_ids: np.ndarray
    cells: np.ndarray
    in_order: bool

    @classmethod
    def of(cls, steps: np.ndarray, layers: np.ndarray) -> Cells:
        """The cells of rows with these steps and layer ids (``[N]`` each); O(N) when they are in order."""
        if len(steps):
            per_step = int(np.argmax(steps != steps[0])) or len(steps)  # rows of the first step
            first_layers = layers[:per_step]
            if (
                len(steps) % per_step == 0
                and np.all(first_layers[1:] > first_layers[:-1])
                and np.array_equal(
                    layers.reshape(-1, per_step), np.broadcast_to(first_layers, (len(steps) // per_step, per_step))
                )
                and np.all(steps.reshape(-1, per_step) == steps[::per_step, np.newaxis])
                and np.all(steps[per_step::per_step] > steps[:-per_step:per_step])
            ):
                return cls(steps[::per_step].copy(), first_layers.copy(), np.arange(len(steps)), True)
        unique_steps, step_index = np.unique(steps, return_inverse=True)
        layer_ids, layer_index = np.unique(layers, return_inverse=True)
        cells = step_index * len(layer_ids) + layer_index
        in_order = bool(len(cells)) and np.array_equal(cells, np.arange(len(unique_steps) * len(layer_ids)))
        return cls(unique_steps, layer_ids, cells, in_order)


class RowStack:
    """Count matrices (``[R_k, W]`` each) appended in the order read, copied one after another into one growing
    ``[rows, W]`` buffer as they come, while the batch that parsed them is still in cache, rather than all at once
    at the end (a reader's usual run has one width and is in order, so the buffer is its counts array).

    A matrix of another width or dtype turns it into a plain list of the matrices. :meth:`stacked` is the
    buffer (``None`` after that, or before any row); :meth:`matrices` what :func:`stack_counts` takes.
    """

    GROWTH = 1.5

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None
        self._filled = 0
        self._capacity_hint = 0
        self._matrices: list[np.ndarray] | None = None  # once the widths or dtypes differ

    def reserve(self, rows: int) -> None:
        """Expect about ``rows`` rows in all (a hint: the buffer grows beyond it as needed)."""
        self._capacity_hint = max(self._capacity_hint, rows)

    def append(self, matrix: np.ndarray) -> None:
        if not len(matrix):
            return
        if self._matrices is not None:
            self._matrices.append(matrix)
            return
        buffer, filled, rows = self._buffer, self._filled, len(matrix)
        if buffer is None:
            buffer = np.empty((max(rows, self._capacity_hint), matrix.shape[1]), matrix.dtype)
        elif matrix.shape[1] != buffer.shape[1] or matrix.dtype != buffer.dtype:
            self._matrices, self._buffer = [buffer[:filled], matrix], None
            return
        elif filled + rows > len(buffer):
            grown = np.empty((max(filled + rows, int(len(buffer) * self.GROWTH)), buffer.shape[1]), buffer.dtype)
            grown[:filled] = buffer[:filled]
            buffer = grown
        buffer[filled : filled + rows] = matrix
        self._buffer, self._filled = buffer, filled + rows

    def stacked(self) -> np.ndarray | None:
        """Every row appended, ``[rows, W]``, when they have one width and dtype (``None`` otherwise or without
        rows): a view of the buffer, or a copy of its rows when more than an eighth of it is unused."""
        buffer = self._buffer
        if buffer is None:
            return None
        rows = buffer[: self._filled]
        return rows if len(buffer) - self._filled <= len(buffer) // 8 else rows.copy()

    def matrices(self) -> list[np.ndarray]:
        if self._matrices is not None:
            return self._matrices
        return [] if self._buffer is None else [self._buffer[: self._filled]]


def stack_counts(
    steps: np.ndarray,
    layers: np.ndarray,
    rows: list[np.ndarray],
    order: np.ndarray | None = None,
    *,
    stacked: np.ndarray | None = None,
) -> RunCounts:
    """:class:`RunCounts` of count rows given as matrices (one width each, ``rows[k]`` ``[R_k, W_k]``), with their
    steps and layer ids (``[sum R_k]`` each, in the rows' order), scattered with one numpy assignment per matrix.
    The counts' dtype is the rows' (int64 when there are none).

    Where a (step, layer) pair is given twice the later row wins: later in ``order`` (``[sum R_k]`` distinct
    sequence numbers, such as line numbers) when given, else in the order given.

    ``stacked``, when the reader already holds the rows one after another in one ``[sum R_k, W]`` array, is the
    result's counts array itself (reshaped, no copy) when the rows are the result's cells in order.
    """
    where = Cells.of(steps, layers)
    unique_steps, layer_ids, cells = where.steps, where.layer_ids, where.cells
    if where.in_order and stacked is not None:
        return RunCounts(unique_steps, layer_ids, stacked.reshape(len(unique_steps), len(layer_ids), -1))
    width = max((matrix.shape[1] for matrix in rows if len(matrix)), default=0)  # of the rows given
    dtype = np.result_type(*{matrix.dtype for matrix in rows}) if rows else np.dtype(np.int64)
    if where.in_order and all(matrix.shape[1] == width for matrix in rows if len(matrix)):
        # The usual run: the rows are the array's rows in order: copied in one pass, without a scatter.
        counts = np.empty((len(unique_steps), len(layer_ids), width), dtype)
        np.concatenate([matrix for matrix in rows if len(matrix)], out=counts.reshape(-1, width))
        return RunCounts(unique_steps, layer_ids, counts)
    counts = np.zeros((len(unique_steps), len(layer_ids), width), dtype)
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
            if keep.all():  # the usual case: no cell recorded twice, and no copy of the rows to select them
                flat[cells[start:end], : matrix.shape[1]] = matrix
            else:
                flat[cells[start:end][keep], : matrix.shape[1]] = matrix[keep]
        start = end
    return RunCounts(unique_steps, layer_ids, counts)
