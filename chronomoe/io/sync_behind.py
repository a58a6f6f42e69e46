"""Syncing files behind their writer: :class:`SyncBehind` (RocksDB's ``bytes_per_sync``).

A writer that calls ``fsync`` only at the end of a batch of snapshots, or at
the end of a run, waits at that call for everything written since the last
one to reach the disk: on a disk that writes while the CPU serialises, that
is time lost. :class:`SyncBehind` asks for a ``fdatasync`` of a file on a
background thread every time ``bytes_per_sync`` more bytes were appended to
it, so the disk writes one stretch while the writer serialises the next, and
a later ``fsync`` has only the tail left to wait for.

Guarantees:

* It only ever syncs earlier than asked: no byte is written, moved or held
  back by it, and the writer's own ``fsync`` calls are unchanged.
* At most one sync per file waits at any time (a waiting one covers every
  byte written before it runs), so a disk slower than the writer never
  queues more than one request per file.
* The background thread syncs the file through a descriptor of its own (the
  path opened again, read-only, checked to be the writer's file), so the
  writer may close its file at any time, and a write error the kernel
  reports to the background sync is still reported to the writer's own
  ``fsync`` (Linux reports such an error once per open file, so a
  ``dup`` of the writer's descriptor would take it away from the writer).
  The thread starts at the first request and ends at
  :meth:`SyncBehind.close`, after the requests waiting. In a process forked
  from the writer's, the object starts afresh (its lock, as the fork may
  have caught the thread holding it, and its thread, which the child lacks).
* A failed sync is kept for the writer to report in its own thread
  (:meth:`SyncBehind.report_failures`: logged once per file, and raised
  with ``on_error="raise"``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import check_integer

DEFAULT_BYTES_PER_SYNC = 8 * 2**20
"""Bytes appended to a file between background syncs when the writer syncs (``fsync=True``) and no other value is
given: large enough that a sync is one long sequential write, small enough to overlap most of a snapshot's."""

logger = logging.getLogger(__name__)

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class SyncBehind:
    """Background ``fdatasync`` of files every ``bytes_per_sync`` bytes appended (see the module docstring).

    :meth:`wrote` and :meth:`close` are called from the writer's thread only.
    """

    def __init__(self, bytes_per_sync: int) -> None:
        self.bytes_per_sync = check_integer("bytes_per_sync", bytes_per_sync, 0, " (0: no background sync)")
        self._unsynced: dict[Path, int] = {}  # bytes appended to each file since its last request
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: dict[Path, int] = {}  # file -> a descriptor of it to sync, this object's (under the lock)
        self._failures: list[tuple[Path, OSError]] = []  # under the lock
        self._closing = False
        self._thread: threading.Thread | None = None
        self._reported: set[Path] = set()  # files whose failed sync was logged
        self._pid = os.getpid()  # the process whose thread and lock these are

    def wrote(self, path: Path, descriptor: int, size: int) -> None:
        """``size`` bytes were appended to ``path`` through ``descriptor``: request a sync of it when
        ``bytes_per_sync`` bytes have been appended since its last request (never when ``bytes_per_sync`` is 0)."""
        if not self.bytes_per_sync:
            return
        self._start_afresh_if_forked()
        unsynced = self._unsynced.get(path, 0) + size
        if unsynced < self.bytes_per_sync:
            self._unsynced[path] = unsynced
            return
        self._unsynced[path] = 0
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # first request, or a forked child's
                self._thread = threading.Thread(target=self._run, name="chronomoe-sync-behind", daemon=True)
                self._thread.start()
            if path not in self._waiting:  # (else the sync waiting covers these bytes too)
                own = _open_same_file(path, descriptor)
                if own is None:
                    return  # this sync is skipped: the writer's own fsync still covers the bytes
                self._waiting[path] = own
            self._wake.notify()

    def forget(self, path: Path) -> None:
        """The writer closed ``path``: count its bytes afresh if it opens it again (a sync waiting still runs)."""
        self._unsynced.pop(path, None)

    def failures(self) -> list[tuple[Path, OSError]]:
        """The syncs that failed since the last call, as ``(path, error)``, oldest first."""
        self._start_afresh_if_forked()
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def report_failures(self, *, raise_first: bool) -> None:
        """Log the first failed sync of each file (once per file for this object's life) among those since the
        last call; with ``raise_first``, then raise the oldest of them (an ``OSError``)."""
        failures = self.failures()
        for path, error in failures:
            if path not in self._reported:
                self._reported.add(path)
                logger.error(
                    "background fdatasync of %s failed: %s. What was written to it since its last successful sync "
                    "may not be on disk (logged once per file)",
                    path,
                    error,
                )
        if failures and raise_first:
            raise failures[0][1]

    def close(self) -> None:
        """Run the syncs still waiting, then end the thread (a later :meth:`wrote` starts another)."""
        self._start_afresh_if_forked()
        thread = self._thread
        if thread is None:
            self._unsynced.clear()
            return
        with self._lock:
            self._closing = True
            self._wake.notify()
        thread.join()
        with self._lock:
            self._closing = False
            self._thread = None
            left, self._waiting = self._waiting, {}  # none unless a forked child's thread never ran them
        for descriptor in left.values():
            _close(descriptor)
        self._unsynced.clear()

    def _start_afresh_if_forked(self) -> None:
        """In a forked child: a new lock and no thread; the child's copies of the descriptors waiting closed, their
        syncs dropped (the parent's thread runs them), the parent's failures left to the parent."""
        if self._pid == os.getpid():
            return
        for descriptor in self._waiting.values():
            _close(descriptor)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting, self._failures, self._thread, self._closing = {}, [], None, False
        self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._wake.wait()
                if not self._waiting:
                    return
                path = next(iter(self._waiting))
                descriptor = self._waiting.pop(path)
            try:
                _datasync(descriptor)
            except OSError as error:
                with self._lock:
                    self._failures.append((path, error))
            finally:
                _close(descriptor)


def _open_same_file(path: Path, descriptor: int) -> int | None:
    """A new read-only descriptor of the file ``descriptor`` has open, by ``path`` (``None`` when ``path`` no
    longer names that file or cannot be opened)."""
    try:
        own = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    same = os.fstat(own), os.fstat(descriptor)
    if (same[0].st_dev, same[0].st_ino) != (same[1].st_dev, same[1].st_ino):
        _close(own)
        return None
    return own


def _close(descriptor: int) -> None:
    """Close a descriptor of this module's own (a failure to close a read-only descriptor loses nothing)."""
    try:
        os.close(descriptor)
    except OSError:
        logger.debug("closing a sync descriptor failed", exc_info=True)
