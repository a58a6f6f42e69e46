"""Append-only JSONL telemetry: the writer and the loaders.

A run folder ``output_dir/run_id/`` holds

* ``routing_events.jsonl``: one :class:`~chronomoe.events.RoutingEvent` a line;
* ``snapshots.jsonl``: one :class:`~chronomoe.snapshots.SystemSnapshot` a line;
* ``alerts.jsonl``: one :class:`~chronomoe.alerts.AlertTransition` a line;
* ``run_manifest.json``: run metadata, replaced atomically.

Durability (README's "Guarantees" lists the tests that pin each promise):

* Files are opened once, unbuffered, in append mode; each batch is serialised
  in memory and handed to the OS in one ``write()``, so a process killed at
  any moment leaves every earlier batch intact and at most the batch in
  flight torn or missing. Nothing is buffered in the process: a batch is in
  the OS page cache when its write call returns.
* With ``fsync=True`` the writer also calls ``fsync`` after every snapshot,
  so a machine crash (power loss) loses at most the batches since the last
  snapshot; ``benchmarks/bench_io.py`` measures its cost per snapshot.
* Loaders skip a torn last line with a warning; a new writer moves a torn
  tail aside (to ``<file>.torn``) before appending, so it never glues onto
  the next record.

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

Loaders read one line at a time with a bounded ``readline``: a line longer
than ``max_line_bytes`` (default :data:`MAX_LINE_BYTES`, 64 MiB) is refused
with :class:`~chronomoe.errors.CorruptRecordError` without being read whole.
They parse with ``orjson`` and validate with pydantic; nothing is evaluated
or unpickled.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import os
import stat
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
TORN_SUFFIX = ".torn"

MAX_LINE_BYTES = 64 * 2**20
"""Longest JSONL line (newline included) the loaders read; a longer one is refused unread."""

MAX_PENDING_BYTES = 64 * 2**20
"""Default bound of the records a writer keeps in memory while writing fails."""

ON_ERROR_CHOICES = ("log", "raise")

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_BLOCK = 2**16

Record = TypeVar("Record", bound=BaseModel)


def check_run_id(run_id: str) -> str:
    """Refuse a run_id that is not one safe path component ('', '.', '..', '/abs', 'a/b', NUL)."""
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
        output_dir: str | os.PathLike = "outputs",
        *,
        fsync: bool = False,
        on_error: str = "log",
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.run_id = check_run_id(run_id)
        if on_error not in ON_ERROR_CHOICES:
            raise InvalidInputError("on_error", on_error, f"must be one of {', '.join(ON_ERROR_CHOICES)}")
        if isinstance(max_pending_bytes, bool) or not isinstance(max_pending_bytes, int) or max_pending_bytes < 0:
            raise InvalidInputError("max_pending_bytes", max_pending_bytes, "must be an integer >= 0")
        self.run_dir = Path(output_dir) / run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.run_dir / EVENTS_FILE
        self.snapshots_path = self.run_dir / SNAPSHOTS_FILE
        self.alerts_path = self.run_dir / ALERTS_FILE
        self.manifest_path = self.run_dir / MANIFEST_FILE
        self.fsync = fsync
        self.on_error = on_error
        self.max_pending_bytes = max_pending_bytes
        self.dropped_records = 0
        self._files: dict[Path, Any] = {}
        self._pending: dict[Path, deque[_PendingBatch]] = {}
        self._pending_bytes = 0
        self._sequence = 0
        self._failing: set[Path] = set()
        self._dropping = False
        self._manifest: bytes | None = None
        self._manifest_pending = False

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

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``run_manifest.json`` atomically (temporary file, then rename)."""
        self._manifest = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | _ORJSON_OPTIONS)
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
            return
        queue = self._pending.setdefault(path, deque())
        queue.append(_PendingBatch(self._sequence, data, records))
        self._sequence += 1
        self._pending_bytes += len(data)
        self._retry(path)
        self._drop_beyond_bound()

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
        if not self._manifest_pending:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            temporary = self.manifest_path.with_suffix(".json.tmp")
            temporary.write_bytes(self._manifest)
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

    def _cut_back(self, path: Path, handle: Any, size: int) -> None:
        """Remove the part of a failed batch that reached the file, so it ends on a line boundary."""
        try:
            os.ftruncate(handle.fileno(), size)
        except OSError:
            # The file keeps a torn tail; reopening moves it aside before the retry appends.
            self._close_handle(path)

    def _handle(self, path: Path) -> Any:
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
            handle = self._files[path] = _open_for_append(path)
        return handle

    def _close_handle(self, path: Path) -> None:
        handle = self._files.pop(path)
        try:
            handle.close()
        except OSError as error:
            logger.error("closing %s failed: %s", path, error)

    def sync(self) -> None:
        """``fsync`` every open file (with ``on_error="log"``, a failure is logged once per path)."""
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

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _names_open_file(path: Path, handle: Any) -> bool:
    """Whether ``path`` still names the file ``handle`` has open (not removed, not replaced)."""
    try:
        on_disk = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    opened = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _no_follow_opener(path: str, flags: int) -> int:
    """Open without following a symlink: a link planted in a run folder must not redirect writes."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


def _open_for_append(path: Path):
    """Open ``path`` unbuffered for append, first moving a torn last line (no trailing newline) aside."""
    handle = open(path, "a+b", buffering=0, opener=_no_follow_opener)
    try:
        _move_torn_tail_aside(path, handle.fileno())
    except BaseException:
        handle.close()
        raise
    return handle


def _move_torn_tail_aside(path: Path, descriptor: int) -> None:
    """Append a last line without its newline to ``<file>.torn`` (newline added) and cut it from the file.

    Reads backwards from the end in blocks, so the cost is the torn tail's
    length, never the file's.
    """
    size = os.fstat(descriptor).st_size
    if not size or os.pread(descriptor, 1, size - 1) == b"\n":
        return
    keep = _line_start(descriptor, size)
    torn_path = path.with_name(path.name + TORN_SUFFIX)
    with open(torn_path, "ab", opener=_no_follow_opener) as torn:
        for offset in range(keep, size, _BLOCK):
            torn.write(os.pread(descriptor, min(_BLOCK, size - offset), offset))
        torn.write(b"\n")
    os.ftruncate(descriptor, keep)
    logger.warning(
        "%s ended in a torn line (%d bytes, a crash mid-write); moved it to %s",
        path,
        size - keep,
        torn_path,
    )


def _line_start(descriptor: int, end: int) -> int:
    """Offset just after the last newline before ``end`` (0 when none), reading backwards in blocks."""
    while end > 0:
        start = max(0, end - _BLOCK)
        newline = os.pread(descriptor, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


# -- loaders ---------------------------------------------------------------
def _file_in(path: str | os.PathLike, default_name: str) -> Path:
    path = Path(path)
    return path / default_name if path.is_dir() else path


def _check_max_line_bytes(max_line_bytes: int) -> int:
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < 1:
        raise InvalidInputError("max_line_bytes", max_line_bytes, "must be an integer >= 1")
    return max_line_bytes


def _non_blocking_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


_TORN_TAILS_REPORTED: set[tuple[str, int, int]] = set()
"""Torn last lines already warned about in this process, as (real path, line number, length)."""


def _open_regular_file(path: Path):
    """Open for reading; refuse what is not a regular file (a FIFO would block, a device never end)."""
    # Buffered by _BLOCK: with the default 8 KiB, readline makes a read() call every four event lines.
    handle = open(path, "rb", buffering=_BLOCK, opener=_non_blocking_opener)
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise InvalidInputError("path", str(path), "is not a regular file")
    return handle


def numbered_lines(path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` of every line of a file, from 1, newline kept; only the last line can lack
    its newline (a torn tail).

    A line longer than ``max_line_bytes`` (newline included) raises
    :class:`~chronomoe.errors.CorruptRecordError` after reading at most
    ``max_line_bytes + 1`` bytes of it. A path that is not a regular file
    raises :class:`~chronomoe.errors.InvalidInputError`.
    """
    path = Path(path)
    limit = _check_max_line_bytes(max_line_bytes)
    with _open_regular_file(path) as handle:
        readline = handle.readline
        line_number = 0
        while line := readline(limit + 1):
            line_number += 1
            if len(line) > limit:
                raise CorruptRecordError(
                    str(path), line_number, f"line longer than max_line_bytes={limit}; refused without reading it"
                )
            yield line_number, line


