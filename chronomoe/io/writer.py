"""Appending records to a run folder: :class:`TelemetryWriter`.

Durability (README's "Guarantees" lists the tests that pin each promise):

* Files are opened once, unbuffered, in append mode; each batch is serialised
  in memory and handed to the OS in one ``write()``, so a process killed at
  any moment leaves every earlier batch intact and at most the batch in
  flight torn or missing. Nothing is buffered in the process: a batch is in
  the OS page cache when its write call returns.
* With ``fsync=True`` the writer also calls ``fsync`` after every snapshot,
  so a machine crash (power loss) loses at most the batches since the last
  snapshot; ``benchmarks/bench_io.py`` measures its cost per snapshot.
* With ``bytes_per_sync`` (by default 8 MiB when ``fsync=True``, else off) a
  background thread also ``fdatasync``s a file every ``bytes_per_sync``
  bytes appended to it (:mod:`chronomoe.io.sync_behind`), so the disk writes
  while the writer serialises and an ``fsync`` waits only for the tail
  (``benchmarks/bench_storage.py`` measures the throughput with and without).
* A new writer moves a torn tail aside (to ``<file>.torn``, see
  :mod:`chronomoe.io.lines`) before appending, so it never glues onto the
  next record.

I/O errors (disk full, permission lost, ...), with ``on_error="log"`` (the
default): the run goes on. The first failure on a path is logged once, with
the path; the failed batch is kept in memory and retried, whole, before the
next batch of the same file and at every snapshot; batches beyond
``max_pending_bytes`` are dropped, oldest first, and counted in
:attr:`TelemetryWriter.dropped_records` (which the Monitor reports in every
snapshot's ``dropped_records``). A write that stored part of a batch before
failing is cut back to the batch's start, so a retried batch is never written
twice nor in part. A file or run folder removed while the run writes it is
recreated (with the manifest) at the next write, with an error logged. With
``on_error="raise"`` the error propagates instead (after the same cut-back).
"""

from __future__ import annotations

import errno
import io
import logging
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from chronomoe.controller import ControlDecision

from ..alerts import AlertTransition
from ..errors import InvalidInputError, check_integer
from ..events import RoutingEvent
from ..snapshots import SystemSnapshot
from .lines import open_for_append
from .paths import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE, check_run_id
from .serialize import event_line, manifest_bytes, record_line
from .sync_behind import DEFAULT_BYTES_PER_SYNC, SyncBehind

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES = 64 * 2**20
"""Default bound of the records a writer keeps in memory while writing fails."""

ON_ERROR_CHOICES = ("log", "raise")


@dataclass
class _PendingBatch:
    """A batch whose write failed, kept for a retry; ``sequence`` orders batches across files."""

    sequence: int
    data: bytes | bytearray
    records: int


