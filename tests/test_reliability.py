"""Reliability: crashes, I/O faults, misbehaving handlers and hostile paths never cost records or the run.

Each test pins one promise of README's "Guarantees".
"""

from __future__ import annotations

import builtins
import errno
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import crash_writer
import numpy as np
import pytest
import torch
from crash_writer import N_LAYERS, RULES, STEPS_PER_WINDOW, window_events, window_step

from chronomoe import (
    AlertTransition,
    CorruptRecordError,
    InvalidInputError,
    Monitor,
    RoutingEvent,
    SystemSnapshot,
    TelemetryWriter,
    load_decisions,
    load_events,
    load_manifest,
    load_snapshots,
    load_transitions,
)
from chronomoe.cli import main
from chronomoe.io import writer as writer_module
from chronomoe.io.lines import MAX_LINE_BYTES, TORN_SUFFIX, open_for_append
from chronomoe.io.paths import ALERTS_FILE, EVENTS_FILE, SNAPSHOTS_FILE
from chronomoe.io.serialize import event_line

FILES = (EVENTS_FILE, ALERTS_FILE, SNAPSHOTS_FILE)


# == 1. crash safety: SIGKILL at random moments ======================================================
class ForkServer:
    """``tests/crash_writer.py`` running as a fork server (see its docstring); replies are read with a timeout."""

    def __init__(self, output_dir: Path, log_path: Path) -> None:
        self.log = open(log_path, "wb")  # noqa: SIM115 (open while the server runs; closed by close())
        self.process = subprocess.Popen(
            [sys.executable, crash_writer.__file__, str(output_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=output_dir,
        )
        self.pending = b""
        self.writer_pid: int | None = None
        assert self.reply() == "ready"

    def reply(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "the crash writer's fork server did not answer"
            chunk = os.read(self.process.stdout.fileno(), 4096)
            assert chunk, "the crash writer's fork server exited"
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def start(self, session: int, mode: str, progress_path: Path) -> int:
        self.process.stdin.write(f"start {session} {mode} {progress_path}\n".encode())
        self.process.stdin.flush()
        word, pid = self.reply().split()
        assert word == "pid"
        self.writer_pid = int(pid)
        return self.writer_pid

    def exit_status(self) -> int:
        word, status = self.reply().split()
        assert word == "exit"
        self.writer_pid = None
        return int(status)

    def close(self) -> None:
        if self.writer_pid is not None:  # a failed assertion left a writer running
            os.kill(self.writer_pid, signal.SIGKILL)
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def windows_completed(progress_path: Path) -> int:
    """The last complete count a writer reported (0 when none)."""
    if not progress_path.exists():
        return 0
    lines = progress_path.read_bytes().split(b"\n")[:-1]
    return int(lines[-1]) if lines else 0


class SessionModel:
    """What session ``session`` of the crash writer writes, window by window, computed in this process."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.monitor = Monitor("crash", rules=RULES, lens=None, controller=None)
        self.windows: list[tuple[list, object]] = []  # (events, snapshot)

    def window(self, index: int):
        while len(self.windows) <= index:
            window = len(self.windows)
            events = window_events(self.session, window)
            self.windows.append((events, self.monitor.observe(events, window_step(self.session, window))))
        return self.windows[index]

    def batches(self, windows: int) -> list[tuple[str, list]]:
        """The writes of the first ``windows`` windows, in order: (file, records)."""
        writes = []
        for index in range(windows):
            events, snapshot = self.window(index)
            writes.append((EVENTS_FILE, events))
            if snapshot.transitions:
                writes.append((ALERTS_FILE, snapshot.transitions))
            writes.append((SNAPSHOTS_FILE, [snapshot]))
        return writes


@dataclass
class FileState:
    """One file as verified so far: its complete lines, and a torn tail not yet moved aside."""

    verified: bytes = b""
    torn: bytes | None = None
    fragments: list[bytes] = field(default_factory=list)


PARSERS = {
    EVENTS_FILE: RoutingEvent.model_validate_json,
    ALERTS_FILE: AlertTransition.model_validate_json,
    SNAPSHOTS_FILE: SystemSnapshot.model_validate_json,
}


def record_key(record) -> tuple:
    """What a record of the crash writer must hold on disk (timestamps of snapshots differ from the model's)."""
    if isinstance(record, RoutingEvent):
        return record.step, record.layer_id, tuple(record.expert_token_counts.tolist())
    if isinstance(record, AlertTransition):
        return record.step, record.layer_id, record.source, record.dest
    return record.step, tuple(layer.alert_state for layer in record.layers)


def check_after_kill(
    run_dir: Path, states: dict[str, FileState], model: SessionModel, reported: int
) -> dict[str, list]:
    """The files after a kill hold exactly a prefix of the session's writes, at least its reported windows,
    at most one window more, with at most the batch in flight torn; earlier bytes are unchanged.

    Returns the session's records on disk, per file."""
    new_lines: dict[str, list[bytes]] = {}
    tails: dict[str, bytes] = {}
    for name in FILES:
        state = states[name]
        content = (run_dir / name).read_bytes() if (run_dir / name).exists() else b""
        if state.torn is not None and content == state.verified + state.torn:
            new_lines[name] = []  # not opened by this session: the old torn tail is still there
            continue
        assert content.startswith(state.verified), f"{name}: bytes written before the kill changed"
        if state.torn is not None:
            assert state.torn + b"\n" in (run_dir / (name + TORN_SUFFIX)).read_bytes()
            state.torn = None
        new = content[len(state.verified) :]
        complete = new[: new.rfind(b"\n") + 1]
        new_lines[name] = complete.splitlines(keepends=True)
        if new[len(complete) :]:
            tails[name] = new[len(complete) :]
        state.verified += complete

    writes = model.batches(reported + 1)
    done = dict.fromkeys(FILES, 0)
    prefixes = [dict(done)]
    for name, records in writes:
        done[name] += len(records)
        prefixes.append(dict(done))
    on_disk = {name: len(lines) for name, lines in new_lines.items()}
    # The complete batches, then maybe the first lines of the batch in flight (cut by the kill).
    written = max(index for index, prefix in enumerate(prefixes) if all(prefix[n] <= on_disk[n] for n in FILES))
    in_flight = writes[written][0] if written < len(writes) else None
    beyond = {name: on_disk[name] - prefixes[written][name] for name in FILES}
    assert all(count == 0 for name, count in beyond.items() if name != in_flight), (on_disk, prefixes)
    assert written >= len(model.batches(reported)), f"reported {reported} windows, on disk {on_disk}"
    assert set(tails) <= {in_flight}, f"torn tails {sorted(tails)}: not the batch in flight"
    for name, tail in tails.items():
        states[name].torn = tail
        states[name].fragments.append(tail)
    records: dict[str, list] = {name: [] for name in FILES}
    for name, batch in writes[:written]:
        records[name].extend(batch)
    if in_flight is not None:
        records[in_flight].extend(writes[written][1][: beyond[in_flight]])
    for name in FILES:
        on_disk_keys = [record_key(PARSERS[name](line)) for line in new_lines[name]]
        assert on_disk_keys == [record_key(record) for record in records[name]], f"{name}: a line differs"
    return records


def test_sigkill_at_random_moments_loses_at_most_the_batch_in_flight_and_a_new_writer_appends_cleanly(tmp_path):
    kills = 60
    rng = np.random.default_rng(7)
    run_dir = tmp_path / crash_writer.RUN_ID
    states = {name: FileState() for name in FILES}
    survivors: dict[str, list] = {name: [] for name in FILES}  # every record on disk, in order
    server = ForkServer(tmp_path, tmp_path / "crash_writer.log")
    try:
        for session in range(kills):
            progress = tmp_path / f"progress-{session}"
            mode = crash_writer.MODES[session % 2]
            pid = server.start(session, mode, progress)
            time.sleep(rng.uniform(0.0, 0.05 if mode == "direct" else 0.12))
            os.kill(pid, signal.SIGKILL)
            status = server.exit_status()
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                tmp_path / "crash_writer.log"
            ).read_text()
            written = check_after_kill(run_dir, states, SessionModel(session), windows_completed(progress))
            for name in FILES:
                survivors[name] += written[name]
    finally:
        server.close()
    assert sum(len(state.fragments) for state in states.values()) >= 3, "too few kills landed inside a batch"

    final = SessionModel(kills)  # a last writer, closed normally, appends to every file
    with Monitor("crash", tmp_path, rules=RULES, lens=None, controller=None, on_existing_run="resume") as monitor:
        for window in range(2):
            monitor.observe(window_events(kills, window), window_step(kills, window))
    for name, batch in final.batches(2):
        survivors[name] += batch
    loaded = {
        EVENTS_FILE: load_events(run_dir),
        SNAPSHOTS_FILE: load_snapshots(run_dir),
        ALERTS_FILE: load_transitions(run_dir),
    }
    for name in FILES:
        assert [record_key(r) for r in loaded[name]] == [record_key(r) for r in survivors[name]], name
        torn = (run_dir / (name + TORN_SUFFIX)).read_bytes() if states[name].fragments else b""
        assert all(fragment + b"\n" in torn for fragment in states[name].fragments)
    assert load_manifest(run_dir)["run_id"] == "crash"


def test_validate_reports_a_tail_torn_by_a_kill_and_a_new_writer_continues_on_a_fresh_line(tmp_path, capsys):
    run_dir = tmp_path / crash_writer.RUN_ID
    server = ForkServer(tmp_path, tmp_path / "crash_writer.log")
    try:
        server.start(0, "tear", tmp_path / "progress")
        status = server.exit_status()
    finally:
        server.close()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    torn_at = crash_writer.TEAR_AT_SNAPSHOT
    assert windows_completed(tmp_path / "progress") == torn_at - 1

    assert main(["validate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"snapshots.jsonl:{torn_at}: torn last line" in out and out.rstrip().endswith("valid")
    assert [s.step for s in load_snapshots(run_dir)] == [window_step(0, w) for w in range(torn_at - 1)]

    with Monitor("crash", tmp_path, rules=RULES, lens=None, controller=None, on_existing_run="resume") as monitor:
        resumed = monitor.observe(window_events(1, 0), window_step(1, 0))
    snapshots = load_snapshots(run_dir)
    assert [s.step for s in snapshots] == [*(window_step(0, w) for w in range(torn_at - 1)), resumed.step]
    assert (run_dir / "snapshots.jsonl.torn").read_bytes().count(b"\n") == 1
    assert main(["validate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "torn" not in out and out.rstrip().endswith("valid")


# == 2. I/O faults ==================================================================================
class FlakyDisk:
    """Stands between the writer and its files and fails on command, as a full or lost disk does.

    ``error``: raised by writes (to the files named in ``paths``, or all);
    ``partial_bytes``: before the first error, one short write stores that
    many bytes of the batch (what a disk filling up mid-write does);
    ``open_error``: raised when the writer opens a file.
    """

    def __init__(self) -> None:
        self.error: OSError | None = None
        self.partial_bytes = 0
        self.paths: set[str] | None = None
        self.open_error: OSError | None = None

    def fails(self, path: Path) -> bool:
        return self.error is not None and (self.paths is None or path.name in self.paths)


class FlakyFile:
    def __init__(self, handle, path: Path, disk: FlakyDisk) -> None:
        self.handle, self.path, self.disk = handle, path, disk

    def write(self, data) -> int:
        if self.disk.fails(self.path):
            if self.disk.partial_bytes:
                stored = self.handle.write(data[: self.disk.partial_bytes])
                self.disk.partial_bytes = 0
                return stored
            raise self.disk.error
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.fixture
def disk(monkeypatch) -> FlakyDisk:
    disk = FlakyDisk()

    def flaky_open(path: Path):
        if disk.open_error is not None:
            raise disk.open_error
        return FlakyFile(open_for_append(path), path, disk)

    monkeypatch.setattr(writer_module, "open_for_append", flaky_open)
    return disk


DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def record_windows(monitor: Monitor, windows, session: int = 0) -> list:
    """Observe the crash writer's windows; return their snapshots."""
    return [monitor.observe(window_events(session, window), window_step(session, window)) for window in windows]


def expected_records(snapshots: list) -> tuple[list[int], list[tuple[int, int]], list[int], list[tuple[str, int]]]:
    """(event steps, transitions (step, layer), snapshot steps, the default no-op controller's decisions
    (trigger, step)) of these windows, in write order."""
    event_steps = [
        step for s in snapshots for step in range(s.step - STEPS_PER_WINDOW + 1, s.step + 1) for _ in range(N_LAYERS)
    ]
    decisions = [
        decision
        for s in snapshots
        for decision in [*(("transition", t.step) for t in s.transitions), ("snapshot", s.step)]
    ]
    return (
        event_steps,
        [(t.step, t.layer_id) for s in snapshots for t in s.transitions],
        [s.step for s in snapshots],
        decisions,
    )


def on_disk_records(run_dir: Path) -> tuple[list[int], list[tuple[int, int]], list[int], list[tuple[str, int]]]:
    return (
        [e.step for e in load_events(run_dir)],
        [(t.step, t.layer_id) for t in load_transitions(run_dir)],
        [s.step for s in load_snapshots(run_dir)],
        [(d.trigger, d.step) for d in load_decisions(run_dir)],
    )


def io_error_logs(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "chronomoe.io.writer" and "cannot write" in r.getMessage()
    ]


def test_a_full_disk_does_not_stop_training_and_every_record_is_written_once_space_returns(tmp_path, disk, caplog):
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        snapshots = record_windows(monitor, range(3))
        disk.error = DISK_FULL
        snapshots += record_windows(monitor, range(3, 7))
        assert monitor.writer.pending_records > 0
        disk.error = None
        snapshots += record_windows(monitor, range(7, 9))
        assert monitor.writer.pending_records == 0
    assert on_disk_records(tmp_path / "run") == expected_records(snapshots)
    assert all(s.dropped_records == 0 for s in load_snapshots(tmp_path / "run"))
    logged = io_error_logs(caplog)
    assert len(logged) == 4  # once per file (events, alerts, snapshots, decisions), not per record or batch
    assert sorted(name for name in FILES for message in logged if str(tmp_path / "run" / name) in message) == sorted(
        FILES
    )
    assert all("No space left on device" in message for message in logged)
    assert "works again" in caplog.text


def test_a_write_that_stored_part_of_a_batch_is_cut_back_so_the_retry_writes_it_once_whole(tmp_path, disk):
    events = window_events(0, 0)
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events[:4])
        before = writer.events_path.read_bytes()
        disk.error, disk.partial_bytes = DISK_FULL, 100
        writer.write_events_batch(events[4:])
        assert writer.events_path.read_bytes() == before  # no partial line left behind
        disk.error = None
        writer.flush()
    assert load_events(tmp_path / "run") == events


def test_a_failed_cut_back_leaves_a_torn_tail_that_the_reopened_file_moves_aside(tmp_path, disk, monkeypatch):
    events = window_events(0, 0)
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(events[:4])
        disk.error, disk.partial_bytes = DISK_FULL, 100
        with monkeypatch.context() as patch:
            patch.setattr(
                writer_module.os, "ftruncate", lambda *args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
            )
            writer.write_events_batch(events[4:])
        disk.error = None
        writer.flush()
    assert load_events(tmp_path / "run") == events
    assert (tmp_path / "run" / "routing_events.jsonl.torn").read_bytes().count(b"\n") == 1


def test_beyond_the_bound_the_oldest_records_are_dropped_counted_and_reported_in_the_next_snapshot(
    tmp_path, disk, caplog
):
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        monitor.writer.max_pending_bytes = 20_000
        disk.error = DISK_FULL
        during = record_windows(monitor, range(6))
        assert all(s.dropped_records == 0 for s in during[:1]) and during[-1].dropped_records > 0
        disk.error = None
        after = record_windows(monitor, range(6, 8))
    dropped = monitor.dropped_records
    assert dropped > 0 and after[0].dropped_records == dropped
    written = on_disk_records(tmp_path / "run")
    expected = expected_records(during + after)
    assert sum(map(len, expected)) - sum(map(len, written)) == dropped  # the count is exact
    _, transitions, snapshot_steps, _ = written
    assert len(set(transitions)) == len(transitions) and len(set(snapshot_steps)) == len(snapshot_steps)  # none twice
    assert load_snapshots(tmp_path / "run")[-2].dropped_records == dropped
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1


def test_summary_reports_the_dropped_records(tmp_path, disk, capsys):
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        monitor.writer.max_pending_bytes = 0
        disk.error = DISK_FULL
        record_windows(monitor, range(2))
        disk.error = None
        record_windows(monitor, range(2, 3))
    with open(tmp_path / "run" / SNAPSHOTS_FILE, "ab") as snapshots:
        snapshots.write(b'{"step": 99, "torn')  # the count is read from the last complete snapshot
    main(["summary", str(tmp_path / "run")])
    assert f"warning: {monitor.dropped_records} records dropped after I/O errors" in capsys.readouterr().out


def test_lost_permission_is_logged_once_and_the_records_wait_for_the_retry(tmp_path, disk, caplog):
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        disk.open_error = PermissionError(errno.EACCES, "Permission denied")
        snapshots = record_windows(monitor, range(3))
        disk.open_error = None
        disk.error = PermissionError(errno.EACCES, "Permission denied")
        snapshots += record_windows(monitor, range(3, 5))
        disk.error = None
        snapshots += record_windows(monitor, range(5, 6))
    assert on_disk_records(tmp_path / "run") == expected_records(snapshots)
    logged = io_error_logs(caplog)
    assert len(logged) == 4 and all("Permission denied" in message for message in logged)  # once per file


def test_a_removed_run_folder_is_recreated_with_its_manifest_and_the_run_goes_on(tmp_path, caplog):
    with Monitor("run", tmp_path, rules=RULES, lens=None, training_config={"lr": 0.1}) as monitor:
        record_windows(monitor, range(2))
        shutil.rmtree(tmp_path / "run")
        later = record_windows(monitor, range(2, 6))
    assert on_disk_records(tmp_path / "run") == expected_records(later)
    assert load_manifest(tmp_path / "run")["config"] == {"lr": 0.1}
    assert "was removed or replaced" in caplog.text


def test_io_errors_raise_propagates_write_failures_even_from_the_snapshot_write(tmp_path, disk):
    with Monitor("run", tmp_path, rules=RULES, lens=None, io_errors="raise") as monitor:
        record_windows(monitor, range(1))
        disk.error, disk.paths, disk.partial_bytes = DISK_FULL, {SNAPSHOTS_FILE}, 50
        with pytest.raises(OSError, match="No space left"):
            record_windows(monitor, range(1, 2))
        assert monitor.bus.errors == 0
    assert (tmp_path / "run" / SNAPSHOTS_FILE).read_bytes().endswith(b"\n")
    assert len(load_snapshots(tmp_path / "run")) == 1


def test_an_unknown_on_error_policy_is_refused(tmp_path, assert_rejected):
    assert_rejected(lambda: TelemetryWriter("run", tmp_path, on_error="ignore"), "on_error", "'ignore'")
    assert_rejected(lambda: Monitor("run", tmp_path, io_errors="ignore"), "io_errors", "'ignore'")


def test_a_run_folder_that_cannot_be_created_fails_before_training_starts(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(OSError):
        Monitor("run", not_a_folder)


def test_closing_while_writes_still_fail_counts_the_pending_records_as_dropped(tmp_path, disk, caplog):
    writer = TelemetryWriter("run", tmp_path)
    disk.error = DISK_FULL
    writer.write_events_batch(window_events(0, 0))
    writer.close()
    assert writer.dropped_records == STEPS_PER_WINDOW * N_LAYERS and writer.pending_records == 0
    assert "not written after I/O errors: dropped" in caplog.text


def test_dropped_records_survive_a_resume_through_the_state_dict(tmp_path, disk):
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        monitor.writer.max_pending_bytes = 0
        disk.error = DISK_FULL
        record_windows(monitor, range(2))
        state = monitor.state_dict()
    disk.error = None
    with Monitor("run", tmp_path, rules=RULES, lens=None, on_existing_run="resume") as resumed:
        resumed.load_state_dict(state)
        [snapshot] = record_windows(resumed, range(2, 3))
    assert snapshot.dropped_records == monitor.dropped_records > 0


# == 4. handlers ====================================================================================
def test_a_raising_handler_stops_neither_training_nor_the_other_handlers_nor_their_order(tmp_path, caplog):
    calls = []
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        monitor.bus.subscribe("snapshot", lambda s: calls.append(("first", s.step)))
        monitor.bus.subscribe("snapshot", lambda s: 1 / 0)
        monitor.bus.subscribe("snapshot", lambda s: calls.append(("third", s.step)))
        snapshots = record_windows(monitor, range(3))
    assert calls == [(name, s.step) for s in snapshots for name in ("first", "third")]
    assert len(load_snapshots(tmp_path / "run")) == 3
    assert monitor.bus.errors == 3 and "ZeroDivisionError" in caplog.text


def test_a_slow_handler_delays_but_never_reorders_delivery(tmp_path):
    calls = []

    def slow(snapshot):
        time.sleep(0.02)
        calls.append(("slow", snapshot.step))

    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:
        monitor.bus.subscribe("transition", lambda t: calls.append(("transition", t.step)))
        monitor.bus.subscribe("snapshot", slow)
        monitor.bus.subscribe("snapshot", lambda s: calls.append(("after", s.step)))
        snapshots = record_windows(monitor, range(3))
    expected = []
    for s in snapshots:
        expected += [("transition", s.step)] * len(s.transitions) + [("slow", s.step), ("after", s.step)]
    assert calls == expected


def test_a_handler_unsubscribing_others_mid_delivery_skips_them_only_and_training_goes_on(tmp_path):
    calls = []
    with Monitor("run", tmp_path, rules=RULES, lens=None) as monitor:

        def remove_later(snapshot):
            calls.append(("remover", snapshot.step))
            later.unsubscribe()

        monitor.bus.subscribe("snapshot", remove_later)
        later = monitor.bus.subscribe("snapshot", lambda s: calls.append(("removed", s.step)))
        monitor.bus.subscribe("snapshot", lambda s: calls.append(("last", s.step)))
        snapshots = record_windows(monitor, range(2))
    assert calls == [(name, s.step) for s in snapshots for name in ("remover", "last")]
    assert len(load_snapshots(tmp_path / "run")) == 2


def test_a_handler_raising_on_every_call_is_reported_and_unsubscribed_not_retried_forever(caplog):
    monitor = Monitor("run", rules=RULES, lens=None)
    monitor.bus.disable_after = 3
    attempts = []

    def broken(snapshot):
        attempts.append(snapshot.step)
        raise RuntimeError("broken handler")

    monitor.bus.subscribe("snapshot", broken)
    snapshots = record_windows(monitor, range(6))
    assert attempts == [s.step for s in snapshots[:3]]
    assert monitor.bus.errors == 3
    assert "raised 3 times in a row" in caplog.text and "unsubscribed" in caplog.text


# == 6. security ====================================================================================
@pytest.mark.parametrize("run_id", ["../x", "/abs", "a/b", "", ".", "..", "a\0b", "a\\b", "..\\x", None, 5])
def test_a_run_id_that_could_escape_the_output_folder_is_refused(tmp_path, assert_rejected, run_id):
    output = tmp_path / "out"
    output.mkdir()
    assert_rejected(lambda: Monitor(run_id, output), "run_id")
    assert list(tmp_path.iterdir()) == [output] and list(output.iterdir()) == []


def test_a_symlink_planted_in_a_run_folder_is_not_written_through(tmp_path, caplog):
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"precious, no trailing newline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / EVENTS_FILE).symlink_to(target)
    with TelemetryWriter("run", tmp_path) as writer:
        writer.write_events_batch(window_events(0, 0))
        assert writer.pending_records == STEPS_PER_WINDOW * N_LAYERS
    assert target.read_bytes() == b"precious, no trailing newline"
    assert "cannot write" in caplog.text


def forbidden(*args, **kwargs):
    raise AssertionError("a loader unpickled or evaluated its input")


@pytest.mark.parametrize(
    "line",
    [
        pickle.dumps(os.system) + b"\n",
        b'{"__class__": "os.system", "run_id": "__import__(\'os\').system(\'false\')"}\n',
        b"!!python/object/apply:os.system ['false']\n",
    ],
)
def test_loaders_never_unpickle_or_evaluate_their_input(tmp_path, monkeypatch, line):
    for module, name in [(pickle, "loads"), (pickle, "load"), (builtins, "eval"), (builtins, "exec")]:
        monkeypatch.setattr(module, name, forbidden)
    for name, loader in [(EVENTS_FILE, load_events), (SNAPSHOTS_FILE, load_snapshots), (ALERTS_FILE, load_transitions)]:
        (tmp_path / name).write_bytes(line)
        with pytest.raises(CorruptRecordError):
            loader(tmp_path / name)


def test_a_monitor_state_dict_loads_with_torch_weights_only(tmp_path):
    monitor = Monitor("run", n_experts=[4, 8], rules=RULES, lens=None)
    for step in range(5):
        monitor.record(0, indices=torch.tensor([[0, 1], [1, 9]]))
        monitor.record(1, indices=torch.tensor([[step % 8, 7]]))
        monitor.step(step)
        if step == 2:
            monitor.snapshot(step)
    torch.save({"monitor": monitor.state_dict()}, tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["monitor"]
    resumed = Monitor("run", n_experts=[4, 8], rules=RULES, lens=None)
    resumed.load_state_dict(state)
    without_times = {"timestamp": True, "transitions": {"__all__": {"timestamp"}}}
    assert resumed.snapshot(5).model_dump(mode="json", exclude=without_times) == monitor.snapshot(5).model_dump(
        mode="json", exclude=without_times
    )


def test_a_line_over_the_size_limit_is_refused_naming_file_and_line_without_being_read_whole(tmp_path):
    path = tmp_path / EVENTS_FILE
    huge = b'{"run_id": "' + b"x" * 4_000_000 + b'"}\n'
    path.write_bytes(event_line(window_events(0, 0)[0]) + huge)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecordError, match="max_line_bytes=65536") as raised:
            load_events(path, max_line_bytes=65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (raised.value.path, raised.value.line_number) == (str(path), 2)
    assert peak < 1_000_000  # the 4 MB line was never held


def test_the_default_line_limit_is_64_mib():
    assert MAX_LINE_BYTES == 64 * 2**20


def test_a_fifo_or_device_given_as_a_log_is_refused_instead_of_read_forever(tmp_path):
    fifo = tmp_path / "routing_events.jsonl"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(InvalidInputError, match="not a regular file"):
            load_events(path)


def test_validate_refuses_a_line_over_the_size_limit_naming_file_and_line(tmp_path, capsys):
    (tmp_path / SNAPSHOTS_FILE).write_bytes(b"{}\n" + b"x" * MAX_LINE_BYTES + b"\n")
    assert main(["validate", str(tmp_path)]) == 2
    assert f"snapshots.jsonl:2: line longer than max_line_bytes={MAX_LINE_BYTES}" in capsys.readouterr().err