def iter_lines(path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """:func:`numbered_lines` of a JSONL file without blank lines and without a torn last line, which is
    skipped with a warning."""
    for line_number, line in numbered_lines(path, max_line_bytes):
        if line[-1] != 0x0A:
            torn_tail = (os.path.realpath(path), line_number, len(line))
            if torn_tail not in _TORN_TAILS_REPORTED:  # a report reads a file several times: warn once
                _TORN_TAILS_REPORTED.add(torn_tail)
                logger.warning("%s:%d: skipping torn last line (%d bytes, no newline)", path, line_number, len(line))
            return
        if not line.isspace():
            yield line_number, line


_PARSE_ERRORS = (ValidationError, orjson.JSONDecodeError, InvalidInputError, ValueError, TypeError)


def iter_records(
    path: str | os.PathLike, parse: Callable[[bytes], Record], *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Record]:
    """Stream records from a JSONL file, one line at a time (memory flat in file length).

    A last line without its newline (torn by a crash) is skipped with a
    warning; any other line that fails to parse, or is longer than
    ``max_line_bytes``, raises :class:`~chronomoe.errors.CorruptRecordError`
    with the file and line number.
    """
    path = Path(path)
    for line_number, line in iter_lines(path, max_line_bytes):
        try:
            yield parse(line)
        except _PARSE_ERRORS as error:
            raise CorruptRecordError(str(path), line_number, _first_line(error)) from None


def iter_events(
    path: str | os.PathLike, batch_lines: int = 4096, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[RoutingEvent]:
    """Stream validated events from a JSONL file, ``batch_lines`` lines at a time.

    Same contract as :func:`iter_records` with ``RoutingEvent`` validation,
    about twice as fast at 256 experts: each line in the writer's canonical
    form has its counts copied into an int64 matrix as it is parsed, and is
    checked with vectorised numpy tests; any other line goes through full
    pydantic validation, which accepts or rejects it exactly as
    ``RoutingEvent`` does.
    """
    path = Path(path)
    lines = iter_lines(path, max_line_bytes)
    while True:
        with _gc_paused():
            batch = _EventBatch(path)
            for line_number, line in lines:
                batch.add(line_number, line)
                if len(batch.records) == batch_lines:
                    break
            events = batch.events()
        if not events:
            return
        yield from events


_EVENT_FIELDS = tuple(RoutingEvent.model_fields)
_EVENT_KEYS = frozenset(_EVENT_FIELDS)


def _is_canonical_event(record: Any) -> bool:
    """Whether a parsed line has the exact shape and scalar types the writer produces."""
    if type(record) is not dict or record.keys() != _EVENT_KEYS:
        return False
    step, layer_id, n_experts, top_k = record["step"], record["layer_id"], record["n_experts"], record["top_k"]
    counts, active = record["expert_token_counts"], record["active_experts"]
    return (
        type(step) is int
        and step >= 0
        and type(layer_id) is int
        and layer_id >= 0
        and type(n_experts) is int
        and n_experts >= 1
        and type(top_k) is int
        and 1 <= top_k <= n_experts
        and type(record["run_id"]) is str
        and record["run_id"] != ""
        and type(record["mode"]) is str
        and record["mode"] in ("TRAIN", "INFER")
        and type(record["timestamp"]) is float
        and math.isfinite(record["timestamp"])
        and type(record["token_count"]) is int
        and type(counts) is list
        and len(counts) == n_experts
        and type(active) is list
        and record["router_prob_sums"] is None
        and all(
            value is None or (type(value) is float and math.isfinite(value))
            for value in (record["loss"], record["aux_loss"])
        )
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing allocates thousands of acyclic
    containers per batch, and the collections they trigger cost about a tenth
    of the load time (measured at 256 experts)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_SAFE_TOTAL = 2**62
"""Bound on the fast path's token counts: ``n_experts`` counts of at most ``_SAFE_TOTAL // n_experts``
sum without wrapping int64, and their float64 sum is surely below RoutingEvent's ``INT64_LIMIT``;
larger counts are left to full validation."""

_ROWS_BYTES = 2**18
"""Size of one :class:`_CountRows` matrix: large enough for cheap vectorised checks, small enough that
a batch allocates little beyond its events."""


class _CountRows:
    """Counts of canonical lines of one width, each copied into a row of an int64 matrix as soon as the line
    is parsed, with the batch indices of their records.

    Copying right away frees each line's list of Python ints before the next line is parsed, so that
    parsing reuses warm memory instead of faulting in fresh pages (keeping the lists to the end of the
    batch made loading about 20% slower at 256 experts).
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.matrix = np.empty((max(1, _ROWS_BYTES // (8 * width)), width), np.int64)
        self.indices: list[int] = []
        self._pack_row = struct.Struct(f"{width}q").pack_into

    @property
    def full(self) -> bool:
        """Whether every row is taken."""
        return len(self.indices) == len(self.matrix)

    def take(self, index: int, record: dict[str, Any]) -> None:
        """Copy ``record``'s counts (a list of ``width`` items) into the next row if ``np.asarray`` would
        make them an int64 array of the same values; otherwise leave the record as it is (full validation
        decides).

        A taken record's counts are ``None`` until :meth:`build` puts its row there.
        """
        counts = record["expert_token_counts"]
        if int not in map(type, counts):
            return  # no integer: floats, strings, ... or booleans only (a bool array, which the model rejects)
        try:
            # Refuses floats, strings, null, containers and integers beyond int64; booleans among integers
            # count 0 or 1, as in np.asarray.
            self._pack_row(self.matrix, len(self.indices) * self.matrix.strides[0], *counts)
        except struct.error:
            return
        record["expert_token_counts"] = None  # frees the list now
        self.indices.append(index)

    def build(self, records: list[Any], events: list[RoutingEvent | None]) -> None:
        """Make an event of each taken record whose counts are non-negative and sum to ``token_count``,
        and whose ``active_experts`` are the non-zero columns; give the others back their counts as a list
        (full validation decides)."""
        # Events' counts are views of this matrix: read-only, and trimmed to the rows taken so that events
        # hold no spare rows.
        counts = self.matrix if self.full else self.matrix[: len(self.indices)].copy()
        counts.flags.writeable = False
        valid = ((counts.min(axis=1) >= 0) & (counts.max(axis=1) <= _SAFE_TOTAL // self.width)).tolist()
        totals = counts.sum(axis=1).tolist()  # exact where valid
        active_counts = np.count_nonzero(counts, axis=1).tolist()
        every_expert = list(range(self.width))
        every_expert_tuple = tuple(every_expert)  # shared by all events whose experts are all active
        for index, row, is_valid, total, active_count in zip(self.indices, counts, valid, totals, active_counts):
            record = records[index]
            if is_valid and record["token_count"] == total:
                if active_count == self.width:
                    expected, active = every_expert, every_expert_tuple
                else:
                    expected = row.nonzero()[0].tolist()
                    active = tuple(expected)
                if record["active_experts"] == expected:
                    record["expert_token_counts"], record["active_experts"] = row, active
                    events[index] = RoutingEvent.trusted(**record)
                    continue
            # A list, as on the line: validation would take a read-only int64 row as already checked.
            record["expert_token_counts"] = row.tolist()


class _EventBatch:
    """Lines of an events file parsed one by one (:meth:`add`), then made events together (:meth:`events`).

    Canonical lines become events one :class:`_CountRows` at a time, as soon as it is full; the others are
    validated in full at the end.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[Any] = []
        self.events_made: list[RoutingEvent | None] = []
        self.line_numbers: list[int] = []
        self.filling: dict[int, _CountRows] = {}  # by width

    def add(self, line_number: int, line: bytes) -> None:
        """Parse a line (CorruptRecordError if it is not JSON); a canonical one goes to its width's rows."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise CorruptRecordError(str(self.path), line_number, _first_line(error)) from None
        self.records.append(record)
        self.events_made.append(None)
        self.line_numbers.append(line_number)
        if _is_canonical_event(record):
            width = record["n_experts"]
            rows = self.filling.get(width)
            if rows is None:
                rows = self.filling[width] = _CountRows(width)
            rows.take(len(self.records) - 1, record)
            if rows.full:
                rows.build(self.records, self.events_made)
                del self.filling[width]

    def events(self) -> list[RoutingEvent]:
        """The events of the lines added, in order; raises CorruptRecordError naming the first line that
        full validation rejects."""
        for rows in self.filling.values():
            rows.build(self.records, self.events_made)
        events = self.events_made
        for index, event in enumerate(events):
            if event is None:
                try:
                    events[index] = RoutingEvent.model_validate(self.records[index])
                except _PARSE_ERRORS as error:
                    raise CorruptRecordError(str(self.path), self.line_numbers[index], _first_line(error)) from None
        return events  # type: ignore[return-value]


def _first_line(error: Exception) -> str:
    text = str(error)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"{location}: {first['msg']}" if location else first["msg"]
    return text.splitlines()[0] if text else type(error).__name__


def load_events(path: str | os.PathLike, *, max_line_bytes: int = MAX_LINE_BYTES) -> list[RoutingEvent]:
    """Validated events from ``routing_events.jsonl`` (a file path or a run folder)."""
    return list(iter_events(_file_in(path, EVENTS_FILE), max_line_bytes=max_line_bytes))


def load_snapshots(path: str | os.PathLike, *, max_line_bytes: int = MAX_LINE_BYTES) -> list[SystemSnapshot]:
    """Validated snapshots from ``snapshots.jsonl`` (a file path or a run folder)."""
    return list(
        iter_records(_file_in(path, SNAPSHOTS_FILE), SystemSnapshot.model_validate_json, max_line_bytes=max_line_bytes)
    )


def load_transitions(path: str | os.PathLike, *, max_line_bytes: int = MAX_LINE_BYTES) -> list[AlertTransition]:
    """Validated alert transitions from ``alerts.jsonl`` (a file path or a run folder)."""
    return list(
        iter_records(_file_in(path, ALERTS_FILE), AlertTransition.model_validate_json, max_line_bytes=max_line_bytes)
    )


def last_line(path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> bytes | None:
    """The last complete non-blank line of a JSONL file (a torn tail ignored), read from the end; ``None`` if none.

    Its cost is the length of the lines read, never the file's. A last line
    longer than ``max_line_bytes`` raises :class:`~chronomoe.errors.InvalidInputError`.
    """
    path = Path(path)
    limit = _check_max_line_bytes(max_line_bytes)
    with _open_regular_file(path) as handle:
        descriptor = handle.fileno()
        end = _line_start(descriptor, os.fstat(descriptor).st_size)  # drops a torn tail
        while end > 0:
            start = _line_start(descriptor, end - 1)
            if end - start > limit:
                raise InvalidInputError("path", str(path), f"its last line is longer than max_line_bytes={limit}")
            line = os.pread(descriptor, end - start, start)
            if not line.isspace():
                return line
            end = start
    return None


def load_manifest(path: str | os.PathLike, *, max_bytes: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """The run manifest (a file path or a run folder).

    Raises :class:`~chronomoe.errors.CorruptRecordError` when it is not a
    JSON object or is larger than ``max_bytes``.
    """
    path = _file_in(path, MANIFEST_FILE)
    with _open_regular_file(path) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CorruptRecordError(str(path), 1, f"larger than max_bytes={max_bytes}; refused without reading it")
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise CorruptRecordError(str(path), 1, _first_line(error)) from None
    if not isinstance(manifest, dict):
        raise CorruptRecordError(str(path), 1, f"must be a JSON object, got {type(manifest).__name__}")
    return manifest
