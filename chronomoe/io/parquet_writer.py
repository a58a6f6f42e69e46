"""ParquetRunWriter: a run folder written as Parquet tables, with the JSONL writer's guarantees.

Layout (``output_dir/run_id/``): one folder per table, named as the JSONL
file it replaces (``routing_events/``, ``snapshots/``, ``alerts/``,
``decisions/``), of part files ``part-r<rank>-<session>-<n>[-e<n_experts>].parquet``
(see :mod:`chronomoe.io.parquet_parts`), and ``run_manifest.json`` (with
``"storage": "parquet"``). ``routing_events/*.parquet`` is the whole table for
DuckDB, Polars or pyarrow, every rank and every session of the run together.

Writing happens where the JSONL writer's does: in the calls of the Monitor's
``snapshot()`` / ``observe()`` (and when the staging ring drains), never in
the training step's hooks. Each call appends one row group per table it
writes (a snapshot's events, its transitions, the snapshot, the decisions)
as one frame in one ``write()``, through :class:`~chronomoe.io.writer.TelemetryWriter`'s
machinery, so everything it promises holds here too: a killed process loses
at most the batch in flight (a finished row group is never lost), a torn tail
is cut and moved aside (to ``<part>.parquet.torn``), failed writes are kept
(up to ``max_pending_bytes``), retried in order and never written twice, and
records dropped beyond that bound are counted in :attr:`dropped_records`.

A part is sealed (footer, then rename to ``.parquet``) once it holds
``row_groups_per_part`` row groups or :data:`PART_BYTES` bytes, and when the
writer closes; until then readers of this package read it through its
frames (:func:`~chronomoe.io.parquet_parts.read_part`) and other engines do
not see it. A new writer seals the parts its rank left growing in a crash,
after cutting their torn tails.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..errors import InvalidInputError, check_integer
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot
from .parquet_events_frame import encode_events_frame
from .parquet_parts import PARTIAL_SUFFIX, encode_frame, open_part_for_append, seal
from .parquet_records import events_columns, records_table
from .parquet_schema import ALERTS_TABLE, DECISIONS_TABLE, EVENTS_TABLE, SNAPSHOTS_TABLE
from .threads import available_cpus
from .writer import MAX_PENDING_BYTES, TelemetryWriter

logger = logging.getLogger(__name__)

ROW_GROUPS_PER_PART = 64
"""Row groups (write batches) after which a part is sealed, by default."""
PART_BYTES = 256 * 2**20
"""Bytes after which a part is sealed, whatever its row groups."""

_COUNTS_COLUMN = "expert_token_counts.list.element"
WRITE_OPTIONS: dict[str, dict[str, Any]] = {
    EVENTS_TABLE: {
        "compression": "zstd",
        # Counts: byte-stream split then zstd is the smallest encoding of them we measured (bench_storage.py),
        # and its reading cost is one pass of zstd; dictionaries elsewhere (run ids, modes, steps repeat).
        "use_dictionary": ["run_id", "mode", "step", "layer_id", "n_experts", "top_k"],
        "column_encoding": {_COUNTS_COLUMN: "BYTE_STREAM_SPLIT"},
        "write_statistics": ["step", "layer_id", "mode", "timestamp"],
    },
    SNAPSHOTS_TABLE: {"compression": "zstd"},
    ALERTS_TABLE: {"compression": "zstd"},
    DECISIONS_TABLE: {"compression": "zstd"},
}
"""How each table's row groups are encoded (``pyarrow.parquet.write_table`` options)."""


@dataclass
class _Part:
    path: Path
    row_groups: int = 0
    bytes: int = 0


