"""Syncing behind the writer (``bytes_per_sync``): when a background sync is asked for, what it syncs, how many
wait, and how a failed one is reported."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading

import pytest

from chronomoe import Monitor, TelemetryWriter
from chronomoe.io import sync_behind
from chronomoe.io.parquet_writer import ParquetRunWriter
from chronomoe.io.sync_behind import DEFAULT_BYTES_PER_SYNC, SyncBehind


class Syncs:
    """A stand-in for ``fdatasync`` that records the file (device, inode) of each descriptor it syncs and whether
    that descriptor is read-only (the sync's own open file, not a dup of the writer's), and holds each call until
    :meth:`release` while :attr:`held`."""

    def __init__(self) -> None:
        self.files: list[tuple[int, int]] = []
        self.read_only: list[bool] = []
        self.started = threading.Semaphore(0)
        self.held = False
        self._gate = threading.Event()

    def __call__(self, descriptor: int) -> None:
        self.started.release()
        if self.held:
            self._gate.wait(10)
        stat = os.fstat(descriptor)
        self.files.append((stat.st_dev, stat.st_ino))
        self.read_only.append(fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY)

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def syncs(monkeypatch):
    recorded = Syncs()
    monkeypatch.setattr(sync_behind, "_datasync", recorded)
    return recorded


@pytest.fixture
def opened(tmp_path):
    path = tmp_path / "log.jsonl"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    yield path, descriptor
    os.close(descriptor)


def file_of(path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def sync_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "chronomoe-sync-behind"]


def test_a_file_is_synced_once_bytes_per_sync_bytes_were_appended_to_it(syncs, opened):
    path, descriptor = opened
    syncer = SyncBehind(100)
    syncer.wrote(path, descriptor, 60)
    syncer.close()
    assert syncs.files == []  # 60 bytes: not yet
    syncer.wrote(path, descriptor, 60)
    syncer.wrote(path, descriptor, 60)  # 120 bytes: one sync; then 60 counted afresh
    syncer.close()
    assert syncs.files == [file_of(path)]


def test_no_sync_is_asked_for_with_bytes_per_sync_zero(syncs, opened):
    path, descriptor = opened
    syncer = SyncBehind(0)
    syncer.wrote(path, descriptor, 10**9)
    syncer.close()
    assert syncs.files == [] and not sync_threads()


def test_at_most_one_sync_per_file_waits_while_one_runs(syncs, opened):
    path, descriptor = opened
    syncer = SyncBehind(10)
    syncs.held = True
    syncer.wrote(path, descriptor, 10)
    assert syncs.started.acquire(timeout=10)  # the first sync runs, held
    for _ in range(5):  # five more requests: one waits, the others are covered by it
        syncer.wrote(path, descriptor, 10)
    syncs.release()
    syncer.close()
    assert syncs.files == [file_of(path)] * 2


def test_the_writer_may_close_its_descriptor_while_a_sync_of_it_waits(syncs, opened, tmp_path):
    path = tmp_path / "closed_early.jsonl"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    syncer = SyncBehind(1)
    syncs.held = True
    syncer.wrote(*opened, 1)  # another file's sync holds the thread
    assert syncs.started.acquire(timeout=10)
    syncer.wrote(path, descriptor, 1)
    os.close(descriptor)
    syncs.release()
    syncer.close()
    assert syncs.files == [file_of(opened[0]), file_of(path)] and syncer.failures() == []


def test_close_runs_the_syncs_waiting_and_ends_the_thread(syncs, opened):
    syncer = SyncBehind(1)
    syncer.wrote(*opened, 1)
    syncer.close()
    assert syncs.files == [file_of(opened[0])] and not sync_threads()
    syncer.wrote(*opened, 1)  # a later request starts a thread again
    syncer.close()
    assert len(syncs.files) == 2 and not sync_threads()


def test_a_writer_syncs_behind_by_default_only_when_it_fsyncs(tmp_path):
    for writer_class in (TelemetryWriter, ParquetRunWriter):
        with writer_class("synced", tmp_path, fsync=True) as synced, writer_class("unsynced", tmp_path) as unsynced:
            assert (synced.bytes_per_sync, unsynced.bytes_per_sync) == (DEFAULT_BYTES_PER_SYNC, 0)
        with writer_class("chosen", tmp_path, fsync=True, bytes_per_sync=0) as chosen:
            assert chosen.bytes_per_sync == 0


def test_a_writer_syncs_the_files_it_appends_to(syncs, tmp_path, make_event):
    events = [make_event([3, 1, 0, 4], step=step) for step in range(20)]
    with TelemetryWriter("run", tmp_path, bytes_per_sync=1) as writer:
        for event in events:
            writer.write_event(event)
    assert set(syncs.files) == {file_of(writer.events_path)}
    assert 1 <= len(syncs.files) <= len(events)
    assert all(syncs.read_only)  # an open file of its own: a write error it takes is still the writer's fsync's


def test_a_monitor_passes_bytes_per_sync_to_its_writer(tmp_path):
    with Monitor("run", tmp_path, bytes_per_sync=4096) as monitor:
        assert monitor.writer is not None and monitor.writer.bytes_per_sync == 4096


@pytest.mark.parametrize("value", [-1, True, 1.5, "8MiB"])
def test_bytes_per_sync_must_be_an_integer_at_least_zero(tmp_path, assert_rejected, value):
    assert_rejected(lambda: TelemetryWriter("run", tmp_path, bytes_per_sync=value), "bytes_per_sync", repr(value))
    assert_rejected(lambda: Monitor("run", tmp_path, bytes_per_sync=value), "bytes_per_sync")


def failing_sync(descriptor: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_a_failed_background_sync_is_logged_once_per_file_and_the_run_goes_on(
    monkeypatch, tmp_path, make_event, caplog
):
    monkeypatch.setattr(sync_behind, "_datasync", failing_sync)
    events = [make_event([3, 1, 0, 4], step=step) for step in range(5)]
    with caplog.at_level(logging.ERROR), TelemetryWriter("run", tmp_path, bytes_per_sync=1) as writer:
        for event in events:
            writer.write_event(event)
    failures = [record for record in caplog.records if "background fdatasync" in record.getMessage()]
    assert len(failures) == 1 and str(writer.events_path) in failures[0].getMessage()
    assert len(writer.events_path.read_bytes().splitlines()) == len(events)


def test_a_failed_background_sync_is_raised_with_on_error_raise_and_the_records_stay(monkeypatch, tmp_path, make_event):
    monkeypatch.setattr(sync_behind, "_datasync", failing_sync)
    writer = TelemetryWriter("run", tmp_path, bytes_per_sync=1, on_error="raise")
    writer.write_event(make_event([3, 1, 0, 4]))  # its background sync fails
    with pytest.raises(OSError, match="Input/output error"):
        writer.close()  # runs the syncs waiting, then reports
    assert len(writer.events_path.read_bytes().splitlines()) == 1


def test_a_parquet_writer_syncs_its_parts(syncs, tmp_path, make_event):
    with ParquetRunWriter("run", tmp_path, bytes_per_sync=1) as writer:
        for step in range(3):
            writer.write_events_batch([make_event([3, 1, 0, 4], step=step)])
    parts = {file_of(part) for part in (tmp_path / "run" / "routing_events").glob("*.parquet")}
    assert syncs.files and set(syncs.files) <= parts


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_syncs_behind_afresh_even_when_the_fork_caught_the_lock_held(opened, child_exit_code):
    path, descriptor = opened
    syncer = SyncBehind(1)
    syncer.wrote(path, descriptor, 1)  # the thread now exists
    with syncer._lock:  # as when the fork catches the thread inside its lock
        child = os.fork()
        if child == 0:
            try:
                syncer.wrote(path, descriptor, 1)
                syncer.close()
                os._exit(0 if syncer.failures() == [] else 1)
            except BaseException:
                os._exit(2)
    syncer.close()
    assert child_exit_code(child) == 0