class TelemetryWriter:
    """Appends records to a run folder's JSONL files (see the module docstring).

    Args:
        run_id: the run's folder name under ``output_dir``; one path component.
        output_dir: parent folder of run folders (created when missing; the
            constructor raises when the run folder cannot be created).
        fsync: ``fsync`` the files after every snapshot (durable against
            power loss, at the cost measured in ``benchmarks/bench_io.py``).
        bytes_per_sync: ``fdatasync`` a file on a background thread every
            ``bytes_per_sync`` bytes appended to it (0: never); ``None``
            (default): :data:`~chronomoe.io.sync_behind.DEFAULT_BYTES_PER_SYNC`
            with ``fsync=True``, 0 without. A failed background sync is
            reported at the writer's next write, ``sync`` or ``close``: raised
            with ``on_error="raise"``, else logged once per file.
        on_error: ``"log"`` (default): an I/O error is logged once per path
            and the records are kept for a retry (see the module docstring);
            ``"raise"``: it propagates.
        max_pending_bytes: bytes of serialised records kept in memory while
            writing fails; beyond it the oldest batches are dropped and counted
            in :attr:`dropped_records`.

    Attributes:
        dropped_records: records dropped after I/O errors since this writer
            was created (only with ``on_error="log"``).
    """

    def __init__(
        self,
        run_id: str,
        output_dir: str | os.PathLike[str] = "outputs",
        *,
        fsync: bool = False,
        bytes_per_sync: int | None = None,
        on_error: str = "log",
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.run_id = check_run_id(run_id)
        if bytes_per_sync is None:
            bytes_per_sync = DEFAULT_BYTES_PER_SYNC if fsync else 0
        self._sync_behind = SyncBehind(bytes_per_sync)
        if on_error not in ON_ERROR_CHOICES:
            raise InvalidInputError("on_error", on_error, f"must be one of {', '.join(ON_ERROR_CHOICES)}")
        check_integer("max_pending_bytes", max_pending_bytes, 0)
        self.run_dir = Path(output_dir) / run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.run_dir / EVENTS_FILE
        self.snapshots_path = self.run_dir / SNAPSHOTS_FILE
        self.alerts_path = self.run_dir / ALERTS_FILE
        self.decisions_path = self.run_dir / DECISIONS_FILE
        self.manifest_path = self.run_dir / MANIFEST_FILE
        self.fsync = fsync
        self.on_error = on_error
        self.max_pending_bytes = max_pending_bytes
        self.dropped_records = 0
        self._files: dict[Path, io.FileIO] = {}
        self._pending: dict[Path, deque[_PendingBatch]] = {}
        self._pending_bytes = 0
        self._sequence = 0
        self._failing: set[Path] = set()
        self._dropping = False
        self._manifest: bytes | None = None
        self._manifest_pending = False

    @property
    def bytes_per_sync(self) -> int:
        """Bytes appended to a file between its background syncs (0: none)."""
        return self._sync_behind.bytes_per_sync

    # -- seed API -----------------------------------------------------------
    def write_event(self, event: RoutingEvent) -> None:
        """Append one event."""
        self._append(self.events_path, event_line(event), 1)

    def write_events_batch(self, events: Iterable[RoutingEvent]) -> int:
        """Append events in one ``write()``; return how many."""
        return self._append_lines(self.events_path, map(event_line, events))

    def flush_events(self, events: Sequence[RoutingEvent]) -> int:
        """Write a buffer of events and return their number (the caller clears the buffer)."""
        return self.write_events_batch(events)

    def write_snapshot(self, snapshot: SystemSnapshot) -> None:
        """Append a snapshot and, in ``alerts.jsonl``, the transitions it carries.

        First retries every batch still pending after a failed write.
        """
        self.flush()
        if snapshot.transitions:
            self.write_transitions(snapshot.transitions)
        self._append(self.snapshots_path, record_line(snapshot), 1)
        if self.fsync:
            self.sync()

    def write_transitions(self, transitions: Iterable[AlertTransition]) -> int:
        """Append alert transitions to ``alerts.jsonl`` in one ``write()``."""
        return self._append_lines(self.alerts_path, map(record_line, transitions))

    def write_decisions(self, decisions: Iterable[ControlDecision]) -> int:
        """Append control decisions to ``decisions.jsonl`` in one ``write()``; return how many."""
        return self._append_lines(self.decisions_path, map(record_line, decisions))

    def write_records(self, table: str, records: Iterable[BaseModel]) -> int:
        """Append records of one kind to their table as one batch, nothing else (``write_snapshot`` also writes
        the snapshot's transitions); return how many. ``table``: ``routing_events``, ``snapshots``, ``alerts``
        or ``decisions``."""
        paths = {
            "routing_events": self.events_path,
            "snapshots": self.snapshots_path,
            "alerts": self.alerts_path,
            "decisions": self.decisions_path,
        }
        if table not in paths:
            raise InvalidInputError("table", table, f"must be one of {', '.join(paths)}")
        return self._append_lines(paths[table], map(record_line, records))

    def append_jsonl(self, file_name: str, records: Iterable[BaseModel]) -> int:
        """Append records of another kind (``expert_health.jsonl``) to ``file_name`` in the run folder, in one
        ``write()``, with the same durability and error handling as the run's own files; return how many."""
        if Path(file_name).name != file_name or file_name in ("", ".", ".."):
            raise InvalidInputError("file_name", file_name, "must be a file name in the run folder")
        return self._append_lines(self.run_dir / file_name, map(record_line, records))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``run_manifest.json`` atomically (temporary file, then rename)."""
        self._manifest = manifest_bytes(manifest)
        self._manifest_pending = True
        self._retry_manifest()

    # -- retrying -----------------------------------------------------------
    @property
    def pending_records(self) -> int:
        """Records kept in memory after a failed write, waiting for a retry."""
        return sum(batch.records for queue in self._pending.values() for batch in queue)

    def flush(self) -> int:
        """Retry every pending batch (and the manifest); return the records still pending."""
        self._retry_manifest()
        for path in list(self._pending):
            self._retry(path)
        return self.pending_records

    def _append_lines(self, path: Path, lines: Iterable[bytes]) -> int:
        """Append serialised records as one batch; return how many."""
        # One growing buffer rather than a list of lines joined at the end: each line is freed as soon as
        # it is copied, so the next one reuses warm memory instead of faulting in fresh pages (this made
        # serialising batches of 580 events of 256 experts about three times faster).
        data = bytearray()
        count = 0
        for line in lines:
            data += line
            count += 1
        if count:
            self._append(path, data, count)
        return count

    def _append(self, path: Path, data: bytes | bytearray, records: int) -> None:
        if self.on_error == "raise":
            self._write(path, data)
        else:
            queue = self._pending.setdefault(path, deque())
            queue.append(_PendingBatch(self._sequence, data, records))
            self._sequence += 1
            self._pending_bytes += len(data)
            self._retry(path)
            self._drop_beyond_bound()
        # After the write: an earlier background sync's failure is reported without costing this batch.
        self._sync_behind.report_failures(raise_first=self.on_error == "raise")

    def _retry(self, path: Path) -> None:
        """Write ``path``'s pending batches in order, stopping at the first failure."""
        queue = self._pending[path]
        wrote = False
        while queue:
            batch = queue[0]
            try:
                self._write(path, batch.data)
            except OSError as error:
                self._note_failure(path, error)
                return
            queue.popleft()
            self._pending_bytes -= len(batch.data)
            wrote = True
        if wrote and path in self._failing:
            self._failing.discard(path)
            logger.warning("writing %s works again", path)
            if not self._failing:
                self._dropping = False

    def _retry_manifest(self) -> None:
        manifest = self._manifest
        if not self._manifest_pending or manifest is None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            temporary = self.manifest_path.with_suffix(".json.tmp")
            temporary.write_bytes(manifest)
            os.replace(temporary, self.manifest_path)
        except OSError as error:
            if self.on_error == "raise":
                raise
            self._note_failure(self.manifest_path, error)
            return
        self._manifest_pending = False
        self._failing.discard(self.manifest_path)

    def _note_failure(self, path: Path, error: OSError) -> None:
        if path in self._failing:
            return
        self._failing.add(path)
        logger.error(
            "cannot write %s: %s. The run goes on: the records are kept in memory (up to %d bytes, the oldest "
            "dropped beyond that and counted in snapshots' dropped_records) and retried before each later "
            "write; this is logged once until writing works again",
            path,
            error,
            self.max_pending_bytes,
        )

    def _drop_beyond_bound(self) -> None:
        while self._pending_bytes > self.max_pending_bytes:
            path, queue = min(
                ((path, queue) for path, queue in self._pending.items() if queue),
                key=lambda item: item[1][0].sequence,
            )
            batch = queue.popleft()
            self._pending_bytes -= len(batch.data)
            self.dropped_records += batch.records
            if not self._dropping:
                self._dropping = True
                logger.error(
                    "records waiting for a retry exceed max_pending_bytes=%d: dropping the oldest "
                    "(first: %d records of %s); dropped_records counts them",
                    self.max_pending_bytes,
                    batch.records,
                    path,
                )

    # -- file handling ------------------------------------------------------
    def _write(self, path: Path, data: bytes | bytearray) -> None:
        """Append ``data`` whole, or raise with the file cut back to where it was."""
        handle = self._handle(path)
        start = os.lseek(handle.fileno(), 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:  # a regular file may accept fewer bytes than asked (disk nearly full)
                written = handle.write(view)
                if not written:
                    raise OSError(errno.EIO, "write() accepted no bytes", str(path))
                view = view[written:]
        except OSError:
            if len(view) < len(data):
                self._cut_back(path, handle, start)
            raise
        self._sync_behind.wrote(path, handle.fileno(), len(data))

    def _cut_back(self, path: Path, handle: io.FileIO, size: int) -> None:
        """Remove the part of a failed batch that reached the file, so it ends on a line boundary."""
        try:
            os.ftruncate(handle.fileno(), size)
        except OSError:
            # The file keeps a torn tail; reopening moves it aside before the retry appends.
            self._close_handle(path)

    def _handle(self, path: Path) -> io.FileIO:
        handle = self._files.get(path)
        if handle is not None and not _names_open_file(path, handle):
            logger.error(
                "%s was removed or replaced while the run was writing it; recreating it "
                "(the records it held are gone with it)",
                path,
            )
            self._close_handle(path)
            handle = None
        if handle is None:
            if not self.run_dir.is_dir():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._manifest_pending = self._manifest is not None
                self._retry_manifest()
            handle = self._files[path] = self._open_file(path)
        return handle

    def _open_file(self, path: Path) -> io.FileIO:
        """Open ``path`` for appending batches, a torn tail moved aside first (a JSONL file here; the Parquet
        writer opens its growing parts)."""
        return open_for_append(path)

    def _close_handle(self, path: Path) -> None:
        handle = self._files.pop(path)
        self._sync_behind.forget(path)
        try:
            handle.close()
        except OSError as error:
            logger.error("closing %s failed: %s", path, error)

    def sync(self) -> None:
        """``fsync`` every open file (with ``on_error="log"``, a failure is logged once per path)."""
        self._sync_behind.report_failures(raise_first=self.on_error == "raise")
        for path, handle in list(self._files.items()):
            try:
                os.fsync(handle.fileno())
            except OSError as error:
                if self.on_error == "raise":
                    raise
                self._note_failure(path, error)

    def close(self) -> None:
        """Retry pending batches once more, drop (and count) what still fails, close the files."""
        if self.flush():
            lost = self.pending_records
            self.dropped_records += lost
            logger.error("closing %s with %d records not written after I/O errors: dropped", self.run_dir, lost)
        self._pending.clear()
        self._pending_bytes = 0
        for path in list(self._files):
            self._close_handle(path)
        self._sync_behind.close()
        self._sync_behind.report_failures(raise_first=self.on_error == "raise")

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _names_open_file(path: Path, handle: io.FileIO) -> bool:
    """Whether ``path`` still names the file ``handle`` has open (not removed, not replaced)."""
    try:
        on_disk = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    opened = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)