class ParquetRunWriter(TelemetryWriter):
    """Writes a run folder as Parquet tables (see the module docstring); the methods of :class:`TelemetryWriter`.

    Args:
        run_id, output_dir, fsync, bytes_per_sync, on_error, max_pending_bytes: as for :class:`TelemetryWriter`.
        rank: the writing rank, in the part names (parts of several ranks read together as one table).
        row_groups_per_part: row groups after which a part is sealed (>= 1).

    Attributes ``events_path``, ``snapshots_path``, ``alerts_path`` and ``decisions_path`` name the table folders.
    """

    storage = "parquet"

    def __init__(
        self,
        run_id: str,
        output_dir: str | os.PathLike[str] = "outputs",
        *,
        fsync: bool = False,
        bytes_per_sync: int | None = None,
        on_error: str = "log",
        max_pending_bytes: int = MAX_PENDING_BYTES,
        rank: int = 0,
        row_groups_per_part: int = ROW_GROUPS_PER_PART,
    ) -> None:
        check_integer("rank", rank, 0)
        check_integer("row_groups_per_part", row_groups_per_part, 1)
        super().__init__(
            run_id,
            output_dir,
            fsync=fsync,
            bytes_per_sync=bytes_per_sync,
            on_error=on_error,
            max_pending_bytes=max_pending_bytes,
        )
        self.events_path = self.run_dir / EVENTS_TABLE
        self.snapshots_path = self.run_dir / SNAPSHOTS_TABLE
        self.alerts_path = self.run_dir / ALERTS_TABLE
        self.decisions_path = self.run_dir / DECISIONS_TABLE
        self.rank = rank
        self.row_groups_per_part = row_groups_per_part
        now = time.time()
        self.session = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z-p{os.getpid()}"
        self._parts: dict[tuple[str, int | None], _Part] = {}
        self._sequence_of_table: dict[str, int] = {}
        self._unsealed: list[Path] = []  # parts full or closed whose sealing waits for their pending writes
        self._recovered_tables: set[str] = set()
        self._encoding_pool: ThreadPoolExecutor | None = None
        self._encoding_pid = 0  # the process that made the pool

    # -- the record kinds ---------------------------------------------------------------------------------
    def write_event(self, event: RoutingEvent) -> None:
        """Append one event (a row group of one row: prefer :meth:`write_events_batch`)."""
        self.write_events_batch([event])

    def write_events_batch(self, events: Iterable[RoutingEvent]) -> int:
        """Append events as one row group per width (``n_experts``); return how many.

        Raises :class:`~chronomoe.errors.InvalidInputError` (nothing written) for a count beyond int32.
        """
        by_width: dict[int, list[RoutingEvent]] = {}
        for event in events:
            by_width.setdefault(event.n_experts, []).append(event)
        tables = {width: events_columns(batch) for width, batch in by_width.items()}  # all checked before any write
        for width, (others, counts) in tables.items():
            frame = encode_events_frame(others, counts, pool=self._encoder(), **WRITE_OPTIONS[EVENTS_TABLE])
            self._write_rows(EVENTS_TABLE, width, frame, len(counts))
        return sum(len(counts) for _, counts in tables.values())

    def write_snapshot(self, snapshot: SystemSnapshot) -> None:
        """Append a snapshot and, to ``alerts``, the transitions it carries; first retry pending writes."""
        self.flush()
        if snapshot.transitions:
            self.write_transitions(snapshot.transitions)
        self._write_records(SNAPSHOTS_TABLE, [snapshot])
        if self.fsync:
            self.sync()

    def write_transitions(self, transitions: Iterable[AlertTransition]) -> int:
        """Append alert transitions as one row group; return how many."""
        return self._write_records(ALERTS_TABLE, list(transitions))

    def write_decisions(self, decisions: Iterable[ControlDecision]) -> int:
        """Append control decisions as one row group; return how many."""
        return self._write_records(DECISIONS_TABLE, list(decisions))

    def write_records(self, table: str, records: Iterable[Any]) -> int:
        """Append records of one kind to their table as one row group (events: one per width), nothing else;
        return how many. ``table``: ``routing_events``, ``snapshots``, ``alerts`` or ``decisions``."""
        if table == EVENTS_TABLE:
            return self.write_events_batch(records)
        if table not in WRITE_OPTIONS:
            raise InvalidInputError("table", table, f"must be one of {', '.join(WRITE_OPTIONS)}")
        return self._write_records(table, list(records))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``run_manifest.json`` (with ``"storage": "parquet"``) atomically."""
        super().write_manifest({**manifest, "storage": self.storage})

    # -- parts --------------------------------------------------------------------------------------------
    def _write_records(self, table: str, records: Sequence[Any]) -> int:
        if records:
            rows = records_table(table, records)
            self._write_rows(table, None, encode_frame(rows, **WRITE_OPTIONS[table]), len(records))
        return len(records)

    def _write_rows(self, table: str, width: int | None, frame: bytes, records: int) -> None:
        part = self._current_part(table, width)
        self._append(part.path, frame, records)
        part.row_groups += 1
        part.bytes += len(frame)
        if part.row_groups >= self.row_groups_per_part or part.bytes >= PART_BYTES:
            del self._parts[(table, width)]
            self._unsealed.append(part.path)
            self._seal_finished()

    def _current_part(self, table: str, width: int | None) -> _Part:
        part = self._parts.get((table, width))
        if part is None:
            folder = self.run_dir / table
            if table not in self._recovered_tables:
                self._recover_parts(folder)
                self._recovered_tables.add(table)
            sequence = self._sequence_of_table.get(table, 0)
            self._sequence_of_table[table] = sequence + 1
            name = f"part-r{self.rank:05d}-{self.session}-{sequence:05d}" + ("" if width is None else f"-e{width}")
            part = self._parts[(table, width)] = _Part(folder / (name + PARTIAL_SUFFIX))
        return part

    def _recover_parts(self, folder: Path) -> None:
        """Seal the parts this rank left growing in ``folder`` (a crashed writer's), their torn tails cut."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            left = sorted(folder.glob(f"part-r{self.rank:05d}-*{PARTIAL_SUFFIX}"))
        except OSError as error:
            if self.on_error == "raise":
                raise
            self._note_failure(folder, error)
            return
        for partial in left:
            if self.session not in partial.name:
                self._unsealed.append(partial)
        self._seal_finished()

    def _seal_finished(self) -> None:
        """Seal every full or closed part whose writes are all done; a part that fails stays for a later call."""
        for path in list(self._unsealed):
            if self._pending.get(path):
                continue
            if path in self._files:
                self._close_handle(path)
            try:
                repair = seal(path, fsync=self.fsync, check_bodies=self.session not in path.name)
            except FileNotFoundError:
                repair = None  # its folder was removed: what it held is gone with it (logged when that was seen)
            except OSError as error:
                if self.on_error == "raise":
                    raise
                self._note_failure(path, error)
                continue
            self._unsealed.remove(path)
            self._failing.discard(path)
            if repair is not None and self.session not in path.name:
                logger.warning(
                    "sealed %s, left growing by an earlier writer: %d row groups", repair.sealed, repair.row_groups
                )

    def _encoder(self) -> ThreadPoolExecutor | None:
        """The worker that encodes counts pages beside pyarrow (:func:`encode_events_frame`), made at the first
        events written, when this process may run on two CPUs or more (``None`` otherwise); ended by :meth:`close`."""
        if self._encoding_pool is not None and self._encoding_pid != os.getpid():
            self._encoding_pool = None  # a forked child's copy: its worker lives in the parent only
        if self._encoding_pool is None and available_cpus() > 1:
            self._encoding_pool = ThreadPoolExecutor(1, thread_name_prefix="chronomoe-encode")
            self._encoding_pid = os.getpid()
        return self._encoding_pool

    def _open_file(self, path: Path) -> io.FileIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_part_for_append(path)

    def flush(self) -> int:
        """Retry pending writes, then seal the finished parts they held back; return the records still pending."""
        pending = super().flush()
        self._seal_finished()
        return pending

    def close(self) -> None:
        """Seal every part (after retrying pending writes), then close as :meth:`TelemetryWriter.close`."""
        self._unsealed += [part.path for part in self._parts.values()]
        self._parts.clear()
        if self._encoding_pool is not None and self._encoding_pid == os.getpid():
            self._encoding_pool.shutdown()
        self._encoding_pool = None
        self.flush()
        super().close()
        leftover = [path for path in self._unsealed if path.exists()]
        if leftover:
            logger.error(
                "%d parts could not be sealed: they stay growing, readable, sealed by the next writer", len(leftover)
            )
