"""Reading a Parquet run folder (:class:`ParquetRunReader`, made by :func:`~chronomoe.io.run_reader.open_run`).

A table is every part in its folder, sealed or growing, of every rank and
writing session; a growing or torn part is read through its complete frames
without being changed (:func:`~chronomoe.io.parquet_parts.read_part`), so a
run can be read while it is written, or after a crash before any writer
sealed its parts. Parts are read in name order (rank, then session, then
sequence); the events of parts of different widths (``n_experts``) are read
row group by row group in step order within a session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..errors import CorruptRecordError
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot
from .parquet_counts import GroupRun, read_counts
from .parquet_pages import counts_width, leaf_index
from .parquet_parts import PARTIAL_SUFFIX, SEALED_SUFFIX, OpenPart, open_part
from .parquet_records import events_from_table, records_from_table
from .parquet_schema import ALERTS_TABLE, DECISIONS_TABLE, EVENTS_TABLE, SNAPSHOTS_TABLE
from .run_reader_base import RunCounts, RunReader, Storage


@dataclass(frozen=True)
class _RowGroup:
    """One row group of one part, with what orders it among the table's."""

    order: tuple[Any, ...]
    path: Path
    part: OpenPart
    index: int
    first_row: int

    @property
    def file(self) -> pq.ParquetFile:
        return self.part.file


class ParquetRunReader(RunReader):
    """A run folder of Parquet tables (see the module docstring)."""

    storage: Storage = "parquet"

    def has(self, table: str) -> bool:
        return bool(self.parts(table))

    def describe(self, table: str) -> str:
        return f"{table}/ parts"

    def parts(self, table: str) -> list[Path]:
        """The table's part files, sealed and growing, in name order (a growing part sorts with its sealed name)."""
        folder = self.run_dir / table
        if not folder.is_dir():
            return []
        found = [path for path in folder.iterdir() if path.name.endswith((SEALED_SUFFIX, PARTIAL_SUFFIX))]
        return sorted(found, key=lambda path: path.name.removesuffix(".partial"))

    def _row_groups(self, table: str) -> list[_RowGroup]:
        """The table's row groups in order: by writing session, then as written. The parts of one session
        that hold events of several widths were written side by side, so their groups interleave by first step."""
        self.require(table)
        parts = []
        for position, path in enumerate(self.parts(table)):
            part = open_part(path)
            if part is not None:
                parts.append((tuple(path.name.split("-")[1:3]), position, path, part))  # (rank, session)
        widths: dict[tuple[str, ...], set[Any]] = {}
        if table == EVENTS_TABLE:
            for session, _, _, part in parts:
                widths.setdefault(session, set()).add(counts_width(part.file))
        groups = []
        for session, position, path, part in parts:
            file = part.file
            by_step = len(widths.get(session, ())) > 1
            step_column = leaf_index(file.metadata, "step")
            first_row = 1
            for index in range(file.metadata.num_row_groups):
                group = file.metadata.row_group(index)
                first_step = 0
                if by_step and step_column is not None:
                    statistics = group.column(step_column).statistics
                    first_step = statistics.min if statistics is not None and statistics.has_min_max else 0
                groups.append(_RowGroup((session, first_step, position, index), path, part, index, first_row))
                first_row += group.num_rows
        return sorted(groups, key=lambda group: group.order)

    def events(self) -> Iterator[RoutingEvent]:
        for group in self._row_groups(EVENTS_TABLE):
            yield from events_from_table(group.file.read_row_group(group.index), str(group.path), group.first_row)

    def _records(self, table: str) -> Iterator[Any]:
        for group in self._row_groups(table):
            rows = group.file.read_row_group(group.index)
            yield from records_from_table(table, rows, str(group.path), group.first_row)

    def snapshots(
        self, mode: str | None = None, on_corrupt: Callable[[CorruptRecordError], None] | None = None
    ) -> Iterator[SystemSnapshot]:
        for group in self._row_groups(SNAPSHOTS_TABLE):
            rows = group.file.read_row_group(group.index)
            if mode is not None:
                rows = rows.filter(np.asarray(rows.column("mode").to_pylist()) == mode)
            yield from records_from_table(SNAPSHOTS_TABLE, rows, str(group.path), group.first_row)

    def transitions(self) -> Iterator[AlertTransition]:
        return self._records(ALERTS_TABLE)

    def decisions(self) -> Iterator[ControlDecision]:
        return self._records(DECISIONS_TABLE)

    def last_snapshot(self) -> SystemSnapshot | None:
        groups = self._row_groups(SNAPSHOTS_TABLE)
        if not groups:
            return None
        last = groups[-1]
        rows = last.file.read_row_group(last.index)
        tail = rows.slice(rows.num_rows - 1)
        snapshot: SystemSnapshot = next(
            records_from_table(SNAPSHOTS_TABLE, tail, str(last.path), last.first_row + rows.num_rows - 1)
        )
        return snapshot

    def counts(self, mode: str = "TRAIN") -> RunCounts:
        """The ``mode`` events' counts as one int32 array, read column-wise, the counts from their pages
        (:func:`~chronomoe.io.parquet_counts.read_counts`)."""
        return read_counts(self._runs_of_groups(self._row_groups(EVENTS_TABLE)), mode)

    @staticmethod
    def _runs_of_groups(groups: list[_RowGroup]) -> Iterator[GroupRun]:
        """Consecutive row groups of one part, in the order given."""
        run: list[_RowGroup] = []
        for group in groups:
            if run and (group.path != run[-1].path or group.index != run[-1].index + 1):
                yield GroupRun(run[0].path, run[0].part, [g.index for g in run], run[0].first_row)
                run = []
            run.append(group)
        if run:
            yield GroupRun(run[0].path, run[0].part, [g.index for g in run], run[0].first_row)
