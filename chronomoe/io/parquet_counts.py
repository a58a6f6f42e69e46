"""A Parquet run's counts of one mode as one array (:func:`read_counts`, behind ``ParquetRunReader.counts()``).

The events table is read column-wise, with no event objects: ``step`` and
``layer_id`` by pyarrow; ``mode`` from the row groups' statistics where each
group holds one mode (the writer's usual groups), else by pyarrow; the counts
from their pages (:mod:`~chronomoe.io.parquet_pages`), or by pyarrow for a
layout that module does not read. Consecutive row groups of a part in the
table's order (a *run*) are read together, runs on up to
:data:`READ_THREADS` threads (pyarrow, zstd and numpy release the GIL).

When every part has one width, the counts are decoded into one
``[events, width]`` buffer, each run's rows at their place; when the events
are the result's cells in order (every layer once per step, in step and
layer order, as a run of one writer is) the buffer *is* the result, reshaped
``[steps, layers, width]`` without a copy. Otherwise the rows are scattered
by :func:`~chronomoe.io.run_reader_base.stack_counts` (a later record of a
cell wins).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import CorruptRecordError
from .parquet_pages import NotCanonical, counts_width, decode_counts, leaf_index
from .parquet_parts import OpenPart
from .parquet_schema import COUNTS_FIELD
from .run_reader_base import RunCounts, stack_counts
from .threads import available_cpus

logger = logging.getLogger(__name__)

READ_THREADS = min(4, available_cpus())
"""Runs of row groups read at once."""


@dataclass(frozen=True)
class GroupRun:
    """Consecutive row groups ``indices`` of the part at ``path`` (opened as ``part``); ``first_row``: the number
    (from 1) of the first group's first row in the part, the groups' rows following on from it."""

    path: Path
    part: OpenPart
    indices: list[int]
    first_row: int

    @property
    def file(self) -> pq.ParquetFile:
        return self.part.file

    @property
    def rows(self) -> int:
        return sum(self.file.metadata.row_group(index).num_rows for index in self.indices)

    @property
    def width(self) -> int:
        return counts_width(self.file)


@dataclass(frozen=True)
class _RunRows:
    """What one run gave: the steps and layer ids of its rows of the mode, and those rows' counts."""

    steps: np.ndarray
    layers: np.ndarray
    counts: np.ndarray
    every_row: bool


def read_counts(runs: Iterable[GroupRun], mode: str) -> RunCounts:
    """The counts of the ``mode`` events of ``runs`` (in the table's order) as :class:`RunCounts` (counts int32).

    Raises :class:`~chronomoe.errors.CorruptRecordError` for a damaged page, a part pyarrow cannot read or a
    negative count, naming the part and row (a run's first row when pyarrow's error says no more); the first such
    error of the runs, in their order.
    """
    runs = list(runs)
    widths = {run.width for run in runs}
    rows = [run.rows for run in runs]
    starts = np.cumsum([0, *rows])
    buffer = np.empty((int(starts[-1]), widths.pop()), np.int32) if len(widths) == 1 else None

    readers: dict[tuple[int, Path], pq.ParquetFile] = {}

    def read(position: int) -> _RunRows:
        run = runs[position]
        # pyarrow's ParquetFile is not safe to share between threads: one per thread and part.
        key = (threading.get_ident(), run.path)
        reader = readers.get(key)
        if reader is None:  # only this thread writes this key
            reader = readers[key] = run.part.reader()
        out = buffer[starts[position] : starts[position + 1]] if buffer is not None else None
        try:
            return _read_run(run, reader, mode, out)
        except (OSError, pa.ArrowException) as error:  # pyarrow's reading of a damaged part
            raise CorruptRecordError(str(run.path), run.first_row, f"not readable by Parquet: {error}") from None

    with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(runs)))) as pool:
        found = list(pool.map(read, range(len(runs))))
    if not found:  # parts without a row group
        return RunCounts(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0, 0), np.int32))
    return stack_counts(
        np.concatenate([part.steps for part in found]),
        np.concatenate([part.layers for part in found]),
        [part.counts for part in found],
        stacked=buffer if all(part.every_row for part in found) else None,
    )


def _read_run(run: GroupRun, reader: pq.ParquetFile, mode: str, out: np.ndarray | None) -> _RunRows:
    """One run's rows of ``mode``, read through ``reader`` (this thread's): their steps and layers, and their
    counts (decoded into ``out``, ``[rows, width]`` int32, when given)."""
    keep = _mode_rows(run, reader, mode)
    if keep is not None and not keep.any():
        empty = np.zeros(0, np.int64)
        return _RunRows(empty, empty, np.zeros((0, run.width), np.int32), False)
    table = reader.read_row_groups(run.indices, columns=["step", "layer_id"], use_threads=False)
    steps, layers = table.column("step").to_numpy(), table.column("layer_id").to_numpy()
    counts = np.empty((run.rows, run.width), np.int32) if out is None else out
    _decode(run, reader, counts)
    if keep is None:
        return _RunRows(steps, layers, counts, True)
    return _RunRows(steps[keep], layers[keep], counts[keep], False)


def _mode_rows(run: GroupRun, reader: pq.ParquetFile, mode: str) -> np.ndarray | None:
    """Which rows of ``run`` are of ``mode`` (``None``: all), from each group's statistics when it holds one mode."""
    metadata = run.file.metadata
    column = leaf_index(metadata, "mode")
    per_group = []
    for index in run.indices:
        statistics = None if column is None else metadata.row_group(index).column(column).statistics
        if statistics is None or not statistics.has_min_max or statistics.min != statistics.max:
            table = reader.read_row_groups(run.indices, columns=["mode"], use_threads=False)
            keep: np.ndarray = pc.equal(table.column("mode"), mode).to_numpy(zero_copy_only=False)
            return None if keep.all() else keep
        per_group.append(statistics.min == mode)
    if all(per_group):
        return None
    group_rows = [metadata.row_group(index).num_rows for index in run.indices]
    return np.repeat(np.array(per_group, bool), group_rows)


def _decode(run: GroupRun, reader: pq.ParquetFile, out: np.ndarray) -> None:
    """Fill ``out`` with the run's counts: from their pages, or by pyarrow when the pages are laid out otherwise."""
    try:
        decode_counts(run.part.data, run.file.metadata, run.indices, out, path=str(run.path), first_row=run.first_row)
        return
    except NotCanonical as why:
        logger.debug("%s: counts read by pyarrow (%s)", run.path, why)
    column = reader.read_row_groups(run.indices, columns=[COUNTS_FIELD], use_threads=False).column(0)
    start = 0
    for chunk in column.chunks:
        matrix = chunk.flatten().to_numpy().reshape(-1, out.shape[1])
        if matrix.size and matrix.min() < 0:
            row = start + int(np.argmin(matrix.min(axis=1)))
            raise CorruptRecordError(str(run.path), run.first_row + row, f"{COUNTS_FIELD}: negative count")
        out[start : start + len(matrix)] = matrix
        start += len(matrix)
